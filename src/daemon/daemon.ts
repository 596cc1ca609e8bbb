// The mount daemon: one engine, one FUSE mount, one control socket, for one home.
import fs from 'node:fs'
import { execFile } from 'node:child_process'
import { CoopError } from '../errors.js'
import { Home } from '../home.js'
import { Engine } from './engine.js'
import { mountFilesystem, type Mounted } from '../fuse/mount.js'
import { serveControl, type Request } from './control.js'

export interface DaemonOptions {
  home: Home
  mountpoint: string
  // Called once: with null when the mount is ready, with the error when it could not start.
  ready: (err: Error | null) => void
}

// Keeps the FUSE session object reachable for the daemon's lifetime.
let active: Mounted | null = null

export function log (line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`)
}

export async function runDaemon ({ home, mountpoint, ready }: DaemonOptions): Promise<void> {
  const other = home.daemonPid()
  if (other && other !== process.pid) throw new CoopError('EBUSY', `home ${home.dir} is in use by the daemon with pid ${other}`)
  fs.writeFileSync(home.pidFile, String(process.pid) + '\n', { mode: 0o600 })

  let engine: Engine | null = null
  let stopping: Promise<void> | null = null
  const cleanupFiles = (): void => {
    fs.rmSync(home.pidFile, { force: true })
    fs.rmSync(home.socketFile, { force: true })
  }

  try {
    engine = new Engine(home, { log })
    await engine.start()
    active = await mountFilesystem(engine.fs, { mountpoint, fsname: 'coopfs:' + home.dir, log })
  } catch (err) {
    await engine?.close(false).catch(() => {})
    cleanupFiles()
    throw err
  }
  const eng = engine

  const stop = (): Promise<void> => {
    if (!stopping) {
      stopping = (async () => {
        await kernelUnmount(mountpoint)
        await eng.close(true)
        log('stopped')
        cleanupFiles()
        setImmediate(() => process.exit(0))
      })()
      stopping.catch(() => { stopping = null })
    }
    return stopping
  }

  const server = await serveControl(home.socketFile, async (req: Request) => {
    switch (req.op) {
      case 'ping': return { pid: process.pid }
      case 'status': return { mountpoint, pid: process.pid, home: home.dir, ...eng.status() }
      case 'sync': return { checkpoint: await eng.sync(req.timeoutMs ?? 0) }
      case 'unmount': await stop(); return { stopped: true }
      default: throw new CoopError('EINVAL', `unknown request ${String((req as { op: unknown }).op)}`)
    }
  })
  server.unref()

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      stop().catch(err => {
        log(`cannot stop on ${sig}: ${(err as Error).message}`)
      })
    })
  }
  log(`mounted ${mountpoint} (home ${home.dir}, pid ${process.pid})`)
  ready(null)
}

// Unmounts through the kernel; a busy mount point is refused rather than detached lazily, so the daemon
// keeps serving whoever still uses it.
function kernelUnmount (mountpoint: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('fusermount', ['-u', mountpoint], (err, _stdout, stderr) => {
      if (!err) return resolve()
      const text = String(stderr)
      if (/busy/i.test(text)) return reject(new CoopError('EBUSY', `${mountpoint} is busy: close the files and leave the folders open inside it, then try again`))
      if (/not found|not mounted/i.test(text)) return resolve()
      reject(new CoopError('EIO', `could not unmount ${mountpoint}: ${text.trim() || err.message}`))
    })
  })
}

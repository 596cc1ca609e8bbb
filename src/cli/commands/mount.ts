// coopfs mount: start the daemon for a home and return once the mount is ready (or run it in the
// foreground). With --recover, first rebuild the home from the partners and the recovery key.
import fs from 'node:fs'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { CoopError } from '../../errors.js'
import { DAEMON_START_TIMEOUT_MS } from '../../config.js'
import { Home, resolveHome } from '../../home.js'
import { runDaemon } from '../../daemon/daemon.js'
import { recoverHome } from '../../daemon/recover.js'
import { checkMountpoint } from '../mountpoint.js'
import { readRecoveryKey } from '../recovery-key.js'
import { bool, onlyFlags, str, type Args } from '../args.js'
import { splitList } from './init.js'

const MAIN = fileURLToPath(new URL('../main.js', import.meta.url))

export async function mountCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'foreground', 'recover', 'recovery-key-file', 'local-partners', 'daemon-child'])
  const dir = args.positionals[0]
  if (!dir) throw new CoopError('EUSAGE', 'usage: coopfs mount MOUNTPOINT [--home DIR] [--foreground] [--recover]')
  const home = new Home(resolveHome(str(args, 'home')))
  const mountpoint = checkMountpoint(dir)

  if (bool(args, 'recover')) {
    const partnerDirs = splitList(str(args, 'local-partners'))
    if (!partnerDirs?.length) throw new CoopError('EUSAGE', '--recover needs the partners: --local-partners DIR,DIR,...')
    if (home.exists()) throw new CoopError('EEXIST', `${home.dir} already holds a coopfs identity: recover into a new, empty home`)
    const key = await readRecoveryKey(str(args, 'recovery-key-file'))
    await recoverHome(home.dir, key, partnerDirs)
    process.stderr.write(`recovered the identity and the tree's metadata into ${home.dir}\n`)
  }

  home.readConfig()
  home.readSecret()
  const pid = home.daemonPid()
  if (pid) throw new CoopError('EBUSY', `home ${home.dir} is in use by the daemon with pid ${pid}`)

  if (bool(args, 'daemon-child')) {
    await runDaemon({ home, mountpoint, ready: err => process.send?.(err ? { error: err.message } : { ready: true }) })
    process.channel?.unref()
    return
  }
  if (bool(args, 'foreground')) {
    await runDaemon({ home, mountpoint, ready: () => process.stdout.write(`mounted ${mountpoint}; Ctrl-C unmounts\n`) })
    return
  }
  const child = await startDaemon(home, mountpoint)
  process.stdout.write(`mounted ${mountpoint} (daemon pid ${child}, log ${home.logFile})\n`)
}

// Starts the daemon in the background and waits for it to report the mount ready.
function startDaemon (home: Home, mountpoint: string): Promise<number> {
  fs.mkdirSync(home.dir, { recursive: true, mode: 0o700 })
  const logFd = fs.openSync(home.logFile, 'a', 0o600)
  const child = spawn(process.execPath, [MAIN, 'mount', mountpoint, '--home', home.dir, '--daemon-child'], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc']
  })
  fs.closeSync(logFd)
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new CoopError('ETIMEDOUT', `the daemon did not mount ${mountpoint} in time; see ${home.logFile}`))
    }, DAEMON_START_TIMEOUT_MS)
    const done = (): void => {
      clearTimeout(timer)
      child.removeAllListeners()
      if (child.connected) child.disconnect()
      child.unref()
    }
    child.on('message', (msg: { ready?: boolean, error?: string }) => {
      done()
      if (msg.ready) resolve(child.pid!)
      else reject(new CoopError('EMOUNT', msg.error ?? 'the daemon failed to start'))
    })
    child.on('exit', code => {
      done()
      reject(new CoopError('EMOUNT', `the daemon exited (code ${code}) before the mount was ready; see ${home.logFile}`))
    })
  })
}

// coopfs mount / serve: start the daemon for a home and return once it is ready (or run it in the
// foreground). With --recover, first rebuild the home from the partners and the recovery key.
import fs from 'node:fs'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { CoopError } from '../../errors.js'
import { DAEMON_START_TIMEOUT_MS } from '../../config.js'
import { Home, resolveHome } from '../../home.js'
import { runDaemon } from '../../daemon/daemon.js'
import { recoverHome, recoverFromNetwork } from '../../daemon/recover.js'
import { checkMountpoint } from '../mountpoint.js'
import { readRecoveryKey } from '../recovery-key.js'
import { bool, onlyFlags, str, type Args } from '../args.js'
import { networkFlags, saveNetworkFlags, splitList } from './init.js'

const MAIN = fileURLToPath(new URL('../main.js', import.meta.url))
const NET_FLAGS = ['bootstrap', 'host']

export async function mountCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'foreground', 'recover', 'recovery-key-file', 'local-partners', 'daemon-child', ...NET_FLAGS])
  const dir = args.positionals[0]
  if (!dir) throw new CoopError('EUSAGE', 'usage: coopfs mount MOUNTPOINT [--home DIR] [--foreground] [--recover]')
  const home = new Home(resolveHome(str(args, 'home')))
  const mountpoint = checkMountpoint(dir)

  if (bool(args, 'recover')) {
    if (home.exists()) throw new CoopError('EEXIST', `${home.dir} already holds a coopfs identity: recover into a new, empty home`)
    const partnerDirs = splitList(str(args, 'local-partners'))
    const net = networkFlags(args)
    if (!partnerDirs?.length && !net?.bootstrap) throw new CoopError('EUSAGE', '--recover needs a way to the partners: --bootstrap HOST:PORT (or COOPFS_BOOTSTRAP), or --local-partners DIR,...')
    const key = await readRecoveryKey(str(args, 'recovery-key-file'))
    if (partnerDirs?.length) await recoverHome(home.dir, key, partnerDirs)
    else await recoverFromNetwork(home.dir, key, net!, line => process.stderr.write(line + '\n'))
    process.stderr.write(`recovered the identity and the tree's metadata into ${home.dir}\n`)
  }

  home.readConfig()
  home.readSecret()
  saveNetworkFlags(home, args)
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
  const child = await startDaemon(home, ['mount', mountpoint], `mount ${mountpoint}`)
  process.stdout.write(`mounted ${mountpoint} (daemon pid ${child}, log ${home.logFile})\n`)
}

export async function serveCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'foreground', 'daemon-child', 'json', ...NET_FLAGS])
  const home = new Home(resolveHome(str(args, 'home')))
  const cfg = home.readConfig()
  home.readSecret()
  saveNetworkFlags(home, args)
  const pid = home.daemonPid()
  if (pid) throw new CoopError('EBUSY', `home ${home.dir} is in use by the daemon with pid ${pid}`)
  if (bool(args, 'daemon-child')) {
    await runDaemon({ home, mountpoint: null, ready: err => process.send?.(err ? { error: err.message } : { ready: true }) })
    process.channel?.unref()
    return
  }
  if (bool(args, 'foreground')) {
    await runDaemon({ home, mountpoint: null, ready: () => process.stdout.write(`serving partners as ${cfg.publicKey}; Ctrl-C stops\n`) })
    return
  }
  const child = await startDaemon(home, ['serve'], 'serve')
  if (bool(args, 'json')) process.stdout.write(JSON.stringify({ pid: child, publicKey: cfg.publicKey, home: home.dir }) + '\n')
  else process.stdout.write(`serving partners as ${cfg.publicKey} (daemon pid ${child}, log ${home.logFile})\n`)
}

// V8 flags of the daemon. Its young generation may grow to 2 x 4 MiB instead of node's 2 x 16 MiB: the
// daemon's short-lived objects are small (its bulk data lives in buffers outside the V8 heap), and a
// daemon that had read for a while kept some 24 MiB more resident with the default, for no measured gain
// in speed.
const DAEMON_NODE_FLAGS = ['--max-semi-space-size=4']

// Starts the daemon in the background and waits for it to report ready.
export function startDaemon (home: Home, command: string[], what: string): Promise<number> {
  fs.mkdirSync(home.dir, { recursive: true, mode: 0o700 })
  const logFd = fs.openSync(home.logFile, 'a', 0o600)
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, MAIN, ...command, '--home', home.dir, '--daemon-child'], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'ipc']
  })
  fs.closeSync(logFd)
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new CoopError('ETIMEDOUT', `the daemon did not ${what} in time; see ${home.logFile}`))
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
      reject(new CoopError('EMOUNT', `the daemon exited (code ${code}) before it was ready; see ${home.logFile}`))
    })
  })
}

// coopfs prefetch [PATH]: pulls everything (or PATH, inside a mount) from the partners into the local cache,
// with a progress bar, so the files can be read later without the network.
import path from 'node:path'
import { CoopError } from '../../errors.js'
import { CONTROL_TIMEOUT_MS } from '../../config.js'
import { Home, resolveHome } from '../../home.js'
import { request } from '../../daemon/control.js'
import { fmtBytes } from '../../partners/local-dir.js'
import { coopMountAt } from '../mountpoint.js'
import { onlyFlags, str, type Args } from '../args.js'
import type { PrefetchProgress } from '../../daemon/prefetch.js'

const POLL_MS = 250
const BAR = 30

export async function prefetchCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home'])
  let home: Home
  let rel = ''
  const target = args.positionals[0]
  if (target) {
    const abs = path.resolve(target)
    let dir = abs
    let found = coopMountAt(dir)
    while (!found && path.dirname(dir) !== dir) {
      dir = path.dirname(dir)
      found = coopMountAt(dir)
    }
    if (!found) throw new CoopError('EUSAGE', `${abs} is not inside a coopfs mount`)
    home = new Home(found.home)
    rel = path.relative(found.mountpoint, abs)
  } else {
    home = new Home(resolveHome(str(args, 'home')))
  }
  home.readConfig()
  if (!home.daemonPid()) throw new CoopError('ENODAEMON', `no daemon is running for ${home.dir}: mount it first`)
  let p = await request(home.socketFile, { op: 'prefetch', path: rel }, CONTROL_TIMEOUT_MS) as PrefetchProgress
  const tty = process.stderr.isTTY
  let lastLine = ''
  for (;;) {
    const line = render(p)
    if (tty) process.stderr.write('\r' + line)
    else if (line.slice(0, BAR + 2) !== lastLine.slice(0, BAR + 2)) process.stderr.write(line + '\n')
    lastLine = line
    if (!p.running) break
    await new Promise(resolve => setTimeout(resolve, POLL_MS))
    p = await request(home.socketFile, { op: 'prefetchProgress' }, CONTROL_TIMEOUT_MS) as PrefetchProgress
  }
  if (tty) process.stderr.write('\n')
  if (p.failed) throw new CoopError('EIO', `${p.failed} of ${p.chunks} pieces could not be fetched (${p.firstError ?? 'unknown error'}); run coopfs prefetch again once more partners are online`)
  process.stdout.write(`prefetched ${p.path}: ${p.files} files, ${fmtBytes(p.bytesDone)} in the local cache\n`)
}

function render (p: PrefetchProgress): string {
  const frac = p.bytes ? p.bytesDone / p.bytes : (p.running ? 0 : 1)
  const fill = Math.round(frac * BAR)
  return `[${'#'.repeat(fill)}${'.'.repeat(BAR - fill)}] ${(frac * 100).toFixed(0).padStart(3)}%  ${fmtBytes(p.bytesDone)} of ${fmtBytes(p.bytes)}, ${p.files} files${p.failed ? `, ${p.failed} failed` : ''}`
}

// Commands that talk to a running daemon: unmount, status, sync.
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { CoopError } from '../../errors.js'
import { CONTROL_TIMEOUT_MS } from '../../config.js'
import { Home, resolveHome } from '../../home.js'
import { request } from '../../daemon/control.js'
import { bundledFusermountDir } from '../../fuse/libfuse.js'
import { fmtBytes } from '../../partners/local-dir.js'
import { offlineStats } from '../../fs/meta-store.js'
import { coopMountAt, mountedAt } from '../mountpoint.js'
import { bool, int, onlyFlags, str, type Args } from '../args.js'
import type { EngineStatus } from '../../daemon/engine.js'

const STOP_WAIT_MS = 60_000

export async function unmountCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home'])
  const dir = args.positionals[0]
  if (!dir) throw new CoopError('EUSAGE', 'usage: coopfs unmount MOUNTPOINT')
  const mp = path.resolve(dir)
  const found = coopMountAt(mp)
  const homeDir = found?.home ?? (str(args, 'home') || process.env.COOPFS_HOME ? resolveHome(str(args, 'home')) : null)
  if (!found && !mountedAt(mp)) throw new CoopError('ENOTMOUNTED', `${mp} is not a coopfs mount point`)
  const home = homeDir ? new Home(homeDir) : null
  const pid = home?.daemonPid() ?? 0
  if (!home || !pid) {
    // The daemon is gone (killed): clear the stale mount so the folder is usable again.
    forceUnmount(mp)
    process.stdout.write(`unmounted ${mp} (its daemon had already stopped)\n`)
    return
  }
  await request(home.socketFile, { op: 'unmount' }, CONTROL_TIMEOUT_MS)
  await waitForExit(pid)
  process.stdout.write(`unmounted ${mp}\n`)
}

function forceUnmount (mp: string): void {
  const env = { ...process.env, PATH: bundledFusermountDir() + path.delimiter + (process.env.PATH ?? '') }
  try {
    execFileSync('fusermount', ['-u', mp], { env, stdio: 'pipe' })
  } catch (err) {
    const text = String((err as { stderr?: Buffer }).stderr ?? '')
    if (/busy/i.test(text)) throw new CoopError('EBUSY', `${mp} is busy: close the files and folders open inside it, then try again`)
    throw new CoopError('EIO', `could not unmount ${mp}: ${text.trim()}`)
  }
}

async function waitForExit (pid: number): Promise<void> {
  const deadline = Date.now() + STOP_WAIT_MS
  while (Date.now() < deadline) {
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new CoopError('ETIMEDOUT', `the daemon (pid ${pid}) did not stop in time`)
}

type Status = EngineStatus & { mountpoint: string | null, pid: number | null, home: string }

export async function statusCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'json'])
  const home = new Home(resolveHome(str(args, 'home')))
  const cfg = home.readConfig()
  let status: Status
  if (home.daemonPid()) {
    status = await request(home.socketFile, { op: 'status' }, CONTROL_TIMEOUT_MS) as Status
  } else {
    status = {
      mountpoint: null,
      pid: null,
      home: home.dir,
      ...offlineStats(home.metaFile, cfg.chunkSize),
      partners: cfg.partners.map(p => ({ id: p.id, label: p.path, state: fs.existsSync(p.path) ? 'online' : 'offline', slots: cfg.slots }))
    } as unknown as Status
  }
  if (bool(args, 'json')) {
    process.stdout.write(JSON.stringify(status) + '\n')
    return
  }
  const lines = [`home:        ${status.home}`]
  if (!status.pid) {
    lines.push(
      'mounted:     no (no daemon running)',
      `stored:      ${fmtBytes(status.bytesStored)}`,
      `pending:     ${fmtBytes(status.bytesPending)} waiting in the local write-back store (stored on the next mount)`
    )
  } else {
    lines.push(
      `mounted:     ${status.mountpoint} (daemon pid ${status.pid})`,
      `stored:      ${fmtBytes(status.bytesStored)} of ${fmtBytes(status.usableBytes)} usable`,
      `pending:     ${fmtBytes(status.bytesPending)} waiting in the local write-back store`,
      `checkpoint:  #${status.checkpoint}${status.changedSinceCheckpoint ? ' (newer changes not yet checkpointed)' : ''}`,
      `coding:      k=${status.erasureCoding.k} m=${status.erasureCoding.m}, ${status.erasureCoding.backend} coder${status.erasureCoding.note ? ' - ' + status.erasureCoding.note : ''}`,
      `damage:      ${status.damage.count ? `${status.damage.count} bad or missing blocks seen (served by decoding)` : 'none seen'}`
    )
    if (status.lastError) lines.push(`last error:  ${status.lastError}`)
  }
  lines.push('partners:')
  for (const p of status.partners) lines.push(`  ${p.id.slice(0, 16)}  ${p.state.padEnd(7)}  ${p.label}`)
  process.stdout.write(lines.join('\n') + '\n')
}

export async function syncCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'timeout'])
  const home = new Home(resolveHome(str(args, 'home')))
  home.readConfig()
  if (!home.daemonPid()) throw new CoopError('ENODAEMON', `no daemon is running for ${home.dir}: mount it first`)
  const timeoutS = int(args, 'timeout', 0, 0)
  const res = await request(home.socketFile, { op: 'sync', timeoutMs: timeoutS * 1000 }, timeoutS ? timeoutS * 1000 + 5000 : CONTROL_TIMEOUT_MS) as { checkpoint: number }
  process.stdout.write(`everything written so far is stored at the partners (checkpoint #${res.checkpoint})\n`)
}

export async function partnersCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'json'])
  const sub = args.positionals[0] ?? 'list'
  if (sub !== 'list') throw new CoopError('EUSAGE', `coopfs partners ${sub}: only 'list' is available with local partners`)
  const home = new Home(resolveHome(str(args, 'home')))
  const cfg = home.readConfig()
  const rows = cfg.partners.map(p => ({ id: p.id, kind: p.kind, path: p.path, slots: cfg.slots, online: fs.existsSync(p.path) }))
  if (bool(args, 'json')) {
    process.stdout.write(JSON.stringify(rows) + '\n')
    return
  }
  for (const r of rows) process.stdout.write(`${r.id.slice(0, 16)}  ${r.online ? 'online ' : 'offline'}  ${r.slots} slots  ${r.path}\n`)
}

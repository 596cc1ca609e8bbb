// Commands that talk to a running daemon: unmount, status, sync.
import fs from 'node:fs'
import path from 'node:path'
import { execFileSync } from 'node:child_process'
import { CoopError } from '../../errors.js'
import { CONTROL_TIMEOUT_MS } from '../../config.js'
import { Home, assignColumn, isLocal, resolveHome, waitForExit as waitForDaemonExit, type HomeConfig } from '../../home.js'
import { deriveKeys } from '../../crypto/keys.js'
import { PartnerService, type PartnerRow } from '../../serve/service.js'
import { parseKey } from '../../serve/agreements.js'
import { readDemo, stopDemo } from './demo.js'
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
  const demo = readDemo(home)
  if (demo) {
    await stopDemo(demo)
    process.stdout.write(`unmounted ${mp} and stopped the demo's partners and bootstrap node\n`)
    return
  }
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
  if (!(await waitForDaemonExit(pid, STOP_WAIT_MS))) throw new CoopError('ETIMEDOUT', `the daemon (pid ${pid}) did not stop in time`)
}

type Status = EngineStatus & { mountpoint: string | null, pid: number | null, home: string, agreements?: PartnerRow[], fuse?: { addon: boolean, note?: string } }

export async function statusCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'json'])
  const home = new Home(resolveHome(str(args, 'home')))
  const cfg = home.readConfig()
  let status: Status
  if (home.daemonPid()) {
    status = await request(home.socketFile, { op: 'status' }, CONTROL_TIMEOUT_MS) as Status
  } else {
    const stats = fs.existsSync(home.metaFile) ? offlineStats(home.metaFile, cfg.chunkSize) : { bytesStored: 0, bytesPending: 0 }
    status = {
      mountpoint: null,
      pid: null,
      home: home.dir,
      publicKey: cfg.publicKey,
      ...stats,
      bytesDurable: stats.bytesStored,
      safeToPowerOff: stats.bytesPending === 0,
      partners: cfg.partners.map(p => ({ id: p.id, label: p.path ?? p.id.slice(0, 16), state: p.kind === 'local' && fs.existsSync(p.path!) ? 'online' : 'offline', slots: cfg.slots }))
    } as unknown as Status
  }
  if (bool(args, 'json')) {
    process.stdout.write(JSON.stringify(status) + '\n')
    return
  }
  const lines = [`home:        ${status.home}`, `public key:  ${status.publicKey ?? cfg.publicKey}`]
  if (!status.pid) {
    lines.push(
      'mounted:     no (no daemon running)',
      `stored:      ${fmtBytes(status.bytesStored)}`,
      `pending:     ${fmtBytes(status.bytesPending)} waiting in the local write-back store (stored on the next mount)`
    )
  } else if (!status.mountpoint) {
    lines.push(`serving:     partners only (daemon pid ${status.pid})`)
  } else {
    lines.push(
      `mounted:     ${status.mountpoint} (daemon pid ${status.pid})`,
      `durable:     ${fmtBytes(status.bytesDurable)} at the partners, of ${fmtBytes(status.usableBytes)} usable`,
      `pending:     ${fmtBytes(status.bytesPending)} waiting in the local write-back store`,
      `checkpoint:  #${status.checkpoint}${status.changedSinceCheckpoint ? ' (newer changes not yet checkpointed)' : ''}`,
      `coding:      k=${status.erasureCoding.k} m=${status.erasureCoding.m}, ${status.erasureCoding.backend} coder${status.erasureCoding.note ? ' - ' + status.erasureCoding.note : ''}`,
      ...(status.fuse && !status.fuse.addon ? [`fuse:        ${status.fuse.note ?? 'coopfs_preload addon not in use'}`] : []),
      `partners:    ${status.partnersOnline} of ${status.partners.length} online`,
      `redundancy:  ${status.blocksLagging ? `${status.blocksLagging} blocks still to be sent to partners that were away` : 'full'}`,
      `damage:      ${status.damage.count ? `${status.damage.count} bad or missing blocks seen (served by decoding)` : 'none seen'}`
    )
    if (status.lastError) lines.push(`last error:  ${status.lastError}`)
  }
  if (status.pid && status.mountpoint) {
    lines.push(`safe to power off: ${status.safeToPowerOff ? 'yes - everything written is at the partners' : 'no - run coopfs sync and wait for it'}`)
  } else if (!status.pid) {
    lines.push(`safe to power off: ${status.safeToPowerOff ? 'yes' : 'no - mount again and run coopfs sync'}`)
  }
  if (status.partners.length) lines.push('stripe columns:')
  for (const p of status.partners) lines.push(`  ${p.id.slice(0, 16)}  ${p.state.padEnd(7)}  ${p.label}${typeof p.blocksHeld === 'number' && p.state !== 'missing' ? `, holds ${p.blocksHeld} blocks of this node's live stripes` : ''}`)
  if (status.agreements?.length) lines.push('agreements:')
  for (const a of status.agreements ?? []) lines.push(`  ${a.key.slice(0, 16)}  ${a.online ? 'online ' : 'offline'}  ${a.state}, its blocks in ${a.usedSlots} of the ${a.slots} slots kept for it here`)
  process.stdout.write(lines.join('\n') + '\n')
}

export async function syncCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'timeout'])
  const home = new Home(resolveHome(str(args, 'home')))
  home.readConfig()
  if (!home.daemonPid()) throw new CoopError('ENODAEMON', `no daemon is running for ${home.dir}: mount it first`)
  const timeoutS = int(args, 'timeout', 0, 0)
  const res = await request(home.socketFile, { op: 'sync', timeoutMs: timeoutS * 1000 }, timeoutS ? timeoutS * 1000 + 5000 : 0) as { checkpoint: number }
  process.stdout.write(`everything written so far is stored at the partners (checkpoint #${res.checkpoint})\n`)
}

export async function partnersCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'json', 'slots'])
  const sub = args.positionals[0] ?? 'list'
  const home = new Home(resolveHome(str(args, 'home')))
  const cfg = home.readConfig()
  if (sub === 'add') return addPartner(home, cfg, args)
  if (sub !== 'list') throw new CoopError('EUSAGE', `coopfs partners ${sub}: use 'list' or 'add KEY'`)
  if (isLocal(cfg)) {
    const rows = cfg.partners.map(p => ({ id: p.id, kind: p.kind, path: p.path, slots: cfg.slots, online: fs.existsSync(p.path!) }))
    if (bool(args, 'json')) {
      process.stdout.write(JSON.stringify(rows) + '\n')
      return
    }
    for (const r of rows) process.stdout.write(`${r.id.slice(0, 16)}  ${r.online ? 'online ' : 'offline'}  ${r.slots} slots  ${r.path}\n`)
    return
  }
  let rows: PartnerRow[]
  if (home.daemonPid()) {
    rows = await request(home.socketFile, { op: 'partners' }, CONTROL_TIMEOUT_MS) as PartnerRow[]
  } else {
    const svc = offlineService(home)
    await svc.load()
    rows = svc.list()
    await svc.close()
  }
  const columns = new Map(cfg.partners.map((p, i) => [p.id, i]))
  const out = rows.map(r => ({ ...r, column: columns.get(r.key) ?? null }))
  if (bool(args, 'json')) {
    process.stdout.write(JSON.stringify(out) + '\n')
    return
  }
  if (!out.length) process.stdout.write('no partners yet: exchange public keys with a partner and run coopfs partners add KEY on both sides\n')
  for (const r of out) {
    const seen = r.lastSeen ? `last seen ${r.lastSeen}` : 'never seen'
    const state = r.state === 'rejected' ? `rejected (${r.reason ?? 'no reason'})` : r.state
    process.stdout.write(`${r.key}  ${r.online ? 'online ' : 'offline'}  ${state}, its blocks in ${r.usedSlots}/${r.slots} slots kept for it here, ${r.column === null ? 'spare' : `column ${r.column}`}, ${seen}\n`)
  }
}

function offlineService (home: Home): PartnerService {
  return new PartnerService({ homeDir: home.dir, keys: deriveKeys(home.readSecret()) })
}

// Friend mode: both users add each other's key. The space is reserved now; the agreement is confirmed
// when the two nodes first talk.
async function addPartner (home: Home, cfg: HomeConfig, args: Args): Promise<void> {
  const keyText = args.positionals[1]
  if (!keyText) throw new CoopError('EUSAGE', 'usage: coopfs partners add KEY [--slots S]')
  const hex = parseKey(keyText).toString('hex')
  const slots = int(args, 'slots', cfg.slots, 16, 1 << 24)
  if (isLocal(cfg)) throw new CoopError('EUSAGE', 'this home keeps its stripes in local directories; network partners cannot join it')
  let column: number
  if (home.daemonPid()) {
    const res = await request(home.socketFile, { op: 'partnerAdd', key: hex, slots }, CONTROL_TIMEOUT_MS) as { column: number }
    column = res.column
  } else {
    column = await addAgreementOffline(home, hex, slots)
  }
  const res = { key: hex, slots, column: column >= 0 ? column : null }
  if (bool(args, 'json')) {
    process.stdout.write(JSON.stringify(res) + '\n')
    return
  }
  process.stdout.write(`reserved ${slots} slots for ${hex.slice(0, 16)}; ${column >= 0 ? `it holds stripe column ${column}` : 'it is a spare (every stripe column is taken)'}. The agreement is confirmed once the partner has added this node's key too.\n`)
}

// The agreement recorded while no daemon runs: the space reserved, and a stripe column if one is free.
export async function addAgreementOffline (home: Home, hex: string, slots: number): Promise<number> {
  const cfg = home.readConfig()
  // Checked before anything is reserved: a home that cannot take this partner refuses it whole.
  assignColumn(structuredClone(cfg), hex, slots)
  const svc = offlineService(home)
  await svc.load()
  try {
    await svc.add(hex, slots)
  } finally {
    await svc.close()
  }
  const column = assignColumn(cfg, hex, slots)
  home.writeConfig(cfg)
  return column
}

export async function stopCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home'])
  const home = new Home(resolveHome(str(args, 'home')))
  const pid = home.daemonPid()
  if (!pid) throw new CoopError('ENODAEMON', `no daemon is running for ${home.dir}`)
  await request(home.socketFile, { op: 'unmount' }, CONTROL_TIMEOUT_MS)
  await waitForExit(pid)
  process.stdout.write(`stopped the daemon of ${home.dir}\n`)
}

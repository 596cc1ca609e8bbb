// The engine wires the layers together for one home: keys, partner set, logical disk, metadata store,
// write-back store, filesystem and the background work (packer, checkpoints, cleaner).
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import { CoopError } from '../errors.js'
import {
  CACHE_LIMIT_BYTES, CHECKPOINT_INTERVAL_MS, DISK_CACHE_BYTES, MAX_BACKOFF_MS, PACK_IDLE_MS, SEGMENT_FLUSH_MS,
  WRITEBACK_BYTES, WRITEBACK_MAX_BYTES, WRITEBACK_MIN_BYTES
} from '../config.js'
import { deriveKeys, type Keys } from '../crypto/keys.js'
import { Home, assignColumn, type HomeConfig } from '../home.js'
import type Database from 'better-sqlite3'
import { MetaStore, SEG_LIVE, SEG_OPEN } from '../fs/meta-store.js'
import { WriteBack } from '../fs/writeback.js'
import { Filesystem } from '../fs/filesystem.js'
import { Packer } from '../fs/packer.js'
import { LogicalDisk } from '../log/logical-disk.js'
import { writeCheckpoint } from '../log/checkpoint.js'
import type { AgreementRecord } from '../log/master-block.js'
import { clean } from '../log/cleaner.js'
import { LocalDirPartner } from '../partners/local-dir.js'
import { AbsentPartner, NetPartner } from '../partners/net-partner.js'
import type { Partner } from '../partners/partner.js'
import type { PartnerService } from '../serve/service.js'
import { PartnerSet } from '../partners/partner-set.js'
import { ReedSolomon, nativeAvailable } from '../stripe/reed-solomon.js'
import { BLOCK_HEADER_BYTES } from '../stripe/block.js'
import { PooledSealer, type Sealer } from '../crypto/seal-pool.js'
import { DiskCache } from '../log/disk-cache.js'
import { Prefetch, type PrefetchProgress } from './prefetch.js'

const FIRST_BACKOFF_MS = 500
// Lagging blocks rebuilt per round of the background loop (the disk lock is held meanwhile).
const REPAIR_BATCH = 8
const REPAIR_PAGE = 256

interface LagRow { slot: number, idx: number, version: number, current: number | null, state: number | null }
const LIVE_REFRESH_MS = 250

export interface EngineOptions {
  writebackBytes?: number
  cacheBytes?: number
  log?: (line: string) => void
  // The network side (partner service) of this node; needed when the home has network partners.
  service?: PartnerService
}

export interface EngineStatus {
  bytesStored: number
  bytesPending: number
  logicalBytes: number
  usableBytes: number
  checkpoint: number
  changedSinceCheckpoint: boolean
  erasureCoding: { k: number, m: number, backend: string, note?: string }
  publicKey: string
  bytesDurable: number
  // Blocks still to be sent to partners that were away (their stripes are durable, with less redundancy).
  blocksLagging: number
  partnersOnline: number
  safeToPowerOff: boolean
  partners: Array<{ id: string, label: string, state: 'online' | 'offline' | 'missing', slots: number, blocksHeld: number }>
  slots: { total: number, free: number, live: number, pendingFree: number }
  damage: { count: number, recent: Array<{ slot: number, block: number, partner: string, problem: string, at: string }> }
  cacheBytes: number
  diskCache: { bytes: number, limit: number }
  lastError: string | null
}

export class Engine {
  readonly home: Home
  readonly cfg: HomeConfig
  readonly keys: Keys
  readonly meta: MetaStore
  readonly partners: PartnerSet
  readonly disk: LogicalDisk
  private readonly diskCache: DiskCache | null
  readonly wb: WriteBack
  readonly fs: Filesystem
  readonly packer: Packer
  readonly rs: ReedSolomon
  readonly sealer: Sealer
  private readonly log: (line: string) => void
  // The metadata store's log, opened once to sync it (see syncMeta).
  private walOpening: Promise<fsp.FileHandle | null> | null = null
  private closed = false
  private loopDone: Promise<void> | null = null
  private wake: (() => void) | null = null
  private idle = false
  private liveRefreshedAt = 0
  private liveTimer: NodeJS.Timeout | null = null
  private changed = false
  private lastCheckpointAt = 0
  private backoffMs = 0
  private readonly lag: Record<'add' | 'next' | 'drop' | 'count' | 'column' | 'byColumn' | 'live', Database.Statement>
  private readonly service: PartnerService | null
  private prefetchJob: Prefetch | null = null
  lastError: string | null = null

  constructor (home: Home, opts: EngineOptions = {}) {
    this.home = home
    this.cfg = home.readConfig()
    this.keys = deriveKeys(home.readSecret())
    if (this.keys.publicKey.toString('hex') !== this.cfg.publicKey) {
      throw new CoopError('EBADKEY', `the key file in ${home.dir} does not belong to its configuration`)
    }
    this.log = opts.log ?? (() => {})
    this.rs = new ReedSolomon({ k: this.cfg.k, m: this.cfg.m })
    this.sealer = PooledSealer.create(this.keys)
    this.service = opts.service ?? null
    const members: Partner[] = []
    for (let i = 0; i < this.cfg.k + this.cfg.m; i++) members.push(this.member(i))
    this.partners = new PartnerSet({
      partners: members,
      k: this.cfg.k,
      m: this.cfg.m,
      blockSize: this.cfg.blockSize,
      rs: this.rs,
      sealer: this.sealer
    })
    this.meta = new MetaStore(home.metaFile)
    this.meta.checkpointInBackground()
    this.diskCache = this.service ? new DiskCache(home.cacheDir, DISK_CACHE_BYTES, this.cfg.blockSize) : null
    if (this.diskCache?.problem) this.log(this.diskCache.problem)
    this.disk = new LogicalDisk({
      meta: this.meta,
      partners: this.partners,
      keys: this.keys,
      sealer: this.sealer,
      slots: this.cfg.slots,
      cacheBytes: opts.cacheBytes ?? CACHE_LIMIT_BYTES,
      // Blocks fetched over the network are kept on local disk too; local partners need no second copy.
      diskCache: this.diskCache ?? undefined
    })
    this.wb = new WriteBack(home.writebackDir, opts.writebackBytes ?? writebackLimit(home.dir), this.meta)
    this.fs = new Filesystem({
      meta: this.meta,
      disk: this.disk,
      writeback: this.wb,
      chunkSize: this.cfg.chunkSize,
      syncMeta: () => this.syncMeta()
    })
    // Writes wake the background loop only when it sleeps with nothing to do, or when writers are held
    // back; otherwise it comes round on its own schedule instead of once per write.
    this.fs.onChange = () => {
      this.changed = true
      if (this.idle || this.wb.full()) this.kick()
    }
    // Summing live bytes reads the whole segment table: after commits, at most every LIVE_REFRESH_MS (the
    // figure only moves from pending to stored there, so the space check stays on the safe side).
    this.disk.onCommitted = () => {
      const wait = this.liveRefreshedAt + LIVE_REFRESH_MS - Date.now()
      if (wait <= 0) return this.refreshLive()
      // A commit inside the window is counted by one refresh at its end.
      if (!this.liveTimer) this.liveTimer = setTimeout(() => this.refreshLive(), wait).unref()
    }
    this.packer = new Packer(this.fs, this.disk)
    this.lastCheckpointAt = Date.now()
    this.lag = {
      add: this.meta.db.prepare('INSERT OR REPLACE INTO lagging (slot, idx, version) VALUES (?, ?, ?)'),
      next: this.meta.db.prepare(`SELECT l.slot, l.idx, l.version, s.version AS current, s.state FROM lagging l
        LEFT JOIN segments s ON s.slot = l.slot ORDER BY l.slot, l.idx LIMIT ? OFFSET ?`),
      drop: this.meta.db.prepare('DELETE FROM lagging WHERE slot = ? AND idx = ? AND version = ?'),
      count: this.meta.db.prepare('SELECT count(*) AS n FROM lagging'),
      column: this.meta.db.prepare(`INSERT OR REPLACE INTO lagging (slot, idx, version)
        SELECT slot, ((? - slot) % ? + ?) % ?, version FROM segments WHERE state = ?`),
      // Per column (block i of slot s goes to column (i + s) mod n), the blocks of live stripes still owed.
      byColumn: this.meta.db.prepare(`SELECT (l.idx + l.slot) % ? AS col, count(*) AS n FROM lagging l
        JOIN segments s ON s.slot = l.slot AND s.version = l.version AND s.state = ? GROUP BY col`),
      live: this.meta.db.prepare('SELECT count(*) AS n FROM segments WHERE state = ?')
    }
    // A block its partner did not take is rebuilt from the rest of its stripe and sent when the partner is back.
    this.partners.onMissed = (slot, version, index) => { this.lag.add.run(slot, index, version) }
  }

  // Waits up to ms until every partner is online, or for a shorter while once k of them are (enough to
  // read everything).
  async waitPartners (ms: number): Promise<void> {
    const started = Date.now()
    const members = this.partners.partners.filter(p => !(p instanceof AbsentPartner))
    for (;;) {
      const up = members.filter(p => p.online()).length
      const waited = Date.now() - started
      if (up === members.length || waited >= ms || (up >= this.cfg.k && waited >= ms / 4)) return
      await new Promise(resolve => setTimeout(resolve, 100))
    }
  }

  // Starts pulling rel (a path inside the mount) into the local cache; one job at a time.
  prefetch (rel: string): PrefetchProgress {
    if (this.prefetchJob?.progress.running) throw new CoopError('EBUSY', `a prefetch of ${this.prefetchJob.progress.path} is running`)
    this.prefetchJob = new Prefetch(this.meta, this.disk, rel, this.cfg.chunkSize)
    return this.prefetchJob.progress
  }

  prefetchProgress (): PrefetchProgress | null {
    return this.prefetchJob?.progress ?? null
  }

  // A partner that lost its disk and restored asks for its blocks again: every stored stripe's block in its
  // column is rebuilt from the others and sent.
  partnerRestored (hex: string): void {
    const col = this.cfg.partners.findIndex(p => p.id === hex)
    if (col < 0) return
    const n = this.partners.n
    const rows = this.lag.column.run(col, n, n, n, SEG_LIVE).changes
    this.log(`partner ${hex.slice(0, 16)} restored: ${rows} blocks to send it again`)
    // Its master block too, at the next checkpoint.
    this.changed = true
    this.lastCheckpointAt = 0
    this.nudge()
  }

  // Sends up to REPAIR_BATCH lagging blocks to partners that are online. Returns how many were sent.
  private async repairRound (): Promise<number> {
    let sent = 0
    // Paged: rows waiting for a partner that is still away must not hide the others' rows.
    for (let offset = 0; sent < REPAIR_BATCH; offset += REPAIR_PAGE) {
      const rows = this.lag.next.all(REPAIR_PAGE, offset) as LagRow[]
      if (!rows.length) break
      sent += await this.repairRows(rows, REPAIR_BATCH - sent)
    }
    return sent
  }

  private async repairRows (rows: LagRow[], budget: number): Promise<number> {
    let sent = 0
    for (const r of rows) {
      if (r.current !== r.version || (r.state !== SEG_LIVE && r.state !== SEG_OPEN)) {
        // The slot was freed or rewritten since: nothing to send.
        this.lag.drop.run(r.slot, r.idx, r.version)
        continue
      }
      if (r.state !== SEG_LIVE || !this.partners.partnerFor(r.slot, r.idx).online()) continue
      await this.partners.rebuildBlock(r.slot, r.version, r.idx)
      this.lag.drop.run(r.slot, r.idx, r.version)
      if (++sent >= budget) break
    }
    return sent
  }

  private member (i: number): Partner {
    const e = this.cfg.partners[i]
    if (!e) return new AbsentPartner(i, this.cfg.slots)
    if (e.kind === 'local') return LocalDirPartner.attach(e.path!, e.id, this.cfg.slots, BLOCK_HEADER_BYTES + this.cfg.blockSize)
    if (!this.service) throw new CoopError('ENONET', 'this home has network partners but the network is not started')
    return new NetPartner(this.service, Buffer.from(e.id, 'hex'), this.cfg.slots)
  }

  // A new agreement fills the first column that has no partner yet; later ones are spares.
  addPartner (hex: string, slots: number): number {
    const before = this.cfg.partners.length
    const i = assignColumn(this.cfg, hex, slots)
    if (this.cfg.partners.length === before) return i
    this.home.writeConfig(this.cfg)
    this.partners.partners[i] = this.member(i)
    this.kick()
    return i
  }

  // Wakes the background loop now (a partner came online, say) instead of after its back-off.
  nudge (): void {
    this.backoffMs = 0
    this.kick()
  }

  async start (): Promise<void> {
    await this.fs.removeOrphans()
    await this.fs.tidyWriteback()
    this.loopDone = this.loop()
  }

  private refreshLive (): void {
    if (this.liveTimer) clearTimeout(this.liveTimer)
    this.liveTimer = null
    if (this.closed) return
    this.liveRefreshedAt = Date.now()
    this.fs.refreshLiveBytes()
  }

  private kick (): void {
    const w = this.wake
    this.wake = null
    if (w) w()
  }

  private sleep (ms: number): Promise<void> {
    return new Promise(resolve => {
      const t = setTimeout(() => { this.wake = null; resolve() }, ms)
      this.wake = () => { clearTimeout(t); resolve() }
    })
  }

  // Background work: pack what is ready, write checkpoints now and then, keep free segments available.
  private async loop (): Promise<void> {
    while (!this.closed) {
      let did = 0
      try {
        did = await this.disk.lock.run(() => this.packRound(false))
        await this.wb.tidy(() => this.syncMeta())
        if (did === 0) did = await this.disk.lock.run(() => this.repairRound())
        if (this.changed && Date.now() - this.lastCheckpointAt >= CHECKPOINT_INTERVAL_MS) {
          await this.disk.lock.run(() => this.checkpointLocked())
        }
        this.lastError = null
        this.backoffMs = 0
      } catch (err) {
        const msg = (err as Error).message
        if (msg !== this.lastError) this.log(`background: ${msg}`)
        this.lastError = msg
        // Partners that are down are tried again after a delay that doubles up to MAX_BACKOFF_MS.
        this.backoffMs = Math.min(MAX_BACKOFF_MS, Math.max(FIRST_BACKOFF_MS, this.backoffMs * 2))
        await this.sleep(this.backoffMs)
        continue
      }
      if (did === 0 && !this.closed) {
        const pending = this.packer.pending() > 0
        this.idle = !pending && !this.disk.hasOpenSegment()
        const waitMs = this.disk.hasOpenSegment() ? SEGMENT_FLUSH_MS : (pending ? PACK_IDLE_MS : 60_000)
        await this.sleep(Math.min(waitMs, CHECKPOINT_INTERVAL_MS))
        this.idle = false
      }
    }
  }

  // One packer round; when the logical disk runs out of free segments, reclaim and try once more.
  private async packRound (force: boolean): Promise<number> {
    try {
      const n = await this.packer.round(force)
      await this.keepSpace()
      return n
    } catch (err) {
      if ((err as CoopError).code !== 'ENOSPC') throw err
      await this.reclaim(true)
      return await this.packer.round(force)
    }
  }

  // Free segments come from segments emptied since the last checkpoint and from cleaning.
  private async keepSpace (): Promise<void> {
    const counts = this.disk.slotCounts()
    if (counts.free > this.disk.reservedSlots * 2) return
    await this.reclaim(false)
  }

  private async reclaim (urgent: boolean): Promise<void> {
    await this.checkpointLocked()
    if (await clean(this.disk, urgent)) await this.checkpointLocked()
  }

  private async checkpointLocked (): Promise<number> {
    this.fs.commitPending()
    // Cleared before the snapshot: a change made while the checkpoint is written marks it again.
    this.changed = false
    let seq: number
    try {
      seq = await writeCheckpoint(this.disk, this.cfg, this.cfg.chunkSize, this.masterExtras())
    } catch (err) {
      this.changed = true
      throw err
    }
    this.fs.refreshLiveBytes()
    this.lastCheckpointAt = Date.now()
    return seq
  }

  // The agreements go into the master block so that a recovered node can take up its partners' side.
  private masterExtras (): { agreements?: AgreementRecord[], network?: HomeConfig['network'] } {
    if (!this.service) return {}
    return {
      agreements: this.service.list().map(a => ({ key: a.key, slots: a.slots, state: a.state, topic: this.service!.agreement(a.key)?.topic })),
      network: this.cfg.network
    }
  }

  // Everything written before the call is packed, stored at the partners and named by a checkpoint.
  // Partners that are down are waited for (and retried) until the timeout, if one is given.
  async sync (timeoutMs = 0): Promise<number> {
    const deadline = timeoutMs > 0 ? Date.now() + timeoutMs : Infinity
    let delay = FIRST_BACKOFF_MS
    for (;;) {
      try {
        return await this.disk.lock.run(async () => {
          this.fs.commitPending()
          while (this.packer.pending() > 0) {
            if (Date.now() > deadline) throw new CoopError('ETIMEDOUT', `${this.packer.pending()} blocks were still waiting to be stored when the timeout ran out`)
            await this.packRound(true)
          }
          await this.disk.flush()
          // What was packed leaves the write-back store, inline log files included.
          this.wb.save()
          await this.wb.tidy(() => this.syncMeta())
          // Nothing new since the last checkpoint the partners hold: it still names everything.
          if (!this.changed && this.checkpointed()) return Number(this.meta.kvGet('checkpointSeq'))
          return this.checkpointLocked()
        })
      } catch (err) {
        const e = err as CoopError
        if (e.code === 'ETIMEDOUT' || this.closed || timeoutMs < 0) throw err
        const left = deadline - Date.now()
        if (left <= 0) throw new CoopError('ETIMEDOUT', `not everything is at the partners yet: ${e.message}`)
        await new Promise(resolve => setTimeout(resolve, Math.min(delay, left)))
        delay = Math.min(MAX_BACKOFF_MS, delay * 2)
      }
    }
  }

  private checkpointed (): boolean {
    return Number(this.meta.kvGet('checkpointSeq') ?? 0) > 0
  }

  private async syncMeta (): Promise<void> {
    // One open for callers that come at once (fsync, the background loop, coopfs sync).
    this.walOpening ??= fsp.open(this.meta.walFile(), 'r').catch(() => null)
    const fd = await this.walOpening
    if (fd) await fd.datasync()
    else this.walOpening = null
  }

  status (): EngineStatus {
    const ec = nativeAvailable()
    const counts = this.disk.slotCounts()
    const stored = this.disk.liveBytes()
    const pending = this.wb.dirtyBytes
    const changed = this.changed || this.packer.pending() > 0 || this.disk.hasOpenSegment()
    const online = this.partners.partners.filter(p => p.online()).length
    const n = this.cfg.k + this.cfg.m
    const liveStripes = (this.lag.live.get(SEG_LIVE) as { n: number }).n
    const owed = new Map((this.lag.byColumn.all(n, SEG_LIVE) as Array<{ col: number, n: number }>).map(r => [r.col, r.n]))
    return {
      publicKey: this.keys.publicKey.toString('hex'),
      bytesStored: stored,
      bytesDurable: stored,
      blocksLagging: (this.lag.count.get() as { n: number }).n,
      bytesPending: pending,
      partnersOnline: online,
      // Nothing lives only on this machine: every write is in a stripe at w partners and named by the
      // master block they hold.
      safeToPowerOff: pending === 0 && !changed && this.lastError === null,
      logicalBytes: this.cfg.slots * this.disk.segmentBytes,
      usableBytes: this.disk.usableBytes(),
      checkpoint: Number(this.meta.kvGet('checkpointSeq') ?? 0),
      changedSinceCheckpoint: changed,
      erasureCoding: {
        k: this.cfg.k,
        m: this.cfg.m,
        backend: this.rs.backend,
        ...(ec.ok ? {} : { note: `native coder unavailable (${ec.reason}); using the slower TypeScript coder` })
      },
      partners: this.partners.partners.map((p, col) => ({
        id: p.id.toString('hex'),
        label: p.label,
        state: p instanceof AbsentPartner ? 'missing' as const : p.online() ? 'online' as const : 'offline' as const,
        slots: p.slots,
        blocksHeld: p instanceof AbsentPartner ? 0 : liveStripes - (owed.get(col) ?? 0)
      })),
      slots: { total: this.cfg.slots, ...counts },
      damage: { count: this.partners.damageCount, recent: this.partners.damage.slice(-10) },
      cacheBytes: this.disk.cacheBytes(),
      diskCache: this.disk.diskCacheBytes(),
      lastError: this.lastError
    }
  }

  // Packs and checkpoints what is local (unless told not to), then closes every file.
  async close (flush = true): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.prefetchJob?.cancel()
    this.kick()
    await this.loopDone
    if (flush) {
      try {
        await this.sync(-1)
      } catch (err) {
        this.log(`final sync: ${(err as Error).message}; the data stays in the local write-back store`)
      }
    }
    await (await this.walOpening)?.close()
    await this.wb.close()
    await this.partners.close()
    await this.diskCache?.close()
    await this.sealer.close()
    await this.meta.stopCheckpointer()
    this.meta.close()
  }
}

// The write-back store's bound: a quarter of the free space on the home's disk, within [MIN, MAX], unless
// COOPFS_WRITEBACK_BYTES sets it.
export function writebackLimit (dir: string): number {
  if (WRITEBACK_BYTES > 0) return WRITEBACK_BYTES
  let free = WRITEBACK_MIN_BYTES * 4
  try {
    const st = fs.statfsSync(dir)
    free = st.bavail * st.bsize
  } catch {}
  return Math.min(WRITEBACK_MAX_BYTES, Math.max(WRITEBACK_MIN_BYTES, Math.floor(free / 4)))
}

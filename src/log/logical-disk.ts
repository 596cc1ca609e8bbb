// The log-structured logical disk: sealed chunks are appended into segments (one segment = the k data
// blocks of one stripe), segments are written to the partner set whole, and chunks are read back through
// a block cache and a plaintext chunk cache.
import { LRUCache } from 'lru-cache'
import type Database from 'better-sqlite3'
import { CoopError } from '../errors.js'
import { keyedHash, sealChunk } from '../crypto/seal.js'
import { FILL_LIMIT, MIN_RESERVED_SLOTS, RESERVED_FRACTION } from '../config.js'
import { MetaStore, SEG_FREE, SEG_OPEN, SEG_LIVE, SEG_PENDING_FREE, type ChunkLoc } from '../fs/meta-store.js'
import { Lock } from './lock.js'
import type { DiskCache } from './disk-cache.js'
import type { Keys } from '../crypto/keys.js'
import type { Sealer } from '../crypto/seal-pool.js'
import type { PartnerSet } from '../partners/partner-set.js'

export interface Loc {
  slot: number
  off: number
  len: number
}

type Commit = (loc: Loc) => void

// Segments written to the partners at once while the next one fills.
const MAX_STRIPES_IN_FLIGHT = 2

interface OpenSegment {
  slot: number
  version: number
  buf: Buffer
  fill: number
  pending: Array<{ loc: Loc, commit: Commit }>
  byId: Map<string, Loc>
  openedAt: number
}

export interface LogicalDiskOptions {
  meta: MetaStore
  partners: PartnerSet
  keys: Keys
  sealer: Sealer
  slots: number
  cacheBytes: number
  // Verified data blocks kept on local disk (none when absent).
  diskCache?: DiskCache
}


export class LogicalDisk {
  readonly meta: MetaStore
  readonly partners: PartnerSet
  readonly keys: Keys
  readonly sealer: Sealer
  readonly slots: number
  readonly blockSize: number
  readonly segmentBytes: number
  readonly reservedSlots: number
  readonly lock = new Lock()
  private open: OpenSegment | null = null
  // Stripes on their way to the partners, by slot, and the first error one of them met.
  private readonly writing = new Map<number, Promise<void>>()
  private writeError: Error | null = null
  // Checkpoints and the cleaner may use the reserved slots; file data may not.
  useReserve = false
  // Called after a segment's chunks were committed (live bytes changed).
  onCommitted: () => void = () => {}
  private readonly diskCache: DiskCache | null
  private readonly chunkCache: LRUCache<string, Buffer>
  private readonly blockCache: LRUCache<string, Buffer>
  private counts: { free: number, live: number, pendingFree: number } | null = null
  private readonly chunkReads = new Map<string, Promise<Buffer>>()
  private readonly blockReads = new Map<string, Promise<Buffer>>()
  private readonly st: Record<string, Database.Statement>

  constructor ({ meta, partners, keys, sealer, slots, cacheBytes, diskCache }: LogicalDiskOptions) {
    this.diskCache = diskCache ?? null
    this.meta = meta
    this.sealer = sealer
    this.partners = partners
    this.keys = keys
    this.slots = slots
    this.blockSize = partners.blockSize
    this.segmentBytes = partners.k * partners.blockSize
    this.reservedSlots = Math.max(MIN_RESERVED_SLOTS, Math.ceil(slots * RESERVED_FRACTION))
    const sizeCalculation = (b: Buffer): number => b.length || 1
    this.chunkCache = new LRUCache<string, Buffer>({ maxSize: Math.max(1, Math.floor(cacheBytes / 2)), sizeCalculation })
    this.blockCache = new LRUCache<string, Buffer>({ maxSize: Math.max(1, Math.floor(cacheBytes / 2)), sizeCalculation })
    const p = (sql: string): Database.Statement => meta.db.prepare(sql)
    this.st = {
      liveBytes: p('SELECT coalesce(sum(live), 0) AS n FROM segments'),
      counts: p('SELECT state, count(*) AS n FROM segments GROUP BY state'),
      firstFree: p('SELECT slot, version FROM segments WHERE state = ? ORDER BY slot LIMIT 1'),
      reopen: p('UPDATE segments SET state = ?, version = ?, used = 0, live = 0 WHERE slot = ?'),
      nextSlot: p('SELECT coalesce(max(slot) + 1, 0) AS n FROM segments'),
      insert: p('INSERT INTO segments (slot, version, state, used, live) VALUES (?, ?, ?, 0, 0)'),
      setState: p('UPDATE segments SET state = ? WHERE slot = ?'),
      written: p('UPDATE segments SET state = ?, used = ? WHERE slot = ?'),
      retire: p('UPDATE segments SET state = ? WHERE state = ? AND live <= 0'),
      release: p('UPDATE segments SET state = ?, used = 0, live = 0 WHERE state = ?'),
      resetOpen: p('UPDATE segments SET state = ? WHERE state = ?')
    }
    // A segment that was being filled when the daemon died was never committed: nothing points into it.
    this.st.resetOpen.run(SEG_FREE, SEG_OPEN)
  }

  chunkId (plain: Buffer): Buffer {
    return keyedHash(this.keys.chunkIdKey, plain)
  }

  seal (id: Buffer, plain: Buffer): Buffer {
    return sealChunk(this.keys.dataKey, id, plain)
  }

  // Bytes the file data may occupy: the slots not held back for checkpoints, less the slack the cleaner
  // needs to compact partly filled segments.
  usableBytes (): number {
    return Math.floor((this.slots - this.reservedSlots) * this.segmentBytes * FILL_LIMIT)
  }

  liveBytes (): number {
    return (this.st.liveBytes.get() as { n: number }).n
  }

  // Segment states change only here: the counts are read once and then kept up to date as states move.
  slotCounts (): { free: number, live: number, pendingFree: number } {
    if (this.counts) return this.counts
    const rows = this.st.counts.all() as Array<{ state: number, n: number }>
    const by = new Map(rows.map(r => [r.state, r.n]))
    const known = rows.reduce((a, r) => a + r.n, 0)
    this.counts = {
      free: (by.get(SEG_FREE) ?? 0) + (this.slots - known),
      live: (by.get(SEG_LIVE) ?? 0) + (by.get(SEG_OPEN) ?? 0),
      pendingFree: by.get(SEG_PENDING_FREE) ?? 0
    }
    return this.counts
  }

  private allocate (): { slot: number, version: number } {
    const base = Number(this.meta.kvGet('versionBase') ?? 0)
    if (!this.useReserve && this.slotCounts().free <= Math.floor(this.reservedSlots / 2)) {
      throw new CoopError('ENOSPC', 'the logical disk is full')
    }
    const counts = this.slotCounts()
    counts.free--
    counts.live++
    const free = this.st.firstFree.get(SEG_FREE) as { slot: number, version: number } | undefined
    if (free) {
      const version = Math.max(free.version, base) + 1
      this.st.reopen.run(SEG_OPEN, version, free.slot)
      return { slot: free.slot, version }
    }
    const next = (this.st.nextSlot.get() as { n: number }).n
    if (next >= this.slots) {
      this.counts = null
      throw new CoopError('ENOSPC', 'the logical disk has no free segment')
    }
    this.st.insert.run(next, base + 1, SEG_OPEN)
    return { slot: next, version: base + 1 }
  }

  // Appends a sealed chunk to the open segment; commit runs inside the transaction that records the
  // segment as written, so nothing refers to a chunk before its stripe is durable. A full segment goes to
  // the partners in the background while the next one fills. Caller holds the lock.
  async append (id: Buffer, sealed: Buffer, commit: Commit): Promise<void> {
    if (sealed.length > this.segmentBytes) throw new CoopError('EINVAL', 'chunk larger than a segment')
    this.throwWriteError()
    const key = id.toString('hex')
    if (this.open && this.open.fill + sealed.length > this.segmentBytes) {
      this.startWrite()
      while (this.writing.size >= MAX_STRIPES_IN_FLIGHT) await Promise.race(this.writing.values())
      this.throwWriteError()
    }
    if (!this.open) {
      const { slot, version } = this.allocate()
      this.open = { slot, version, buf: Buffer.allocUnsafeSlow(this.segmentBytes), fill: 0, pending: [], byId: new Map(), openedAt: Date.now() }
    }
    const seg = this.open
    let loc = seg.byId.get(key)
    if (!loc) {
      loc = { slot: seg.slot, off: seg.fill, len: sealed.length }
      sealed.copy(seg.buf, seg.fill)
      seg.fill += sealed.length
      seg.byId.set(key, loc)
    }
    seg.pending.push({ loc, commit })
  }

  hasOpenSegment (): boolean {
    return this.open !== null
  }

  // True while the segment in slot is filling or on its way to the partners.
  inFlight (slot: number): boolean {
    return this.open?.slot === slot || this.writing.has(slot)
  }

  openSlot (): number {
    return this.open ? this.open.slot : -1
  }

  // How long the open segment has been filling; 0 when there is none.
  openAgeMs (): number {
    return this.open ? Date.now() - this.open.openedAt : 0
  }

  // Writes the open segment (padded with zeros) and waits for every stripe on its way to the partners.
  async flush (): Promise<void> {
    this.startWrite()
    await Promise.all(this.writing.values())
    this.throwWriteError()
  }

  private startWrite (): void {
    const seg = this.open
    if (!seg) return
    this.open = null
    // The buffer was not zeroed when it was made (a megabyte per segment): the padding is zeroed here.
    seg.buf.fill(0, seg.fill)
    const done = this.writeSegment(seg)
      .catch((err: Error) => { this.writeError ??= err })
      .finally(() => this.writing.delete(seg.slot))
    this.writing.set(seg.slot, done)
  }

  private throwWriteError (): void {
    const err = this.writeError
    this.writeError = null
    if (err) throw err
  }

  private async writeSegment (seg: OpenSegment): Promise<void> {
    try {
      await this.partners.writeStripe(seg.slot, seg.version, seg.buf)
    } catch (err) {
      const counts = this.slotCounts()
      this.st.setState.run(SEG_FREE, seg.slot)
      counts.free++
      counts.live--
      throw err
    }
    this.meta.tx(() => {
      this.st.written.run(SEG_LIVE, seg.fill, seg.slot)
      for (const p of seg.pending) p.commit(p.loc)
    })
    this.onCommitted()
  }

  // Segments whose every chunk is gone wait for the next checkpoint before they can be reused.
  retireEmptySegments (): number {
    const counts = this.slotCounts()
    const n = this.st.retire.run(SEG_PENDING_FREE, SEG_LIVE).changes
    counts.live -= n
    counts.pendingFree += n
    return n
  }

  releasePendingFree (): number {
    const counts = this.slotCounts()
    const n = this.st.release.run(SEG_FREE, SEG_PENDING_FREE).changes
    counts.pendingFree -= n
    counts.free += n
    return n
  }

  // Concurrent reads of one chunk (a read and a read-ahead) share one fetch.
  readChunk (id: Buffer): Promise<Buffer> {
    const key = id.toString('hex')
    const hit = this.chunkCache.get(key)
    if (hit) return Promise.resolve(hit)
    let p = this.chunkReads.get(key)
    if (!p) {
      p = this.fetchChunk(id, key).finally(() => this.chunkReads.delete(key))
      this.chunkReads.set(key, p)
    }
    return p
  }

  private async fetchChunk (id: Buffer, key: string): Promise<Buffer> {
    let loc = this.meta.getChunk(id)
    if (!loc) throw new CoopError('EIO', `chunk ${key.slice(0, 16)} is not in the chunk index`)
    let plain: Buffer | null
    try {
      plain = await this.sealer.open(id, await this.readSealed(loc))
      if (!plain && this.diskCache) {
        // A cached copy may have rotted on this disk: try once more from the partners.
        this.forgetBlocks(loc)
        plain = await this.sealer.open(id, await this.readSealed(loc))
      }
    } catch (err) {
      // The cleaner may have moved the chunk while it was being read: look it up once more.
      const again = this.meta.getChunk(id)
      if (!again || (again.slot === loc.slot && again.version === loc.version)) throw err
      loc = again
      plain = await this.sealer.open(id, await this.readSealed(loc))
    }
    if (!plain) throw new CoopError('EIO', `chunk ${key.slice(0, 16)} failed authentication`)
    this.chunkCache.set(key, plain)
    return plain
  }

  async readSealed (loc: ChunkLoc | (Loc & { version: number })): Promise<Buffer> {
    const B = this.blockSize
    const first = Math.floor(loc.off / B)
    const last = Math.floor((loc.off + loc.len - 1) / B)
    const data = await this.readBlocks(loc.slot, loc.version, first, last)
    const start = loc.off - first * B
    return data.subarray(start, start + loc.len)
  }

  // Data blocks first..last of a stripe from the block cache, fetching the missing ones; a block already
  // being fetched is waited for rather than fetched twice.
  private async readBlocks (slot: number, version: number, first: number, last: number): Promise<Buffer> {
    const keyOf = (i: number): string => `${slot}:${version}:${i}`
    const parts: Array<Buffer | Promise<Buffer>> = []
    let lo = -1
    let hi = -1
    for (let i = first; i <= last; i++) {
      const b = this.blockCache.get(keyOf(i)) ?? this.blockReads.get(keyOf(i))
      if (b) {
        parts.push(b)
        continue
      }
      parts.push(Buffer.alloc(0))
      if (lo < 0) lo = i
      hi = i
    }
    if (lo >= 0) {
      const fetch = this.fetchBlocks(slot, version, lo, hi)
      for (let i = lo; i <= hi; i++) {
        const k = keyOf(i)
        if (this.blockCache.has(k) || this.blockReads.has(k)) continue
        const one = fetch.then(all => {
          const b = all.subarray((i - lo) * this.blockSize, (i - lo + 1) * this.blockSize)
          this.blockCache.set(k, b)
          return b
        }).finally(() => this.blockReads.delete(k))
        this.blockReads.set(k, one)
        parts[i - first] = one
      }
    }
    const blocks = await Promise.all(parts)
    return blocks.length === 1 ? blocks[0] : Buffer.concat(blocks)
  }


  // Blocks lo..hi from the on-disk cache when all are there, otherwise from the partners (and into the cache).
  private async fetchBlocks (slot: number, version: number, lo: number, hi: number): Promise<Buffer> {
    const dc = this.diskCache
    if (dc) {
      const parts: Buffer[] = []
      for (let i = lo; i <= hi; i++) {
        const b = dc.has(diskKey(slot, version, i)) ? await dc.get(diskKey(slot, version, i)) : null
        if (!b || b.length !== this.blockSize) break
        parts.push(b)
      }
      if (parts.length === hi - lo + 1) return parts.length === 1 ? parts[0] : Buffer.concat(parts)
    }
    const data = await this.partners.readData(slot, version, lo, hi)
    // The copy on disk is written behind the read: the reader does not wait for it.
    if (dc) {
      for (let i = lo; i <= hi; i++) {
        void dc.put(diskKey(slot, version, i), data.subarray((i - lo) * this.blockSize, (i - lo + 1) * this.blockSize))
      }
    }
    return data
  }

  // Forgets the cached blocks a chunk lies in (they failed to open): the next read goes to the partners.
  private forgetBlocks (loc: ChunkLoc): void {
    const first = Math.floor(loc.off / this.blockSize)
    const last = Math.floor((loc.off + loc.len - 1) / this.blockSize)
    for (let i = first; i <= last; i++) {
      this.blockCache.delete(`${loc.slot}:${loc.version}:${i}`)
      this.diskCache?.drop(diskKey(loc.slot, loc.version, i))
    }
  }

  diskCacheBytes (): { bytes: number, limit: number } {
    return { bytes: this.diskCache?.size ?? 0, limit: this.diskCache?.limit ?? 0 }
  }

  cacheBytes (): number {
    return this.chunkCache.calculatedSize + this.blockCache.calculatedSize
  }
}

function diskKey (slot: number, version: number, index: number): string {
  return `${slot}-${version}-${index}`
}

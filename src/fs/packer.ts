// The packer moves dirty file blocks from the write-back store into the log: it cuts them into chunks,
// seals them, appends them to the open segment and, once the segment's stripe is durable at the partners,
// points the file's extents at the new chunks and drops the blocks from the write-back store.
import { PACK_IDLE_MS, PACK_SCAN_BLOCKS, SEGMENT_FLUSH_MS, WRITE_BURST_MS } from '../config.js'
import type { Filesystem } from './filesystem.js'
import type { LogicalDisk, Loc } from '../log/logical-disk.js'

const BLOCKS_PER_ROUND = 512
// Dirty blocks looked at per page (at most SCAN_PAGES pages a round); blocks of files still being written
// are passed over.
const SCAN_LIMIT = PACK_SCAN_BLOCKS
const SCAN_PAGES = 8
// Blocks read and sealed at once (on the sealer's threads) before they are appended in order.
const WINDOW = 16

interface Prepared {
  ino: number
  blk: number
  gen: number
  // null: the block is a hole (beyond the end of file, or all zeros).
  id: Buffer | null
  sealed: Buffer | null
}

let zeros = Buffer.alloc(0)
function isZero (buf: Buffer): boolean {
  if (zeros.length < buf.length) zeros = Buffer.alloc(buf.length)
  return buf.equals(zeros.subarray(0, buf.length))
}

export class Packer {
  private readonly fs: Filesystem
  private readonly disk: LogicalDisk
  // Blocks already in a segment that is filling or being written, by its slot: they wait for its stripe.
  private readonly inSegment = new Map<string, number>()
  private readonly stored = new Set<number>()

  constructor (fs: Filesystem, disk: LogicalDisk) {
    this.fs = fs
    this.disk = disk
  }

  // Blocks ready to pack: everything when forced, else blocks of files that stopped changing, and blocks
  // behind the tail of a file that is still growing once its run of writes is long (WRITE_BURST_MS) or the
  // write-back store is half full. Until then a burst of writes has the machine to itself: sealing and
  // erasure coding alongside it halved its speed here (1 GiB: 137 MB/s beside the packer, 245 after it).
  // A run of new files (a copied tree) is a burst too: while files are being created, nothing is packed,
  // up to WRITE_BURST_MS or until the store is half full.
  private candidates (force: boolean): Array<{ ino: number, blk: number }> {
    const now = Date.now()
    const crowded = this.fs.wb.dirtyBytes >= this.fs.wb.limitBytes / 2
    const out: Array<{ ino: number, blk: number }> = []
    const mono = performance.now()
    const creating = mono - this.fs.createdAt < PACK_IDLE_MS && mono - this.fs.createRunSince < WRITE_BURST_MS
    if (creating && !force && !crowded) return out
    // Pages of the dirty list in inode order, so that the blocks of a big file still being written do not
    // hide the files after it; at most SCAN_PAGES pages a round.
    let after = 0
    for (let page = 0; page < SCAN_PAGES && out.length < BLOCKS_PER_ROUND; page++) {
      const rows = this.fs.meta.dirtyBlocks(SCAN_LIMIT, after)
      for (const row of rows) {
        const slot = this.inSegment.get(row.ino + ':' + row.blk)
        if (slot !== undefined && this.disk.inFlight(slot)) continue
        const w = this.fs.writing.get(row.ino)
        const behind = w !== undefined && row.blk < w.maxBlk && (crowded || now - w.since >= WRITE_BURST_MS)
        if (force || !w || now - w.at >= PACK_IDLE_MS || behind) out.push(row)
        if (out.length >= BLOCKS_PER_ROUND) break
      }
      if (rows.length < SCAN_LIMIT) break
      // The next page starts after the last inode seen; the rest of that inode's blocks wait for a later
      // round.
      after = rows[rows.length - 1].ino
    }
    return out
  }

  pending (): number {
    return this.fs.meta.dirtyCount()
  }

  // One round under the disk lock. Returns the number of blocks handled. With force, the open segment is
  // written even if it is not full.
  async round (force: boolean): Promise<number> {
    this.fs.forgetIdleWriters(Date.now())
    await this.dropStoredWriteback()
    this.fs.commitPending()
    const todo = this.candidates(force)
    const meta = this.fs.meta
    for (let i = 0; i < todo.length; i += WINDOW) {
      const prepared = await Promise.all(todo.slice(i, i + WINDOW).map(c => this.prepare(c.ino, c.blk)))
      for (const p of prepared) {
        if (!p) continue
        const { ino, blk, gen, id, sealed } = p
        if (!id || !sealed || meta.getChunk(id)) {
          meta.tx(() => this.apply(ino, blk, gen, id, null))
          continue
        }
        await this.disk.append(id, sealed, loc => this.apply(ino, blk, gen, id, loc))
        this.inSegment.set(ino + ':' + blk, this.disk.openSlot())
      }
    }
    // A partly filled segment waits a little for more data before it is written.
    if (force || (todo.length === 0 && this.disk.openAgeMs() >= SEGMENT_FLUSH_MS)) {
      await this.disk.flush()
      await this.dropStoredWriteback()
    }
    return todo.length
  }

  // Write-back files of inodes whose blocks were all committed to the log since the last look.
  private async dropStoredWriteback (): Promise<void> {
    const inos = [...this.stored]
    this.stored.clear()
    for (const ino of inos) await this.fs.dropWriteback(ino)
  }

  // Reads a dirty block and seals it. The generation is taken first: a write landing meanwhile bumps it,
  // and the commit then leaves the block dirty for the next round.
  private async prepare (ino: number, blk: number): Promise<Prepared | null> {
    const meta = this.fs.meta
    const gen = this.fs.genOf(ino, blk)
    const inode = meta.getInode(ino)
    if (!inode || !meta.isDirty(ino, blk)) return null
    const start = blk * this.fs.chunkSize
    const len = Math.min(this.fs.chunkSize, inode.size - start)
    if (len <= 0) return { ino, blk, gen, id: null, sealed: null }
    const plain = await this.fs.wb.read(ino, start, len)
    if (isZero(plain)) return { ino, blk, gen, id: null, sealed: null }
    const { id, sealed } = await this.disk.sealer.chunk(plain)
    return { ino, blk, gen, id, sealed }
  }

  // Runs inside a transaction: the block now lives in chunk id (or is a hole when id is null), unless it
  // was written again since it was read.
  private apply (ino: number, blk: number, gen: number, id: Buffer | null, loc: Loc | null): void {
    const meta = this.fs.meta
    this.inSegment.delete(ino + ':' + blk)
    if (this.fs.genOf(ino, blk) !== gen || !meta.isDirty(ino, blk)) return
    const old = meta.getExtent(ino, blk)
    if (id) {
      if (!meta.refChunk(id, loc ?? undefined)) return
      meta.setExtent(ino, blk, id)
    } else {
      meta.delExtent(ino, blk)
    }
    if (old) meta.unrefChunk(old)
    meta.delDirty(ino, blk)
    this.stored.add(ino)
    // The tree's extents changed: the next checkpoint must record them.
    this.fs.onChange()
    this.fs.forgetGen(ino, blk)
    this.fs.wb.adjust(-this.fs.chunkSize)
  }
}


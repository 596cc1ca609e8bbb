// The packer moves dirty file blocks from the write-back store into the log: it cuts them into chunks,
// seals them, appends them to the open segment and, once the segment's stripe is durable at the partners,
// points the file's extents at the new chunks and drops the blocks from the write-back store.
import { PACK_IDLE_MS, SEGMENT_FLUSH_MS } from '../config.js'
import type { Filesystem } from './filesystem.js'
import type { LogicalDisk, Loc } from '../log/logical-disk.js'

const BLOCKS_PER_ROUND = 512

function isZero (buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false
  return true
}

export class Packer {
  private readonly fs: Filesystem
  private readonly disk: LogicalDisk
  // Blocks already sitting in the open segment, by the slot of that segment: they wait for its stripe.
  private readonly inSegment = new Map<string, number>()

  constructor (fs: Filesystem, disk: LogicalDisk) {
    this.fs = fs
    this.disk = disk
  }

  // Blocks ready to pack: everything when forced, else blocks of files that stopped changing, and blocks
  // behind the tail of a file that is still growing.
  private candidates (force: boolean): Array<{ ino: number, blk: number }> {
    const now = Date.now()
    const out: Array<{ ino: number, blk: number }> = []
    const open = this.disk.openSlot()
    for (const row of this.fs.meta.allDirty()) {
      const slot = this.inSegment.get(row.ino + ':' + row.blk)
      if (slot !== undefined && slot === open) continue
      const w = this.fs.writing.get(row.ino)
      if (force || !w || now - w.at >= PACK_IDLE_MS || row.blk < w.maxBlk) out.push(row)
      if (out.length >= BLOCKS_PER_ROUND) break
    }
    return out
  }

  pending (): number {
    return this.fs.meta.dirtyCount()
  }

  // One round under the disk lock. Returns the number of blocks handled. With force, the open segment is
  // written even if it is not full.
  async round (force: boolean): Promise<number> {
    const todo = this.candidates(force)
    const meta = this.fs.meta
    const CS = this.fs.chunkSize
    for (const { ino, blk } of todo) {
      const gen = this.fs.genOf(ino, blk)
      const inode = meta.getInode(ino)
      if (!inode || !meta.isDirty(ino, blk)) continue
      const start = blk * CS
      const len = Math.min(CS, inode.size - start)
      if (len <= 0) {
        meta.tx(() => this.apply(ino, blk, gen, null, null))
        continue
      }
      const plain = await this.fs.wb.read(ino, start, len)
      if (isZero(plain)) {
        meta.tx(() => this.apply(ino, blk, gen, null, null))
        continue
      }
      const id = this.disk.chunkId(plain)
      if (meta.getChunk(id)) {
        meta.tx(() => this.apply(ino, blk, gen, id, null))
        continue
      }
      await this.disk.append(id, this.disk.seal(id, plain), loc => this.apply(ino, blk, gen, id, loc))
      this.inSegment.set(ino + ':' + blk, this.disk.openSlot())
    }
    // A partly filled segment waits a little for more data before it is written.
    if (force || (todo.length === 0 && this.disk.openAgeMs() >= SEGMENT_FLUSH_MS)) await this.disk.flush()
    return todo.length
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
    this.fs.forgetGen(ino, blk)
    this.fs.wb.adjust(-this.fs.chunkSize)
  }
}


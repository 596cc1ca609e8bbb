// The local write-back store: file data lands here first and stays until the packer has stored it in the
// log. Its size is bounded: writers wait for room.
//
// A file whose write-back data lies within its first INLINE_MAX_BYTES keeps it inline, in a table of the
// metadata store (wb_inline), instead of in a file of its own: creating and later removing a file per small
// file cost more here than everything else a small file needs (about 1 ms each on this project's machine).
// Larger files get one sparse file per inode, at the file's own offsets; a small file that grows past the
// limit moves to a file. Inline data changed since the last save lives in memory and is stored inside the
// next metadata transaction (see MetaStore.beforeTx), so it commits with the change that names it.
import type { Statement } from 'better-sqlite3'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import type { MetaStore } from './meta-store.js'
import { fsyncDir } from '../home.js'

const MAX_OPEN_FILES = 256
// Removed files are renamed <ino>.gone<n> and unlinked in the background; a restart deletes leftovers.
const GONE_SUFFIX = '.gone'
export const INLINE_MAX_BYTES = 32 * 1024
// A file's data starts on its way to the disk once this much was written to it since its last flush began
// (see flushAhead).
const FLUSH_AHEAD_BYTES = 8 * 1024 * 1024

export class WriteBack {
  readonly dir: string
  readonly limitBytes: number
  dirtyBytes = 0
  // Open descriptors by inode, least recently used first (Map order is insertion order).
  private readonly fds = new Map<number, number>()
  // Inodes that have a file in the store.
  private readonly files = new Set<number>()
  // Inline data changed since the last save, by inode: the whole of it (bytes [0, length)), or null when
  // the inode's row is to be deleted.
  private readonly unsaved = new Map<number, Buffer | null>()
  // What the transaction under way stored.
  private storing = new Map<number, Buffer | null>()
  private readonly meta: MetaStore
  private readonly st: { get: Statement, put: Statement, del: Statement, all: Statement }
  private waiters: Array<() => void> = []
  private goneSeq = 0
  // Bytes written to an inode's file since its last flush ahead began, and the inodes with one under way.
  private readonly unflushed = new Map<number, number>()
  private readonly flushing = new Set<number>()
  // How many flushes ahead were started (for tests).
  flushesAhead = 0

  constructor (dir: string, limitBytes: number, meta: MetaStore) {
    this.dir = dir
    this.limitBytes = limitBytes
    this.meta = meta
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    for (const n of fs.readdirSync(dir)) {
      if (/^\d+$/.test(n)) this.files.add(Number(n))
      else if (n.includes(GONE_SUFFIX)) fs.rmSync(path.join(dir, n), { force: true })
    }
    const p = (sql: string): Statement => meta.db.prepare(sql)
    this.st = {
      get: p('SELECT data FROM wb_inline WHERE ino = ?'),
      put: p('INSERT OR REPLACE INTO wb_inline (ino, data) VALUES (?, ?)'),
      del: p('DELETE FROM wb_inline WHERE ino = ?'),
      all: p('SELECT ino FROM wb_inline')
    }
    meta.beforeTx = () => this.store()
  }

  private file (ino: number): string {
    return path.join(this.dir, String(ino))
  }

  // Writes and reads go to the page cache synchronously: a round trip through the thread pool costs more
  // than the copy itself, and every FUSE write waits for it.
  private fd (ino: number): number {
    let fd = this.fds.get(ino)
    if (fd !== undefined) {
      this.fds.delete(ino)
      this.fds.set(ino, fd)
      return fd
    }
    fd = fs.openSync(this.file(ino), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600)
    this.fds.set(ino, fd)
    if (this.fds.size > MAX_OPEN_FILES) {
      const [oldest, oldFd] = this.fds.entries().next().value as [number, number]
      this.fds.delete(oldest)
      fs.closeSync(oldFd)
    }
    return fd
  }

  // The inline data the metadata store holds for ino (as of the last transaction).
  private savedData (ino: number): Buffer | undefined {
    return (this.st.get.get(ino) as { data: Buffer } | undefined)?.data
  }

  private inlineData (ino: number): Buffer | undefined {
    const mem = this.unsaved.get(ino)
    if (mem !== undefined) return mem ?? undefined
    return this.savedData(ino)
  }

  // Moves an inode's inline data, if any, into a file of its own. The file holds the data before the row
  // goes, so a killed daemon finds it in one place or the other. Data that was committed (and so may have
  // been fsynced) reaches the disk, with the file's name, before the row can be deleted: a power loss must
  // not lose what fsync confirmed.
  private toFile (ino: number): number {
    const stored = this.savedData(ino)
    const mem = this.unsaved.get(ino)
    const data = mem === undefined ? stored : mem ?? undefined
    const fd = this.fd(ino)
    if (data) {
      try {
        writeAll(fd, data, 0)
        if (stored) {
          fs.fdatasyncSync(fd)
          fsyncDir(this.dir)
        }
      } catch (err) {
        this.fds.delete(ino)
        fs.closeSync(fd)
        fs.rmSync(this.file(ino), { force: true })
        throw err
      }
      this.unsaved.set(ino, null)
    }
    this.files.add(ino)
    return fd
  }

  write (ino: number, buf: Buffer, pos: number): void {
    const end = pos + buf.length
    if (!this.files.has(ino) && end <= INLINE_MAX_BYTES) {
      const cur = this.inlineData(ino)
      let next: Buffer
      if (cur && cur.length >= end && this.unsaved.get(ino) === cur) {
        next = cur
      } else {
        next = Buffer.alloc(Math.max(end, cur?.length ?? 0))
        cur?.copy(next)
      }
      buf.copy(next, pos)
      this.unsaved.set(ino, next)
      return
    }
    const fd = this.files.has(ino) ? this.fd(ino) : this.toFile(ino)
    writeAll(fd, buf, pos)
    const unflushed = (this.unflushed.get(ino) ?? 0) + buf.length
    if (unflushed < FLUSH_AHEAD_BYTES || this.flushing.has(ino)) {
      this.unflushed.set(ino, unflushed)
      return
    }
    this.unflushed.delete(ino)
    this.flushAhead(ino)
  }

  // A large write's data goes to the disk while the writer goes on, one fdatasync at a time per file, so
  // that an fsync at its end finds little left to write: without it the whole file waited in the page
  // cache for the fsync (about 2 s of a 4.5 s write and fsync of 1 GiB here). Nothing waits for it, and it
  // changes nothing of what fsync and close promise.
  private flushAhead (ino: number): void {
    this.flushing.add(ino)
    this.flushesAhead++
    this.sync(ino).catch(() => {}).finally(() => this.flushing.delete(ino))
  }

  // Reads len bytes at pos; what the store does not hold reads as zeros.
  async read (ino: number, pos: number, len: number, into?: Buffer, intoOff = 0): Promise<Buffer> {
    // A buffer of its own (the packer hands it to a sealing thread), not zeroed first: every byte is
    // either read or zeroed below.
    const out = into ?? Buffer.allocUnsafeSlow(len)
    let done = 0
    if (!this.files.has(ino)) {
      const data = this.inlineData(ino)
      if (data && pos < data.length) done = data.copy(out, intoOff, pos, Math.min(data.length, pos + len))
    } else {
      const fd = this.fd(ino)
      while (done < len) {
        const n = fs.readSync(fd, out, intoOff + done, len - done, pos + done)
        if (n === 0) break
        done += n
      }
    }
    if (done < len) out.fill(0, intoOff + done, intoOff + len)
    return out
  }

  // Runs inside every metadata transaction: writes the inline data changed since the last save. The memory
  // copy goes once the outermost transaction committed, and stays if it rolls back.
  private store (): void {
    if (this.unsaved.size === 0) return
    this.storing = new Map(this.unsaved)
    this.meta.onCommit(() => this.stored())
    for (const [ino, data] of this.storing) {
      if (data) this.st.put.run(ino, data)
      else this.st.del.run(ino)
    }
  }

  private stored (): void {
    for (const [ino, data] of this.storing) if (this.unsaved.get(ino) === data) this.unsaved.delete(ino)
    this.storing.clear()
  }

  // Stores the inline data changed since the last save, in a transaction of its own.
  save (): void {
    if (this.unsaved.size > 0) this.meta.tx(() => {})
  }

  // The inodes the store holds data for.
  inodes (): number[] {
    const out = new Set(this.files)
    for (const r of this.st.all.all() as Array<{ ino: number }>) out.add(r.ino)
    for (const [ino, data] of this.unsaved) {
      if (data) out.add(ino)
      else if (!this.files.has(ino)) out.delete(ino)
    }
    return [...out]
  }

  async truncate (ino: number, size: number): Promise<void> {
    if (this.files.has(ino)) {
      fs.ftruncateSync(this.fd(ino), size)
      return
    }
    const data = this.inlineData(ino)
    if (data && data.length > size) this.unsaved.set(ino, Buffer.from(data.subarray(0, size)))
  }

  // Makes the file of ino survive a power loss: fdatasync through a descriptor of its own, which reaches
  // data written through a descriptor since closed. Inline data is in the metadata store, which the
  // caller syncs after this.
  async sync (ino: number): Promise<void> {
    if (!this.files.has(ino)) {
      this.save()
      return
    }
    let fh: fsp.FileHandle
    try {
      fh = await fsp.open(this.file(ino), 'r')
    } catch {
      return
    }
    try {
      await fh.datasync()
    } finally {
      await fh.close()
    }
  }

  async remove (ino: number): Promise<void> {
    this.unflushed.delete(ino)
    if (this.files.delete(ino)) {
      const fd = this.fds.get(ino)
      this.fds.delete(ino)
      if (fd !== undefined) fs.closeSync(fd)
      // Freeing a big file's blocks takes the kernel a while (0.8 s for 1 GiB here): the name goes now, so
      // the inode can get a new file at once, and the unlink runs on the thread pool.
      const gone = this.file(ino) + GONE_SUFFIX + String(++this.goneSeq)
      let renamed = true
      try {
        fs.renameSync(this.file(ino), gone)
      } catch {
        renamed = false
      }
      if (renamed) fsp.rm(gone, { force: true }).catch(() => {})
    }
    // The row goes with the next metadata transaction; until then it reads as absent.
    this.unsaved.set(ino, null)
  }

  adjust (deltaBytes: number): void {
    this.dirtyBytes = Math.max(0, this.dirtyBytes + deltaBytes)
    if (this.dirtyBytes < this.limitBytes && this.waiters.length) {
      const w = this.waiters
      this.waiters = []
      for (const fn of w) fn()
    }
  }

  full (): boolean {
    return this.dirtyBytes >= this.limitBytes
  }

  // Back-pressure: resolves once the store is below its bound.
  async waitForRoom (): Promise<void> {
    while (this.full()) await new Promise<void>(resolve => this.waiters.push(resolve))
  }

  async close (): Promise<void> {
    this.save()
    for (const fd of this.fds.values()) fs.closeSync(fd)
    this.fds.clear()
  }
}

// The size of one write(2) into the store. Linux sizes new page-cache folios after the write that makes
// them: a 1 MiB write (the kernel sends requests that large, see native/preload.c) asks for folios of up to
// 1 MiB, and on this project's machine copying into freshly allocated large folios cost three times the
// CPU of copying into small ones once the page cache had been through a big file (1 GiB written in 1 MiB
// requests after a 1 GiB write elsewhere: 2.5 s of main-thread CPU in whole writes, 0.9 s in 128 KiB or
// 256 KiB pieces).
const WRITE_PIECE_BYTES = 128 * 1024

function writeAll (fd: number, buf: Buffer, pos: number): void {
  let done = 0
  while (done < buf.length) done += fs.writeSync(fd, buf, done, Math.min(WRITE_PIECE_BYTES, buf.length - done), pos + done)
}

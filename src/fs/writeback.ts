// The local write-back store: file data lands here first and stays until the packer has stored it in the
// log. Its size is bounded: writers wait for room.
//
// A file whose write-back data lies within its first INLINE_MAX_BYTES keeps it inline instead of in a file
// of its own: creating and later removing a file per small file cost more here than everything else a small
// file needs (about 1 ms each on this project's machine). Inline data changed since the last save lives in
// memory and is stored by the next metadata transaction (see MetaStore.beforeTx), so it commits with the
// change that names it: appended to the inline log (files inline.<gen>, never rewritten) with a row of
// wb_spans naming where, which keeps the bytes out of the metadata store's own log (its every commit
// writes whole pages: a 4 KiB file's data cost two more pages there). A file fsync was asked for keeps its
// inline data in the metadata store itself (wb_inline) from then on, until it leaves the store: there the
// bytes reach the disk with the row that names them, and syncing the metadata store's log makes both
// durable, so a later change cannot leave a durable row naming bytes a power loss took. The inline log
// only ever holds data no fsync confirmed; what close confirmed survives a killed daemon all the same.
// Larger files get one sparse file per inode, at the file's own offsets; a small file that grows past the
// limit moves to a file.
import type { Statement } from 'better-sqlite3'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import type { MetaStore } from './meta-store.js'
import { fsyncDir } from '../home.js'

const MAX_OPEN_FILES = 256
// Removed files are renamed <ino>.gone<n> and unlinked in the background; a restart deletes leftovers.
const GONE_SUFFIX = '.gone'
const LOG_PREFIX = 'inline.'
// The inline log moves on to a new file once its file holds this much, or once no row names it.
export const INLINE_LOG_ROLL_BYTES = 64 * 1024 * 1024
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
  // Inodes that have a file in the store, and those whose file's name may not be on the disk yet (the first
  // fsync of one syncs the folder).
  private readonly files = new Set<number>()
  private readonly unnamed = new Set<number>()
  // Inline data changed since the last save, by inode: the whole of it (bytes [0, length)), or null when
  // the inode's row is to be deleted.
  private readonly unsaved = new Map<number, Buffer | null>()
  // What the transactions under way stored, and where: a file and offset of the inline log, or the table.
  // Entries are kept until a commit, so a transaction after a rollback (or a nested one) stores the same
  // data without appending it again.
  private readonly storing = new Map<number, { data: Buffer | null, gen: number, off: number, table: boolean }>()
  private readonly meta: MetaStore
  private readonly st: { get: Statement, put: Statement, del: Statement, all: Statement, inGen: Statement, getTable: Statement, putTable: Statement, delTable: Statement, allTable: Statement }
  // Inodes whose inline data is in the table (committed), and those whose data goes there from now on.
  private readonly inTable = new Set<number>()
  private readonly tabled = new Set<number>()
  // The inline log: open descriptors by file number (gen), the file being appended to and its length.
  private readonly logFds = new Map<number, number>()
  private logGen: number
  private logEnd = 0
  private readonly rollBytes: number
  // Committed rows: the log file of each inode's inline data and its length; per file, how many rows name
  // it and how many of its bytes they name; the length of each file no longer appended to.
  private readonly spanGen = new Map<number, { gen: number, len: number }>()
  private readonly genRows = new Map<number, { rows: number, bytes: number }>()
  private readonly genSize = new Map<number, number>()
  // Files whose live data is to be stored again (compact), files no row names (to delete), files written
  // since their last fdatasync.
  private readonly sparse = new Set<number>()
  private tidying: Promise<void> | null = null
  private readonly drained = new Set<number>()
  private readonly unsynced = new Set<number>()
  private waiters: Array<() => void> = []
  private goneSeq = 0
  // Bytes written to an inode's file since its last flush ahead began, and the inodes with one under way.
  private readonly unflushed = new Map<number, number>()
  private readonly flushing = new Set<number>()
  // How many flushes ahead were started (for tests).
  flushesAhead = 0

  constructor (dir: string, limitBytes: number, meta: MetaStore, rollBytes = INLINE_LOG_ROLL_BYTES) {
    this.dir = dir
    this.limitBytes = limitBytes
    this.meta = meta
    this.rollBytes = rollBytes
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const logs = new Set<number>()
    for (const n of fs.readdirSync(dir)) {
      if (/^\d+$/.test(n)) this.files.add(Number(n))
      else if (n.startsWith(LOG_PREFIX) && /^\d+$/.test(n.slice(LOG_PREFIX.length))) logs.add(Number(n.slice(LOG_PREFIX.length)))
      else if (n.includes(GONE_SUFFIX)) fs.rmSync(path.join(dir, n), { force: true })
    }
    const p = (sql: string): Statement => meta.db.prepare(sql)
    this.st = {
      get: p('SELECT gen, off, len FROM wb_spans WHERE ino = ?'),
      put: p('INSERT OR REPLACE INTO wb_spans (ino, gen, off, len) VALUES (?, ?, ?, ?)'),
      del: p('DELETE FROM wb_spans WHERE ino = ?'),
      all: p('SELECT ino, gen, len FROM wb_spans'),
      inGen: p('SELECT ino FROM wb_spans WHERE gen = ?'),
      getTable: p('SELECT data FROM wb_inline WHERE ino = ?'),
      putTable: p('INSERT OR REPLACE INTO wb_inline (ino, data) VALUES (?, ?)'),
      delTable: p('DELETE FROM wb_inline WHERE ino = ?'),
      allTable: p('SELECT ino FROM wb_inline')
    }
    for (const r of this.st.all.all() as Array<{ ino: number, gen: number, len: number }>) this.name(r.ino, r.gen, r.len)
    for (const r of this.st.allTable.all() as Array<{ ino: number }>) {
      this.inTable.add(r.ino)
      this.tabled.add(r.ino)
    }
    for (const gen of logs) {
      this.genSize.set(gen, fs.statSync(this.logFile(gen)).size)
      if (!this.genRows.has(gen)) this.drained.add(gen)
    }
    // A new file for this run: numbers only grow while a file of the number may be named.
    this.logGen = Math.max(0, ...logs, ...this.genRows.keys()) + 1
    for (const gen of this.genRows.keys()) this.noteIfSparse(gen)
    meta.beforeTx = () => this.store()
  }

  private file (ino: number): string {
    return path.join(this.dir, String(ino))
  }

  private logFile (gen: number): string {
    return path.join(this.dir, LOG_PREFIX + String(gen))
  }

  // The descriptor of an inline log file, or undefined when the file is missing.
  private logFd (gen: number): number | undefined {
    let fd = this.logFds.get(gen)
    if (fd !== undefined) return fd
    try {
      fd = fs.openSync(this.logFile(gen), gen === this.logGen ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDONLY, 0o600)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
      throw err
    }
    this.logFds.set(gen, fd)
    return fd
  }

  // Appends to the inline log; returns the offset.
  private append (data: Buffer): number {
    const off = this.logEnd
    if (data.length === 0) return off
    writeAll(this.logFd(this.logGen)!, data, off)
    this.logEnd += data.length
    this.unsynced.add(this.logGen)
    return off
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

  // The inline data stored for ino (as of the last transaction). Bytes the log file lacks read as zeros:
  // after a power loss, data no fsync confirmed may not have reached the disk.
  private savedData (ino: number): Buffer | undefined {
    if (this.inTable.has(ino)) return (this.st.getTable.get(ino) as { data: Buffer } | undefined)?.data
    const row = this.st.get.get(ino) as { gen: number, off: number, len: number } | undefined
    if (!row) return undefined
    const out = Buffer.alloc(row.len)
    const fd = row.len > 0 ? this.logFd(row.gen) : undefined
    if (fd !== undefined) readAll(fd, out, 0, row.len, row.off)
    return out
  }

  private inlineData (ino: number): Buffer | undefined {
    const mem = this.unsaved.get(ino)
    if (mem !== undefined) return mem ?? undefined
    return this.savedData(ino)
  }

  // Moves an inode's inline data, if any, into a file of its own. The file holds the data before the row
  // goes, so a killed daemon finds it in one place or the other. Data in the table (fsync may have confirmed
  // it) reaches the disk, with the file's name, before the row can be deleted: a power loss must not lose
  // what fsync confirmed.
  private toFile (ino: number): number {
    const stored = this.savedData(ino)
    const mem = this.unsaved.get(ino)
    const data = mem === undefined ? stored : mem ?? undefined
    const fd = this.fd(ino)
    let named = false
    if (data) {
      try {
        writeAll(fd, data, 0)
        if (stored && this.inTable.has(ino)) {
          fs.fdatasyncSync(fd)
          fsyncDir(this.dir)
          this.unnamed.clear()
          named = true
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
    if (!named) this.unnamed.add(ino)
    return fd
  }

  write (ino: number, buf: Buffer, pos: number): void {
    const end = pos + buf.length
    if (!this.files.has(ino) && end <= INLINE_MAX_BYTES) {
      const cur = this.inlineData(ino)
      let next: Buffer
      // Changed in place only while no transaction has appended it: one that rolled back keeps its bytes'
      // place in the log for the next to name, which must still hold what they name.
      if (cur && cur.length >= end && this.unsaved.get(ino) === cur && this.storing.get(ino)?.data !== cur) {
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
      done = readAll(this.fd(ino), out, intoOff, len, pos)
    }
    if (done < len) out.fill(0, intoOff + done, intoOff + len)
    return out
  }

  // Runs inside every metadata transaction: writes the inline data changed since the last save. The memory
  // copy goes once the outermost transaction committed, and stays if it rolls back (what was appended to
  // the log then is named by no row, and is named by the next transaction's).
  private store (): void {
    if (this.unsaved.size === 0) return
    this.meta.onCommit(() => this.stored())
    for (const [ino, data] of this.unsaved) {
      const prev = this.storing.get(ino)
      if (data === null) {
        this.st.del.run(ino)
        if (this.tabled.has(ino)) this.st.delTable.run(ino)
        this.storing.set(ino, { data, gen: 0, off: 0, table: false })
      } else if (this.tabled.has(ino)) {
        this.st.putTable.run(ino, data)
        if (this.spanGen.has(ino) || prev?.table === false) this.st.del.run(ino)
        this.storing.set(ino, { data, gen: 0, off: 0, table: true })
      } else {
        const off = prev?.data === data && !prev.table && prev.gen === this.logGen ? prev.off : this.append(data)
        this.st.put.run(ino, this.logGen, off, data.length)
        this.storing.set(ino, { data, gen: this.logGen, off, table: false })
      }
    }
  }

  private stored (): void {
    const touched = new Set<number>()
    for (const [ino, { data, gen, table }] of this.storing) {
      if (this.unsaved.get(ino) === data) this.unsaved.delete(ino)
      const old = this.spanGen.get(ino)
      if (old !== undefined) {
        this.unname(ino, old)
        touched.add(old.gen)
      }
      if (data === null) {
        this.inTable.delete(ino)
        this.tabled.delete(ino)
      } else if (table) {
        this.inTable.add(ino)
      } else {
        this.name(ino, gen, data.length)
      }
    }
    this.storing.clear()
    if (this.logEnd > 0 && (!this.genRows.has(this.logGen) || this.logEnd >= this.rollBytes)) {
      const gen = this.logGen++
      this.genSize.set(gen, this.logEnd)
      this.logEnd = 0
      touched.add(gen)
    }
    for (const gen of touched) {
      if (gen === this.logGen) continue
      if (!this.genRows.has(gen)) this.drained.add(gen)
      else this.noteIfSparse(gen)
    }
  }

  private name (ino: number, gen: number, len: number): void {
    this.spanGen.set(ino, { gen, len })
    const g = this.genRows.get(gen)
    if (g) {
      g.rows++
      g.bytes += len
    } else {
      this.genRows.set(gen, { rows: 1, bytes: len })
    }
  }

  private unname (ino: number, { gen, len }: { gen: number, len: number }): void {
    this.spanGen.delete(ino)
    const g = this.genRows.get(gen)
    if (!g) return
    g.rows--
    g.bytes -= len
    if (g.rows <= 0) this.genRows.delete(gen)
  }

  // A file no longer appended to whose rows name at most a quarter of it is compacted by tidy(): the log
  // then holds at most about four times the live inline data, plus the file being appended to.
  private noteIfSparse (gen: number): void {
    const g = this.genRows.get(gen)
    if (g && gen !== this.logGen && g.bytes * 4 <= (this.genSize.get(gen) ?? 0)) this.sparse.add(gen)
  }

  // Background upkeep of the inline log, from the engine's loop and coopfs sync, one call at a time (a file
  // the log moved on from while a compaction waited for its sync has no row yet, and must not be taken for
  // one no row names). The live data of sparse files moves to the current file, after which no row names
  // them. Then the files no row names are deleted, once the metadata store's log is synced (syncMeta), so
  // that a power loss cannot bring back a row naming a deleted file.
  async tidy (syncMeta: () => Promise<void>): Promise<void> {
    while (this.tidying) await this.tidying
    // The background loop asks after every round; mostly there is nothing to do.
    if (this.sparse.size === 0 && this.drained.size === 0) return
    this.tidying = this.tidyOnce(syncMeta).finally(() => { this.tidying = null })
    await this.tidying
  }

  private async tidyOnce (syncMeta: () => Promise<void>): Promise<void> {
    if (this.sparse.size > 0) await this.compact()
    if (this.drained.size === 0) return
    const gens = [...this.drained]
    await syncMeta()
    for (const gen of gens) {
      this.drained.delete(gen)
      if (this.genRows.has(gen) || gen >= this.logGen) continue
      this.genSize.delete(gen)
      this.unsynced.delete(gen)
      const fd = this.logFds.get(gen)
      this.logFds.delete(gen)
      if (fd !== undefined) fs.closeSync(fd)
      fs.rmSync(this.logFile(gen), { force: true })
    }
  }

  // The bytes are appended and synced before the rows that name them move (in a transaction of their own),
  // so bytes that had reached the disk (a clean unmount syncs the log) stay on it. A row that changed
  // meanwhile (a write, an fsync, a removal) keeps its own bytes.
  private async compact (): Promise<void> {
    const gen = this.logGen
    const moves: Array<{ ino: number, from: number, off: number, len: number }> = []
    for (const from of this.sparse) {
      for (const r of this.st.inGen.all(from) as Array<{ ino: number }>) {
        if (this.unsaved.has(r.ino) || this.tabled.has(r.ino) || this.files.has(r.ino)) continue
        const data = this.savedData(r.ino)
        if (data) moves.push({ ino: r.ino, from, off: this.append(data), len: data.length })
      }
    }
    this.sparse.clear()
    const fd = this.logFds.get(gen)
    if (moves.length === 0 || fd === undefined) return
    await new Promise<void>((resolve, reject) => fs.fdatasync(fd, err => err ? reject(err) : resolve()))
    fsyncDir(this.dir)
    const moved: typeof moves = []
    this.meta.tx(() => {
      for (const m of moves) {
        if (this.unsaved.has(m.ino) || this.tabled.has(m.ino) || this.files.has(m.ino) || this.spanGen.get(m.ino)?.gen !== m.from) continue
        this.st.put.run(m.ino, gen, m.off, m.len)
        moved.push(m)
      }
      this.meta.onCommit(() => {
        for (const m of moved) {
          const old = this.spanGen.get(m.ino)
          if (old !== undefined) this.unname(m.ino, old)
          this.name(m.ino, gen, m.len)
          if (!this.genRows.has(m.from)) this.drained.add(m.from)
        }
      })
    })
  }

  // Inline log files on the disk (for tests).
  logFiles (): string[] {
    return fs.readdirSync(this.dir).filter(n => n.startsWith(LOG_PREFIX)).sort()
  }

  // Stores the inline data changed since the last save, in a transaction of its own.
  save (): void {
    if (this.unsaved.size > 0) this.meta.tx(() => {})
  }

  // The inodes the store holds data for.
  inodes (): number[] {
    const out = new Set([...this.files, ...this.inTable])
    for (const r of this.st.all.all() as Array<{ ino: number, gen: number }>) out.add(r.ino)
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
  // data written through a descriptor since closed. Inline data goes to the table, where it stays; the
  // caller syncs the metadata store after this.
  async sync (ino: number): Promise<void> {
    if (!this.files.has(ino)) {
      if (!this.tabled.has(ino)) {
        const data = this.inlineData(ino)
        if (data === undefined) return
        this.tabled.add(ino)
        if (!this.unsaved.has(ino)) this.unsaved.set(ino, data)
      }
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
    // One folder sync covers every file made before it.
    if (this.unnamed.has(ino)) {
      fsyncDir(this.dir)
      this.unnamed.clear()
    }
  }

  async remove (ino: number): Promise<void> {
    this.unflushed.delete(ino)
    this.unnamed.delete(ino)
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
    // The metadata store syncs its log when it closes; the rows it makes durable name what is here.
    for (const gen of this.unsynced) {
      const fd = this.logFds.get(gen)
      if (fd !== undefined) fs.fdatasyncSync(fd)
    }
    if (this.unsynced.size > 0) fsyncDir(this.dir)
    this.unsynced.clear()
    for (const fd of this.fds.values()) fs.closeSync(fd)
    this.fds.clear()
    for (const fd of this.logFds.values()) fs.closeSync(fd)
    this.logFds.clear()
  }
}

// The size of one write(2) into the store. Linux sizes new page-cache folios after the write that makes
// them: a 1 MiB write (the kernel sends requests that large, see native/preload.c) asks for folios of up to
// 1 MiB, and on this project's machine copying into freshly allocated large folios cost three times the
// CPU of copying into small ones once the page cache had been through a big file (1 GiB written in 1 MiB
// requests after a 1 GiB write elsewhere: 2.5 s of main-thread CPU in whole writes, 0.9 s in 128 KiB or
// 256 KiB pieces).
const WRITE_PIECE_BYTES = 128 * 1024

// Reads len bytes at pos into buf at off, or up to the end of the file; returns how many it read.
function readAll (fd: number, buf: Buffer, off: number, len: number, pos: number): number {
  let done = 0
  while (done < len) {
    const n = fs.readSync(fd, buf, off + done, len - done, pos + done)
    if (n === 0) break
    done += n
  }
  return done
}

function writeAll (fd: number, buf: Buffer, pos: number): void {
  let done = 0
  while (done < buf.length) done += fs.writeSync(fd, buf, done, Math.min(WRITE_PIECE_BYTES, buf.length - done), pos + done)
}

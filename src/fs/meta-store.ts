// The local transactional metadata store (SQLite): inodes, directory entries, extended attributes, file
// extents, the chunk index, the segment table, the dirty-block list and the inline data of the write-back store.
// Every filesystem operation is one transaction, so a killed daemon leaves a consistent tree.
import Database from 'better-sqlite3'
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { CKPT_IDLE, CKPT_STORE, CKPT_THREAD } from './wal-lock.js'

export const ROOT_INO = 1

export const SEG_FREE = 0
export const SEG_OPEN = 1
export const SEG_LIVE = 2
// Emptied since the last checkpoint: the last checkpoint may still point into it, so it is kept until the
// next checkpoint is stored.
export const SEG_PENDING_FREE = 3

export interface Inode {
  ino: number
  mode: number
  uid: number
  gid: number
  nlink: number
  size: number
  atime: number
  mtime: number
  ctime: number
  rdev: number
  target: string | null
  parent: number // directories only: the directory holding it
}

export interface ChunkLoc {
  id: Buffer
  slot: number
  version: number
  off: number
  len: number
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inodes (
  ino INTEGER PRIMARY KEY, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
  nlink INTEGER NOT NULL, size INTEGER NOT NULL, atime REAL NOT NULL, mtime REAL NOT NULL, ctime REAL NOT NULL,
  rdev INTEGER NOT NULL DEFAULT 0, target TEXT, parent INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dirents (parent INTEGER NOT NULL, name TEXT NOT NULL, ino INTEGER NOT NULL,
  PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS xattrs (ino INTEGER NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
  PRIMARY KEY (ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS extents (ino INTEGER NOT NULL, blk INTEGER NOT NULL, chunk BLOB NOT NULL,
  PRIMARY KEY (ino, blk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirty (ino INTEGER NOT NULL, blk INTEGER NOT NULL, PRIMARY KEY (ino, blk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (id BLOB PRIMARY KEY, slot INTEGER NOT NULL, off INTEGER NOT NULL,
  len INTEGER NOT NULL, refs INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_slot ON chunks (slot);
CREATE TABLE IF NOT EXISTS segments (slot INTEGER PRIMARY KEY, version INTEGER NOT NULL, state INTEGER NOT NULL,
  used INTEGER NOT NULL, live INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS segments_state ON segments (state, live);
CREATE TABLE IF NOT EXISTS checkpoint_chunks (idx INTEGER PRIMARY KEY, chunk BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS wb_inline (ino INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS wb_spans (ino INTEGER PRIMARY KEY, gen INTEGER NOT NULL, off INTEGER NOT NULL, len INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS lagging (slot INTEGER NOT NULL, idx INTEGER NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY (slot, idx)) WITHOUT ROWID;
`

type Row = Record<string, unknown>

const INODE_CACHE_ENTRIES = 50_000
// SQLite's own checkpoint runs after the commit that brings the log to this many pages: SQLite's default
// without a checkpointer thread, the larger mark with one, when it finds most pages copied already.
const SQLITE_CHECKPOINT_PAGES = 1000
export const WAL_CHECKPOINT_PAGES = 8192
// With the thread, SQLite's own checkpoint is turned away while a round of the thread runs, and the log
// grows on meanwhile (a round's syncs can take a second on a busy disk). Past this many pages the store
// waits for the round to end and checkpoints the log itself, as SQLite does without the thread.
export const WAL_CEILING_PAGES = 2 * WAL_CHECKPOINT_PAGES
// The longest the store waits for a round of the thread to end; after that it leaves the log as it is.
const WAL_CEILING_WAIT_MS = 10_000
const WAL_HEADER_BYTES = 32
const WAL_FRAME_HEADER_BYTES = 24
const CHECKPOINTER_FILE = fileURLToPath(new URL('./wal-checkpointer.js', import.meta.url))

export class MetaStore {
  readonly db: Database.Database
  // One transaction wrapper for every tx(): better-sqlite3 builds four functions and their properties each
  // time one is made, which cost more than an empty transaction's BEGIN and COMMIT.
  private readonly runTx: (fn: () => unknown) => unknown
  private readonly st: Record<string, Database.Statement>
  private readonly inodeCache = new Map<number, Inode>()
  private nextIno = 0
  private checkpointer: Worker | null = null
  private ckptLock: Int32Array | null = null
  private walFd: number | null = null
  private walCeilingBytes = 0
  private roundOutlasted = false
  // Checkpoints the store made itself because the log passed its ceiling, and waits for a round of the
  // thread that ran out before the round ended (see boundLog).
  ceilingCheckpoints = 0
  ceilingWaitsRunOut = 0

  constructor (file: string | Buffer) {
    this.db = typeof file === 'string' ? new Database(file) : new Database(file)
    this.db.pragma('journal_mode = WAL')
    // Durability against a killed process comes from WAL commits; against power loss, fsync/close sync
    // the WAL file explicitly (see walFile).
    this.db.pragma('synchronous = NORMAL')
    this.db.pragma('cache_size = -16000')
    this.db.exec(SCHEMA)
    this.runTx = this.db.transaction((fn: () => unknown) => {
      this.beforeTx()
      return fn()
    })
    if (!this.getInodeRow(ROOT_INO)) {
      const now = Date.now()
      this.db.prepare('INSERT INTO inodes (ino, mode, uid, gid, nlink, size, atime, mtime, ctime, parent) VALUES (?, ?, ?, ?, 2, 0, ?, ?, ?, 1)')
        .run(ROOT_INO, 0o040755, process.getuid?.() ?? 0, process.getgid?.() ?? 0, now, now, now)
    }
    const p = (sql: string): Database.Statement => this.db.prepare(sql)
    this.st = {
      getInode: p('SELECT * FROM inodes WHERE ino = ?'),
      lookup: p('SELECT ino FROM dirents WHERE parent = ? AND name = ?'),
      insertInode: p('INSERT INTO inodes (ino, mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, target, parent) VALUES (@ino, @mode, @uid, @gid, @nlink, @size, @atime, @mtime, @ctime, @rdev, @target, @parent)'),
      maxIno: p('SELECT max(ino) AS m FROM inodes'),
      updateInode: p('UPDATE inodes SET mode = @mode, uid = @uid, gid = @gid, nlink = @nlink, size = @size, atime = @atime, mtime = @mtime, ctime = @ctime, parent = @parent WHERE ino = @ino'),
      deleteInode: p('DELETE FROM inodes WHERE ino = ?'),
      addDirent: p('INSERT INTO dirents (parent, name, ino) VALUES (?, ?, ?)'),
      setDirent: p('INSERT OR REPLACE INTO dirents (parent, name, ino) VALUES (?, ?, ?)'),
      delDirent: p('DELETE FROM dirents WHERE parent = ? AND name = ?'),
      listDir: p('SELECT name, ino FROM dirents WHERE parent = ? ORDER BY name'),
      hasChildren: p('SELECT 1 FROM dirents WHERE parent = ? LIMIT 1'),
      getXattr: p('SELECT value FROM xattrs WHERE ino = ? AND name = ?'),
      setXattr: p('INSERT OR REPLACE INTO xattrs (ino, name, value) VALUES (?, ?, ?)'),
      delXattr: p('DELETE FROM xattrs WHERE ino = ? AND name = ?'),
      listXattr: p('SELECT name FROM xattrs WHERE ino = ? ORDER BY name'),
      delXattrs: p('DELETE FROM xattrs WHERE ino = ?'),
      anyXattr: p('SELECT 1 FROM xattrs WHERE name = ? LIMIT 1'),
      getExtent: p('SELECT chunk FROM extents WHERE ino = ? AND blk = ?'),
      setExtent: p('INSERT OR REPLACE INTO extents (ino, blk, chunk) VALUES (?, ?, ?)'),
      delExtent: p('DELETE FROM extents WHERE ino = ? AND blk = ?'),
      extentsFrom: p('SELECT blk, chunk FROM extents WHERE ino = ? AND blk >= ?'),
      delExtentsFrom: p('DELETE FROM extents WHERE ino = ? AND blk >= ?'),
      countExtents: p('SELECT count(*) AS n FROM extents WHERE ino = ?'),
      isDirty: p('SELECT 1 FROM dirty WHERE ino = ? AND blk = ?'),
      addDirty: p('INSERT OR IGNORE INTO dirty (ino, blk) VALUES (?, ?)'),
      delDirty: p('DELETE FROM dirty WHERE ino = ? AND blk = ?'),
      delDirtyFrom: p('DELETE FROM dirty WHERE ino = ? AND blk >= ?'),
      allDirty: p('SELECT ino, blk FROM dirty WHERE ino > ? ORDER BY ino, blk LIMIT ?'),
      countDirty: p('SELECT count(*) AS n FROM dirty'),
      countDirtyIno: p('SELECT count(*) AS n FROM dirty WHERE ino = ?'),
      getChunk: p('SELECT c.id, c.slot, c.off, c.len, s.version FROM chunks c JOIN segments s ON s.slot = c.slot WHERE c.id = ?'),
      refChunk: p('UPDATE chunks SET refs = refs + 1 WHERE id = ?'),
      unrefChunk: p('UPDATE chunks SET refs = refs - 1 WHERE id = ? RETURNING refs, slot, len'),
      insertChunk: p('INSERT INTO chunks (id, slot, off, len, refs) VALUES (?, ?, ?, ?, 1)'),
      deleteChunk: p('DELETE FROM chunks WHERE id = ?'),
      moveChunk: p('UPDATE chunks SET slot = ?, off = ? WHERE id = ?'),
      chunksInSlot: p('SELECT id, off, len FROM chunks WHERE slot = ?'),
      addLive: p('UPDATE segments SET live = live + ? WHERE slot = ?'),
      kvGet: p('SELECT value FROM kv WHERE key = ?'),
      kvSet: p('INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)')
    }
  }

  // Moves the copying of the write-ahead log into the database file to a thread of its own (see
  // wal-checkpointer.ts). Only for a store in a file; without threads SQLite keeps checkpointing here.
  checkpointInBackground (): void {
    if (this.checkpointer || this.db.memory || !fs.existsSync(CHECKPOINTER_FILE)) return
    const lock = new Int32Array(new SharedArrayBuffer(4))
    let worker: Worker
    try {
      worker = new Worker(CHECKPOINTER_FILE, { workerData: { file: this.db.name, lock } })
    } catch {
      return
    }
    worker.unref()
    const fallBack = (): void => {
      if (this.checkpointer !== worker) return
      this.checkpointer = null
      this.unwatchLog()
      if (this.db.open) this.db.pragma(`wal_autocheckpoint = ${SQLITE_CHECKPOINT_PAGES}`)
    }
    worker.on('error', fallBack)
    worker.on('exit', fallBack)
    this.checkpointer = worker
    this.db.pragma(`wal_autocheckpoint = ${WAL_CHECKPOINT_PAGES}`)
    this.watchLog(lock)
  }

  // Stops the checkpointer thread after its connection closed, so that closing this one, the last, leaves
  // the database file complete.
  async stopCheckpointer (): Promise<void> {
    const worker = this.checkpointer
    if (!worker) return
    this.checkpointer = null
    this.unwatchLog()
    const gone = new Promise<void>(resolve => worker.once('exit', () => resolve()))
    worker.postMessage('close')
    const timer = setTimeout(() => { void worker.terminate() }, 5000)
    await gone
    clearTimeout(timer)
    if (this.db.open) this.db.pragma(`wal_autocheckpoint = ${SQLITE_CHECKPOINT_PAGES}`)
  }

  close (): void {
    void this.checkpointer?.terminate()
    this.checkpointer = null
    this.unwatchLog()
    this.db.close()
  }

  // The log's size is looked at after every commit made through tx() while the thread runs. The log file
  // is written from its beginning again after a complete checkpoint, and SQLite cuts it back to the
  // journal size limit then, so a file longer than the ceiling means a log longer than the ceiling (once
  // the log has started over: a longer file left from before costs one needless checkpoint).
  private watchLog (lock: Int32Array): void {
    const pageSize = this.db.pragma('page_size', { simple: true }) as number
    this.walCeilingBytes = WAL_HEADER_BYTES + WAL_CEILING_PAGES * (pageSize + WAL_FRAME_HEADER_BYTES)
    this.db.pragma(`journal_size_limit = ${this.walCeilingBytes}`)
    try {
      this.walFd = fs.openSync(this.walFile(), 'r')
    } catch {
      return
    }
    this.ckptLock = lock
    this.roundOutlasted = false
  }

  private unwatchLog (): void {
    this.ckptLock = null
    if (this.walFd !== null) fs.closeSync(this.walFd)
    this.walFd = null
  }

  // Past the ceiling: waits for the thread's round (if one runs) to end, keeps the thread from starting
  // another, and checkpoints here, blocking this thread as SQLite's own checkpoint does. With every page
  // copied, the next commit writes the log from its beginning. PASSIVE, as SQLite's own: a reader that
  // holds back the copy (none in the daemon) is not waited for. A round that outlasts the wait holds
  // SQLite's checkpoint lock, so there is no checkpoint then, and no new wait until a commit finds the
  // thread between rounds: one slow round costs one wait, not one per commit.
  private boundLog (): void {
    const lock = this.ckptLock
    if (!lock || this.walFd === null || fs.fstatSync(this.walFd).size <= this.walCeilingBytes) return
    if (this.roundOutlasted && Atomics.load(lock, 0) === CKPT_THREAD) return
    this.roundOutlasted = false
    const end = performance.now() + WAL_CEILING_WAIT_MS
    while (Atomics.compareExchange(lock, 0, CKPT_IDLE, CKPT_STORE) !== CKPT_IDLE) {
      const left = end - performance.now()
      if (left <= 0) {
        this.roundOutlasted = true
        this.ceilingWaitsRunOut++
        return
      }
      Atomics.wait(lock, 0, CKPT_THREAD, Math.min(left, 100))
    }
    try {
      const [r] = this.db.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number, log: number, checkpointed: number }>
      if (r !== undefined && r.busy === 0 && r.checkpointed === r.log) this.ceilingCheckpoints++
    } catch {
      // What was committed stays committed; the next commit tries again.
    } finally {
      Atomics.store(lock, 0, CKPT_IDLE)
    }
  }

  // The write-back store's hook: it runs first inside every transaction and stores inline file data there,
  // so the data commits with any change that names it.
  beforeTx: () => void = () => {}
  // Work that must wait for the outermost transaction to commit, and never run if it rolls back.
  private onCommitted: Array<() => void> = []

  tx<T> (fn: () => T): T {
    const mark = this.onCommitted.length
    let out: T
    try {
      out = this.runTx(fn) as T
    } catch (err) {
      // Rolled back: cached inodes may hold changes that did not commit, and what waited for this
      // transaction (nested or not) must not happen.
      this.inodeCache.clear()
      this.onCommitted.length = mark
      throw err
    }
    if (!this.db.inTransaction) {
      const run = this.onCommitted
      this.onCommitted = []
      for (const fn of run) fn()
      this.boundLog()
    }
    return out
  }

  // Runs fn now, or, inside a transaction, once the outermost transaction committed (not at all if it
  // rolls back).
  onCommit (fn: () => void): void {
    if (this.db.inTransaction) this.onCommitted.push(fn)
    else fn()
  }

  // The write-ahead log file, kept open by the caller to make commits durable with one fdatasync.
  walFile (): string {
    return this.db.name + '-wal'
  }

  kvGet (key: string): unknown {
    return (this.st.kvGet.get(key) as Row | undefined)?.value
  }

  kvSet (key: string, value: unknown): void {
    this.st.kvSet.run(key, value)
  }

  private getInodeRow (ino: number): Inode | undefined {
    return this.db.prepare('SELECT * FROM inodes WHERE ino = ?').get(ino) as Inode | undefined
  }

  // Inodes are read far more often than anything else (every lookup, getattr and write): rows stay in
  // memory, written through by every change below. Callers get copies they may change.
  getInode (ino: number): Inode | undefined {
    let row = this.inodeCache.get(ino)
    if (!row) {
      row = this.st.getInode.get(ino) as Inode | undefined
      if (!row) return undefined
      this.cacheInode(row)
    }
    return { ...row }
  }

  private cacheInode (row: Inode): void {
    if (this.inodeCache.size >= INODE_CACHE_ENTRIES) this.inodeCache.clear()
    this.inodeCache.set(row.ino, row)
  }

  lookup (parent: number, name: string): number | undefined {
    return (this.st.lookup.get(parent, name) as Row | undefined)?.ino as number | undefined
  }

  // Inode numbers count up from the highest in the store when it was opened and are not given again while
  // it is open, also when the highest inode is deleted (SQLite would give its rowid again): the kernel may
  // still hold a deleted file's inode, and its cached pages, under that number.
  createInode (attrs: Omit<Inode, 'ino'>): number {
    if (this.nextIno === 0) this.nextIno = ((this.st.maxIno.get() as { m: number | null }).m ?? 0) + 1
    const ino = this.nextIno++
    this.st.insertInode.run({ ...attrs, ino })
    // Cached as a read of the row gives it: the attributes the create answers with come from here.
    this.cacheInode({
      ino,
      mode: attrs.mode,
      uid: attrs.uid,
      gid: attrs.gid,
      nlink: attrs.nlink,
      size: attrs.size,
      atime: attrs.atime,
      mtime: attrs.mtime,
      ctime: attrs.ctime,
      rdev: attrs.rdev,
      target: attrs.target ?? null,
      parent: attrs.parent
    })
    return ino
  }

  // Every column but rdev and target, which never change after creation.
  updateInode (inode: Inode): void {
    const old = this.inodeCache.get(inode.ino)
    if (this.st.updateInode.run(inode).changes === 0) return
    if (old) this.cacheInode({ ...inode, rdev: old.rdev, target: old.target })
  }

  deleteInode (ino: number): void {
    this.inodeCache.delete(ino)
    this.st.deleteInode.run(ino)
    this.st.delXattrs.run(ino)
  }

  addDirent (parent: number, name: string, ino: number): void {
    this.st.addDirent.run(parent, name, ino)
  }

  setDirent (parent: number, name: string, ino: number): void {
    this.st.setDirent.run(parent, name, ino)
  }

  delDirent (parent: number, name: string): void {
    this.st.delDirent.run(parent, name)
  }

  listDir (ino: number): Array<{ name: string, ino: number }> {
    return this.st.listDir.all(ino) as Array<{ name: string, ino: number }>
  }

  hasChildren (ino: number): boolean {
    return this.st.hasChildren.get(ino) !== undefined
  }

  // Whether any inode has an attribute of this name.
  anyXattr (name: string): boolean {
    return this.st.anyXattr.get(name) !== undefined
  }

  getXattr (ino: number, name: string): Buffer | undefined {
    return (this.st.getXattr.get(ino, name) as Row | undefined)?.value as Buffer | undefined
  }

  setXattr (ino: number, name: string, value: Buffer): void {
    this.st.setXattr.run(ino, name, value)
  }

  delXattr (ino: number, name: string): boolean {
    return this.st.delXattr.run(ino, name).changes > 0
  }

  listXattr (ino: number): string[] {
    return (this.st.listXattr.all(ino) as Row[]).map(r => r.name as string)
  }

  getExtent (ino: number, blk: number): Buffer | undefined {
    return (this.st.getExtent.get(ino, blk) as Row | undefined)?.chunk as Buffer | undefined
  }

  setExtent (ino: number, blk: number, chunk: Buffer): void {
    this.st.setExtent.run(ino, blk, chunk)
  }

  delExtent (ino: number, blk: number): void {
    this.st.delExtent.run(ino, blk)
  }

  extentsFrom (ino: number, blk: number): Array<{ blk: number, chunk: Buffer }> {
    return this.st.extentsFrom.all(ino, blk) as Array<{ blk: number, chunk: Buffer }>
  }

  delExtentsFrom (ino: number, blk: number): void {
    this.st.delExtentsFrom.run(ino, blk)
  }

  extentCount (ino: number): number {
    return (this.st.countExtents.get(ino) as Row).n as number
  }

  isDirty (ino: number, blk: number): boolean {
    return this.st.isDirty.get(ino, blk) !== undefined
  }

  addDirty (ino: number, blk: number): boolean {
    return this.st.addDirty.run(ino, blk).changes > 0
  }

  delDirty (ino: number, blk: number): boolean {
    return this.st.delDirty.run(ino, blk).changes > 0
  }


  delDirtyFrom (ino: number, blk: number): number {
    return this.st.delDirtyFrom.run(ino, blk).changes
  }

  // Dirty blocks in (inode, block) order, of inodes after afterIno.
  dirtyBlocks (limit: number, afterIno = 0): Array<{ ino: number, blk: number }> {
    return this.st.allDirty.all(afterIno, limit) as Array<{ ino: number, blk: number }>
  }

  dirtyCount (ino?: number): number {
    const row = (ino === undefined ? this.st.countDirty.get() : this.st.countDirtyIno.get(ino)) as Row
    return row.n as number
  }

  getChunk (id: Buffer): ChunkLoc | undefined {
    return this.st.getChunk.get(id) as ChunkLoc | undefined
  }

  // Adds a reference to a chunk; creates it at loc when it is new. Returns false when the chunk is unknown
  // and no location was given.
  refChunk (id: Buffer, loc?: { slot: number, off: number, len: number }): boolean {
    if (this.st.refChunk.run(id).changes > 0) return true
    if (!loc) return false
    this.st.insertChunk.run(id, loc.slot, loc.off, loc.len)
    this.st.addLive.run(loc.len, loc.slot)
    return true
  }

  unrefChunk (id: Buffer): void {
    const row = this.st.unrefChunk.get(id) as Row | undefined
    if (!row || (row.refs as number) > 0) return
    this.st.deleteChunk.run(id)
    this.st.addLive.run(-(row.len as number), row.slot as number)
  }

  moveChunk (id: Buffer, fromSlot: number, len: number, slot: number, off: number): void {
    if (this.st.moveChunk.run(slot, off, id).changes === 0) return
    this.st.addLive.run(-len, fromSlot)
    this.st.addLive.run(len, slot)
  }

  chunksInSlot (slot: number): Array<{ id: Buffer, off: number, len: number }> {
    return this.st.chunksInSlot.all(slot) as Array<{ id: Buffer, off: number, len: number }>
  }


  serialize (): Buffer {
    return this.db.serialize()
  }
}

// Stored and pending bytes of a home whose daemon is not running, read without writing anything.
export function offlineStats (file: string, chunkSize: number): { bytesStored: number, bytesPending: number } {
  if (!fs.existsSync(file)) return { bytesStored: 0, bytesPending: 0 }
  const db = new Database(file, { readonly: true, fileMustExist: true })
  try {
    const live = (db.prepare('SELECT coalesce(sum(live), 0) AS n FROM segments').get() as { n: number }).n
    const dirty = (db.prepare('SELECT count(*) AS n FROM dirty').get() as { n: number }).n
    return { bytesStored: live, bytesPending: dirty * chunkSize }
  } finally {
    db.close()
  }
}


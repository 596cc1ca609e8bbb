// POSIX semantics over the metadata store, the write-back store and the logical disk. Paths come from the
// FUSE layer; every method either returns a result or throws an FsError carrying a Linux errno name.
import { FsError, fsErr } from '../errors.js'
import {
  MAX_FILE_BYTES, MAX_NAME_BYTES, MAX_SYMLINK_BYTES, MAX_XATTR_VALUE_BYTES, MAX_XATTR_LIST_BYTES, PACK_IDLE_MS, WRITE_BURST_MS
} from '../config.js'
import { MetaStore, ROOT_INO, type Inode } from './meta-store.js'
import { WriteBack } from './writeback.js'
import { Lock } from '../log/lock.js'
import type { LogicalDisk } from '../log/logical-disk.js'

export const S_IFMT = 0o170000
export const S_IFDIR = 0o040000
export const S_IFREG = 0o100000
export const S_IFLNK = 0o120000
const S_ISGID = 0o2000
const XATTR_CREATE = 1
const XATTR_REPLACE = 2
// fuse-native turns a timespec into milliseconds; UTIME_OMIT (tv_sec 0, tv_nsec 2^30 - 2) arrives as this.
const UTIME_OMIT_MS = 1073
const PATH_CACHE_ENTRIES = 200_000
const READAHEAD_CHUNKS = 8
// libfuse's high-level API does not unlink a file that is still open: it renames it to a hidden name of this
// form and unlinks that name on the last close. Linux shows no such name, so these renames drop the file's
// name here and keep the inode reachable under the hidden name only (see hide).
const HIDDEN_NAME = /^\.fuse_hidden[0-9a-f]{16}$/
// Extended attribute namespaces stored as given. system.* (POSIX ACLs above all) is refused like on a
// filesystem without ACL support: storing system.posix_acl_access would make cp -a believe the mode was
// set through the ACL and skip its chmod, while the kernel would enforce neither.
const XATTR_NAMESPACES = ['user.', 'trusted.', 'security.']

export interface Attr extends Inode {
  blocks: number
  blksize: number
  // Marks for the preload addon, which libfuse does not pass on to the kernel: SHARED_NODES_DEV and
  // HIDDEN_COUNTED_DEV, bits that may be set together.
  dev?: number
}

// libfuse does not pass st_dev on to the kernel; the preload addon reads this value there as "this file has
// more kernel inodes than its link count says: do not let the kernel cache its attributes".
export const SHARED_NODES_DEV = 1
// "The link count includes the hidden name this was asked by" (see getattr).
export const HIDDEN_COUNTED_DEV = 2

// Who a new file, directory or link belongs to.
export interface Owner {
  uid: number
  gid: number
}

export interface StatFs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  fsid: number
  flag: number
  namemax: number
}

// What writes changed in an inode and the store does not hold yet.
interface PendingWrite {
  size: number
  mtime: number
  fresh: Set<number>
}

interface Handle {
  ino: number
  flags: number
}

export interface FilesystemOptions {
  meta: MetaStore
  disk: LogicalDisk
  writeback: WriteBack
  chunkSize: number
  // Makes committed metadata durable on the local disk (fsync of the store's log).
  syncMeta: () => Promise<void>
}

const isDir = (mode: number): boolean => (mode & S_IFMT) === S_IFDIR

export class Filesystem {
  readonly meta: MetaStore
  readonly disk: LogicalDisk
  readonly wb: WriteBack
  readonly chunkSize: number
  private readonly syncMeta: () => Promise<void>
  private readonly handles = new Map<number, Handle>()
  private nextFh = 1
  private readonly openCount = new Map<number, number>()
  private readonly pending = new Map<number, PendingWrite>()
  // Where the last read of each file ended, to tell sequential reads.
  private readonly lastReadEnd = new Map<number, number>()
  // Per open inode: the chunk index read-ahead has asked for up to (exclusive).
  private readonly readAheadEnd = new Map<number, number>()
  private readonly locks = new Map<number, { lock: Lock, users: number }>()
  private readonly paths = new Map<string, number>()
  // Hidden names (see HIDDEN_NAME) of open files that lost their last visible name, and their inodes.
  private readonly hidden = new Map<string, number>()
  // Per inode and block: a new generation on every write to a dirty block; the packer commits a block only
  // if it did not change meanwhile. Generations come from one counter for the whole filesystem, so one
  // taken for a block never comes back, not even for a new file that reuses a removed file's inode number
  // while a segment holding the old file's block is still on its way: forgetting them is always safe. They
  // are forgotten once the block is packed, when a truncate cuts the block off, and with the inode.
  readonly gens = new Map<number, Map<number, number>>()
  private genSeq = 0
  // Per inode being written: the last write's time, the highest block written, and when the current run of
  // writes began (a pause of PACK_IDLE_MS ends a run). The packer leaves a file's tail alone while it grows.
  // Entries of closed files go once their run ended (forgetIdleWriters).
  readonly writing = new Map<number, { at: number, maxBlk: number, since: number }>()
  // The last file creation and when the current run of them began (performance.now()): while files are
  // being created the packer waits, up to WRITE_BURST_MS from the run's start (Packer.candidates).
  createdAt = -Infinity
  createRunSince = -Infinity
  liveBytes = 0
  onChange: () => void = () => {}

  constructor ({ meta, disk, writeback, chunkSize, syncMeta }: FilesystemOptions) {
    this.meta = meta
    this.disk = disk
    this.wb = writeback
    this.chunkSize = chunkSize
    this.syncMeta = syncMeta
    this.wb.dirtyBytes = meta.dirtyCount() * chunkSize
    this.refreshLiveBytes()
  }

  refreshLiveBytes (): void {
    this.liveBytes = this.disk.liveBytes()
  }

  // Inodes left with no name by a daemon that died while they were open.
  async removeOrphans (): Promise<void> {
    const rows = this.meta.db.prepare('SELECT ino FROM inodes WHERE nlink = 0').all() as Array<{ ino: number }>
    for (const r of rows) await this.destroyInode(r.ino)
  }

  // After a killed daemon, write-back files may hold bytes no committed metadata accounts for (writes not
  // yet committed, an inode destroyed halfway). Files with nothing dirty go; the rest are cut to the
  // committed size, so bytes past the end of a file read as zeros again.
  async tidyWriteback (): Promise<void> {
    for (const ino of this.wb.inodes()) {
      const inode = this.meta.getInode(ino)
      if (!inode || this.meta.dirtyCount(ino) === 0) await this.wb.remove(ino)
      else await this.wb.truncate(ino, inode.size)
    }
    this.wb.save()
  }

  // ---- paths ----

  private split (path: string): string[] {
    return path.split('/').filter(Boolean)
  }

  resolve (path: string): number {
    if (path === '/') return ROOT_INO
    const cached = this.paths.get(path)
    if (cached !== undefined) return cached
    if (this.hidden.size > 0) {
      const h = this.hidden.get(path.slice(path.lastIndexOf('/') + 1))
      if (h !== undefined) return h
    }
    const parts = this.split(path)
    let ino = ROOT_INO
    let sofar = ''
    for (const name of parts) {
      const inode = this.meta.getInode(ino)
      if (!inode || !isDir(inode.mode)) throw fsErr('ENOTDIR')
      // Linux filesystems answer a lookup of an over-long name with ENAMETOOLONG, not ENOENT.
      if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw fsErr('ENAMETOOLONG')
      sofar += '/' + name
      const hit = this.paths.get(sofar)
      const next = hit ?? this.meta.lookup(ino, name)
      if (next === undefined) throw fsErr('ENOENT')
      if (hit === undefined) this.remember(sofar, next)
      ino = next
    }
    return ino
  }

  private remember (path: string, ino: number): void {
    if (this.paths.size >= PATH_CACHE_ENTRIES) this.paths.clear()
    this.paths.set(path, ino)
  }

  private forget (path: string, subtree: boolean): void {
    this.paths.delete(path)
    if (!subtree) return
    const prefix = path + '/'
    for (const k of this.paths.keys()) if (k.startsWith(prefix)) this.paths.delete(k)
  }

  private parentOf (path: string): { parent: number, name: string } {
    const parts = this.split(path)
    const name = parts.pop()
    if (name === undefined) throw fsErr('EBUSY')
    if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw fsErr('ENAMETOOLONG')
    const parent = this.resolve('/' + parts.join('/'))
    const pinode = this.inode(parent)
    if (!isDir(pinode.mode)) throw fsErr('ENOTDIR')
    return { parent, name }
  }

  // Every read-modify-write of an inode starts from the store with this inode's pending writes applied.
  private inode (ino: number): Inode {
    if (this.pending.has(ino)) this.commitPending(ino)
    const inode = this.meta.getInode(ino)
    if (!inode) throw fsErr('ENOENT')
    return inode
  }

  // Commits what writes changed (new dirty blocks, size, times) for one inode, or all, in one transaction.
  commitPending (ino?: number): void {
    const list: Array<[number, PendingWrite]> = []
    if (ino === undefined) list.push(...this.pending)
    else if (this.pending.has(ino)) list.push([ino, this.pending.get(ino)!])
    if (list.length === 0) return
    this.meta.tx(() => {
      for (const [i, p] of list) {
        const cur = this.meta.getInode(i)
        if (!cur) continue
        for (const blk of p.fresh) this.meta.addDirty(i, blk)
        if (p.size > cur.size) cur.size = p.size
        cur.mtime = cur.ctime = p.mtime
        // Writing clears set-user-ID and set-group-ID, as on any Linux filesystem.
        if (cur.mode & 0o6000) cur.mode &= ~0o6000
        this.meta.updateInode(cur)
      }
    })
    // Called inside another transaction (through inode()), the writes count as committed only once that
    // one commits: if it rolls back, they stay pending and commit later.
    this.meta.onCommit(() => {
      for (const [i, p] of list) if (this.pending.get(i) === p) this.pending.delete(i)
    })
  }

  private isDirtyBlock (ino: number, blk: number): boolean {
    return this.pending.get(ino)?.fresh.has(blk) === true || this.meta.isDirty(ino, blk)
  }

  private async withInode<T> (ino: number, fn: () => Promise<T>): Promise<T> {
    let entry = this.locks.get(ino)
    if (!entry) {
      entry = { lock: new Lock(), users: 0 }
      this.locks.set(ino, entry)
    }
    entry.users++
    try {
      return await entry.lock.run(fn)
    } finally {
      if (--entry.users === 0) this.locks.delete(ino)
    }
  }

  // ---- attributes ----

  getattr (path: string): Attr {
    const attr = this.attrOf(this.resolve(path))
    // libfuse's answer to FUSE_GETATTR counts one link less for a name it hid (it takes its hidden name for
    // a directory entry), which this filesystem's count never includes, so it is counted here; the mark
    // tells the preload addon to take it off again for the other requests that answer with these
    // attributes (native/preload.c). A count of 0 stays (fuse-native makes it 1, which libfuse takes off).
    if (this.hidden.size > 0 && this.hidden.has(path.slice(path.lastIndexOf('/') + 1))) {
      if (attr.nlink > 0) attr.nlink++
      attr.dev = (attr.dev ?? 0) | HIDDEN_COUNTED_DEV
    }
    return attr
  }

  attrOfHandle (fh: number): Attr {
    return this.attrOf(this.handle(fh).ino)
  }

  // The inode a name in a directory stands for (the session answering the kernel by inode numbers).
  lookupAt (parent: number, name: string): number {
    this.checkName(parent, name)
    const ino = this.meta.lookup(parent, name)
    if (ino === undefined) throw fsErr('ENOENT')
    return ino
  }

  attrOf (ino: number): Attr {
    const inode = this.inode(ino)
    let blocks = 0
    if ((inode.mode & S_IFMT) === S_IFREG && inode.size > 0) {
      const stored = this.meta.extentCount(ino) + this.meta.dirtyCount(ino)
      blocks = Math.min(stored * this.chunkSize, Math.ceil(inode.size / 4096) * 4096) / 512
    } else if (isDir(inode.mode)) {
      blocks = 8
    }
    const attr: Attr = { ...inode, blocks, blksize: 4096 }
    // An open name of a hard-linked file that was unlinked lives on as libfuse's hidden name, a kernel inode
    // of its own beside the visible names, which the link count does not include.
    if (inode.nlink > 0 && this.hidden.size > 0 && this.hasHiddenName(ino)) attr.dev = SHARED_NODES_DEV
    return attr
  }

  private hasHiddenName (ino: number): boolean {
    for (const h of this.hidden.values()) if (h === ino) return true
    return false
  }

  chmod (path: string, mode: number): void {
    this.chmodIno(this.resolve(path), mode)
  }

  chmodIno (ino: number, mode: number): void {
    const inode = this.inode(ino)
    inode.mode = (inode.mode & S_IFMT) | (mode & 0o7777)
    inode.ctime = Date.now()
    this.meta.updateInode(inode)
  }

  chown (path: string, uid: number, gid: number): void {
    this.chownIno(this.resolve(path), uid, gid)
  }

  chownIno (ino: number, uid: number, gid: number): void {
    const inode = this.inode(ino)
    // (uid_t)-1 and (gid_t)-1 leave the owner or group unchanged.
    if (uid !== 0xffffffff && uid !== -1) inode.uid = uid
    if (gid !== 0xffffffff && gid !== -1) inode.gid = gid
    inode.ctime = Date.now()
    this.meta.updateInode(inode)
  }

  utimens (path: string, atime: number, mtime: number): void {
    this.setTimes(this.resolve(path), atime === UTIME_OMIT_MS ? null : atime, mtime === UTIME_OMIT_MS ? null : mtime)
  }

  // Times in milliseconds; null leaves one as it is.
  setTimes (ino: number, atime: number | null, mtime: number | null): void {
    const inode = this.inode(ino)
    if (atime !== null) inode.atime = atime
    if (mtime !== null) inode.mtime = mtime
    inode.ctime = Date.now()
    this.meta.updateInode(inode)
  }

  access (path: string): void {
    this.resolve(path)
  }

  statfs (): StatFs {
    const bsize = 4096
    const total = Math.floor(this.disk.usableBytes() / bsize)
    const used = Math.ceil((this.liveBytes + this.wb.dirtyBytes) / bsize)
    const free = Math.max(0, total - used)
    const files = (this.meta.db.prepare('SELECT count(*) AS n FROM inodes').get() as { n: number }).n
    const maxFiles = 1 << 30
    return {
      bsize,
      frsize: bsize,
      blocks: total,
      bfree: free,
      bavail: free,
      files: maxFiles,
      ffree: maxFiles - files,
      favail: maxFiles - files,
      fsid: 0,
      flag: 0,
      namemax: MAX_NAME_BYTES
    }
  }

  // ---- directories and names ----

  readdir (path: string): string[] {
    return ['.', '..', ...this.listDir(this.resolve(path)).map(e => e.name)]
  }

  // A directory's entries (without . and ..), by name.
  listDir (ino: number): Array<{ name: string, ino: number }> {
    if (!isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR')
    return this.meta.listDir(ino)
  }

  // The parent of a directory (the root's is itself).
  parentDir (ino: number): number {
    return ino === ROOT_INO ? ROOT_INO : this.inode(ino).parent
  }

  // owner: the caller's user and group, when known (the session answering the kernel by inode numbers);
  // without it the daemon's own, which the preload addon changes to the caller's (fuse-native).
  private newInode (parent: number, name: string, mode: number, extra: Partial<Inode> = {}, owner?: Owner): number {
    const p = this.checkName(parent, name)
    if (this.meta.lookup(parent, name) !== undefined) throw fsErr('EEXIST')
    const now = Date.now()
    const dir = isDir(mode)
    // In a set-group-ID directory a new file takes the directory's group, and a new directory the bit too.
    // (Without an owner given, the daemon's; the preload addon gives the file to its caller then.)
    const sgid = (p.mode & S_ISGID) !== 0
    const ino = this.meta.createInode({
      mode: sgid && dir ? mode | S_ISGID : mode,
      uid: owner?.uid ?? process.getuid?.() ?? 0,
      gid: sgid ? p.gid : owner?.gid ?? process.getgid?.() ?? 0,
      nlink: dir ? 2 : 1,
      size: 0,
      atime: now,
      mtime: now,
      ctime: now,
      rdev: 0,
      target: null,
      parent: dir ? parent : 0,
      ...extra
    })
    this.meta.addDirent(parent, name, ino)
    if (dir) p.nlink++
    p.mtime = p.ctime = now
    this.meta.updateInode(p)
    return ino
  }

  mkdir (path: string, mode: number): void {
    const { parent, name } = this.parentOf(path)
    this.mkdirAt(parent, name, mode)
  }

  // A name in a directory, as Linux filesystems check it; returns the directory's inode.
  private checkName (parent: number, name: string): Inode {
    const p = this.inode(parent)
    if (!isDir(p.mode)) throw fsErr('ENOTDIR')
    if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw fsErr('ENAMETOOLONG')
    return p
  }

  mkdirAt (parent: number, name: string, mode: number, owner?: Owner): number {
    const ino = this.meta.tx(() => this.newInode(parent, name, S_IFDIR | (mode & 0o7777), {}, owner))
    this.onChange()
    return ino
  }

  mknod (path: string, mode: number, rdev: number): void {
    const { parent, name } = this.parentOf(path)
    this.mknodAt(parent, name, mode, rdev)
  }

  mknodAt (parent: number, name: string, mode: number, rdev: number, owner?: Owner): number {
    const type = mode & S_IFMT
    const ino = this.meta.tx(() => this.newInode(parent, name, (type || S_IFREG) | (mode & 0o7777), { rdev }, owner))
    this.onChange()
    return ino
  }

  symlink (target: string, path: string): void {
    if (Buffer.byteLength(target) > MAX_SYMLINK_BYTES) throw fsErr('ENAMETOOLONG')
    const { parent, name } = this.parentOf(path)
    this.symlinkAt(parent, name, target)
  }

  symlinkAt (parent: number, name: string, target: string, owner?: Owner): number {
    if (Buffer.byteLength(target) > MAX_SYMLINK_BYTES) throw fsErr('ENAMETOOLONG')
    const ino = this.meta.tx(() => this.newInode(parent, name, S_IFLNK | 0o777, { target, size: Buffer.byteLength(target) }, owner))
    this.onChange()
    return ino
  }

  readlink (path: string): string {
    return this.readlinkIno(this.resolve(path))
  }

  readlinkIno (ino: number): string {
    const inode = this.inode(ino)
    if ((inode.mode & S_IFMT) !== S_IFLNK) throw fsErr('EINVAL')
    return inode.target ?? ''
  }

  link (src: string, dst: string): void {
    const ino = this.resolve(src)
    const { parent, name } = this.parentOf(dst)
    this.linkAt(ino, parent, name)
  }

  linkAt (ino: number, parent: number, name: string): void {
    const inode = this.inode(ino)
    if (isDir(inode.mode)) throw fsErr('EPERM')
    // An open file whose last name is gone cannot get a name again (linkat of /proc/self/fd/N).
    if (inode.nlink === 0) throw fsErr('ENOENT')
    this.checkName(parent, name)
    this.meta.tx(() => {
      if (this.meta.lookup(parent, name) !== undefined) throw fsErr('EEXIST')
      this.meta.addDirent(parent, name, ino)
      const now = Date.now()
      inode.nlink++
      inode.ctime = now
      this.meta.updateInode(inode)
      const p = this.inode(parent)
      p.mtime = p.ctime = now
      this.meta.updateInode(p)
    })
    this.onChange()
  }

  async unlink (path: string): Promise<void> {
    const base = path.slice(path.lastIndexOf('/') + 1)
    const hiddenIno = this.hidden.get(base)
    if (hiddenIno !== undefined) {
      // libfuse drops the hidden name after the last close; the inode went then unless it has other names.
      this.hidden.delete(base)
      const inode = this.meta.getInode(hiddenIno)
      if (inode && inode.nlink === 0 && !this.isOpen(hiddenIno)) await this.destroyInode(hiddenIno)
      return
    }
    const { parent, name } = this.parentOf(path)
    await this.unlinkAt(parent, name, () => this.forget(path, false))
  }

  // afterTx runs once the name is gone from the store, before the inode's data goes (if it goes).
  async unlinkAt (parent: number, name: string, afterTx?: () => void): Promise<void> {
    const ino = this.lookupAt(parent, name)
    if (isDir(this.inode(ino).mode)) throw fsErr('EISDIR')
    const gone = this.meta.tx(() => this.dropName(parent, name, ino))
    afterTx?.()
    if (gone) await this.destroyInode(ino)
    this.onChange()
  }

  rmdir (path: string): void {
    const { parent, name } = this.parentOf(path)
    this.rmdirAt(parent, name)
    this.forget(path, true)
  }

  rmdirAt (parent: number, name: string): void {
    if (name === '.') throw fsErr('EINVAL')
    const ino = this.meta.lookup(parent, name)
    if (ino === undefined) throw fsErr('ENOENT')
    const inode = this.inode(ino)
    if (!isDir(inode.mode)) throw fsErr('ENOTDIR')
    if (this.meta.hasChildren(ino)) throw fsErr('ENOTEMPTY')
    this.meta.tx(() => this.dropName(parent, name, ino))
    this.onChange()
  }

  // Removes one name of ino inside a transaction. Returns true when the inode lost its last name and no
  // handle holds it open, so its data can go.
  private dropName (parent: number, name: string, ino: number): boolean {
    const inode = this.inode(ino)
    const now = Date.now()
    this.meta.delDirent(parent, name)
    const p = this.inode(parent)
    p.mtime = p.ctime = now
    if (isDir(inode.mode)) {
      p.nlink--
      inode.nlink = 0
    } else {
      inode.nlink--
    }
    this.meta.updateInode(p)
    inode.ctime = now
    this.meta.updateInode(inode)
    if (inode.nlink > 0) return false
    if ((this.openCount.get(ino) ?? 0) > 0) return false
    if (isDir(inode.mode)) {
      this.meta.deleteInode(ino)
      return false
    }
    return true
  }

  private async destroyInode (ino: number): Promise<void> {
    await this.withInode(ino, async () => {
      let freed = this.pending.get(ino)?.fresh.size ?? 0
      this.pending.delete(ino)
      this.meta.tx(() => {
        for (const e of this.meta.extentsFrom(ino, 0)) this.meta.unrefChunk(e.chunk)
        this.meta.delExtentsFrom(ino, 0)
        freed += this.meta.delDirtyFrom(ino, 0)
        this.meta.deleteInode(ino)
      })
      this.wb.adjust(-freed * this.chunkSize)
      this.writing.delete(ino)
      this.gens.delete(ino)
      await this.wb.remove(ino)
    })
    this.refreshLiveBytes()
  }

  async rename (src: string, dst: string, flags = 0): Promise<void> {
    if (flags) throw fsErr('EINVAL')
    const s = this.parentOf(src)
    const d = this.parentOf(dst)
    const ino = this.meta.lookup(s.parent, s.name)
    if (ino === undefined) throw fsErr('ENOENT')
    // libfuse hides only open files; a user's own rename to such a name stays a plain rename.
    if (HIDDEN_NAME.test(d.name) && this.isOpen(ino) && this.meta.lookup(d.parent, d.name) === undefined) {
      await this.hide(src, s.parent, s.name, ino, d.name)
      return
    }
    await this.renameAt(s.parent, s.name, d.parent, d.name, 0, dir => {
      this.forget(src, dir)
      this.forget(dst, true)
    })
  }

  // RENAME_NOREPLACE and RENAME_EXCHANGE are not supported (EINVAL). afterTx runs once the names moved in
  // the store, before a replaced inode's data goes (if it goes).
  async renameAt (sParent: number, sName: string, dParent: number, dName: string, flags: number, afterTx?: (dir: boolean) => void): Promise<void> {
    if (flags) throw fsErr('EINVAL')
    const s = { parent: sParent, name: sName }
    const d = { parent: dParent, name: dName }
    const ino = this.lookupAt(s.parent, s.name)
    this.checkName(d.parent, d.name)
    const inode = this.inode(ino)
    const dir = isDir(inode.mode)
    if (dir) {
      // A directory cannot move into its own subtree.
      for (let p = d.parent; ; p = this.inode(p).parent) {
        if (p === ino) throw fsErr('EINVAL')
        if (p === ROOT_INO) break
      }
    }
    const existing = this.meta.lookup(d.parent, d.name)
    if (existing === ino) return
    let destroy = false
    this.meta.tx(() => {
      if (existing !== undefined) {
        const target = this.inode(existing)
        if (dir && !isDir(target.mode)) throw fsErr('ENOTDIR')
        if (!dir && isDir(target.mode)) throw fsErr('EISDIR')
        if (isDir(target.mode) && this.meta.hasChildren(existing)) throw fsErr('ENOTEMPTY')
        destroy = this.dropName(d.parent, d.name, existing)
      }
      const now = Date.now()
      this.meta.delDirent(s.parent, s.name)
      this.meta.addDirent(d.parent, d.name, ino)
      const sp = this.inode(s.parent)
      sp.mtime = sp.ctime = now
      if (dir && s.parent !== d.parent) sp.nlink--
      this.meta.updateInode(sp)
      const dp = this.inode(d.parent)
      dp.mtime = dp.ctime = now
      if (dir && s.parent !== d.parent) dp.nlink++
      this.meta.updateInode(dp)
      const moved = this.inode(ino)
      moved.ctime = now
      if (dir) moved.parent = d.parent
      this.meta.updateInode(moved)
    })
    afterTx?.(dir)
    if (destroy && existing !== undefined) await this.destroyInode(existing)
    this.onChange()
  }

  // libfuse's unlink (or rename over) of an open file, made a rename to a hidden name: the name goes as in an
  // unlink, so listings, rmdir and nlink are what Linux shows, and the inode stays reachable by the hidden
  // name until libfuse unlinks that after the last close.
  private async hide (src: string, parent: number, name: string, ino: number, hiddenName: string): Promise<void> {
    if (isDir(this.inode(ino).mode)) throw fsErr('EISDIR')
    const gone = this.meta.tx(() => this.dropName(parent, name, ino))
    this.forget(src, false)
    if (gone) await this.destroyInode(ino)
    else this.hidden.set(hiddenName, ino)
    this.onChange()
  }

  // ---- extended attributes ----

  private xattrName (name: string): void {
    if (!XATTR_NAMESPACES.some(ns => name.startsWith(ns))) throw fsErr('EOPNOTSUPP')
  }

  setxattr (path: string, name: string, value: Buffer, flags: number): void {
    this.setxattrIno(this.resolve(path), name, value, flags)
  }

  setxattrIno (ino: number, name: string, value: Buffer, flags: number): void {
    if (Buffer.byteLength(name) > 255 || name.length === 0) throw fsErr('ERANGE')
    this.xattrName(name)
    if (value.length > MAX_XATTR_VALUE_BYTES) throw fsErr('E2BIG')
    this.meta.tx(() => {
      const has = this.meta.getXattr(ino, name) !== undefined
      if ((flags & XATTR_CREATE) && has) throw fsErr('EEXIST')
      if ((flags & XATTR_REPLACE) && !has) throw fsErr('ENODATA')
      if (!has) {
        const total = this.meta.listXattr(ino).reduce((a, n) => a + Buffer.byteLength(n) + 1, 0)
        if (total + Buffer.byteLength(name) + 1 > MAX_XATTR_LIST_BYTES) throw fsErr('ENOSPC')
      }
      this.meta.setXattr(ino, name, Buffer.from(value))
      const inode = this.inode(ino)
      inode.ctime = Date.now()
      this.meta.updateInode(inode)
    })
    this.onChange()
  }

  getxattr (path: string, name: string): Buffer {
    return this.getxattrIno(this.resolve(path), name)
  }

  getxattrIno (ino: number, name: string): Buffer {
    this.xattrName(name)
    const value = this.meta.getXattr(ino, name)
    if (value === undefined) throw fsErr('ENODATA')
    return value
  }

  // Whether any file has the extended attribute name.
  anyHasXattr (name: string): boolean {
    return this.meta.anyXattr(name)
  }

  listxattr (path: string): string[] {
    return this.listxattrIno(this.resolve(path))
  }

  listxattrIno (ino: number): string[] {
    this.inode(ino)
    return this.meta.listXattr(ino).filter(n => XATTR_NAMESPACES.some(ns => n.startsWith(ns)))
  }

  removexattr (path: string, name: string): void {
    this.removexattrIno(this.resolve(path), name)
  }

  removexattrIno (ino: number, name: string): void {
    this.xattrName(name)
    this.meta.tx(() => {
      if (!this.meta.delXattr(ino, name)) throw fsErr('ENODATA')
      const inode = this.inode(ino)
      inode.ctime = Date.now()
      this.meta.updateInode(inode)
    })
    this.onChange()
  }

  // ---- open files ----

  private handle (fh: number): Handle {
    const h = this.handles.get(fh)
    if (!h) throw fsErr('EBADF')
    return h
  }

  // Handle numbers count up and start over after 2^31 - 1, passing over those still open: the kernel and the
  // preload addon (read-only descriptors, attributes after a create) tell open files apart by them.
  private addHandle (ino: number, flags: number): number {
    let fh = this.nextFh
    while (this.handles.has(fh)) fh = fh >= 0x7fffffff ? 1 : fh + 1
    this.nextFh = fh >= 0x7fffffff ? 1 : fh + 1
    this.handles.set(fh, { ino, flags })
    this.openCount.set(ino, (this.openCount.get(ino) ?? 0) + 1)
    return fh
  }

  create (path: string, mode: number): number {
    const { parent, name } = this.parentOf(path)
    const { ino, fh } = this.createAt(parent, name, mode)
    // libfuse asks for the new file's attributes right away, by path, unless the preload addon answers it
    // with what the create handed over (src/fuse/mount.ts).
    this.remember(path, ino)
    return fh
  }

  createAt (parent: number, name: string, mode: number, owner?: Owner, flags = 0): { ino: number, fh: number } {
    const ino = this.meta.tx(() => this.newInode(parent, name, S_IFREG | (mode & 0o7777), {}, owner))
    // A pause of PACK_IDLE_MS ends a run, but a new one starts no sooner than 2 x WRITE_BURST_MS after the
    // last one did: files that keep coming with pauses between them get packed at least half the time.
    const now = performance.now()
    if (now - this.createdAt >= PACK_IDLE_MS && now - this.createRunSince >= 2 * WRITE_BURST_MS) this.createRunSince = now
    this.createdAt = now
    this.onChange()
    return { ino, fh: this.addHandle(ino, flags) }
  }

  async open (path: string, flags: number): Promise<number> {
    return this.openIno(this.resolve(path), flags)
  }

  openIno (ino: number, flags: number): number {
    const inode = this.inode(ino)
    if ((inode.mode & S_IFMT) === S_IFLNK) throw fsErr('ELOOP')
    const fh = this.addHandle(ino, flags)
    // O_TRUNC reaches the filesystem as a separate truncate call from the kernel.
    return fh
  }

  opendir (path: string): number {
    const ino = this.resolve(path)
    if (!isDir(this.inode(ino).mode)) throw fsErr('ENOTDIR')
    return 0
  }

  async release (fh: number): Promise<void> {
    const h = this.handles.get(fh)
    if (!h) return
    this.handles.delete(fh)
    this.commitPending(h.ino)
    const left = (this.openCount.get(h.ino) ?? 1) - 1
    if (left > 0) {
      this.openCount.set(h.ino, left)
      return
    }
    this.openCount.delete(h.ino)
    this.lastReadEnd.delete(h.ino)
    this.readAheadEnd.delete(h.ino)
    await this.dropWriteback(h.ino)
    if (this.isOpen(h.ino)) return
    const inode = this.meta.getInode(h.ino)
    if (inode && inode.nlink === 0) await this.destroyInode(h.ino)
  }

  // close(2) waits for flush: once it returns, the file's writes are committed to the store's log, so they
  // survive a killed daemon. fsync also forces data and log to the disk, so they survive a power loss.
  flush (fh: number): void {
    this.commitPending(this.handle(fh).ino)
  }

  async fsync (fh: number): Promise<void> {
    const ino = this.handle(fh).ino
    this.commitPending(ino)
    await this.wb.sync(ino)
    await this.syncMeta()
  }

  async read (fh: number, buf: Buffer, len: number, pos: number): Promise<number> {
    const ino = this.handle(fh).ino
    const inode = this.inode(ino)
    if (pos >= inode.size) return 0
    len = Math.min(len, inode.size - pos)
    const CS = this.chunkSize
    const first = Math.floor(pos / CS)
    const last = Math.floor((pos + len - 1) / CS)
    const jobs: Array<Promise<void>> = []
    for (let blk = first; blk <= last; blk++) {
      const bStart = blk * CS
      const from = Math.max(pos, bStart)
      const to = Math.min(pos + len, bStart + CS)
      jobs.push(this.readBlockInto(ino, blk, buf, from - pos, from - bStart, to - from))
    }
    // Every job ends before the read does, also when one fails: buf goes back to the FUSE layer then, which
    // reuses it for other requests.
    const failed = (await Promise.allSettled(jobs)).find(r => r.status === 'rejected')
    if (failed) throw (failed as PromiseRejectedResult).reason
    if (this.lastReadEnd.get(ino) === pos) this.readAhead(ino, last + 1, inode.size)
    this.lastReadEnd.set(ino, pos + len)
    return len
  }

  // A file read in order has its next chunks fetched before they are asked for, so a sequential read
  // overlaps partner reads instead of waiting on one at a time.
  private readAhead (ino: number, from: number, size: number): void {
    const end = Math.min(from + READAHEAD_CHUNKS, Math.ceil(size / this.chunkSize))
    // Chunks an earlier call already asked for are not looked up again.
    const issued = this.readAheadEnd.get(ino) ?? 0
    if (issued > from && issued <= end) from = issued
    this.readAheadEnd.set(ino, end)
    for (let blk = from; blk < end; blk++) {
      if (this.isDirtyBlock(ino, blk)) continue
      const chunk = this.meta.getExtent(ino, blk)
      if (chunk) this.disk.readChunk(chunk).catch(() => {})
    }
  }

  // Copies bytes [inBlock, inBlock + n) of file block blk into buf at off.
  private async readBlockInto (ino: number, blk: number, buf: Buffer, off: number, inBlock: number, n: number): Promise<void> {
    if (this.isDirtyBlock(ino, blk)) {
      await this.wb.read(ino, blk * this.chunkSize + inBlock, n, buf, off)
      return
    }
    const chunk = this.meta.getExtent(ino, blk)
    if (!chunk) {
      buf.fill(0, off, off + n)
      return
    }
    const plain = await this.disk.readChunk(chunk)
    const avail = Math.max(0, Math.min(n, plain.length - inBlock))
    if (avail > 0) plain.copy(buf, off, inBlock, inBlock + avail)
    if (avail < n) buf.fill(0, off + avail, off + n)
  }

  // The stored bytes of file block blk as far as a file of the given size reaches (zeros where the chunk is
  // shorter or absent). Bytes past the end of file need no image: the write-back store reads them as zeros.
  private async storedBlock (ino: number, blk: number, size: number): Promise<Buffer> {
    const out = Buffer.alloc(Math.max(0, Math.min(this.chunkSize, size - blk * this.chunkSize)))
    const chunk = this.meta.getExtent(ino, blk)
    if (chunk && out.length > 0) (await this.disk.readChunk(chunk)).copy(out)
    return out
  }

  private bump (ino: number, blk: number): void {
    let byBlk = this.gens.get(ino)
    if (!byBlk) {
      byBlk = new Map()
      this.gens.set(ino, byBlk)
    }
    byBlk.set(blk, ++this.genSeq)
  }

  genOf (ino: number, blk: number): number {
    return this.gens.get(ino)?.get(blk) ?? 0
  }

  forgetGen (ino: number, blk: number): void {
    const byBlk = this.gens.get(ino)
    if (!byBlk) return
    byBlk.delete(blk)
    if (byBlk.size === 0) this.gens.delete(ino)
  }

  private forgetGensFrom (ino: number, from: number): void {
    const byBlk = this.gens.get(ino)
    if (!byBlk) return
    for (const blk of byBlk.keys()) if (blk >= from) byBlk.delete(blk)
    if (byBlk.size === 0) this.gens.delete(ino)
  }

  // The runs of writes of closed files that ended (no write for PACK_IDLE_MS): they mean nothing to the
  // packer any more, and a new write starts a new run. An open file keeps its entry, and with it the
  // highest block written so far.
  forgetIdleWriters (now: number): void {
    for (const [ino, w] of this.writing) if (now - w.at >= PACK_IDLE_MS && !this.isOpen(ino)) this.writing.delete(ino)
  }

  async write (fh: number, buf: Buffer, len: number, pos: number): Promise<number> {
    const h = this.handle(fh)
    if (pos + len > MAX_FILE_BYTES) throw fsErr('EFBIG')
    if (len === 0) return 0
    await this.wb.waitForRoom()
    return this.withInode(h.ino, async () => {
      const ino = h.ino
      const CS = this.chunkSize
      const sizeNow = (): number => {
        const stored = this.meta.getInode(ino)
        if (!stored) throw fsErr('ENOENT')
        return Math.max(stored.size, this.pending.get(ino)?.size ?? 0)
      }
      // Size changes only under this inode's lock, so it holds across the awaits below.
      const size = sizeNow()
      if (h.flags & 0o2000) pos = size // O_APPEND
      const end = pos + len
      const first = Math.floor(pos / CS)
      const last = Math.floor((end - 1) / CS)
      // Bumped before anything is awaited: a packer commit landing during the awaits must not mark these
      // blocks clean with their old contents.
      for (let blk = first; blk <= last; blk++) this.bump(ino, blk)
      // A block becoming dirty gets its full current image first (zeros for a hole, whose write-back bytes
      // may be stale), unless this write covers every byte of it that the file holds. Images are fetched
      // first; everything after them runs without yielding, so no commit can slip in between.
      const images = new Map<number, Buffer>()
      for (let blk = first; blk <= last; blk++) {
        const bStart = blk * CS
        const covered = pos <= bStart && end >= Math.min(bStart + CS, size)
        if (!covered && !this.isDirtyBlock(ino, blk)) images.set(blk, await this.storedBlock(ino, blk, size))
      }
      const fresh: number[] = []
      for (let blk = first; blk <= last; blk++) if (!this.isDirtyBlock(ino, blk)) fresh.push(blk)
      if (fresh.length && this.liveBytes + this.wb.dirtyBytes + fresh.length * CS > this.disk.usableBytes()) {
        throw fsErr('ENOSPC')
      }
      for (const blk of fresh) {
        const image = images.get(blk)
        if (image && image.length > 0) this.wb.write(ino, image, blk * CS)
      }
      this.wb.write(ino, len === buf.length ? buf : buf.subarray(0, len), pos)
      // The metadata change waits in memory until close, fsync, another operation on the inode, or the
      // background loop commits it: one transaction per write would cost more than the write itself.
      const now = Date.now()
      let p = this.pending.get(ino)
      if (!p) {
        p = { size: sizeNow(), mtime: now, fresh: new Set() }
        this.pending.set(ino, p)
      }
      for (const blk of fresh) p.fresh.add(blk)
      if (end > p.size) p.size = end
      p.mtime = now
      for (let blk = first; blk <= last; blk++) this.bump(ino, blk)
      this.wb.adjust(fresh.length * CS)
      const w = this.writing.get(ino)
      const since = w && now - w.at < PACK_IDLE_MS ? w.since : now
      this.writing.set(ino, { at: now, maxBlk: Math.max(last, w?.maxBlk ?? 0), since })
      this.onChange()
      return len
    })
  }

  async truncate (path: string, size: number): Promise<void> {
    await this.truncateIno(this.resolve(path), size)
  }

  async ftruncate (fh: number, size: number): Promise<void> {
    await this.truncateIno(this.handle(fh).ino, size)
  }

  async truncateIno (ino: number, size: number): Promise<void> {
    if (size < 0) throw fsErr('EINVAL')
    if (size > MAX_FILE_BYTES) throw fsErr('EFBIG')
    const inode = this.inode(ino)
    if (isDir(inode.mode)) throw fsErr('EISDIR')
    if ((inode.mode & S_IFMT) !== S_IFREG) throw fsErr('EINVAL')
    await this.withInode(ino, async () => {
      const cur = this.inode(ino)
      const CS = this.chunkSize
      if (size < cur.size) {
        const keep = Math.ceil(size / CS)
        const partial = size % CS !== 0 ? Math.floor(size / CS) : -1
        // The block that keeps a partial tail must be dirty so its bytes past the new end read as zeros.
        let madeDirty = false
        if (partial >= 0 && !this.meta.isDirty(ino, partial) && this.meta.getExtent(ino, partial)) {
          await this.wb.write(ino, await this.storedBlock(ino, partial, cur.size), partial * CS)
          madeDirty = true
        }
        let dropped = 0
        this.meta.tx(() => {
          for (const e of this.meta.extentsFrom(ino, keep)) this.meta.unrefChunk(e.chunk)
          this.meta.delExtentsFrom(ino, keep)
          dropped = this.meta.delDirtyFrom(ino, keep)
          if (madeDirty) this.meta.addDirty(ino, partial)
        })
        this.wb.adjust((madeDirty ? CS : 0) - dropped * CS)
        this.forgetGensFrom(ino, keep)
        if (partial >= 0) this.bump(ino, partial)
        await this.wb.truncate(ino, size)
        this.refreshLiveBytes()
      }
      const now = Date.now()
      const after = this.inode(ino)
      after.size = size
      after.mtime = after.ctime = now
      // In a transaction, so that inline write-back data cut above commits with the new size.
      this.meta.tx(() => this.meta.updateInode(after))
    })
    this.onChange()
  }

  // Deletes an inode's write-back file once everything in it is stored in the log and no handle or
  // pending write can add to it, so the store holds only what still waits to be packed.
  async dropWriteback (ino: number): Promise<void> {
    await this.withInode(ino, async () => {
      if (this.isOpen(ino) || this.pending.has(ino) || this.meta.dirtyCount(ino) > 0) return
      await this.wb.remove(ino)
    })
  }

  // File handles open through the mount (released ones go once the daemon took their release).
  openHandles (): number {
    return this.handles.size
  }

  isOpen (ino: number): boolean {
    return (this.openCount.get(ino) ?? 0) > 0
  }
}

export { FsError }

// The filesystem served through the kernel session (src/fuse/kernel.ts): requests by inode number,
// answered on the main thread. One kernel inode per file, so hard links share attributes and cached data
// as on any Linux filesystem, and an open file whose last name is gone is simply an inode without a name.
import { KernelSession, MAX_REQUEST_DATA, SETATTR, FOPEN_KEEP_CACHE, type Caller, type DirEntry, type KernelOps } from './kernel.js'
import { kernelIo } from './libfuse.js'
import { CoopError, fsErr } from '../errors.js'
import type { Filesystem, Owner } from '../fs/filesystem.js'
import type { Mounted, MountOptions } from './mount.js'

// Entries handed to the session per READDIR; it sends what fits the kernel's buffer.
const READDIR_BATCH = 256
// Open files whose size and modification time are remembered, to keep the kernel's cached pages of a file
// that did not change since it was last opened (libfuse's auto_cache).
const CACHE_SEEN_ENTRIES = 100_000
// Linux asks for this attribute before writing to a file; while no file has one, the answer needs no query.
const CAPABILITY_XATTR = 'security.capability'
const S_ISUID = 0o4000
const S_ISGID = 0o2000
const S_IXGRP = 0o010
const isDir = (mode: number): boolean => (mode & 0o170000) === 0o040000

export async function mountKernel (fs: Filesystem, { mountpoint, fsname, log }: MountOptions): Promise<Mounted> {
  const io = kernelIo()
  if (!io) throw new CoopError('ENOFUSE', 'the coopfs_preload addon is not built (run npm install again): it is needed to answer the kernel on the main thread')
  const owner = (c: Caller): Owner => ({ uid: c.uid, gid: c.gid })
  // Open directories: their listing, and whether any of it was served (a read from offset 0 after that is
  // a rewinddir, which reads the directory anew, as POSIX asks).
  const listings = new Map<number, { ino: number, entries: DirEntry[], served: boolean }>()
  const listing = (ino: number): DirEntry[] => {
    const entries: DirEntry[] = [{ ino, name: '.', mode: 0o040000 }, { ino: fs.parentDir(ino), name: '..', mode: 0o040000 }]
    for (const e of fs.listDir(ino)) entries.push({ ino: e.ino, name: e.name, mode: 0 })
    return entries
  }
  let nextListing = 1
  const cacheSeen = new Map<number, string>()
  let capabilities = fs.anyHasXattr(CAPABILITY_XATTR)
  // The session takes on the kernel's part in dropping privileges (handle_killpriv_v2, src/fuse/kernel.ts).
  const dropCapability = (ino: number): void => {
    if (!capabilities) return
    try {
      fs.getxattrIno(ino, CAPABILITY_XATTR)
    } catch {
      return
    }
    fs.removexattrIno(ino, CAPABILITY_XATTR)
  }
  const dropPrivileges = (ino: number): void => {
    const mode = fs.attrOf(ino).mode & 0o7777
    let kept = mode & ~S_ISUID
    if ((kept & (S_ISGID | S_IXGRP)) === (S_ISGID | S_IXGRP)) kept &= ~S_ISGID
    if (kept !== mode) fs.chmodIno(ino, kept)
    dropCapability(ino)
  }

  const ops: KernelOps = {
    lookup: (_c, parent, name) => fs.attrOf(fs.lookupAt(parent, name)),
    getattr: (_c, ino) => fs.attrOf(ino),
    setattr: (_c, ino, s) => {
      if (s.valid & SETATTR.MODE) fs.chmodIno(ino, s.mode)
      if (s.valid & (SETATTR.UID | SETATTR.GID)) {
        fs.chownIno(ino, (s.valid & SETATTR.UID) !== 0 ? s.uid : -1, (s.valid & SETATTR.GID) !== 0 ? s.gid : -1)
        // As Linux does for any caller: a file changing hands loses set-user-ID, set-group-ID when the
        // group may execute it, and its capabilities.
        if (!isDir(fs.attrOf(ino).mode)) dropPrivileges(ino)
      }
      // A truncate by a caller without CAP_FSETID drops the bits too (the kernel says so); capabilities go
      // with any change of size.
      if (s.valid & SETATTR.SIZE) {
        if (s.valid & SETATTR.KILL_SUIDGID) dropPrivileges(ino)
        else dropCapability(ino)
      }
      const times = (): ReturnType<Filesystem['attrOf']> => {
        if (s.valid & (SETATTR.ATIME | SETATTR.MTIME)) {
          const now = Date.now()
          const at = (s.valid & SETATTR.ATIME) === 0 ? null : (s.valid & SETATTR.ATIME_NOW) !== 0 ? now : s.atime
          const mt = (s.valid & SETATTR.MTIME) === 0 ? null : (s.valid & SETATTR.MTIME_NOW) !== 0 ? now : s.mtime
          fs.setTimes(ino, at, mt)
        }
        return fs.attrOf(ino)
      }
      if ((s.valid & SETATTR.SIZE) === 0) return times()
      const cut = (s.valid & SETATTR.FH) !== 0 ? fs.ftruncate(s.fh, s.size) : fs.truncateIno(ino, s.size)
      return cut.then(times)
    },
    readlink: (_c, ino) => fs.readlinkIno(ino),
    symlink: (c, parent, name, target) => fs.attrOf(fs.symlinkAt(parent, name, target, owner(c))),
    mknod: (c, parent, name, mode, rdev) => fs.attrOf(fs.mknodAt(parent, name, mode, rdev, owner(c))),
    mkdir: (c, parent, name, mode) => fs.attrOf(fs.mkdirAt(parent, name, mode, owner(c))),
    unlink: (_c, parent, name) => fs.unlinkAt(parent, name),
    rmdir: (_c, parent, name) => fs.rmdirAt(parent, name),
    rename: (_c, parent, name, newParent, newName, flags) => fs.renameAt(parent, name, newParent, newName, flags),
    link: (_c, ino, newParent, newName) => {
      fs.linkAt(ino, newParent, newName)
      return fs.attrOf(ino)
    },
    open: (_c, ino, flags) => {
      const fh = fs.openIno(ino, flags)
      const a = fs.attrOf(ino)
      const seen = `${a.mtime}:${a.size}`
      const keep = cacheSeen.get(ino) === seen
      if (cacheSeen.size >= CACHE_SEEN_ENTRIES) cacheSeen.clear()
      cacheSeen.set(ino, seen)
      return { fh, flags: keep ? FOPEN_KEEP_CACHE : 0 }
    },
    read: (fh, _ino, buf, pos) => fs.read(fh, buf, buf.length, pos),
    // The filesystem drops set-user-ID and set-group-ID on every write itself.
    write: (fh, ino, data, pos) => {
      dropCapability(ino)
      return fs.write(fh, data, data.length, pos)
    },
    statfs: () => fs.statfs(),
    release: fh => fs.release(fh),
    fsync: fh => fs.fsync(fh),
    flush: fh => fs.flush(fh),
    setxattr: (_c, ino, name, value, flags) => {
      if (name === CAPABILITY_XATTR) capabilities = true
      fs.setxattrIno(ino, name, value, flags)
    },
    getxattr: (_c, ino, name) => {
      if (name === CAPABILITY_XATTR && !capabilities) throw fsErr('ENODATA')
      return fs.getxattrIno(ino, name)
    },
    listxattr: (_c, ino) => fs.listxattrIno(ino),
    removexattr: (_c, ino, name) => fs.removexattrIno(ino, name),
    // A listing is read from the store when the directory is opened and served from there, so offsets stay
    // valid while names come and go; a rewinddir reads it anew (see listings).
    opendir: (_c, ino) => {
      const entries = listing(ino)
      let fh = nextListing
      while (listings.has(fh)) fh = fh >= 0x7fffffff ? 1 : fh + 1
      nextListing = fh >= 0x7fffffff ? 1 : fh + 1
      listings.set(fh, { ino, entries, served: false })
      return { fh }
    },
    readdir: (fh, _ino, offset) => {
      const open = listings.get(fh)
      if (!open) return []
      if (offset === 0 && open.served) open.entries = listing(open.ino)
      open.served = true
      return open.entries.slice(offset, offset + READDIR_BATCH)
    },
    releasedir: fh => { listings.delete(fh) },
    access: (_c, ino) => { fs.attrOf(ino) },
    create: (c, parent, name, mode, flags) => {
      const { ino, fh } = fs.createAt(parent, name, mode, owner(c), flags)
      const attr = fs.attrOf(ino)
      cacheSeen.set(ino, `${attr.mtime}:${attr.size}`)
      return { attr, opened: { fh } }
    }
  }

  const options = [
    `fsname=${fsname.replace(/[,\\]/g, '\\$&')}`,
    // Reads no larger than the session's buffers, whatever the page size.
    `max_read=${MAX_REQUEST_DATA}`,
    'subtype=coopfs',
    'auto_unmount',
    'default_permissions',
    ...(process.getuid?.() === 0 ? ['allow_other'] : [])
  ].join(',')
  const fd = io.kernelMount(mountpoint, options)
  const session = new KernelSession(fd, ops, io, { log, pageSize: io.pageSize?.() })
  session.start()
  const finish = async (): Promise<void> => {
    await session.settle()
  }
  return {
    inFlight: () => session.inFlight(),
    settle: () => session.settle(),
    finish,
    status: () => ({ layer: 'kernel', addon: true, requestBytes: session.requestBytes })
  }
}

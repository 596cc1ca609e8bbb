// The FUSE layer: fuse-native callbacks become Filesystem calls, errors become errno values. Nothing else.
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { deferReleases, fuseStatus, loadFuse, noteCreated, preloadActive, setNoCapabilities, takeReleased } from './libfuse.js'
import type { Filesystem } from '../fs/filesystem.js'
import { ERRNO, errnoOf } from './errno.js'

// Mount options fuse-native has no switch for: big writes (about 10x faster sequential writes), our own
// inode numbers (hard links show one inode), and the kernel's permission checks from mode bits.
const EXTRA_OPTIONS = ['big_writes', 'use_ino', 'default_permissions']
// libfuse 2's path API gives each name of a hard-linked file a kernel inode of its own: with attributes
// cached in the kernel, a link, unlink, chmod or chown through one name would show through the others only
// when the cache expired (POSIX test suite: 52 failures). The preload addon gives a timeout of 0 to the
// attributes of files with more than one kernel inode, and makes a new link drop the cached attributes of
// the name it was made from (native/preload.c); without the addon the whole mount has no attribute cache,
// which makes every directory of every path walked a request to the daemon (creating small files: a fifth
// slower in one run on a busy machine, a few percent in another).
const NO_ATTR_CACHE = ['attr_timeout=0']
const DEBUG_LOG = process.env.COOPFS_FUSE_LOG === '1'
const CAPABILITY_XATTR = 'security.capability'

type Cb = (...args: any[]) => void

// fuse-native 2.2.6's C glue hands utimens the access time twice (it converts l->atime for both arguments),
// so every utimensat(2) set the modification time to the access time: cp -a, rsync -a and tar lost every
// mtime. The glue's per-thread struct, which holds the real mtime, is a Buffer this process allocated
// (fuse-native's _malloc) and arrives as each handler's first argument. Offsets of its size_t atime and
// mtime fields on 64-bit Linux; every call checks that atime is where expected before mtime is read there.
const LOCALS_ATIME_OFFSET = 104
const LOCALS_MTIME_OFFSET = 112

function opUtimens (): number {
  try {
    const req = createRequire(import.meta.url)
    const dir = dirname(req.resolve('fuse-native/package.json'))
    const binding = createRequire(join(dir, 'index.js'))('node-gyp-build')(dir) as { op_utimens?: number }
    if (typeof binding.op_utimens === 'number') return binding.op_utimens
  } catch {}
  return 12 // op_utimens in fuse-native 2.2's glue
}

// The mtime the kernel asked for, as fuse-native's (low, high) pair, or null when the struct does not
// look as expected (then the old behaviour stays: both times from atime).
function realMtime (locals: unknown, atimeLow: number, atimeHigh: number): [number, number] | null {
  if (!Buffer.isBuffer(locals) || locals.length < LOCALS_MTIME_OFFSET + 8) return null
  const atime = BigInt(atimeLow) + (BigInt(atimeHigh) << 32n)
  if (locals.readBigUInt64LE(LOCALS_ATIME_OFFSET) !== atime) return null
  const mtime = locals.readBigUInt64LE(LOCALS_MTIME_OFFSET)
  return [Number(mtime & 0xffffffffn), Number(mtime >> 32n)]
}

export interface MountOptions {
  mountpoint: string
  fsname: string
  log: (line: string) => void
}

export interface Mounted {
  // FUSE requests the daemon is working on, by operation (for the log when an unmount hangs).
  inFlight: () => Record<string, number>
  // Handles the releases the addon answered that no request took yet, and waits for them.
  settle: () => Promise<void>
  // Once the kernel let go of the mount: settles, and takes no more releases. One the addon answers after
  // that is left to the next start, which removes files left without a name and write-back files of
  // stored data (the same as for releases the kernel never sent).
  finish: () => Promise<void>
  // What status --json shows under "fuse" (docs/FORMAT.md), besides openHandles.
  status: () => Record<string, unknown>
}

// How often the releases the addon answered are taken, besides before each request.
const RELEASE_TAKE_MS = 50

export async function mountFilesystem (fs: Filesystem, { mountpoint, fsname, log }: MountOptions): Promise<Mounted> {
  const Fuse = loadFuse()
  // Linux asks for this attribute before every write; while no file has one, the preload addon answers.
  setNoCapabilities(!fs.anyHasXattr(CAPABILITY_XATTR))

  // Releases answered by the addon (native/preload.c, release_noted) are taken before each request, which
  // may depend on them (an unlink of the file, say), and on a timer. The addon's list is the process's:
  // one mount per process.
  const releasing = new Set<Promise<void>>()
  const releaseFailed = (err: unknown): void => log(`release: ${(err as Error)?.message ?? String(err)}`)
  const takeReleases = (): void => {
    let fhs: number[] | null
    try {
      fhs = takeReleased()
    } catch (err) {
      return releaseFailed(err)
    }
    if (fhs === null) return
    for (const fh of fhs) {
      const done: Promise<void> = fs.release(fh).catch(releaseFailed).finally(() => releasing.delete(done))
      releasing.add(done)
    }
  }
  const releaseTimer = deferReleases(true) ? setInterval(takeReleases, RELEASE_TAKE_MS) : null
  releaseTimer?.unref()

  // Requests answered asynchronously and not yet answered, by operation.
  const pending = new Map<string, number>()
  const settled = (name: string): void => {
    const n = (pending.get(name) ?? 1) - 1
    if (n > 0) pending.set(name, n)
    else pending.delete(name)
  }
  // Runs an operation and reports its outcome: ok(result) on success, the errno otherwise.
  const run = (name: string, cb: Cb, fn: () => unknown, ok: (cb: Cb, v: any) => void = c => c(0)): void => {
    takeReleases()
    let out: unknown
    try {
      out = fn()
    } catch (err) {
      return fail(name, cb, err)
    }
    if (!(out instanceof Promise)) return ok(cb, out)
    pending.set(name, (pending.get(name) ?? 0) + 1)
    out.then(v => { settled(name); ok(cb, v) }, err => { settled(name); fail(name, cb, err) })
  }
  const fail = (name: string, cb: Cb, err: unknown): void => {
    const errno = errnoOf(err)
    if (errno === -ERRNO.EIO || DEBUG_LOG) log(`${name}: ${(err as Error)?.message ?? String(err)}`)
    cb(errno)
  }
  const value = (cb: Cb, v: unknown): void => cb(0, v)
  const count = (cb: Cb, v: number): void => cb(v)

  const ops: Record<string, Cb> = {
    init: cb => cb(0),
    access: (path, _mode, cb) => run('access', cb, () => fs.access(path)),
    statfs: (_path, cb) => run('statfs', cb, () => fs.statfs(), value),
    getattr: (path, cb) => run('getattr', cb, () => fs.getattr(path), value),
    fgetattr: (path, _fd, cb) => run('getattr', cb, () => fs.getattr(path), value),
    readdir: (path, cb) => run('readdir', cb, () => fs.readdir(path), value),
    opendir: (path, _flags, cb) => run('opendir', cb, () => fs.opendir(path), value),
    releasedir: (_path, _fd, cb) => cb(0),
    fsyncdir: (_path, _datasync, _fd, cb) => cb(0),
    mkdir: (path, mode, cb) => run('mkdir', cb, () => fs.mkdir(path, mode)),
    rmdir: (path, cb) => run('rmdir', cb, () => fs.rmdir(path)),
    mknod: (path, mode, dev, cb) => run('mknod', cb, () => fs.mknod(path, mode, dev)),
    create: (path, mode, cb) => run('create', cb, () => {
      const fh = fs.create(path, mode)
      // Only saves libfuse a request: the file exists and is open now, so nothing here may fail the create.
      try {
        noteCreated(fh, fs.attrOfHandle(fh))
      } catch {}
      return fh
    }, value),
    open: (path, flags, cb) => run('open', cb, () => fs.open(path, flags), value),
    release: (_path, fd, cb) => run('release', cb, () => fs.release(fd)),
    flush: (_path, fd, cb) => run('flush', cb, () => fs.flush(fd)),
    fsync: (_path, _datasync, fd, cb) => run('fsync', cb, () => fs.fsync(fd)),
    read: (_path, fd, buf, len, pos, cb) => run('read', cb, () => fs.read(fd, buf, len, pos), count),
    write: (_path, fd, buf, len, pos, cb) => run('write', cb, () => fs.write(fd, buf, len, pos), count),
    truncate: (path, size, cb) => run('truncate', cb, () => fs.truncate(path, size)),
    ftruncate: (_path, fd, size, cb) => run('ftruncate', cb, () => fs.ftruncate(fd, size)),
    unlink: (path, cb) => run('unlink', cb, () => fs.unlink(path)),
    rename: (src, dst, cb) => run('rename', cb, () => fs.rename(src, dst)),
    link: (src, dst, cb) => run('link', cb, () => fs.link(src, dst)),
    symlink: (target, path, cb) => run('symlink', cb, () => fs.symlink(target, path)),
    readlink: (path, cb) => run('readlink', cb, () => fs.readlink(path), value),
    chmod: (path, mode, cb) => run('chmod', cb, () => fs.chmod(path, mode)),
    chown: (path, uid, gid, cb) => run('chown', cb, () => fs.chown(path, uid, gid)),
    utimens: (path, atime, mtime, cb) => run('utimens', cb, () => fs.utimens(path, atime, mtime)),
    setxattr: (path, name, value, _position, flags, cb) => run('setxattr', cb, () => {
      if (name === CAPABILITY_XATTR) setNoCapabilities(false)
      return fs.setxattr(path, name, value, flags)
    }),
    getxattr: (path, name, _position, cb) => run('getxattr', cb, () => fs.getxattr(path, name), (c, v) => c(0, v)),
    listxattr: (path, cb) => run('listxattr', cb, () => fs.listxattr(path), value),
    removexattr: (path, name, cb) => run('removexattr', cb, () => fs.removexattr(path, name))
  }

  const OP_UTIMENS = opUtimens()

  class CoopFuse extends Fuse {
    constructor (mnt: string, handlers: Record<string, Cb>, opts: ConstructorParameters<typeof Fuse>[2]) {
      super(mnt, handlers, opts)
      const table = (this as unknown as { _handlers: Cb[] })._handlers
      const inner = table[OP_UTIMENS]
      if (typeof inner !== 'function') return
      table[OP_UTIMENS] = (locals: unknown, op: number, p: string, aLow: number, aHigh: number, mLow: number, mHigh: number) => {
        const m = realMtime(locals, aLow, aHigh)
        if (m) [mLow, mHigh] = m
        inner(locals, op, p, aLow, aHigh, mLow, mHigh)
      }
    }

    protected override _fuseOptions (): string {
      const base = super._fuseOptions()
      const extra = [...EXTRA_OPTIONS, ...(preloadActive() ? [] : NO_ATTR_CACHE)].join(',')
      return base ? `${base},${extra}` : `-o${extra}`
    }

    // fuse-native answers size queries of extended attributes loosely; these follow getxattr(2) and
    // listxattr(2): size 0 asks for the length, a buffer too small gets ERANGE.
    _op_getxattr (signal: Cb, path: string, name: string, valueBuf: Buffer): void {
      run('getxattr', (err: number, value?: Buffer) => {
        if (err) return signal(err, valueBuf.buffer)
        if (valueBuf.length === 0) return signal(value!.length, valueBuf.buffer)
        if (value!.length > valueBuf.length) return signal(-ERRNO.ERANGE, valueBuf.buffer)
        value!.copy(valueBuf)
        signal(value!.length, valueBuf.buffer)
      }, () => fs.getxattr(path, name), (c, v) => c(0, v))
    }

    _op_listxattr (signal: Cb, path: string, listBuf: Buffer): void {
      run('listxattr', (err: number, names?: string[]) => {
        if (err) return signal(err, listBuf.buffer)
        const packed = Buffer.from(names!.map(n => n + '\0').join(''))
        if (listBuf.length === 0) return signal(packed.length, listBuf.buffer)
        if (packed.length > listBuf.length) return signal(-ERRNO.ERANGE, listBuf.buffer)
        packed.copy(listBuf)
        signal(packed.length, listBuf.buffer)
      }, () => fs.listxattr(path), (c, v) => c(0, v))
    }
  }

  const fuse = new CoopFuse(mountpoint, ops, {
    fsname,
    subtype: 'coopfs',
    autoUnmount: true,
    allowOther: process.getuid?.() === 0,
    autoCache: true,
    timeout: false
  })
  try {
    await new Promise<void>((resolve, reject) => fuse.mount(err => err ? reject(err) : resolve()))
  } catch (err) {
    if (releaseTimer) clearInterval(releaseTimer)
    throw err
  }
  const addon = fuseStatus()
  if (!addon.addon) log(addon.note!)
  const settle = async (): Promise<void> => {
    takeReleases()
    await Promise.all([...releasing])
  }
  const finish = async (): Promise<void> => {
    if (releaseTimer) clearInterval(releaseTimer)
    await settle()
  }
  return {
    inFlight: () => Object.fromEntries(pending),
    settle,
    finish,
    status: () => ({ layer: 'fuse-native', ...fuseStatus() })
  }
}

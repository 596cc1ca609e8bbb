// The kernel's FUSE protocol, read and answered on the main thread. The /dev/fuse descriptor comes from
// libfuse's fuse_mount (fusermount when not root) through the preload addon, which also wakes this thread
// when a request waits (native/preload.c, watchFuse). Each request is decoded here, handed to the
// operations as inode numbers and names, and answered as soon as the operation's value (or promise)
// settles: no thread hand-over on the way in or out. docs/DESIGN-NOTES.md ("The FUSE layers") gives the
// protocol version, what INIT offers, and why this layer.
import { closeSync } from 'node:fs'
import { errnoOf } from './errno.js'

// Protocol 7.33: large requests (max_pages), RENAME2, privileges dropped by the filesystem
// (handle_killpriv_v2), and no feature this session does not handle. The kernel speaks the older of its
// version and this one; every request and reply used here has had its layout since 7.12 (Linux 2.6.31).
export const KERNEL_MAJOR = 7
export const KERNEL_MINOR = 33
const OLDEST_KERNEL_MINOR = 12
const IN_HEADER = 40
const OUT_HEADER = 16
const ENTRY_OUT = 128
const ATTR_OUT = 104
const OPEN_OUT = 16
const PAGE = 4096
// Largest write (and read) request offered at INIT, and the buffer every request is read into.
export const MAX_REQUEST_DATA = 1024 * 1024
const IN_BUFFER = MAX_REQUEST_DATA + PAGE
// Requests read per wake-up before the event loop gets its turn back (the descriptor stays readable, so
// the poll fires again).
const REQUESTS_PER_TURN = 64
// Request-sized buffers kept for reuse: a write's data is handed over in the buffer the request was read
// into, and a large read is answered from one, without a copy and without fresh pages for each (a fresh
// megabyte costs its page faults on every request: writing through a copy ran at half the rate).
const SPARE_BUFFERS = 8
// Reads up to this size get a buffer of their own, and writes up to this size a copy of their data.
const SMALL_READ = 64 * 1024
const SMALL_WRITE = 64 * 1024

const EAGAIN = 11
const ENOENT = 2
const EINTR = 4
const ENODEV = 19
const ENOSYS = 38
const ERANGE = 34
const EINVAL = 22

const OP = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  RENAME2: 45
} as const

export const OP_NAMES: Record<number, string> = Object.fromEntries(Object.entries(OP).map(([k, v]) => [v, k.toLowerCase()]))

// INIT flags (include/uapi/linux/fuse.h).
const INIT_ASYNC_READ = 1 << 0
const INIT_BIG_WRITES = 1 << 5
const INIT_MAX_PAGES = 1 << 22
// The filesystem drops set-user-ID, set-group-ID and security.capability on write, truncate and chown,
// so the kernel no longer asks for security.capability before every write.
const INIT_HANDLE_KILLPRIV_V2 = 1 << 28

// SETATTR's valid bits.
export const SETATTR = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  CTIME: 1 << 10,
  // With handle_killpriv_v2: a truncate by a caller without CAP_FSETID.
  KILL_SUIDGID: 1 << 11
} as const

// OPEN's reply flags.
export const FOPEN_DIRECT_IO = 1 << 0
export const FOPEN_KEEP_CACHE = 1 << 1

// What the kernel is told about a file. Times in milliseconds since the epoch.
export interface KernelAttr {
  ino: number
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: number
  size: number
  blocks: number
  blksize: number
  atime: number
  mtime: number
  ctime: number
}

export interface KernelStatFs {
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  bsize: number
  frsize: number
  namemax: number
}

export interface Caller {
  uid: number
  gid: number
  pid: number
}

export interface SetAttr {
  valid: number
  fh: number
  size: number
  mode: number
  uid: number
  gid: number
  // Milliseconds; with ATIME_NOW or MTIME_NOW in valid the kernel asked for the current time instead.
  atime: number
  mtime: number
}

export interface Opened {
  fh: number
  flags?: number
}

export interface DirEntry {
  ino: number
  name: string
  mode: number
}

type Maybe<T> = T | Promise<T>

// The operations behind the session. Inode numbers are the kernel's node ids (1 is the root). A thrown
// error or a rejected promise carrying a Linux errno name (err.code) becomes that error's reply; anything
// else becomes EIO. An operation left out answers ENOSYS.
export interface KernelOps {
  lookup: (caller: Caller, parent: number, name: string) => Maybe<KernelAttr>
  forget?: (ino: number, lookups: number) => void
  getattr: (caller: Caller, ino: number, fh: number | null) => Maybe<KernelAttr>
  setattr?: (caller: Caller, ino: number, set: SetAttr) => Maybe<KernelAttr>
  readlink?: (caller: Caller, ino: number) => Maybe<string>
  symlink?: (caller: Caller, parent: number, name: string, target: string) => Maybe<KernelAttr>
  mknod?: (caller: Caller, parent: number, name: string, mode: number, rdev: number) => Maybe<KernelAttr>
  mkdir?: (caller: Caller, parent: number, name: string, mode: number) => Maybe<KernelAttr>
  unlink?: (caller: Caller, parent: number, name: string) => Maybe<void>
  rmdir?: (caller: Caller, parent: number, name: string) => Maybe<void>
  rename?: (caller: Caller, parent: number, name: string, newParent: number, newName: string, flags: number) => Maybe<void>
  link?: (caller: Caller, ino: number, newParent: number, newName: string) => Maybe<KernelAttr>
  open?: (caller: Caller, ino: number, flags: number) => Maybe<Opened>
  // Reads into buf (the request's size) and returns how many bytes it holds.
  read?: (fh: number, ino: number, buf: Buffer, pos: number) => Maybe<number>
  // data lies in the buffer the request was read into: it stays as it is until the call returns or its
  // promise settles, and must be copied to be kept longer.
  write?: (fh: number, ino: number, data: Buffer, pos: number) => Maybe<number>
  statfs?: (ino: number) => Maybe<KernelStatFs>
  release?: (fh: number, ino: number) => Maybe<void>
  fsync?: (fh: number, ino: number, datasync: boolean) => Maybe<void>
  setxattr?: (caller: Caller, ino: number, name: string, value: Buffer, flags: number) => Maybe<void>
  getxattr?: (caller: Caller, ino: number, name: string) => Maybe<Buffer>
  listxattr?: (caller: Caller, ino: number) => Maybe<string[]>
  removexattr?: (caller: Caller, ino: number, name: string) => Maybe<void>
  flush?: (fh: number, ino: number) => Maybe<void>
  opendir?: (caller: Caller, ino: number, flags: number) => Maybe<Opened>
  // Entries from index `offset` on; an empty list ends the listing.
  readdir?: (fh: number, ino: number, offset: number) => Maybe<DirEntry[]>
  releasedir?: (fh: number, ino: number) => Maybe<void>
  fsyncdir?: (fh: number, ino: number, datasync: boolean) => Maybe<void>
  access?: (caller: Caller, ino: number, mask: number) => Maybe<void>
  create?: (caller: Caller, parent: number, name: string, mode: number, flags: number) => Maybe<{ attr: KernelAttr, opened: Opened }>
  destroy?: () => void
}

export interface AddonIo {
  fuseRead: (fd: number, buf: Buffer) => number
  fuseWrite: (fd: number, buf: Buffer, len: number) => number
  watchFuse: (fd: number, onReadable: () => void) => void
  unwatchFuse: () => void
}

export interface SessionOptions {
  // Seconds the kernel may keep a name's entry and a file's attributes.
  entryTimeout?: number
  attrTimeout?: number
  log?: (line: string) => void
  // Called once the kernel let go of the connection (unmounted).
  onGone?: () => void
  // The system's page size: max_pages counts pages of it (4096 when not given).
  pageSize?: number
}

export class KernelSession {
  private inBuf: Buffer = Buffer.allocUnsafeSlow(IN_BUFFER)
  private readonly spare: Buffer[] = []
  private out = Buffer.allocUnsafe(PAGE)
  private readonly pageSize: number
  private readonly entryValid: number
  private readonly attrValid: number
  private readonly log: (line: string) => void
  private readonly onGone: () => void
  private gone = false
  private watching = false
  // Requests answered asynchronously and not yet answered, by operation (for the log when a stop hangs).
  private readonly pending = new Map<string, number>()
  private readonly running = new Set<Promise<unknown>>()
  private maxWrite = 0

  constructor (private readonly fd: number, private readonly ops: KernelOps, private readonly io: AddonIo, opts: SessionOptions = {}) {
    this.pageSize = opts.pageSize ?? PAGE
    this.entryValid = opts.entryTimeout ?? 1
    this.attrValid = opts.attrTimeout ?? 1
    this.log = opts.log ?? (() => {})
    this.onGone = opts.onGone ?? (() => {})
  }

  start (): void {
    this.io.watchFuse(this.fd, () => this.drain())
    this.watching = true
  }

  stop (): void {
    if (!this.watching) return
    this.watching = false
    this.io.unwatchFuse()
  }

  inFlight (): Record<string, number> {
    return Object.fromEntries(this.pending)
  }

  // Waits for the operations under way (their answers go nowhere once the kernel let go).
  async settle (): Promise<void> {
    while (this.running.size > 0) await Promise.allSettled([...this.running])
  }


  private drain (): void {
    for (let i = 0; i < REQUESTS_PER_TURN && this.watching; i++) {
      const n = this.io.fuseRead(this.fd, this.inBuf)
      if (n === -EAGAIN) return
      if (n === -EINTR || n === -ENOENT) continue // ENOENT: the request was interrupted before it was read
      if (n === -ENODEV || n === 0) return this.lost()
      if (n < 0) {
        this.log(`fuse: reading a request failed (errno ${-n})`)
        return this.lost()
      }
      try {
        this.dispatch(n)
      } catch (err) {
        // A request this session could not take apart or answer: the caller gets EIO, the log says why.
        this.log(`fuse: request ${OP_NAMES[this.inBuf.readUInt32LE(4)] ?? this.inBuf.readUInt32LE(4)} failed: ${(err as Error)?.message ?? String(err)}`)
        if (n >= IN_HEADER) this.replyError(this.inBuf.readBigUInt64LE(8), 5)
      }
    }
  }

  // The kernel let go (or the descriptor failed): no more requests, and the descriptor is closed, so that
  // a connection still alive fails at once instead of waiting for answers that will not come.
  private lost (): void {
    if (this.gone) return
    this.gone = true
    this.stop()
    try {
      closeSync(this.fd)
    } catch {}
    this.onGone()
  }

  // ---- replies ----

  private room (bytes: number): Buffer {
    if (this.out.length < bytes) this.out = Buffer.allocUnsafe(Math.max(bytes, this.out.length * 2))
    return this.out
  }

  private send (unique: bigint, error: number, buf: Buffer, len: number): void {
    buf.writeUInt32LE(len, 0)
    buf.writeInt32LE(error, 4)
    buf.writeBigUInt64LE(unique, 8)
    const r = this.io.fuseWrite(this.fd, buf, len)
    // ENOENT: the request was interrupted and is gone; ENODEV: the mount is gone.
    if (r < 0 && r !== -ENOENT && r !== -ENODEV) this.log(`fuse: a reply was refused (errno ${-r})`)
  }

  private replyError (unique: bigint, errno: number): void {
    this.send(unique, -errno, this.room(OUT_HEADER), OUT_HEADER)
  }

  private replyEmpty (unique: bigint): void {
    this.send(unique, 0, this.room(OUT_HEADER), OUT_HEADER)
  }

  private putAttr (b: Buffer, o: number, a: KernelAttr): void {
    b.writeBigUInt64LE(BigInt(a.ino), o)
    b.writeBigUInt64LE(BigInt(a.size), o + 8)
    b.writeBigUInt64LE(BigInt(a.blocks), o + 16)
    putTime(b, o + 24, o + 48, a.atime)
    putTime(b, o + 32, o + 52, a.mtime)
    putTime(b, o + 40, o + 56, a.ctime)
    b.writeUInt32LE(a.mode >>> 0, o + 60)
    b.writeUInt32LE(a.nlink >>> 0, o + 64)
    b.writeUInt32LE(a.uid >>> 0, o + 68)
    b.writeUInt32LE(a.gid >>> 0, o + 72)
    b.writeUInt32LE(a.rdev >>> 0, o + 76)
    b.writeUInt32LE(a.blksize >>> 0, o + 80)
    b.writeUInt32LE(0, o + 84)
  }

  private putEntry (b: Buffer, o: number, a: KernelAttr): void {
    b.writeBigUInt64LE(BigInt(a.ino), o)
    b.writeBigUInt64LE(0n, o + 8) // generation (used by NFS export only, which this mount does not offer)
    putValid(b, o + 16, o + 32, this.entryValid)
    putValid(b, o + 24, o + 36, this.attrValid)
    this.putAttr(b, o + 40, a)
  }

  private replyEntry (unique: bigint, a: KernelAttr): void {
    const b = this.room(OUT_HEADER + ENTRY_OUT)
    this.putEntry(b, OUT_HEADER, a)
    this.send(unique, 0, b, OUT_HEADER + ENTRY_OUT)
  }

  private replyAttr (unique: bigint, a: KernelAttr): void {
    const b = this.room(OUT_HEADER + ATTR_OUT)
    putValid(b, OUT_HEADER, OUT_HEADER + 8, this.attrValid)
    b.writeUInt32LE(0, OUT_HEADER + 12)
    this.putAttr(b, OUT_HEADER + 16, a)
    this.send(unique, 0, b, OUT_HEADER + ATTR_OUT)
  }

  private putOpen (b: Buffer, o: number, opened: Opened): void {
    b.writeBigUInt64LE(BigInt(opened.fh), o)
    b.writeUInt32LE(opened.flags ?? 0, o + 8)
    b.writeUInt32LE(0, o + 12)
  }

  private replyOpen (unique: bigint, opened: Opened): void {
    const b = this.room(OUT_HEADER + OPEN_OUT)
    this.putOpen(b, OUT_HEADER, opened)
    this.send(unique, 0, b, OUT_HEADER + OPEN_OUT)
  }

  private replyBytes (unique: bigint, data: Buffer): void {
    const b = this.room(OUT_HEADER + data.length)
    data.copy(b, OUT_HEADER)
    this.send(unique, 0, b, OUT_HEADER + data.length)
  }

  // ---- requests ----

  private takeBuffer (): Buffer {
    return this.spare.pop() ?? Buffer.allocUnsafeSlow(IN_BUFFER)
  }

  private giveBack (buf: Buffer): void {
    if (this.spare.length < SPARE_BUFFERS) this.spare.push(buf)
  }

  // Runs op and answers with answer(value), or with the errno of what it threw. Synchronous values are
  // answered at once; for a promise, returns what settles after the answer.
  private run<T> (unique: bigint, name: string, op: () => Maybe<T>, answer: (v: T) => void): Promise<void> | undefined {
    let v: Maybe<T>
    try {
      v = op()
    } catch (err) {
      this.fail(unique, name, err)
      return
    }
    if (!(v instanceof Promise)) {
      answer(v)
      return
    }
    this.pending.set(name, (this.pending.get(name) ?? 0) + 1)
    const done: Promise<void> = v.then(r => {
      this.settled(name)
      if (!this.gone) answer(r)
    }, err => {
      this.settled(name)
      if (!this.gone) this.fail(unique, name, err)
    }).catch(err => {
      // The answer itself failed (a value the reply cannot carry): EIO, and the log says why.
      this.log(`fuse: answering ${name} failed: ${(err as Error)?.message ?? String(err)}`)
      if (!this.gone) this.replyError(unique, 5)
    }).finally(() => this.running.delete(done))
    this.running.add(done)
    return done
  }

  private settled (name: string): void {
    const n = (this.pending.get(name) ?? 1) - 1
    if (n > 0) this.pending.set(name, n)
    else this.pending.delete(name)
  }

  private fail (unique: bigint, name: string, err: unknown): void {
    const errno = -errnoOf(err)
    if (errno === 5) this.log(`${name}: ${(err as Error)?.message ?? String(err)}`)
    this.replyError(unique, errno)
  }

  private dispatch (len: number): void {
    const b = this.inBuf
    const opcode = b.readUInt32LE(4)
    const unique = b.readBigUInt64LE(8)
    const node = Number(b.readBigUInt64LE(16))
    const caller: Caller = { uid: b.readUInt32LE(24), gid: b.readUInt32LE(28), pid: b.readUInt32LE(32) }
    const ops = this.ops
    const none = (): void => this.replyError(unique, ENOSYS)
    switch (opcode) {
      case OP.INIT: return this.init(unique, len)
      case OP.LOOKUP: {
        const name = cstring(b, IN_HEADER, len)
        return void this.run(unique, 'lookup', () => ops.lookup(caller, node, name), a => this.replyEntry(unique, a))
      }
      case OP.FORGET:
        ops.forget?.(node, Number(b.readBigUInt64LE(IN_HEADER)))
        return
      case OP.BATCH_FORGET: {
        const count = b.readUInt32LE(IN_HEADER)
        for (let i = 0, o = IN_HEADER + 8; i < count && o + 16 <= len; i++, o += 16) {
          ops.forget?.(Number(b.readBigUInt64LE(o)), Number(b.readBigUInt64LE(o + 8)))
        }
        return
      }
      case OP.GETATTR: {
        const fh = (b.readUInt32LE(IN_HEADER) & 1) !== 0 ? Number(b.readBigUInt64LE(IN_HEADER + 8)) : null
        return void this.run(unique, 'getattr', () => ops.getattr(caller, node, fh), a => this.replyAttr(unique, a))
      }
      case OP.SETATTR: {
        if (!ops.setattr) return none()
        const set: SetAttr = {
          valid: b.readUInt32LE(IN_HEADER),
          fh: Number(b.readBigUInt64LE(IN_HEADER + 8)),
          size: Number(b.readBigUInt64LE(IN_HEADER + 16)),
          atime: timeOf(b, IN_HEADER + 32, IN_HEADER + 56),
          mtime: timeOf(b, IN_HEADER + 40, IN_HEADER + 60),
          mode: b.readUInt32LE(IN_HEADER + 68),
          uid: b.readUInt32LE(IN_HEADER + 76),
          gid: b.readUInt32LE(IN_HEADER + 80)
        }
        return void this.run(unique, 'setattr', () => ops.setattr!(caller, node, set), a => this.replyAttr(unique, a))
      }
      case OP.READLINK:
        if (!ops.readlink) return none()
        return void this.run(unique, 'readlink', () => ops.readlink!(caller, node), t => this.replyBytes(unique, Buffer.from(t)))
      case OP.SYMLINK: {
        if (!ops.symlink) return none()
        const [name, end] = cstringEnd(b, IN_HEADER, len)
        const target = cstring(b, end + 1, len)
        return void this.run(unique, 'symlink', () => ops.symlink!(caller, node, name, target), a => this.replyEntry(unique, a))
      }
      case OP.MKNOD: {
        if (!ops.mknod) return none()
        const mode = b.readUInt32LE(IN_HEADER)
        const rdev = b.readUInt32LE(IN_HEADER + 4)
        const name = cstring(b, IN_HEADER + 16, len)
        return void this.run(unique, 'mknod', () => ops.mknod!(caller, node, name, mode, rdev), a => this.replyEntry(unique, a))
      }
      case OP.MKDIR: {
        if (!ops.mkdir) return none()
        const mode = b.readUInt32LE(IN_HEADER)
        const name = cstring(b, IN_HEADER + 8, len)
        return void this.run(unique, 'mkdir', () => ops.mkdir!(caller, node, name, mode), a => this.replyEntry(unique, a))
      }
      case OP.UNLINK: {
        if (!ops.unlink) return none()
        const name = cstring(b, IN_HEADER, len)
        return void this.run(unique, 'unlink', () => ops.unlink!(caller, node, name), () => this.replyEmpty(unique))
      }
      case OP.RMDIR: {
        if (!ops.rmdir) return none()
        const name = cstring(b, IN_HEADER, len)
        return void this.run(unique, 'rmdir', () => ops.rmdir!(caller, node, name), () => this.replyEmpty(unique))
      }
      case OP.RENAME:
      case OP.RENAME2: {
        if (!ops.rename) return none()
        const newParent = Number(b.readBigUInt64LE(IN_HEADER))
        const flags = opcode === OP.RENAME2 ? b.readUInt32LE(IN_HEADER + 8) : 0
        const [name, end] = cstringEnd(b, IN_HEADER + (opcode === OP.RENAME2 ? 16 : 8), len)
        const newName = cstring(b, end + 1, len)
        return void this.run(unique, 'rename', () => ops.rename!(caller, node, name, newParent, newName, flags), () => this.replyEmpty(unique))
      }
      case OP.LINK: {
        if (!ops.link) return none()
        const ino = Number(b.readBigUInt64LE(IN_HEADER))
        const name = cstring(b, IN_HEADER + 8, len)
        return void this.run(unique, 'link', () => ops.link!(caller, ino, node, name), a => this.replyEntry(unique, a))
      }
      case OP.OPEN: {
        if (!ops.open) return none()
        const flags = b.readUInt32LE(IN_HEADER)
        return void this.run(unique, 'open', () => ops.open!(caller, node, flags), o => this.replyOpen(unique, o))
      }
      case OP.OPENDIR: {
        const flags = b.readUInt32LE(IN_HEADER)
        if (!ops.opendir) return this.replyOpen(unique, { fh: 0 })
        return void this.run(unique, 'opendir', () => ops.opendir!(caller, node, flags), o => this.replyOpen(unique, o))
      }
      case OP.READ: {
        if (!ops.read) return none()
        const fh = Number(b.readBigUInt64LE(IN_HEADER))
        const pos = Number(b.readBigUInt64LE(IN_HEADER + 8))
        const size = Math.min(b.readUInt32LE(IN_HEADER + 16), MAX_REQUEST_DATA)
        // The reply is built in place: the data goes right after room for the header.
        const pooled = size > SMALL_READ
        const reply = pooled ? this.takeBuffer() : Buffer.allocUnsafe(OUT_HEADER + size)
        const done = this.run(unique, 'read', () => ops.read!(fh, node, reply.subarray(OUT_HEADER, OUT_HEADER + size), pos), n => {
          this.send(unique, 0, reply, OUT_HEADER + Math.max(0, Math.min(n, size)))
        })
        if (!pooled) return
        if (done) void done.then(() => this.giveBack(reply))
        else this.giveBack(reply)
        return
      }
      case OP.WRITE: {
        if (!ops.write) return none()
        const fh = Number(b.readBigUInt64LE(IN_HEADER))
        const pos = Number(b.readBigUInt64LE(IN_HEADER + 8))
        const size = b.readUInt32LE(IN_HEADER + 16)
        const start = IN_HEADER + 40
        if (start + size > len) return this.replyError(unique, EINVAL)
        // A small write gets a copy of its own; a large one keeps its place in the request buffer.
        const data = size <= SMALL_WRITE ? Buffer.from(b.subarray(start, start + size)) : b.subarray(start, start + size)
        const done = this.run(unique, 'write', () => ops.write!(fh, node, data, pos), n => {
          const r = this.room(OUT_HEADER + 8)
          r.writeUInt32LE(n, OUT_HEADER)
          r.writeUInt32LE(0, OUT_HEADER + 4)
          this.send(unique, 0, r, OUT_HEADER + 8)
        })
        if (done && size > SMALL_WRITE) {
          // The data stays where it is until the write is over; the next request goes to another buffer.
          this.inBuf = this.takeBuffer()
          void done.then(() => this.giveBack(b))
        }
        return
      }
      case OP.STATFS: {
        if (!ops.statfs) return none()
        return void this.run(unique, 'statfs', () => ops.statfs!(node), s => {
          const r = this.room(OUT_HEADER + 80)
          r.fill(0, OUT_HEADER, OUT_HEADER + 80)
          r.writeBigUInt64LE(BigInt(s.blocks), OUT_HEADER)
          r.writeBigUInt64LE(BigInt(s.bfree), OUT_HEADER + 8)
          r.writeBigUInt64LE(BigInt(s.bavail), OUT_HEADER + 16)
          r.writeBigUInt64LE(BigInt(s.files), OUT_HEADER + 24)
          r.writeBigUInt64LE(BigInt(s.ffree), OUT_HEADER + 32)
          r.writeUInt32LE(s.bsize, OUT_HEADER + 40)
          r.writeUInt32LE(s.namemax, OUT_HEADER + 44)
          r.writeUInt32LE(s.frsize, OUT_HEADER + 48)
          this.send(unique, 0, r, OUT_HEADER + 80)
        })
      }
      case OP.RELEASE:
      case OP.RELEASEDIR: {
        const fh = Number(b.readBigUInt64LE(IN_HEADER))
        const op = opcode === OP.RELEASE ? ops.release : ops.releasedir
        if (!op) return this.replyEmpty(unique)
        return void this.run(unique, opcode === OP.RELEASE ? 'release' : 'releasedir', () => op(fh, node), () => this.replyEmpty(unique))
      }
      case OP.FSYNC:
      case OP.FSYNCDIR: {
        const fh = Number(b.readBigUInt64LE(IN_HEADER))
        const datasync = (b.readUInt32LE(IN_HEADER + 8) & 1) !== 0
        const op = opcode === OP.FSYNC ? ops.fsync : ops.fsyncdir
        if (!op) return this.replyEmpty(unique)
        return void this.run(unique, opcode === OP.FSYNC ? 'fsync' : 'fsyncdir', () => op(fh, node, datasync), () => this.replyEmpty(unique))
      }
      case OP.FLUSH: {
        const fh = Number(b.readBigUInt64LE(IN_HEADER))
        if (!ops.flush) return this.replyEmpty(unique)
        return void this.run(unique, 'flush', () => ops.flush!(fh, node), () => this.replyEmpty(unique))
      }
      case OP.SETXATTR: {
        if (!ops.setxattr) return none()
        const size = b.readUInt32LE(IN_HEADER)
        const flags = b.readUInt32LE(IN_HEADER + 4)
        const [name, end] = cstringEnd(b, IN_HEADER + 8, len)
        if (end + 1 + size > len) return this.replyError(unique, EINVAL)
        const value = Buffer.from(b.subarray(end + 1, end + 1 + size))
        return void this.run(unique, 'setxattr', () => ops.setxattr!(caller, node, name, value, flags), () => this.replyEmpty(unique))
      }
      case OP.GETXATTR: {
        if (!ops.getxattr) return none()
        const size = b.readUInt32LE(IN_HEADER)
        const name = cstring(b, IN_HEADER + 8, len)
        return void this.run(unique, 'getxattr', () => ops.getxattr!(caller, node, name), v => this.replySized(unique, size, v))
      }
      case OP.LISTXATTR: {
        if (!ops.listxattr) return none()
        const size = b.readUInt32LE(IN_HEADER)
        return void this.run(unique, 'listxattr', () => ops.listxattr!(caller, node), names => {
          this.replySized(unique, size, Buffer.from(names.map(n => n + '\0').join('')))
        })
      }
      case OP.REMOVEXATTR: {
        if (!ops.removexattr) return none()
        const name = cstring(b, IN_HEADER, len)
        return void this.run(unique, 'removexattr', () => ops.removexattr!(caller, node, name), () => this.replyEmpty(unique))
      }
      case OP.READDIR: {
        if (!ops.readdir) return none()
        const fh = Number(b.readBigUInt64LE(IN_HEADER))
        const offset = Number(b.readBigUInt64LE(IN_HEADER + 8))
        const size = b.readUInt32LE(IN_HEADER + 16)
        return void this.run(unique, 'readdir', () => ops.readdir!(fh, node, offset), entries => this.replyDir(unique, size, offset, entries))
      }
      case OP.ACCESS: {
        if (!ops.access) return this.replyEmpty(unique)
        const mask = b.readUInt32LE(IN_HEADER)
        return void this.run(unique, 'access', () => ops.access!(caller, node, mask), () => this.replyEmpty(unique))
      }
      case OP.CREATE: {
        if (!ops.create) return none()
        const flags = b.readUInt32LE(IN_HEADER)
        const mode = b.readUInt32LE(IN_HEADER + 4)
        const name = cstring(b, IN_HEADER + 16, len)
        return void this.run(unique, 'create', () => ops.create!(caller, node, name, mode, flags), ({ attr, opened }) => {
          const r = this.room(OUT_HEADER + ENTRY_OUT + OPEN_OUT)
          this.putEntry(r, OUT_HEADER, attr)
          this.putOpen(r, OUT_HEADER + ENTRY_OUT, opened)
          this.send(unique, 0, r, OUT_HEADER + ENTRY_OUT + OPEN_OUT)
        })
      }
      case OP.INTERRUPT:
        // Every operation runs to its end; the kernel waits for that answer.
        return
      case OP.DESTROY:
        this.ops.destroy?.()
        return this.replyEmpty(unique)
      default:
        return none()
    }
  }

  // getxattr and listxattr: with size 0 the kernel asks for the length only; a value longer than size is
  // ERANGE.
  private replySized (unique: bigint, size: number, value: Buffer): void {
    if (size === 0) {
      const r = this.room(OUT_HEADER + 8)
      r.writeUInt32LE(value.length, OUT_HEADER)
      r.writeUInt32LE(0, OUT_HEADER + 4)
      return this.send(unique, 0, r, OUT_HEADER + 8)
    }
    if (value.length > size) return this.replyError(unique, ERANGE)
    this.replyBytes(unique, value)
  }

  // fuse_dirent records (ino, the next entry's offset, name length, type, name padded to 8 bytes) up to
  // size bytes. Offsets are indexes into the operation's listing.
  private replyDir (unique: bigint, size: number, offset: number, entries: DirEntry[]): void {
    const r = this.room(OUT_HEADER + size)
    let o = OUT_HEADER
    let next = offset
    for (const e of entries) {
      const nameLen = Buffer.byteLength(e.name)
      const rec = 24 + nameLen
      const padded = (rec + 7) & ~7
      if (o + padded > OUT_HEADER + size) break
      next++
      r.writeBigUInt64LE(BigInt(e.ino), o)
      r.writeBigUInt64LE(BigInt(next), o + 8)
      r.writeUInt32LE(nameLen, o + 16)
      r.writeUInt32LE((e.mode >>> 12) & 0o17, o + 20)
      r.write(e.name, o + 24)
      r.fill(0, o + rec, o + padded)
      o += padded
    }
    this.send(unique, 0, r, o)
  }

  private init (unique: bigint, len: number): void {
    const b = this.inBuf
    const major = b.readUInt32LE(IN_HEADER)
    const minor = b.readUInt32LE(IN_HEADER + 4)
    const readahead = len >= IN_HEADER + 12 ? b.readUInt32LE(IN_HEADER + 8) : 0
    const offered = len >= IN_HEADER + 16 ? b.readUInt32LE(IN_HEADER + 12) : 0
    const r = this.room(OUT_HEADER + 64)
    r.fill(0, OUT_HEADER, OUT_HEADER + 64)
    r.writeUInt32LE(KERNEL_MAJOR, OUT_HEADER)
    r.writeUInt32LE(KERNEL_MINOR, OUT_HEADER + 4)
    if (major < KERNEL_MAJOR || (major === KERNEL_MAJOR && minor < OLDEST_KERNEL_MINOR)) {
      this.log(`fuse: the kernel speaks protocol ${major}.${minor}, older than ${KERNEL_MAJOR}.${OLDEST_KERNEL_MINOR}`)
      return this.replyError(unique, EINVAL)
    }
    if (major > KERNEL_MAJOR) {
      // The kernel asks again with the major version given here.
      return this.send(unique, 0, r, OUT_HEADER + 8)
    }
    const flags = offered & (INIT_ASYNC_READ | INIT_BIG_WRITES | INIT_MAX_PAGES | INIT_HANDLE_KILLPRIV_V2)
    r.writeUInt32LE(readahead, OUT_HEADER + 8)
    r.writeUInt32LE(flags, OUT_HEADER + 12)
    r.writeUInt16LE(12, OUT_HEADER + 16) // max_background, libfuse's default
    r.writeUInt16LE(9, OUT_HEADER + 18) // congestion_threshold
    this.maxWrite = (flags & INIT_MAX_PAGES) !== 0 ? MAX_REQUEST_DATA : 128 * 1024
    r.writeUInt32LE(this.maxWrite, OUT_HEADER + 20)
    r.writeUInt32LE(1, OUT_HEADER + 24) // time_gran: nanoseconds
    r.writeUInt16LE(Math.max(1, Math.floor(MAX_REQUEST_DATA / this.pageSize)), OUT_HEADER + 28)
    // Kernels before 7.23 take the reply of 7.22 (24 bytes) and refuse a longer one.
    this.send(unique, 0, r, OUT_HEADER + (minor < 23 ? 24 : 64))
  }

  // The largest read or write request the kernel may send, as agreed at INIT (0 before).
  get requestBytes (): number {
    return this.maxWrite
  }
}

// A time in a SETATTR (seconds and nanoseconds) in milliseconds.
function timeOf (b: Buffer, secAt: number, nsecAt: number): number {
  return Number(b.readBigInt64LE(secAt)) * 1000 + Math.floor(b.readUInt32LE(nsecAt) / 1e6)
}

const MAX_SECONDS = 2n ** 63n - 1n
const MIN_SECONDS = -(2n ** 63n)

// Any stored time, however far out (setattr takes 64-bit seconds), is sent as the nearest one the
// kernel's fields hold; past 2^53 ms a number has no sub-second part left.
function putTime (b: Buffer, secAt: number, nsecAt: number, ms: number): void {
  let sec = 0
  let nsec = 0
  if (Number.isFinite(ms)) {
    sec = Math.floor(ms / 1000)
    nsec = Math.round((ms - sec * 1000) * 1e6)
    if (!(nsec >= 0 && nsec < 1e9)) nsec = 0
  }
  let s = BigInt(sec)
  if (s > MAX_SECONDS) s = MAX_SECONDS
  else if (s < MIN_SECONDS) s = MIN_SECONDS
  b.writeBigInt64LE(s, secAt)
  b.writeUInt32LE(nsec, nsecAt)
}

function putValid (b: Buffer, secAt: number, nsecAt: number, seconds: number): void {
  const sec = Math.floor(seconds)
  b.writeBigUInt64LE(BigInt(sec), secAt)
  b.writeUInt32LE(Math.round((seconds - sec) * 1e9), nsecAt)
}

function cstringEnd (b: Buffer, at: number, len: number): [string, number] {
  let end = b.indexOf(0, at)
  if (end < 0 || end > len) end = len
  return [b.toString('utf8', at, end), end]
}

function cstring (b: Buffer, at: number, len: number): string {
  return cstringEnd(b, at, len)[0]
}

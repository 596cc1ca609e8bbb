// The local write-back store: file data lands here first, in one sparse file per inode at the file's own
// offsets, and stays until the packer has stored it in the log. Its size is bounded: writers wait for room.
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'

const MAX_OPEN_FILES = 256

export class WriteBack {
  readonly dir: string
  readonly limitBytes: number
  dirtyBytes = 0
  // Open descriptors by inode, least recently used first (Map order is insertion order).
  private readonly fds = new Map<number, number>()
  private waiters: Array<() => void> = []

  constructor (dir: string, limitBytes: number) {
    this.dir = dir
    this.limitBytes = limitBytes
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
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

  write (ino: number, buf: Buffer, pos: number): void {
    const fd = this.fd(ino)
    let done = 0
    while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, pos + done)
  }

  // Reads len bytes at pos; what the store does not hold reads as zeros.
  async read (ino: number, pos: number, len: number, into?: Buffer, intoOff = 0): Promise<Buffer> {
    const out = into ?? Buffer.alloc(len)
    if (into) out.fill(0, intoOff, intoOff + len)
    const fd = this.fd(ino)
    let done = 0
    while (done < len) {
      const n = fs.readSync(fd, out, intoOff + done, len - done, pos + done)
      if (n === 0) break
      done += n
    }
    return out
  }

  // The inodes that have a file in the store.
  inodes (): number[] {
    return fs.readdirSync(this.dir).filter(n => /^\d+$/.test(n)).map(Number)
  }

  async truncate (ino: number, size: number): Promise<void> {
    fs.ftruncateSync(this.fd(ino), size)
  }

  // fdatasync flushes the file whichever descriptor wrote it; a descriptor of its own keeps the cached
  // one free to be closed meanwhile.
  async sync (ino: number): Promise<void> {
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
    const fd = this.fds.get(ino)
    this.fds.delete(ino)
    if (fd !== undefined) fs.closeSync(fd)
    fs.rmSync(this.file(ino), { force: true })
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
    for (const fd of this.fds.values()) fs.closeSync(fd)
    this.fds.clear()
  }
}

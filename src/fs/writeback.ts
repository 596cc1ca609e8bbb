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
  private readonly handles = new Map<number, Promise<fsp.FileHandle>>()
  private waiters: Array<() => void> = []

  constructor (dir: string, limitBytes: number) {
    this.dir = dir
    this.limitBytes = limitBytes
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
  }

  private file (ino: number): string {
    return path.join(this.dir, String(ino))
  }

  private handle (ino: number): Promise<fsp.FileHandle> {
    let h = this.handles.get(ino)
    if (h) {
      // Map order is insertion order: re-inserting keeps the most recently used last.
      this.handles.delete(ino)
      this.handles.set(ino, h)
      return h
    }
    h = fsp.open(this.file(ino), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600)
    h.catch(() => this.handles.delete(ino))
    this.handles.set(ino, h)
    if (this.handles.size > MAX_OPEN_FILES) {
      const [oldest, old] = this.handles.entries().next().value as [number, Promise<fsp.FileHandle>]
      this.handles.delete(oldest)
      old.then(fh => fh.close(), () => {})
    }
    return h
  }

  async write (ino: number, buf: Buffer, pos: number): Promise<void> {
    const fh = await this.handle(ino)
    let done = 0
    while (done < buf.length) {
      const { bytesWritten } = await fh.write(buf, done, buf.length - done, pos + done)
      done += bytesWritten
    }
  }

  // Reads len bytes at pos; what the store does not hold reads as zeros.
  async read (ino: number, pos: number, len: number, into?: Buffer, intoOff = 0): Promise<Buffer> {
    const out = into ?? Buffer.alloc(len)
    if (into) out.fill(0, intoOff, intoOff + len)
    const fh = await this.handle(ino)
    let done = 0
    while (done < len) {
      const { bytesRead } = await fh.read(out, intoOff + done, len - done, pos + done)
      if (bytesRead === 0) break
      done += bytesRead
    }
    return out
  }

  async truncate (ino: number, size: number): Promise<void> {
    const fh = await this.handle(ino)
    await fh.truncate(size)
  }

  // fdatasync flushes the file, whichever descriptor wrote it: a file whose handle was closed to stay
  // under MAX_OPEN_FILES is opened again for it.
  async sync (ino: number): Promise<void> {
    const h = this.handles.get(ino)
    if (h) {
      await (await h).datasync()
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
    const h = this.handles.get(ino)
    this.handles.delete(ino)
    if (h) await h.then(fh => fh.close(), () => {})
    await fsp.rm(this.file(ino), { force: true })
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
    const all = [...this.handles.values()]
    this.handles.clear()
    await Promise.all(all.map(h => h.then(fh => fh.close(), () => {})))
  }
}

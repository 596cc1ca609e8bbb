// The on-disk block cache: verified data blocks (sealed chunks, so ciphertext at rest like everything the
// partners hold) kept in the home, least recently used dropped first beyond a byte bound. Reads from it are
// checked again when their chunks are opened; a block that fails is dropped and fetched afresh.
//
// One file of fixed-size slots, each a 64-byte header (the key, the length, a sequence number) and the
// block: a block goes in with one positioned write and comes back with one read, where a file per block
// took four requests to the thread pool to write (open, write, close, rename) and four to read, and made
// the disk create, rename and remove a file for every block a restore fetched. docs/FORMAT.md §15.1.
import fs from 'node:fs'
import path from 'node:path'

export const CACHE_FILE = 'blocks.slab'
const HEADER_BYTES = 64
const MAGIC = 0x4b4c4243 // "CBLK" read as little-endian bytes
const FORMAT = 2
const KEY_OFFSET = 24
const MAX_KEY_BYTES = HEADER_BYTES - KEY_OFFSET
// Blocks being written at once; beyond this a fetched block is not cached (its reader never waits for it).
const MAX_PENDING_WRITES = 16

interface Entry { slot: number, size: number }

function header (key: string, size: number, seq: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES)
  h.writeUInt32LE(MAGIC, 0)
  h[4] = FORMAT
  h[5] = h.write(key, KEY_OFFSET, 'utf8')
  h.writeUInt32LE(size, 8)
  h.writeDoubleLE(seq, 16)
  return h
}

function parse (h: Buffer): { key: string, size: number, seq: number } | null {
  if (h.length < HEADER_BYTES || h.readUInt32LE(0) !== MAGIC || h[4] !== FORMAT) return null
  const keyLen = h[5]
  if (keyLen === 0 || keyLen > MAX_KEY_BYTES) return null
  return { key: h.toString('utf8', KEY_OFFSET, KEY_OFFSET + keyLen), size: h.readUInt32LE(8), seq: h.readDoubleLE(16) }
}

export class DiskCache {
  private readonly maxBytes: number
  private readonly slotBytes: number
  private readonly stride: number
  private readonly capacity: number
  private fd = -1
  // Insertion order is recency order: a hit moves its key to the end.
  private readonly entries = new Map<string, Entry>()
  // Slots below nextSlot exist in the file; the free ones are reused first, lowest first.
  private readonly free: number[] = []
  private nextSlot = 0
  private bytes = 0
  private seq = 0
  private readonly writing = new Set<string>()
  // Reads in flight by slot: such a slot is neither evicted nor reused until they are done.
  private readonly reading = new Map<number, number>()
  private readonly inFlight = new Set<Promise<unknown>>()
  // Why the cache is off although it has a bound (its folder or file could not be used), for the log.
  readonly problem: string | null = null

  // slotBytes: the largest block cached (the stripe block size); a larger one is not cached. Never throws:
  // a cache that cannot be opened is off, and says why in problem.
  constructor (dir: string, maxBytes: number, slotBytes: number) {
    this.maxBytes = maxBytes
    this.slotBytes = slotBytes
    this.stride = HEADER_BYTES + slotBytes
    this.capacity = maxBytes > 0 && slotBytes > 0 ? Math.floor(maxBytes / slotBytes) : 0
    if (this.capacity === 0) return
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
      // Caches of earlier versions kept a file per block: they are only a cache, and go.
      for (const name of fs.readdirSync(dir)) {
        if (name !== CACHE_FILE) fs.rmSync(path.join(dir, name), { force: true, recursive: true })
      }
      this.fd = fs.openSync(path.join(dir, CACHE_FILE), fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600)
      this.load()
    } catch (err) {
      if (this.fd >= 0) fs.closeSync(this.fd)
      this.fd = -1
      this.entries.clear()
      this.free.length = 0
      this.bytes = 0
      this.problem = `the on-disk block cache in ${dir} is off: ${(err as Error).message}`
    }
  }

  // Rebuilds the index from the slots' headers. A slot whose header is not whole, or whose block runs past
  // the end of the file (a write cut short), is free. Slots beyond the bound (it was lowered) are cut off.
  private load (): void {
    const fileBytes = fs.fstatSync(this.fd).size
    const slots = Math.floor(fileBytes / this.stride) + (fileBytes % this.stride >= HEADER_BYTES ? 1 : 0)
    const kept = Math.min(slots, this.capacity)
    const found = new Map<string, { slot: number, size: number, seq: number }>()
    const freed: number[] = []
    const h = Buffer.alloc(HEADER_BYTES)
    for (let slot = 0; slot < kept; slot++) {
      const at = slot * this.stride
      const got = fs.readSync(this.fd, h, 0, HEADER_BYTES, at)
      const e = got === HEADER_BYTES ? parse(h) : null
      const whole = e !== null && e.size > 0 && e.size <= this.slotBytes && at + HEADER_BYTES + e.size <= fileBytes
      const twin = e ? found.get(e.key) : undefined
      if (!whole || (twin && twin.seq >= e.seq)) {
        freed.push(slot)
        continue
      }
      if (twin) freed.push(twin.slot)
      found.set(e.key, { slot, size: e.size, seq: e.seq })
    }
    if (fileBytes > kept * this.stride) fs.ftruncateSync(this.fd, kept * this.stride)
    for (const [key, e] of [...found].sort((a, b) => a[1].seq - b[1].seq)) {
      this.entries.set(key, { slot: e.slot, size: e.size })
      this.bytes += e.size
      this.seq = Math.max(this.seq, e.seq)
    }
    this.nextSlot = kept
    this.free.push(...freed.sort((a, b) => b - a))
  }

  get size (): number {
    return this.bytes
  }

  get limit (): number {
    return this.maxBytes
  }

  has (key: string): boolean {
    return this.entries.has(key)
  }

  async get (key: string): Promise<Buffer | null> {
    const e = this.entries.get(key)
    if (!e || this.fd < 0) return null
    this.entries.delete(key)
    this.entries.set(key, e)
    this.reading.set(e.slot, (this.reading.get(e.slot) ?? 0) + 1)
    const buf = Buffer.allocUnsafe(HEADER_BYTES + e.size)
    let got = -1
    try {
      got = await this.track(new Promise<number>((resolve, reject) =>
        fs.read(this.fd, buf, 0, buf.length, e.slot * this.stride, (err, n) => err ? reject(err) : resolve(n))))
    } catch {
    } finally {
      const n = (this.reading.get(e.slot) ?? 1) - 1
      if (n > 0) this.reading.set(e.slot, n)
      else this.reading.delete(e.slot)
    }
    const h = got === buf.length ? parse(buf) : null
    // The header names the block: a slot that holds anything else (or could not be read) is a miss, never
    // another block's bytes.
    if (!h || h.key !== key || h.size !== e.size) {
      if (this.entries.get(key) === e) this.drop(key)
      return null
    }
    return buf.subarray(HEADER_BYTES)
  }

  // Never throws: a block that cannot be written (full disk, too many writes already queued) is simply not
  // cached.
  async put (key: string, data: Buffer): Promise<void> {
    if (this.fd < 0 || data.length === 0 || data.length > this.slotBytes || Buffer.byteLength(key) > MAX_KEY_BYTES) return
    if (this.entries.has(key) || this.writing.has(key) || this.writing.size >= MAX_PENDING_WRITES) return
    const slot = this.takeSlot()
    if (slot < 0) return
    this.writing.add(key)
    const want = HEADER_BYTES + data.length
    let wrote = -1
    try {
      const bufs = [header(key, data.length, ++this.seq), data]
      wrote = await this.track(new Promise<number>((resolve, reject) =>
        fs.writev(this.fd, bufs, slot * this.stride, (err, n) => err ? reject(err) : resolve(n))))
    } catch {
    } finally {
      this.writing.delete(key)
    }
    if (wrote !== want) {
      // A write that failed or was cut short (a full disk reports fewer bytes, not an error) may have left
      // the header: it is cleared before the slot is used again, so the block never comes back torn.
      if (wrote !== 0) this.clear(slot)
      else this.free.push(slot)
      return
    }
    if (this.fd < 0) return
    this.entries.set(key, { slot, size: data.length })
    this.bytes += data.length
  }

  drop (key: string): void {
    const e = this.entries.get(key)
    if (!e) return
    this.entries.delete(key)
    this.bytes -= e.size
    // The header is cleared before the slot is reused, so a restart does not bring the block back.
    this.clear(e.slot)
  }

  // Zeroes a slot's header, then frees the slot. A slot whose header could not be cleared stays out of use
  // until the next start, which checks it again.
  private clear (slot: number): void {
    if (this.fd < 0) return
    const zeros = Buffer.alloc(HEADER_BYTES)
    void this.track(new Promise<void>(resolve => fs.write(this.fd, zeros, 0, HEADER_BYTES, slot * this.stride, (err, n) => {
      if (!err && n === HEADER_BYTES) this.free.push(slot)
      resolve()
    })))
  }

  // Waits for the reads and writes under way, then closes the file.
  async close (): Promise<void> {
    while (this.fd >= 0 && this.inFlight.size > 0) await Promise.allSettled([...this.inFlight])
    if (this.fd < 0) return
    const fd = this.fd
    this.fd = -1
    fs.closeSync(fd)
  }

  // A free slot, a new one while under the bound, or the least recently used entry's, skipping slots being
  // read; -1 when every slot is busy.
  private takeSlot (): number {
    for (let i = this.free.length - 1; i >= 0; i--) {
      const slot = this.free[i]
      if (this.reading.has(slot)) continue
      this.free.splice(i, 1)
      return slot
    }
    if (this.nextSlot < this.capacity) return this.nextSlot++
    for (const [key, e] of this.entries) {
      if (this.reading.has(e.slot)) continue
      this.entries.delete(key)
      this.bytes -= e.size
      return e.slot
    }
    return -1
  }

  private track<T> (p: Promise<T>): Promise<T> {
    this.inFlight.add(p)
    const done = (): void => { this.inFlight.delete(p) }
    p.then(done, done)
    return p
  }
}

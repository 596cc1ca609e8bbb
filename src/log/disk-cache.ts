// The on-disk block cache: verified data blocks (sealed chunks, so ciphertext at rest like everything the
// partners hold) kept in the home, least recently used dropped first beyond a byte bound. Reads from it are
// checked again when their chunks are opened; a block that fails is dropped and fetched afresh.
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'

// Blocks being written at once; beyond this a fetched block is not cached (its reader never waits for it).
const MAX_PENDING_WRITES = 16

export class DiskCache {
  private readonly dir: string
  private readonly maxBytes: number
  // Insertion order is recency order: a hit moves its key to the end.
  private readonly entries = new Map<string, number>()
  private bytes = 0
  private readonly writing = new Set<string>()

  constructor (dir: string, maxBytes: number) {
    this.dir = dir
    this.maxBytes = maxBytes
    if (maxBytes <= 0) return
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
    const found: Array<{ key: string, size: number, at: number }> = []
    for (const name of fs.readdirSync(dir)) {
      if (name.endsWith('.tmp')) {
        fs.rmSync(path.join(dir, name), { force: true })
        continue
      }
      const st = fs.statSync(path.join(dir, name))
      found.push({ key: name, size: st.size, at: st.mtimeMs })
    }
    found.sort((a, b) => a.at - b.at)
    for (const f of found) {
      this.entries.set(f.key, f.size)
      this.bytes += f.size
    }
    this.evict()
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
    const size = this.entries.get(key)
    if (size === undefined) return null
    this.entries.delete(key)
    this.entries.set(key, size)
    try {
      return await fsp.readFile(path.join(this.dir, key))
    } catch {
      this.drop(key)
      return null
    }
  }

  // Never throws: a block that cannot be written (full disk, too many writes already queued) is simply not
  // cached.
  async put (key: string, data: Buffer): Promise<void> {
    if (this.maxBytes <= 0 || data.length > this.maxBytes || this.entries.has(key)) return
    if (this.writing.has(key) || this.writing.size >= MAX_PENDING_WRITES) return
    this.writing.add(key)
    const file = path.join(this.dir, key)
    const tmp = file + '.tmp'
    try {
      await fsp.writeFile(tmp, data, { mode: 0o600 })
      await fsp.rename(tmp, file)
    } catch {
      await fsp.rm(tmp, { force: true }).catch(() => {})
      return
    } finally {
      this.writing.delete(key)
    }
    this.entries.set(key, data.length)
    this.bytes += data.length
    this.evict()
  }

  drop (key: string): void {
    const size = this.entries.get(key)
    if (size === undefined) return
    this.entries.delete(key)
    this.bytes -= size
    fs.rm(path.join(this.dir, key), { force: true }, () => {})
  }

  private evict (): void {
    for (const [key] of this.entries) {
      if (this.bytes <= this.maxBytes) break
      this.drop(key)
    }
  }
}

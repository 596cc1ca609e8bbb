// The benchmarks' data: a seeded pseudo-random pool, stamped every 4 KiB with the file offset and a per-file
// tag, so no block is zero (zero blocks are stored as holes), no chunk repeats (chunks are deduplicated)
// and every byte read back can be checked.
export const MiB = 1024 * 1024
export const POOL_BYTES = 64 * MiB
export const STAMP_EVERY = 4096

export function makePool () {
  const pool = Buffer.allocUnsafe(POOL_BYTES)
  const words = new Uint32Array(pool.buffer, pool.byteOffset, POOL_BYTES / 4)
  let x = 0x9e3779b9
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    words[i] = x
  }
  return pool
}

// The bytes of file `tag` at [pos, pos + len): pool bytes with a stamp (offset, tag) every 4 KiB.
export function fillBlock (pool, buf, pos, len, tag) {
  let done = 0
  while (done < len) {
    const p = (pos + done) % POOL_BYTES
    const n = Math.min(len - done, POOL_BYTES - p)
    pool.copy(buf, done, p, p + n)
    done += n
  }
  const firstStamp = Math.ceil(pos / STAMP_EVERY) * STAMP_EVERY
  for (let s = firstStamp; s + 12 <= pos + len; s += STAMP_EVERY) {
    const o = s - pos
    buf.writeUInt32LE(s % 0x100000000, o)
    buf.writeUInt32LE(Math.floor(s / 0x100000000), o + 4)
    buf.writeUInt32LE(tag, o + 8)
  }
  return buf
}

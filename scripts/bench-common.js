// What the benchmarks share: the data (a seeded pseudo-random pool, stamped every 4 KiB with the file offset
// and a per-file tag, so no block is zero (zero blocks are stored as holes), no chunk repeats (chunks are
// deduplicated) and every byte read back can be checked) and the readings of /proc.
import fs from 'node:fs'
import { execFileSync } from 'node:child_process'

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

// Resident and peak resident memory of pid, in MiB (NaN once it is gone).
export function procStatus (pid) {
  try {
    const text = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
    const kb = name => Number((new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text) ?? [])[1] ?? NaN)
    return { rssMiB: kb('VmRSS') / 1024, hwmMiB: kb('VmHWM') / 1024 }
  } catch {
    return { rssMiB: NaN, hwmMiB: NaN }
  }
}

// CPU ticks of every thread of pid (the main thread is the one whose id is the pid).
export function threadTicks (pid) {
  const out = new Map()
  let tids = []
  try { tids = fs.readdirSync(`/proc/${pid}/task`) } catch { return out }
  for (const tid of tids) {
    try {
      const s = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const comm = s.slice(s.indexOf('(') + 1, s.lastIndexOf(')'))
      const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
      out.set(tid, { comm, ticks: Number(f[11]) + Number(f[12]) })
    } catch {}
  }
  return out
}

// Idle and total ticks of the whole machine.
export function sysTicks () {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
  return { idle: f[3] + (f[4] ?? 0), total: f.reduce((a, b) => a + b, 0) }
}

// Writes dirty pages of the files, then asks the kernel to drop their cached pages (fdatasync, then
// posix_fadvise DONTNEED over the whole file), so the next read comes from the disk. Per file: the rest of
// this shared machine keeps its page cache. Python does it for many files in one process; GNU dd
// (iflag=nocache count=0 is the same advice) is the fallback.
export const DROP_PY = [
  'import os, sys',
  'for f in sys.stdin.read().split("\\0"):',
  '    if not f: continue',
  '    fd = os.open(f, os.O_RDONLY)',
  '    os.fdatasync(fd)',
  '    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)',
  '    os.close(fd)'
].join('\n')

// Clock ticks per second, for the CPU figures of /proc.
export const clkTck = clockTicks()

function clockTicks () {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100
  } catch {
    return 100
  }
}

// Resets VmHWM of the daemon (clear_refs "5"), so each phase gets its own peak. Needs the right to write
// the file (same user, or root); without it the peak since the daemon started is reported.
export function resetPeak (pid) {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5')
    return true
  } catch {
    return false
  }
}

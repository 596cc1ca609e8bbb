#!/usr/bin/env node
// End-to-end benchmark of a mounted coopfs, each figure beside the same work on the local disk in the same
// run (the machine is shared and noisy: it prints figures and ratios, never a pass/fail on timing).
//
//   1. sequential write of COOPFS_BENCH_MB MiB (default 1024) + fsync, then `coopfs sync`
//   2. sequential read of that file: right after the write, again (cached), and cold after a remount
//   3. COOPFS_BENCH_FILES small files (default 10000, 4 KiB each): create, read back, read cold
//   4. the daemon's peak RSS in every phase, and during a 4 GiB write (COOPFS_BENCH_BIG=0 skips it)
//   5. the erasure-coding figures of scripts/bench-ec.js
//
// All file I/O runs in child processes (this same script with --worker), so this process stays free to
// sample the daemon's memory and per-thread CPU while the work runs. Data comes from a seeded
// pseudo-random pool, stamped every 4 KiB with its file offset and a per-file tag: no block is zero (zero
// blocks are stored as holes) and no chunk repeats (chunks are deduplicated), and reads are verified.
//
// Other knobs: COOPFS_BENCH_BIG_MB (4096), COOPFS_BENCH_FILE_KB (4), COOPFS_BENCH_COLD=0 skips the remount.
// Units: MB = 10^6 bytes, MiB = 2^20 bytes. Run `npm run build` first (`npm run bench` does).
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { MiB, RSS_TARGET_MB, RSS_TARGET_MIB, makePool, fillBlock, writeGenerated, lastTopFrame, envInt, procStatus, threadTicks, sysTicks, DROP_PY, clkTck, resetPeak } from './bench-common.js'
import { BLOCK_SIZE_BYTES, DEFAULT_K, DEFAULT_M, RESERVED_FRACTION } from '../dist/config.js'

const SELF = fileURLToPath(import.meta.url)
const ROOT = path.join(path.dirname(SELF), '..')
const BIN = path.join(ROOT, 'bin', 'coopfs.js')
const IO_BLOCK = MiB

const epochMs = () => performance.timeOrigin + performance.now()

// ---------------------------------------------------------------- worker side

async function worker (job) {
  const pool = makePool()
  const buf = Buffer.allocUnsafe(IO_BLOCK)
  const cpu0 = process.cpuUsage()
  let out
  switch (job.op) {
    case 'write': {
      const startEpoch = epochMs()
      out = { startEpoch, ...writeGenerated(job.file, job.bytes, job.tag, pool, buf) }
      break
    }
    case 'read': {
      const t0 = performance.now()
      const fd = fs.openSync(job.file, 'r')
      let bytes = 0
      for (;;) {
        const n = fs.readSync(fd, buf, 0, IO_BLOCK, bytes)
        if (n === 0) break
        bytes += n
      }
      fs.closeSync(fd)
      out = { bytes, totalMs: performance.now() - t0 }
      break
    }
    case 'verify': {
      // Not timed: sampled blocks of a big file (first, last and random ones) against the generator.
      const fd = fs.openSync(job.file, 'r')
      const size = fs.fstatSync(fd).size
      const blocks = Math.ceil(job.bytes / IO_BLOCK)
      const picks = new Set([0, blocks - 1])
      while (picks.size < Math.min(blocks, job.samples)) picks.add(Math.floor(Math.random() * blocks))
      const want = Buffer.allocUnsafe(IO_BLOCK)
      let bad = 0
      for (const b of picks) {
        const pos = b * IO_BLOCK
        const n = Math.min(IO_BLOCK, job.bytes - pos)
        let r = 0
        while (r < n) {
          const got = fs.readSync(fd, buf, r, n - r, pos + r)
          if (got === 0) break
          r += got
        }
        fillBlock(pool, want, pos, n, job.tag)
        if (r !== n || !buf.subarray(0, n).equals(want.subarray(0, n))) bad++
      }
      fs.closeSync(fd)
      out = { size, checked: picks.size, bad: bad + (size === job.bytes ? 0 : 1) }
      break
    }
    case 'mkfiles': {
      const t0 = performance.now()
      const data = Buffer.allocUnsafe(job.size)
      for (let i = 0; i < job.n; i++) {
        fillBlock(pool, data, i * job.size, job.size, job.tag)
        const fd = fs.openSync(path.join(job.dir, 'f' + i), 'w')
        let w = 0
        while (w < job.size) w += fs.writeSync(fd, data, w, job.size - w, w)
        if (job.fsync) fs.fsyncSync(fd)
        fs.closeSync(fd)
      }
      out = { totalMs: performance.now() - t0 }
      break
    }
    case 'readfiles': {
      const t0 = performance.now()
      const want = Buffer.allocUnsafe(job.size)
      let bad = 0
      for (let i = 0; i < job.n; i++) {
        const got = fs.readFileSync(path.join(job.dir, 'f' + i))
        fillBlock(pool, want, i * job.size, job.size, job.tag)
        if (!got.equals(want)) bad++
      }
      out = { totalMs: performance.now() - t0, bad }
      break
    }
    default:
      throw new Error(`unknown worker op ${job.op}`)
  }
  const cpu = process.cpuUsage(cpu0)
  process.stdout.write(JSON.stringify({ ...out, cpuUserMs: cpu.user / 1000, cpuSysMs: cpu.system / 1000 }) + '\n')
}

// ---------------------------------------------------------------- helpers for the main side

const children = new Set()

function run (cmd, args, opts = {}) {
  return new Promise(resolve => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] })
    children.add(child)
    if (opts.input !== undefined) {
      child.stdin.on('error', () => {})
      child.stdin.end(opts.input)
    }
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', d => { stdout += d })
    child.stderr.on('data', d => { stderr += d })
    child.on('error', err => { stderr += String(err) })
    child.on('close', code => {
      children.delete(child)
      resolve({ code: code ?? 1, stdout, stderr })
    })
  })
}

async function cli (args) {
  const r = await run(process.execPath, [BIN, ...args])
  if (r.code !== 0) throw new Error(`coopfs ${args[0]} failed: ${r.stderr.trim() || r.stdout.trim()}`)
  return r
}

async function work (job) {
  const r = await run(process.execPath, [SELF, '--worker', JSON.stringify(job)])
  if (r.code !== 0) throw new Error(`worker ${job.op} failed: ${r.stderr.trim()}`)
  return JSON.parse(r.stdout.trim().split('\n').pop())
}

function isMounted (mnt) {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  return text.split('\n').some(l => l.split(' ')[4] === mnt)
}

function fusermountPath () {
  return path.join(ROOT, 'node_modules', 'fuse-shared-library-linux', 'libfuse', 'bin') + ':' + (process.env.PATH ?? '')
}

async function dropFileCache (files) {
  const r = await run('python3', ['-c', DROP_PY], { input: files.join('\0') + '\0' })
  if (r.code === 0) return
  for (const f of files) {
    await run('sync', [f])
    await run('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none'])
  }
}






// Runs fn while watching the daemon: per-phase peak RSS (VmHWM after a reset, and VmRSS sampled every
// 100 ms), daemon CPU per thread (main thread = the thread whose id is the pid) and machine-wide CPU.
async function watched (pid, fn) {
  const reset = pid ? resetPeak(pid) : false
  const th0 = pid ? threadTicks(pid) : new Map()
  const sys0 = sysTicks()
  const t0 = performance.now()
  let maxRss = 0
  const timer = pid ? setInterval(() => { maxRss = Math.max(maxRss, procStatus(pid).rssMiB || 0) }, 100) : null
  let result
  try {
    result = await fn()
  } finally {
    if (timer) clearInterval(timer)
  }
  const secs = (performance.now() - t0) / 1000
  const st = pid ? procStatus(pid) : { rssMiB: NaN, hwmMiB: NaN }
  maxRss = Math.max(maxRss, st.rssMiB || 0)
  const th1 = pid ? threadTicks(pid) : new Map()
  const other = []
  let main = 0
  let all = 0
  for (const [tid, t] of th1) {
    const d = t.ticks - (th0.get(tid)?.ticks ?? 0)
    all += d
    if (Number(tid) === pid) main += d
    else if (d > 0) other.push({ tid, comm: t.comm, d })
  }
  const pct = ticks => 100 * ticks / clkTck / secs
  const sys1 = sysTicks()
  const machine = 100 * os.cpus().length * (1 - (sys1.idle - sys0.idle) / Math.max(1, sys1.total - sys0.total))
  // Threads other than the main one (libuv pool, the FUSE session thread, V8 helpers) carry no useful
  // names under Node 20: the busiest are listed by thread id.
  other.sort((a, b) => b.d - a.d)
  const others = other.length
    ? [`other threads ${pct(all - main).toFixed(0)}% (busiest: ${other.slice(0, 4).map(o => `${o.comm}/${o.tid} ${pct(o.d).toFixed(0)}%`).join(', ')})`]
    : []
  return {
    result,
    secs,
    rss: { peakMB: reset ? st.hwmMiB : NaN, sampledMaxMB: maxRss, sinceStartMB: reset ? NaN : st.hwmMiB, nowMB: st.rssMiB },
    cpu: { daemon: pct(all), main: pct(main), others, machine }
  }
}

const MB = bytes => bytes / 1e6
const f0 = x => Number.isFinite(x) ? x.toFixed(0) : '-'
const f1 = x => Number.isFinite(x) ? (Math.abs(x) < 10 ? x.toFixed(2) : Math.abs(x) < 100 ? x.toFixed(1) : x.toFixed(0)) : '-'
const ratio = (a, b) => Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${(a / b).toFixed(2)}x` : '-'

function say (line = '') {
  process.stdout.write(line + '\n')
}

function cpuLine (w, extra = '') {
  return `      daemon CPU ${f0(w.cpu.daemon)}% (main thread ${f0(w.cpu.main)}%${w.cpu.others.length ? '; ' + w.cpu.others.join(', ') : ''}), machine ${f0(w.cpu.machine)}% of ${os.cpus().length * 100}%${extra}`
}

function rssLine (w) {
  const peak = Number.isFinite(w.rss.peakMB) ? `peak ${f0(w.rss.peakMB)} MiB (VmHWM)` : `VmHWM since start ${f0(w.rss.sinceStartMB)} MiB`
  return `      daemon RSS ${peak}, sampled max ${f0(w.rss.sampledMaxMB)} MiB, now ${f0(w.rss.nowMB)} MiB`
}

// A top snapshot a little into a phase: the second frame of `top -b -n2 -d1` (the first frame's CPU
// figures are averages since boot), the busiest processes first - shows what else loads the machine.
async function topSnapshot (delayMs) {
  await new Promise(resolve => setTimeout(resolve, delayMs))
  const r = await run('top', ['-b', '-n2', '-d1', '-w', '160'], { env: { COLUMNS: '160' } })
  return r.code === 0 ? lastTopFrame(r.stdout, 9) : null
}

// ---------------------------------------------------------------- the benchmark

const CFG = {
  mb: envInt('COOPFS_BENCH_MB', 1024),
  files: envInt('COOPFS_BENCH_FILES', 10000),
  fileSize: envInt('COOPFS_BENCH_FILE_KB', 4) * 1024,
  big: process.env.COOPFS_BENCH_BIG !== '0',
  bigMb: envInt('COOPFS_BENCH_BIG_MB', 4096),
  cold: process.env.COOPFS_BENCH_COLD !== '0'
}
const TARGET = { writeMBs: 250, readMBs: 500, filesPerS: 1500 }
const RSS_TARGET = `${RSS_TARGET_MB} MB (${f0(RSS_TARGET_MIB)} MiB)`
const TAG = { seq: 1, small: 2, big: 3 }

const state = { dir: null, mnt: null, home: null, cleaned: false, interrupted: false }
const rows = [] // summary: [measure, coopfs, local, ratio, target]

function row (name, coop, local, unit, target, targetText) {
  rows.push([
    name,
    Number.isFinite(coop) ? `${f1(coop)} ${unit}` : '-',
    Number.isFinite(local) ? `${f1(local)} ${unit}` : '-',
    Number.isFinite(local) ? ratio(coop, local) : '',
    target ? `${targetText}  (${ratio(coop, target)} of it)` : ''
  ])
}

async function daemonPid () {
  const r = await cli(['status', '--home', state.home, '--json'])
  const pid = JSON.parse(r.stdout).pid
  if (!pid) throw new Error('status reports no daemon pid')
  return pid
}

async function mount () {
  await cli(['mount', state.mnt, '--home', state.home])
  return daemonPid()
}

async function unmount () {
  const t0 = performance.now()
  await cli(['unmount', state.mnt])
  return (performance.now() - t0) / 1000
}

async function timedSync () {
  const t0 = performance.now()
  await cli(['sync', '--home', state.home])
  return { secs: (performance.now() - t0) / 1000, endEpoch: epochMs() }
}

async function cleanup () {
  if (state.cleaned) return
  state.cleaned = true
  for (const c of children) { try { process.kill(c.pid, 'SIGKILL') } catch {} }
  if (state.mnt && isMounted(state.mnt)) {
    const r = await run(process.execPath, [BIN, 'unmount', state.mnt])
    if (r.code !== 0 && isMounted(state.mnt)) {
      say(`cleanup: coopfs unmount failed (${r.stderr.trim()}); detaching the mount`)
      await run('fusermount', ['-uz', state.mnt], { env: { PATH: fusermountPath() } })
    }
  }
  if (state.dir) fs.rmSync(state.dir, { recursive: true, force: true })
}

async function main () {
  const cores = os.cpus().length
  say(`coopfs end-to-end benchmark - ${new Date().toISOString()}`)
  say(`machine: ${cores} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB RAM, load average ${os.loadavg().map(x => x.toFixed(2)).join(' ')}, node ${process.version}`)
  say(`sizes: sequential ${CFG.mb} MiB, ${CFG.files} files of ${CFG.fileSize / 1024} KiB, big write ${CFG.big ? CFG.bigMb + ' MiB' : 'off'}; MB = 10^6 bytes`)

  state.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-bench-'))
  state.home = path.join(state.dir, 'home')
  state.mnt = path.join(state.dir, 'mnt')
  const local = path.join(state.dir, 'local')
  fs.mkdirSync(state.mnt)
  fs.mkdirSync(local)
  say(`work folder: ${state.dir} (the local-disk baseline lives here too)`)

  // Room: the logical disk must hold everything written (it keeps RESERVED_FRACTION in reserve), and the
  // local disk the partner blocks, (k + m)/k times the data, the write-back store and the baseline copies.
  const seqBytes = CFG.mb * MiB
  const bigBytes = CFG.bigMb * MiB
  const smallMiB = CFG.files * (CFG.fileSize + 16) / MiB
  const dataMiB = CFG.mb + smallMiB + (CFG.big ? CFG.bigMb : 0)
  const segmentMiB = DEFAULT_K * BLOCK_SIZE_BYTES / MiB
  const slots = Math.max(8192, Math.ceil((dataMiB + 128) / segmentMiB / (1 - RESERVED_FRACTION - 0.02)))
  const st = fs.statfsSync(state.dir)
  const freeMiB = st.bavail * st.bsize / MiB
  const needMiB = dataMiB * (DEFAULT_K + DEFAULT_M) / DEFAULT_K + 512 + Math.max(CFG.mb, CFG.big ? CFG.bigMb : 0) + smallMiB
  if (CFG.big && needMiB > freeMiB * 0.9) {
    CFG.big = false
    say(`big write skipped: it needs about ${f0(needMiB)} MiB free on ${os.tmpdir()}, ${f0(freeMiB)} MiB are`)
  }

  await cli(['init', '--home', state.home, '--json', '--local', '--slots', String(slots)])
  const conf = JSON.parse(fs.readFileSync(path.join(state.home, 'config.json'), 'utf8'))
  const partnerFiles = conf.partners.map(p => path.join(p.path, 'slots.dat'))
  say(`init: k=${conf.k} m=${conf.m}, ${slots} slots (${(slots * conf.k * conf.blockSize / 2 ** 30).toFixed(1)} GiB logical), partner areas are sparse files`)
  let pid = await mount()
  say(`mounted ${state.mnt}, daemon pid ${pid}, RSS ${f0(procStatus(pid).rssMiB)} MiB`)
  const rssByPhase = []
  const rssOf = (name, w) => rssByPhase.push([name, w.rss])

  // ---- 1. sequential write
  say()
  say(`1. sequential write, ${CFG.mb} MiB in 1 MiB writes + fsync (writer is a separate process)`)
  const localSeq = path.join(local, 'seq.bin')
  const coopSeq = path.join(state.mnt, 'seq.bin')
  const lw = await work({ op: 'write', file: localSeq, bytes: seqBytes, tag: TAG.seq })
  const lwRate = MB(seqBytes) / (lw.totalMs / 1000)
  say(`   local   ${f1(lwRate)} MB/s  (${f1(lw.totalMs / 1000)} s, of which fsync ${f1(lw.fsyncMs / 1000)} s; writer CPU user ${f1(lw.cpuUserMs / 1000)} s sys ${f1(lw.cpuSysMs / 1000)} s)`)
  const topP = topSnapshot(1500)
  const ww = await watched(pid, () => work({ op: 'write', file: coopSeq, bytes: seqBytes, tag: TAG.seq }))
  const cw = ww.result
  const cwRate = MB(seqBytes) / (cw.totalMs / 1000)
  say(`   coopfs  ${f1(cwRate)} MB/s  (${f1(cw.totalMs / 1000)} s, of which fsync ${f1(cw.fsyncMs / 1000)} s; writer CPU user ${f1(cw.cpuUserMs / 1000)} s sys ${f1(cw.cpuSysMs / 1000)} s)   coopfs/local ${ratio(cwRate, lwRate)}   target >= ${TARGET.writeMBs} MB/s`)
  say(cpuLine(ww))
  say(rssLine(ww))
  rssOf(`sequential write ${CFG.mb} MiB`, ww)
  const top = await topP
  if (top) say('      top during the coopfs write (second frame of top -b -n2 -d1):\n' + top)
  const sw = await watched(pid, () => timedSync())
  const syncRate = MB(seqBytes) / ((sw.result.endEpoch - cw.startEpoch) / 1000)
  say(`   coopfs sync after the write: ${f1(sw.result.secs)} s; write start to sync return ${f1(syncRate)} MB/s`)
  say(cpuLine(sw))
  say(rssLine(sw))
  rssOf('sync after the write', sw)
  row(`seq write ${CFG.mb} MiB + fsync`, cwRate, lwRate, 'MB/s', TARGET.writeMBs, `>= ${TARGET.writeMBs} MB/s`)
  row('  write start -> coopfs sync returns', syncRate, lwRate, 'MB/s')

  // ---- 2. sequential read
  say()
  say('2. sequential read of that file, 1 MiB reads')
  const readPair = async (label, localDrop, coopPrep) => {
    if (localDrop) await dropFileCache([localSeq])
    const lr = await work({ op: 'read', file: localSeq })
    if (lr.bytes !== seqBytes) throw new Error(`local read got ${lr.bytes} bytes`)
    if (coopPrep) await coopPrep()
    const wr = await watched(pid, () => work({ op: 'read', file: coopSeq }))
    if (wr.result.bytes !== seqBytes) throw new Error(`coopfs read got ${wr.result.bytes} of ${seqBytes} bytes`)
    const l = MB(seqBytes) / (lr.totalMs / 1000)
    const c = MB(seqBytes) / (wr.result.totalMs / 1000)
    say(`   ${label}: local ${f1(l)} MB/s, coopfs ${f1(c)} MB/s, coopfs/local ${ratio(c, l)}`)
    say(cpuLine(wr, `; reader CPU user ${f1(wr.result.cpuUserMs / 1000)} s sys ${f1(wr.result.cpuSysMs / 1000)} s`))
    say(rssLine(wr))
    return { l, c, w: wr }
  }
  const r1 = await readPair('read right after write+sync', false, null)
  rssOf('read right after the write', r1.w)
  const r2 = await readPair('second read (cached)       ', false, null)
  rssOf('second (cached) read', r2.w)
  row('read right after write', r1.c, r1.l, 'MB/s')
  row('cached read (second)', r2.c, r2.l, 'MB/s', TARGET.readMBs, `>= ${TARGET.readMBs} MB/s`)

  // ---- 3. small files
  say()
  say(`3. ${CFG.files} files of ${CFG.fileSize / 1024} KiB: create (open, write, close), then read back and verify`)
  const localSmall = path.join(local, 'small')
  const coopSmall = path.join(state.mnt, 'small')
  fs.mkdirSync(localSmall)
  fs.mkdirSync(coopSmall)
  const lm = await work({ op: 'mkfiles', dir: localSmall, n: CFG.files, size: CFG.fileSize, tag: TAG.small })
  const lmRate = CFG.files / (lm.totalMs / 1000)
  const wm = await watched(pid, () => work({ op: 'mkfiles', dir: coopSmall, n: CFG.files, size: CFG.fileSize, tag: TAG.small }))
  const cmRate = CFG.files / (wm.result.totalMs / 1000)
  say(`   create: local ${f1(lmRate)} files/s, coopfs ${f1(cmRate)} files/s, coopfs/local ${ratio(cmRate, lmRate)}   target >= ${TARGET.filesPerS} files/s`)
  say(cpuLine(wm, `; creator CPU user ${f1(wm.result.cpuUserMs / 1000)} s sys ${f1(wm.result.cpuSysMs / 1000)} s`))
  say(rssLine(wm))
  rssOf(`create ${CFG.files} files`, wm)
  // A close on coopfs commits the file's data and metadata to its log: they survive a killed daemon, and
  // fsync makes them survive a power loss, as on the local disk, where the baseline above does no fsync.
  // For context, the local disk with an fsync before every close, on at most 2000 files:
  const nSync = Math.min(CFG.files, 2000)
  const localSmallSync = path.join(local, 'small-fsync')
  fs.mkdirSync(localSmallSync)
  const lms = await work({ op: 'mkfiles', dir: localSmallSync, n: nSync, size: CFG.fileSize, tag: TAG.small, fsync: true })
  const lmsRate = nSync / (lms.totalMs / 1000)
  say(`   context: local create with fsync before each close ${f1(lmsRate)} files/s (${nSync} files); coopfs/that ${ratio(cmRate, lmsRate)}`)
  fs.rmSync(localSmallSync, { recursive: true, force: true })
  const lrf = await work({ op: 'readfiles', dir: localSmall, n: CFG.files, size: CFG.fileSize, tag: TAG.small })
  const lrfRate = CFG.files / (lrf.totalMs / 1000)
  const wrf = await watched(pid, () => work({ op: 'readfiles', dir: coopSmall, n: CFG.files, size: CFG.fileSize, tag: TAG.small }))
  const crfRate = CFG.files / (wrf.result.totalMs / 1000)
  if (lrf.bad || wrf.result.bad) throw new Error(`small files read back wrong: ${lrf.bad} local, ${wrf.result.bad} coopfs`)
  say(`   read:   local ${f1(lrfRate)} files/s, coopfs ${f1(crfRate)} files/s, coopfs/local ${ratio(crfRate, lrfRate)}   (all ${CFG.files} verified)`)
  say(cpuLine(wrf))
  say(rssLine(wrf))
  rssOf(`read ${CFG.files} files`, wrf)
  const ssw = await watched(pid, () => timedSync())
  say(`   coopfs sync after the small files: ${f1(ssw.result.secs)} s`)
  rssOf('sync after the small files', ssw)
  row(`create ${CFG.files} x ${CFG.fileSize / 1024} KiB files`, cmRate, lmRate, 'files/s', TARGET.filesPerS, `>= ${TARGET.filesPerS} files/s`)
  row(`  local with fsync per file (${nSync})`, cmRate, lmsRate, 'files/s')
  row(`read ${CFG.files} files`, crfRate, lrfRate, 'files/s', TARGET.filesPerS, `>= ${TARGET.filesPerS} files/s`)

  // ---- cold reads after a remount
  if (CFG.cold) {
    say()
    say('2b/3b. cold reads: unmount + mount (empty daemon caches), and the page cache of the partner areas')
    say('       and of the local baseline files dropped (per file, posix_fadvise DONTNEED)')
    const um = await unmount()
    pid = await mount()
    say(`   unmount took ${f1(um)} s (final sync), remounted: daemon pid ${pid}, RSS ${f0(procStatus(pid).rssMiB)} MiB`)
    const localSmallFiles = Array.from({ length: CFG.files }, (_, i) => path.join(localSmall, 'f' + i))
    const rc = await readPair('cold read                  ', true, () => dropFileCache(partnerFiles))
    rssOf('cold read (after remount)', rc.w)
    row('cold read (remount, caches dropped)', rc.c, rc.l, 'MB/s')
    const vr = await work({ op: 'verify', file: coopSeq, bytes: seqBytes, tag: TAG.seq, samples: 32 })
    if (vr.bad) throw new Error(`coopfs ${coopSeq}: ${vr.bad} of ${vr.checked} sampled blocks read back wrong (size ${vr.size})`)
    say(`   verified ${vr.checked} sampled 1 MiB blocks of the file read through coopfs`)
    await dropFileCache(partnerFiles)
    await dropFileCache(localSmallFiles)
    const lrc = await work({ op: 'readfiles', dir: localSmall, n: CFG.files, size: CFG.fileSize, tag: TAG.small })
    const wrc = await watched(pid, () => work({ op: 'readfiles', dir: coopSmall, n: CFG.files, size: CFG.fileSize, tag: TAG.small }))
    if (lrc.bad || wrc.result.bad) throw new Error(`small files read back wrong after remount: ${lrc.bad} local, ${wrc.result.bad} coopfs`)
    const lrcRate = CFG.files / (lrc.totalMs / 1000)
    const crcRate = CFG.files / (wrc.result.totalMs / 1000)
    say(`   cold small-file read: local ${f1(lrcRate)} files/s, coopfs ${f1(crcRate)} files/s, coopfs/local ${ratio(crcRate, lrcRate)}`)
    say(cpuLine(wrc))
    say(rssLine(wrc))
    rssOf(`cold read ${CFG.files} files`, wrc)
    row(`cold read ${CFG.files} files`, crcRate, lrcRate, 'files/s')
  }

  // ---- 4. big write and memory
  if (CFG.big) {
    say()
    say(`4. big sequential write, ${CFG.bigMb} MiB + fsync, then coopfs sync; daemon memory watched throughout`)
    const localBig = path.join(local, 'big.bin')
    const coopBig = path.join(state.mnt, 'big.bin')
    const lb = await work({ op: 'write', file: localBig, bytes: bigBytes, tag: TAG.big })
    fs.rmSync(localBig, { force: true })
    const lbRate = MB(bigBytes) / (lb.totalMs / 1000)
    say(`   local   ${f1(lbRate)} MB/s  (${f1(lb.totalMs / 1000)} s, of which fsync ${f1(lb.fsyncMs / 1000)} s)`)
    const wb = await watched(pid, () => work({ op: 'write', file: coopBig, bytes: bigBytes, tag: TAG.big }))
    const cbRate = MB(bigBytes) / (wb.result.totalMs / 1000)
    say(`   coopfs  ${f1(cbRate)} MB/s  (${f1(wb.result.totalMs / 1000)} s, of which fsync ${f1(wb.result.fsyncMs / 1000)} s)   coopfs/local ${ratio(cbRate, lbRate)}`)
    say(cpuLine(wb))
    say(rssLine(wb) + `   target <= ${RSS_TARGET}`)
    rssOf(`write ${CFG.bigMb} MiB`, wb)
    const bs = await watched(pid, () => timedSync())
    const bsRate = MB(bigBytes) / ((bs.result.endEpoch - wb.result.startEpoch) / 1000)
    say(`   coopfs sync: ${f1(bs.result.secs)} s; write start to sync return ${f1(bsRate)} MB/s`)
    say(cpuLine(bs))
    say(rssLine(bs))
    rssOf(`sync after ${CFG.bigMb} MiB`, bs)
    const vb = await work({ op: 'verify', file: coopBig, bytes: bigBytes, tag: TAG.big, samples: 16 })
    if (vb.bad) throw new Error(`coopfs ${coopBig}: ${vb.bad} of ${vb.checked} sampled blocks read back wrong (size ${vb.size})`)
    say(`   verified ${vb.checked} sampled 1 MiB blocks`)
    row(`seq write ${CFG.bigMb} MiB + fsync`, cbRate, lbRate, 'MB/s', TARGET.writeMBs, `>= ${TARGET.writeMBs} MB/s`)
    row('  write start -> coopfs sync returns', bsRate, lbRate, 'MB/s')
  }
  const finalStatus = JSON.parse((await cli(['status', '--home', state.home, '--json'])).stdout)
  const um2 = await unmount()
  say()
  say(`unmount: ${f1(um2)} s; stored ${f1(finalStatus.bytesStored / 2 ** 30)} GiB, damage ${finalStatus.damage?.count ?? '-'}, last error ${finalStatus.lastError ?? 'none'}`)

  // ---- 5. erasure coding
  say()
  say('5. erasure coding (scripts/bench-ec.js)')
  const ec = await run(process.execPath, [path.join(ROOT, 'scripts', 'bench-ec.js')])
  for (const l of (ec.stdout + ec.stderr).trimEnd().split('\n')) say('   ' + l)
  if (ec.code !== 0) say(`   (bench-ec.js exited with ${ec.code})`)
  const ecNative = /native\s+encode\s+([\d.]+)\s+decode[^\d]*\d+[^\d]*([\d.]+)/.exec(ec.stdout)
  const ecJs = /js\s+encode\s+([\d.]+)\s+decode[^\d]*\d+[^\d]*([\d.]+)/.exec(ec.stdout)

  // ---- summary
  say()
  say('summary (coopfs beside the local disk in the same run; MB = 10^6 bytes; targets are for reference, not a verdict)')
  const head = ['measure', 'coopfs', 'local disk', 'ratio', 'target']
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map(r => r[i].length)))
  const line = r => r.map((c, i) => i === 0 ? c.padEnd(widths[i]) : i === 4 ? c : c.padStart(widths[i])).join('  ').trimEnd()
  say(line(head))
  say(widths.map(w => '-'.repeat(w)).join('  '))
  for (const r of rows) say(line(r))
  say()
  say('daemon memory per phase (VmHWM reset at the start of each phase; sampled VmRSS max every 100 ms)')
  const memWidth = Math.max(...rssByPhase.map(([n]) => n.length))
  for (const [name, r] of rssByPhase) {
    const peak = Number.isFinite(r.peakMB) ? r.peakMB : r.sinceStartMB
    const isBig = name.startsWith('write ') && CFG.big
    say(`  ${name.padEnd(memWidth)}  peak ${f0(peak).padStart(5)} MiB  sampled max ${f0(r.sampledMaxMB).padStart(5)} MiB${isBig ? `   target <= ${RSS_TARGET} (${ratio(peak, RSS_TARGET_MIB)} of it)` : ''}`)
  }
  if (ecNative || ecJs) {
    say()
    say(`erasure coding k=4 m=2, MB/s of data, one core: ${ecNative ? `native encode ${ecNative[1]} decode ${ecNative[2]}` : 'native unavailable'}${ecJs ? `; js encode ${ecJs[1]} decode ${ecJs[2]}` : ''}`)
  }
}

if (process.argv[2] === '--worker') {
  await worker(JSON.parse(process.argv[3]))
} else {
  const onSignal = sig => {
    state.interrupted = true
    say(`\n${sig}: cleaning up`)
    cleanup().finally(() => process.exit(130))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    await main()
  } catch (err) {
    if (state.interrupted) await new Promise(() => {}) // the signal handler cleans up and exits
    say(`\nbenchmark failed: ${err?.stack ?? err}`)
    if (state.home) {
      try {
        const log = fs.readFileSync(path.join(state.home, 'daemon.log'), 'utf8').trimEnd().split('\n').slice(-15)
        say('last lines of the daemon log:\n' + log.map(l => '  ' + l).join('\n'))
      } catch {}
    }
    process.exitCode = 1
  } finally {
    await cleanup()
  }
}

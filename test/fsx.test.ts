// Random operations on a handful of files through the mount, each checked against a model kept in memory:
// writes at any offset (around the inline limit and chunk boundaries, past the end, through descriptors
// kept open), appends, truncates, renames over other files, hard links, unlinks of open files, chmod,
// utimes, in two directories (one renamed back and forth with files in it open), fsync, with coopfs sync
// (which packs what waits), remounts and kill -9 of the daemon in between; and two processes writing
// disjoint parts of one file at once. Seeded: a failure names its seed and step, and COOPFS_FSX_SEED=S
// COOPFS_FSX_OPS=N (with COOPFS_FSX_EAGER=1 for a sequence that packs at once) runs that sequence again.
// Run: node --import tsx test/fsx.test.ts
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount as mountWith, run, unmount, sync, killDaemon, type Setup } from './helpers.js'

const CHUNK = 128 * 1024
const INLINE = 32 * 1024
const BOUNDARIES = [INLINE, CHUNK, 2 * CHUNK, 3 * CHUNK]
const MAX_END = 3 * CHUNK + 9000
const NAMES = ['a', 'b', 'c', 'sub/d', 'sub/e']
const MAX_OPEN = 3
// Each sequence stops at its step count or after this long, whichever comes first.
// Steps named before a failure.
const TRAIL = Number(process.env.COOPFS_FSX_TRAIL || 40)
const BUDGET_MS = Number(process.env.COOPFS_FSX_BUDGET_MS || 75_000)

// mulberry32: small, fast, and the same sequence for the same seed everywhere.
function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

// mtime: what utimes set, null once a write or truncate has set it to the time of the change.
interface Node { id: number, data: Buffer, mode: number, mtime: number | null }
interface Open { fd: number, node: Node, append: boolean }

class Model {
  names = new Map<string, Node>()
  open: Open[] = []
  private nextId = 1

  node (): Node {
    return { id: this.nextId++, data: Buffer.alloc(0), mode: 0o666 & ~process.umask(), mtime: null }
  }

  static write (n: Node, pos: number, buf: Buffer): void {
    if (pos + buf.length > n.data.length) n.data = Buffer.concat([n.data, Buffer.alloc(pos + buf.length - n.data.length)])
    buf.copy(n.data, pos)
    n.mtime = null
  }

  static truncate (n: Node, size: number): void {
    if (size <= n.data.length) n.data = Buffer.from(n.data.subarray(0, size))
    else n.data = Buffer.concat([n.data, Buffer.alloc(size - n.data.length)])
    n.mtime = null
  }
}

// How got differs from want: lengths, the first and last differing byte, and whether got is zeros there.
function differs (got: Buffer, want: Buffer): string {
  const n = Math.min(got.length, want.length)
  let first = 0
  while (first < n && got[first] === want[first]) first++
  let last = n - 1
  while (last > first && got[last] === want[last]) last--
  const zeros = first < n && got.subarray(first, last + 1).every(b => b === 0)
  return `${got.length} bytes read, model ${want.length}; bytes ${first}-${last} of the range differ${zeros ? ' (read as zeros)' : ''}`
}

function readAll (fd: number, len: number, pos: number): Buffer {
  const buf = Buffer.alloc(len)
  let got = 0
  while (got < len) {
    const n = fs.readSync(fd, buf, got, len - got, pos + got)
    if (n === 0) break
    got += n
  }
  return buf.subarray(0, got)
}

// Packing at once: blocks leave the write-back store as soon as their writer pauses, small segments are
// sealed within 20 ms and checkpoints follow each other closely, so writes and truncates meet stored data
// and the packer at work far more often than with the defaults, which wait for bursts to end.
const EAGER = {
  COOPFS_WRITE_BURST_MS: '0',
  COOPFS_PACK_IDLE_MS: '0',
  COOPFS_SEGMENT_FLUSH_MS: '20',
  COOPFS_CHECKPOINT_INTERVAL_MS: '200'
}

async function runSequence (t: any, seed: number, steps: number, env?: NodeJS.ProcessEnv): Promise<void> {
  const s: Setup = await init(t, { slots: 512 })
  const mount = async (): Promise<void> => await mountWith(s, [], env)
  await mount()
  const dir = path.join(s.mnt, 'fsx')
  fs.mkdirSync(dir)
  // The directory of the names in sub/ is renamed back and forth (sub, sub2) with files in it open.
  let subName = 'sub'
  fs.mkdirSync(path.join(dir, subName))
  const at = (name: string): string => name.startsWith('sub/') ? path.join(dir, subName, name.slice(4)) : path.join(dir, name)
  const rnd = prng(seed)
  const int = (n: number): number => Math.floor(rnd() * n)
  const pick = <T>(xs: T[]): T => xs[int(xs.length)]
  const m = new Model()
  const counts: Record<string, number> = {}
  let step = 0
  let failure: string | null = null
  // The last steps taken, named in a failure.
  const trail: string[] = []
  const did = (what: string): void => {
    trail.push(`${step} ${what}`)
    if (trail.length > TRAIL) trail.shift()
  }

  const fail = (what: string): void => {
    if (failure === null) failure = `seed ${seed}${env ? ' (COOPFS_FSX_EAGER=1)' : ''}, step ${step}: ${what}\nsteps before it:\n${trail.join('\n')}`
  }
  const data = (len: number): Buffer => {
    const buf = Buffer.allocUnsafe(len)
    let x = (int(0x7fffffff) | 1) >>> 0
    for (let i = 0; i < len; i++) {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0
      buf[i] = x & 0xff
    }
    return buf
  }
  const offset = (size: number): number => {
    const r = rnd()
    if (r < 0.15) return 0
    if (r < 0.45) return int(size + 1)
    if (r < 0.75) return Math.max(0, pick(BOUNDARIES) + int(601) - 300)
    return int(MAX_END)
  }
  const length = (): number => {
    const r = rnd()
    if (r < 0.35) return 1 + int(512)
    if (r < 0.65) return 1 + int(8192)
    return 1 + int(160 * 1024)
  }
  const checkNode = (n: Node, fd: number, where: string): void => {
    const st = fs.fstatSync(fd)
    if (st.size !== n.data.length) return fail(`${where}: size ${st.size}, model ${n.data.length}`)
    if ((st.mode & 0o7777) !== n.mode) return fail(`${where}: mode ${(st.mode & 0o7777).toString(8)}, model ${n.mode.toString(8)}`)
    if (n.mtime !== null && st.mtimeMs !== n.mtime) return fail(`${where}: mtime ${st.mtimeMs}, model ${n.mtime}`)
    const got = readAll(fd, n.data.length + 1, 0)
    if (!got.equals(n.data)) fail(`${where}: ${differs(got, n.data)}`)
  }
  const checkAll = (where: string): void => {
    const listed = [...fs.readdirSync(dir).filter(n => n !== subName), ...fs.readdirSync(path.join(dir, subName)).map(n => `sub/${n}`)].sort()
    const want = [...m.names.keys()].sort()
    if (listed.join() !== want.join()) return fail(`${where}: names [${listed.join()}], model [${want.join()}]`)
    for (const [name, n] of m.names) {
      const fd = fs.openSync(at(name), 'r')
      try {
        checkNode(n, fd, `${where}, ${name}`)
      } finally {
        fs.closeSync(fd)
      }
    }
    for (const o of m.open) checkNode(o.node, o.fd, `${where}, open descriptor of file #${o.node.id}`)
  }
  const closeAll = (): void => {
    for (const o of m.open) fs.closeSync(o.fd)
    m.open = []
  }
  // A name that exists, picked at random, and its file; null when there is none.
  const existing = (): { name: string, n: Node } | null => {
    const names = [...m.names.keys()]
    if (names.length === 0) return null
    const name = pick(names)
    return { name, n: m.names.get(name)! }
  }
  // Opens a name for writing, making the file (and its node) when it does not exist.
  const openName = (name: string, append: boolean): Open => {
    let n = m.names.get(name)
    if (!n) {
      n = m.node()
      m.names.set(name, n)
    }
    return { fd: fs.openSync(at(name), append ? 'a+' : fs.existsSync(at(name)) ? 'r+' : 'w+'), node: n, append }
  }

  const ops: Array<[number, string, () => Promise<void> | void]> = [
    [24, 'write by name', () => {
      const name = pick(NAMES)
      const o = openName(name, false)
      const buf = data(length())
      const pos = offset(o.node.data.length)
      did(`write ${name} (#${o.node.id}, ${o.node.data.length} bytes) at ${pos} +${buf.length}`)
      try {
        fs.writeSync(o.fd, buf, 0, buf.length, pos)
      } finally {
        fs.closeSync(o.fd)
      }
      Model.write(o.node, pos, buf)
    }],
    [18, 'write through an open descriptor', () => {
      if (m.open.length === 0) return
      const o = pick(m.open)
      const buf = data(length())
      const pos = o.append ? o.node.data.length : offset(o.node.data.length)
      did(`write fd ${o.fd} (#${o.node.id}, ${o.node.data.length} bytes${o.append ? ', append' : ''}) at ${pos} +${buf.length}`)
      fs.writeSync(o.fd, buf, 0, buf.length, o.append ? null : pos)
      Model.write(o.node, pos, buf)
    }],
    [6, 'append by name', () => {
      const name = pick(NAMES)
      const o = openName(name, true)
      const buf = data(length())
      did(`append ${name} (#${o.node.id}, ${o.node.data.length} bytes) +${buf.length}`)
      try {
        fs.writeSync(o.fd, buf)
      } finally {
        fs.closeSync(o.fd)
      }
      Model.write(o.node, o.node.data.length, buf)
    }],
    [14, 'read a range', () => {
      const e = existing()
      if (!e) return
      const { name, n } = e
      const pos = offset(n.data.length)
      const len = length()
      did(`read ${name} (#${n.id}) at ${pos} +${len}`)
      const fd = fs.openSync(at(name), 'r')
      try {
        const got = readAll(fd, len, pos)
        const want = n.data.subarray(Math.min(pos, n.data.length), Math.min(pos + len, n.data.length))
        if (!got.equals(want)) fail(`read of ${name} at ${pos} (+${len}): ${differs(got, want)}`)
      } finally {
        fs.closeSync(fd)
      }
    }],
    [6, 'read through an open descriptor', () => {
      if (m.open.length === 0) return
      const o = pick(m.open)
      const pos = offset(o.node.data.length)
      const len = length()
      did(`read fd ${o.fd} (#${o.node.id}) at ${pos} +${len}`)
      const got = readAll(o.fd, len, pos)
      const want = o.node.data.subarray(Math.min(pos, o.node.data.length), Math.min(pos + len, o.node.data.length))
      if (!got.equals(want)) {
        // Whether the daemon or the kernel's cache of this descriptor's name is wrong: read it afresh.
        const other = [...m.names].find(([, n]) => n === o.node)?.[0]
        let fresh = 'no name left to read it through'
        if (other !== undefined) {
          const fd = fs.openSync(at(other), 'r')
          fresh = readAll(fd, len, pos).equals(want) ? `read through ${other} afresh it is right` : `read through ${other} afresh it is wrong too`
          fs.closeSync(fd)
        }
        const again = readAll(o.fd, len, pos).equals(want) ? 'right' : 'wrong'
        fail(`read of fd ${o.fd} at ${pos} (+${len}): ${differs(got, want)}; ${fresh}; through the descriptor again ${again}`)
      }
    }],
    [2, 'chmod', () => {
      const e = existing()
      if (!e) return
      const { name, n } = e
      const mode = int(0o1000)
      did(`chmod ${name} (#${n.id}) ${mode.toString(8)}`)
      fs.chmodSync(at(name), mode)
      n.mode = mode
    }],
    [2, 'utimes', () => {
      const e = existing()
      if (!e) return
      const { name, n } = e
      // Whole seconds: a fraction would reach the kernel a few nanoseconds short of its millisecond.
      const mtime = (1_500_000_000 + int(100_000_000)) * 1000
      did(`utimes ${name} (#${n.id}) mtime ${mtime}`)
      fs.utimesSync(at(name), mtime / 1000, mtime / 1000)
      n.mtime = mtime
    }],
    [8, 'truncate by name', () => {
      const e = existing()
      if (!e) return
      const { name, n } = e
      const r = rnd()
      const size = r < 0.25 ? 0 : r < 0.55 ? int(n.data.length + 1) : r < 0.8 ? Math.max(0, pick(BOUNDARIES) + int(601) - 300) : int(MAX_END)
      did(`truncate ${name} (#${n.id}, ${n.data.length} bytes) to ${size}`)
      fs.truncateSync(at(name), size)
      Model.truncate(n, size)
    }],
    [6, 'ftruncate', () => {
      if (m.open.length === 0) return
      const o = pick(m.open)
      const size = rnd() < 0.5 ? int(o.node.data.length + 1) : int(MAX_END)
      did(`ftruncate fd ${o.fd} (#${o.node.id}, ${o.node.data.length} bytes) to ${size}`)
      fs.ftruncateSync(o.fd, size)
      Model.truncate(o.node, size)
    }],
    [6, 'open a descriptor', () => {
      if (m.open.length >= MAX_OPEN) return
      const name = pick(NAMES)
      const o = openName(name, rnd() < 0.25)
      m.open.push(o)
      did(`open ${name} (#${o.node.id}) as fd ${o.fd}${o.append ? ', append' : ''}`)
    }],
    [4, 'close a descriptor', () => {
      if (m.open.length === 0) return
      const i = int(m.open.length)
      did(`close fd ${m.open[i].fd} (#${m.open[i].node.id})`)
      fs.closeSync(m.open[i].fd)
      m.open.splice(i, 1)
    }],
    [4, 'fsync', () => {
      if (m.open.length === 0) return
      const o = pick(m.open)
      did(`fsync fd ${o.fd} (#${o.node.id})`)
      fs.fsyncSync(o.fd)
      checkNode(o.node, o.fd, `fsync of file #${o.node.id}`)
    }],
    [4, 'rename', () => {
      const names = [...m.names.keys()]
      if (names.length === 0) return
      const from = pick(names)
      const to = pick(NAMES)
      did(`rename ${from} (#${m.names.get(from)!.id}) to ${to}${m.names.has(to) ? ` (#${m.names.get(to)!.id})` : ''}`)
      fs.renameSync(at(from), at(to))
      const n = m.names.get(from)!
      // Renaming a name onto another name of the same file changes nothing (POSIX).
      if (from !== to && m.names.get(to) !== n) {
        m.names.set(to, n)
        m.names.delete(from)
      }
    }],
    [2, 'hard link', () => {
      const names = [...m.names.keys()]
      const free = NAMES.filter(n => !m.names.has(n))
      if (names.length === 0 || free.length === 0) return
      const from = pick(names)
      const to = pick(free)
      did(`link ${from} (#${m.names.get(from)!.id}) as ${to}`)
      fs.linkSync(at(from), at(to))
      m.names.set(to, m.names.get(from)!)
    }],
    [3, 'unlink', () => {
      const names = [...m.names.keys()]
      if (names.length === 0) return
      const name = pick(names)
      did(`unlink ${name} (#${m.names.get(name)!.id})`)
      fs.unlinkSync(at(name))
      m.names.delete(name)
    }],
    [2, 'rename the directory', () => {
      const next = subName === 'sub' ? 'sub2' : 'sub'
      did(`rename directory ${subName} to ${next}`)
      fs.renameSync(path.join(dir, subName), path.join(dir, next))
      subName = next
    }],
    [3, 'check every file', () => {
      did('check every file')
      checkAll('check')
    }],
    [2, 'coopfs sync', async () => {
      did('coopfs sync')
      await sync(s.home)
      checkAll('after coopfs sync')
    }],
    [0.6, 'remount', async () => {
      did('remount')
      closeAll()
      await unmount(s.mnt)
      await mount()
      checkAll('after remount')
    }],
    [0.6, 'kill -9 and mount again', async () => {
      // Every descriptor is closed first: what close confirmed must all be there afterwards.
      did('kill -9, mount')
      closeAll()
      await killDaemon(s)
      await mount()
      checkAll('after kill -9')
    }]
  ]
  const total = ops.reduce((a, [w]) => a + w, 0)
  const started = Date.now()
  for (step = 0; step < steps && failure === null && Date.now() - started < BUDGET_MS; step++) {
    let r = rnd() * total
    let i = 0
    while (r >= ops[i][0]) r -= ops[i++][0]
    const [, name, fn] = ops[Math.min(i, ops.length - 1)]
    try {
      await fn()
    } catch (err) {
      fail(`${name} threw ${(err as Error).message}`)
    }
    counts[name] = (counts[name] ?? 0) + 1
  }
  if (failure === null) {
    closeAll()
    checkAll('at the end')
    await unmount(s.mnt)
    await mount()
    checkAll('at the end, after a remount')
  }
  t.comment(`seed ${seed}: ${step} steps in ${((Date.now() - started) / 1000).toFixed(1)} s; ${Object.entries(counts).map(([k, v]) => `${k} ${v}`).join(', ')}`)
  t.is(failure, null, failure ?? `seed ${seed}: ${step} steps, the mount always agreed with the model`)
  t.ok(step >= Math.min(steps, 100), `at least 100 steps ran (${step})`)
  for (const o of m.open) fs.closeSync(o.fd)
  await unmount(s.mnt)
}

const STEPS = Number(process.env.COOPFS_FSX_OPS || 600)
// COOPFS_FSX_SEED=S runs that one sequence, with COOPFS_FSX_EAGER=1 packing at once.
const RUNS: Array<{ seed: number, eager: boolean }> = process.env.COOPFS_FSX_SEED
  ? [{ seed: Number(process.env.COOPFS_FSX_SEED), eager: process.env.COOPFS_FSX_EAGER === '1' }]
  : [{ seed: 1, eager: false }, { seed: 2, eager: true }]

for (const { seed, eager } of RUNS) {
  test(`random operations agree with a model of the files (seed ${seed}${eager ? ', packing at once' : ''})`, { timeout: BUDGET_MS + 120_000 }, async t => {
    await runSequence(t, seed, STEPS, eager ? EAGER : undefined)
  })
}

// One writer of a shared file: random writes (and fsyncs) within [lo, hi) only, each range read back at
// once; at the end its part of the file goes to modelOut. Exits 1 on a read that differs.
const PART_WRITER = `
const fs = require('fs')
const [file, lo, hi, seed, steps, modelOut] = process.argv.slice(1)
const L = Number(lo), H = Number(hi)
let a = Number(seed) >>> 0
const rnd = () => { a = (a + 0x6d2b79f5) >>> 0; let x = a; x = Math.imul(x ^ (x >>> 15), x | 1); x ^= x + Math.imul(x ^ (x >>> 7), x | 61); return ((x ^ (x >>> 14)) >>> 0) / 4294967296 }
const model = Buffer.alloc(H - L)
const fd = fs.openSync(file, 'r+')
for (let i = 0; i < Number(steps); i++) {
  const pos = L + Math.floor(rnd() * (H - L))
  const len = Math.min(H - pos, 1 + Math.floor(rnd() * (rnd() < 0.5 ? 600 : 40000)))
  const buf = Buffer.alloc(len)
  for (let j = 0; j < len; j++) buf[j] = Math.floor(rnd() * 256)
  fs.writeSync(fd, buf, 0, len, pos)
  buf.copy(model, pos - L)
  if (rnd() < 0.05) fs.fsyncSync(fd)
  const back = Buffer.alloc(len)
  fs.readSync(fd, back, 0, len, pos)
  if (!back.equals(buf)) { console.error('step ' + i + ': read back differs at ' + pos + ' +' + len); process.exit(1) }
}
fs.closeSync(fd)
fs.writeFileSync(modelOut, model)
`

const PART_SEED = Number(process.env.COOPFS_FSX_PART_SEED || 100)
const PART_STEPS = Number(process.env.COOPFS_FSX_PART_STEPS || 400)

test('two writers on disjoint parts of one file, at once, with packing at once, keep each other\'s bytes', { timeout: 240_000 }, async t => {
  const s: Setup = await init(t, { slots: 512 })
  const mount = async (): Promise<void> => await mountWith(s, [], EAGER)
  await mount()
  const file = path.join(s.mnt, 'shared')
  // The parts meet inside the second chunk, so both writers change that chunk's bytes.
  const parts = [[0, CHUNK + 70_001], [CHUNK + 70_001, 3 * CHUNK + 5000]]
  fs.writeFileSync(file, Buffer.alloc(parts[1][1]))
  const models = parts.map((_, i) => path.join(s.dir, `part${i}.model`))
  const outcomes = await Promise.all(parts.map(([lo, hi], i) => run(process.execPath,
    ['-e', PART_WRITER, file, String(lo), String(hi), String(PART_SEED + i), String(PART_STEPS), models[i]])))
  for (const [i, r] of outcomes.entries()) t.is(r.code, 0, `writer ${i} read back what it wrote${r.stderr ? ': ' + r.stderr.trim() : ''}`)
  const want = Buffer.concat(models.map(f => fs.readFileSync(f)))
  t.ok(fs.readFileSync(file).equals(want), 'the file holds both writers\' bytes')
  await sync(s.home)
  t.ok(fs.readFileSync(file).equals(want), 'and after coopfs sync')
  await unmount(s.mnt)
  await mount()
  t.ok(fs.readFileSync(file).equals(want), 'and after a remount')
  await unmount(s.mnt)
})

#!/usr/bin/env node
// The floor of each FUSE layer for creating small files: the same in-memory filesystem (a map of inodes,
// no other work) served once through fuse-native (libfuse's threads hand every request to the main thread
// and wait for its answer) and once through the session that reads and answers the kernel on the main
// thread (src/fuse/kernel.ts). A separate process creates COOPFS_BENCH_FUSE_FILES files of 4 KiB (open,
// write, close) in each, the two alternating COOPFS_BENCH_FUSE_ROUNDS times; the figures are files/s and
// the ratio of the medians. Run `npm run build` first.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { envInt } from './bench-common.js'

const SELF = fileURLToPath(import.meta.url)
const FILES = envInt('COOPFS_BENCH_FUSE_FILES', 3000)
const ROUNDS = envInt('COOPFS_BENCH_FUSE_ROUNDS', 3)
const SIZE = 4096
const NOW = Date.now()

// ---- the filesystem both layers serve ----

class MemFs {
  constructor () {
    this.nodes = new Map([[1, { mode: 0o40755, size: 0, data: null, kids: new Map(), nlink: 2 }]])
    this.nextIno = 2
    this.nextFh = 1
  }

  attr (ino) {
    const n = this.nodes.get(ino)
    if (!n) throw Object.assign(new Error('no such inode'), { code: 'ENOENT' })
    return {
      ino, mode: n.mode, nlink: n.nlink, uid: process.getuid(), gid: process.getgid(), rdev: 0, size: n.size,
      blocks: Math.ceil(n.size / 512), blksize: 4096, atime: NOW, mtime: NOW, ctime: NOW
    }
  }

  lookup (parent, name) {
    const ino = this.nodes.get(parent)?.kids?.get(name)
    if (ino === undefined) throw Object.assign(new Error('no such name'), { code: 'ENOENT' })
    return ino
  }

  add (parent, name, mode) {
    const ino = this.nextIno++
    const dir = (mode & 0o170000) === 0o40000
    this.nodes.set(ino, { mode, size: 0, data: dir ? null : Buffer.alloc(0), kids: dir ? new Map() : null, nlink: dir ? 2 : 1 })
    this.nodes.get(parent).kids.set(name, ino)
    return ino
  }

  write (ino, buf, len, pos) {
    const n = this.nodes.get(ino)
    if (pos + len > n.data.length) {
      const d = Buffer.alloc(pos + len)
      n.data.copy(d)
      n.data = d
    }
    buf.copy(n.data, pos, 0, len)
    n.size = n.data.length
    return len
  }

  read (ino, buf, len, pos) {
    const n = this.nodes.get(ino)
    return n.data.copy(buf, 0, pos, Math.min(n.size, pos + len))
  }
}

// ---- the two layers ----

async function serveFuseNative (mnt) {
  const { loadFuse } = await import('../dist/fuse/libfuse.js')
  const Fuse = loadFuse()
  const mem = new MemFs()
  const ino = p => p.split('/').filter(Boolean).reduce((at, name) => mem.lookup(at, name), 1)
  const split = p => ({ parent: ino(path.dirname(p)), name: path.basename(p) })
  const handles = new Map()
  const stat = a => ({ ...a, mtime: new Date(a.mtime), atime: new Date(a.atime), ctime: new Date(a.ctime) })
  const guard = (cb, fn) => { try { fn() } catch (err) { cb(Fuse[err.code] ?? Fuse.EIO) } }
  const ops = {
    getattr: (p, cb) => guard(cb, () => cb(0, stat(mem.attr(ino(p))))),
    fgetattr: (p, fd, cb) => guard(cb, () => cb(0, stat(mem.attr(handles.get(fd))))),
    mkdir: (p, mode, cb) => guard(cb, () => { const { parent, name } = split(p); mem.add(parent, name, 0o40000 | mode); cb(0) }),
    create: (p, mode, cb) => guard(cb, () => {
      const { parent, name } = split(p)
      const fh = mem.nextFh++
      handles.set(fh, mem.add(parent, name, 0o100000 | (mode & 0o7777)))
      cb(0, fh)
    }),
    open: (p, flags, cb) => guard(cb, () => { const fh = mem.nextFh++; handles.set(fh, ino(p)); cb(0, fh) }),
    write: (p, fd, buf, len, pos, cb) => cb(mem.write(handles.get(fd), buf, len, pos)),
    read: (p, fd, buf, len, pos, cb) => cb(mem.read(handles.get(fd), buf, len, pos)),
    flush: (p, fd, cb) => cb(0),
    release: (p, fd, cb) => { handles.delete(fd); cb(0) },
    getxattr: (p, name, pos, cb) => cb(-61)
  }
  const fuse = new Fuse(mnt, ops, { force: true })
  await new Promise((resolve, reject) => fuse.mount(err => err ? reject(err) : resolve()))
  return () => new Promise(resolve => fuse.unmount(() => resolve()))
}

async function serveKernel (mnt) {
  const { kernelIo } = await import('../dist/fuse/libfuse.js')
  const { KernelSession } = await import('../dist/fuse/kernel.js')
  const io = kernelIo()
  if (!io) throw new Error('the preload addon is not built')
  const mem = new MemFs()
  const handles = new Map()
  const opened = ino => { const fh = mem.nextFh++; handles.set(fh, ino); return { fh } }
  const ops = {
    lookup: (c, parent, name) => mem.attr(mem.lookup(parent, name)),
    getattr: (c, ino) => mem.attr(ino),
    mkdir: (c, parent, name, mode) => mem.attr(mem.add(parent, name, 0o40000 | (mode & 0o7777))),
    create: (c, parent, name, mode) => {
      const ino = mem.add(parent, name, 0o100000 | (mode & 0o7777))
      return { attr: mem.attr(ino), opened: opened(ino) }
    },
    open: (c, ino) => opened(ino),
    write: (fh, ino, data, pos) => mem.write(ino, data, data.length, pos),
    read: (fh, ino, buf, pos) => mem.read(ino, buf, buf.length, pos),
    release: fh => { handles.delete(fh) },
    getxattr: () => { throw Object.assign(new Error('no attribute'), { code: 'ENODATA' }) }
  }
  const fd = io.kernelMount(mnt, 'fsname=bench-fuse,subtype=coopfs')
  let gone
  const ended = new Promise(resolve => { gone = resolve })
  const session = new KernelSession(fd, ops, io, { onGone: () => gone() })
  session.start()
  return async () => {
    await run('fusermount', ['-u', mnt])
    await ended
  }
}

// ---- driver ----

function run (cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], ...opts })
    let out = ''
    child.stdout.on('data', d => { out += d })
    child.on('error', reject)
    child.on('exit', code => code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} exited with ${code}`)))
  })
}

function create (dir) {
  fs.mkdirSync(dir)
  const data = Buffer.alloc(SIZE, 7)
  const t0 = performance.now()
  for (let i = 0; i < FILES; i++) {
    const fd = fs.openSync(path.join(dir, 'f' + i), 'w')
    fs.writeSync(fd, data, 0, SIZE, 0)
    fs.closeSync(fd)
  }
  const ms = performance.now() - t0
  let bad = 0
  for (let i = 0; i < FILES; i += 97) if (!fs.readFileSync(path.join(dir, 'f' + i)).equals(data)) bad++
  return { rate: FILES / (ms / 1000), bad }
}

async function serve (layer, mnt) {
  const stop = layer === 'kernel' ? await serveKernel(mnt) : await serveFuseNative(mnt)
  process.stdout.write('ready\n')
  process.stdin.resume()
  process.stdin.on('end', () => { stop().then(() => process.exit(0), () => process.exit(1)) })
}

async function round (layer, mnt) {
  const server = spawn(process.execPath, [SELF, 'serve', layer, mnt], { stdio: ['pipe', 'pipe', 'inherit'] })
  await new Promise((resolve, reject) => {
    server.stdout.on('data', d => { if (String(d).includes('ready')) resolve() })
    server.on('exit', code => reject(new Error(`the ${layer} server exited with ${code}`)))
  })
  try {
    return JSON.parse(await run(process.execPath, [SELF, 'create', path.join(mnt, 'd')]))
  } finally {
    const exited = new Promise(resolve => server.on('exit', resolve))
    server.stdin.end()
    await exited
  }
}

function median (xs) {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)]
}

async function main () {
  const mode = process.argv[2]
  if (mode === 'serve') return serve(process.argv[3], process.argv[4])
  if (mode === 'create') return process.stdout.write(JSON.stringify(create(process.argv[3])))
  const mnt = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-bench-fuse-'))
  console.log(`FUSE layers, in-memory filesystem: ${FILES} files of 4 KiB created (open, write, close) by another process, ${ROUNDS} rounds alternating`)
  const rates = { 'fuse-native': [], kernel: [] }
  try {
    for (let r = 0; r < ROUNDS; r++) {
      for (const layer of Object.keys(rates)) {
        const { rate, bad } = await round(layer, mnt)
        if (bad) throw new Error(`${layer}: ${bad} files read back wrong`)
        rates[layer].push(rate)
        console.log(`  round ${r + 1}  ${layer.padEnd(11)} ${rate.toFixed(0).padStart(6)} files/s`)
      }
    }
  } finally {
    fs.rmSync(mnt, { recursive: true, force: true })
  }
  const a = median(rates['fuse-native'])
  const b = median(rates.kernel)
  console.log(`median: fuse-native ${a.toFixed(0)} files/s, main-thread session ${b.toFixed(0)} files/s, session/fuse-native ${(b / a).toFixed(2)}x`)
}

main().catch(err => { console.error(err.message); process.exit(1) })

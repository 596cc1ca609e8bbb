// Crash safety: kill -9 of the daemon while files are being written. Every file whose close returned is
// intact after mounting again, the tree is consistent, and the mount point is not left stale.
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { init, mount, unmount, status, isMounted, killDaemon, until } from './helpers.js'

// Writes files until killed; prints each name once its close (after fsync for odd ones) has returned.
const WRITER = `
const fs = require('fs'), path = require('path'), crypto = require('crypto')
const dir = process.argv[1]
for (let i = 0; ; i++) {
  const name = 'f' + i
  const size = (i * 7919) % 400000 + 1
  const data = crypto.createHash('sha256').update(name).digest()
  const buf = Buffer.alloc(size)
  for (let o = 0; o < size; o += 32) data.copy(buf, o)
  try {
    const fd = fs.openSync(path.join(dir, name), 'w')
    fs.writeSync(fd, buf)
    if (i % 2) fs.fsyncSync(fd)
    fs.closeSync(fd)
  } catch { process.exit(0) }
  process.stdout.write(name + '\\n')
}
`

function expected (name: string): Buffer {
  const size = (Number(name.slice(1)) * 7919) % 400000 + 1
  const data = crypto.createHash('sha256').update(name).digest()
  const buf = Buffer.alloc(size)
  for (let o = 0; o < size; o += 32) data.copy(buf, o)
  return buf
}

test('files confirmed by close or fsync survive kill -9 of the daemon', async t => {
  const s = await init(t)
  await mount(s)
  const { pid } = await status(s.home)
  fs.mkdirSync(path.join(s.mnt, 'w'))
  const writer = spawn(process.execPath, ['-e', WRITER, path.join(s.mnt, 'w')], { stdio: ['ignore', 'pipe', 'ignore'] })
  let out = ''
  writer.stdout.on('data', d => { out += d })
  // Let it write for a while (bounded by count, not time), then kill the daemon mid-stream.
  await new Promise<void>(resolve => {
    const check = setInterval(() => {
      if (out.split('\n').filter(Boolean).length >= 150) {
        clearInterval(check)
        resolve()
      }
    }, 20)
  })
  process.kill(pid, 'SIGKILL')
  await new Promise(resolve => writer.on('close', resolve))
  const confirmed = out.split('\n').filter(Boolean)
  t.ok(confirmed.length >= 150, `${confirmed.length} files confirmed before the kill`)

  // auto_unmount clears the mount once the daemon's FUSE connection is gone.
  await until(() => !isMounted(s.mnt), 30_000, 50)
  t.absent(isMounted(s.mnt), 'no stale mount left behind')

  await mount(s)
  const names = new Set(fs.readdirSync(path.join(s.mnt, 'w')))
  let intact = 0
  for (const name of confirmed) {
    if (names.has(name) && fs.readFileSync(path.join(s.mnt, 'w', name)).equals(expected(name))) intact++
  }
  t.is(intact, confirmed.length, 'every confirmed file is intact')
  // The tree is consistent: every listed entry can be stat'ed and read.
  let readable = 0
  for (const name of names) {
    fs.readFileSync(path.join(s.mnt, 'w', name))
    readable++
  }
  t.is(readable, names.size)
  await unmount(s.mnt)
})

test('a confirmed truncate of a small file survives kill -9: cut bytes do not come back', async t => {
  const s = await init(t)
  await mount(s)
  const file = path.join(s.mnt, 'cut')
  fs.writeFileSync(file, Buffer.alloc(10_000, 'A'))
  fs.truncateSync(file, 2000)
  fs.truncateSync(file, 10_000)
  const want = Buffer.concat([Buffer.alloc(2000, 'A'), Buffer.alloc(8000)])
  t.alike(fs.readFileSync(file), want, 'bytes past the cut read as zeros')
  await killDaemon(s)
  await mount(s)
  t.alike(fs.readFileSync(file), want, 'and still do after the restart')
  await unmount(s.mnt)
})

// Space: deleting and overwriting frees logical-disk space (the cleaner compacts half-dead segments), and a
// really full logical disk answers ENOSPC without harming what is already stored.
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, sync, status } from './helpers.js'

const SLOTS = 48 // 48 MiB logical disk at k = 4
const PIECE = 128 * 1024
// A hang guard, not a time limit: alone each test takes about 10 s here, but on a busy machine the first
// ran past brittle's default 30 s.
const GUARD = { timeout: 180_000 }

test('writing and deleting three times the logical disk never runs out of space', GUARD, async t => {
  const s = await init(t, { slots: SLOTS })
  await mount(s)
  const keep = crypto.randomBytes(3 * 1024 * 1024)
  fs.writeFileSync(path.join(s.mnt, 'keep.bin'), keep)
  const st0 = await status(s.home)
  const capacity = st0.logicalBytes as number
  let written = 0
  let round = 0
  let previous: string | null = null
  while (written < 3 * capacity) {
    // Two files written in interleaved pieces share segments; deleting one leaves them half dead.
    const a = path.join(s.mnt, `a${round}`)
    const b = path.join(s.mnt, `b${round}`)
    const fa = fs.openSync(a, 'w')
    const fb = fs.openSync(b, 'w')
    for (let i = 0; i < 32; i++) {
      fs.writeSync(fa, crypto.randomBytes(PIECE))
      fs.writeSync(fb, crypto.randomBytes(PIECE))
    }
    fs.closeSync(fa)
    fs.closeSync(fb)
    written += 64 * PIECE
    await sync(s.home)
    fs.unlinkSync(a)
    if (previous) fs.unlinkSync(previous)
    previous = b
    round++
  }
  await sync(s.home)
  t.ok(written >= 3 * capacity, `${written >> 20} MiB written into a ${capacity >> 20} MiB logical disk`)
  t.ok(fs.readFileSync(path.join(s.mnt, 'keep.bin')).equals(keep), 'the file kept all along is intact')
  const st = await status(s.home)
  t.ok(st.bytesStored < capacity / 2, `only live data stays stored (${st.bytesStored >> 20} MiB)`)
  await unmount(s.mnt)
})

test('a full logical disk answers ENOSPC and keeps what was stored', GUARD, async t => {
  const s = await init(t, { slots: SLOTS })
  await mount(s)
  const keep = crypto.randomBytes(2 * 1024 * 1024)
  fs.writeFileSync(path.join(s.mnt, 'keep.bin'), keep)
  await sync(s.home)
  const big = path.join(s.mnt, 'big.bin')
  const fd = fs.openSync(big, 'w')
  let error = ''
  let wrote = 0
  try {
    for (let i = 0; i < 2 * SLOTS * 8; i++) {
      fs.writeSync(fd, crypto.randomBytes(PIECE))
      wrote += PIECE
    }
  } catch (err) {
    error = (err as NodeJS.ErrnoException).code ?? ''
  }
  fs.closeSync(fd)
  t.is(error, 'ENOSPC', `write failed with ENOSPC after ${wrote >> 20} MiB`)
  t.ok(fs.readFileSync(path.join(s.mnt, 'keep.bin')).equals(keep), 'stored file intact')
  fs.unlinkSync(big)
  await sync(s.home)
  fs.writeFileSync(path.join(s.mnt, 'after.bin'), crypto.randomBytes(4 * 1024 * 1024))
  await sync(s.home)
  t.is(fs.statSync(path.join(s.mnt, 'after.bin')).size, 4 * 1024 * 1024, 'space is usable again after deleting')
  await unmount(s.mnt)
})

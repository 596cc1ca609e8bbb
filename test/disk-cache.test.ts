// The on-disk block cache: blocks come back as written, the least recently used go first beyond the bound,
// the cache survives a restart, and a write it cannot make (too many queued, a broken folder) only costs the
// entry.
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { DiskCache } from '../src/log/disk-cache.js'
import { tmpdir } from './helpers.js'

const block = (n: number, size = 4096): Buffer => Buffer.alloc(size, n)

test('blocks read back, the least recently used leave first, and a restart keeps the rest', async t => {
  const dir = path.join(tmpdir(), 'cache')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const dc = new DiskCache(dir, 3 * 4096)
  for (let i = 0; i < 3; i++) await dc.put(`k${i}`, block(i))
  t.alike(await dc.get('k0'), block(0), 'a block reads back as written')
  await dc.put('k3', block(3))
  t.is(dc.size, 3 * 4096, 'the bound holds')
  t.absent(dc.has('k1'), 'the least recently used block left (k0 was just read)')
  t.ok(dc.has('k0') && dc.has('k2') && dc.has('k3'))
  const again = new DiskCache(dir, 3 * 4096)
  t.is(again.size, 3 * 4096, 'a restart finds what was cached')
  t.alike(await again.get('k3'), block(3))
})

test('puts that are not awaited: one write per key, a bounded queue, never a rejection', async t => {
  const dir = path.join(tmpdir(), 'cache')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  const dc = new DiskCache(dir, 1 << 30)
  // The same key twice at once: one write, the bytes of the first.
  await Promise.all([dc.put('same', block(1)), dc.put('same', block(2))])
  t.alike(await dc.get('same'), block(1), 'the second put of a key being written is dropped')
  // Far more blocks at once than the queue takes: some are not cached, none fails.
  const many = Array.from({ length: 64 }, (_, i) => dc.put(`m${i}`, block(i)))
  await Promise.all(many)
  let cached = 0
  for (let i = 0; i < 64; i++) if (dc.has(`m${i}`)) cached++
  t.ok(cached >= 16 && cached < 64, `a queue of 16 writes: ${cached} of 64 cached`)
  for (let i = 0; i < 64; i++) if (dc.has(`m${i}`)) t.alike(await dc.get(`m${i}`), block(i), `m${i} reads back`)
  t.absent(fs.readdirSync(dir).some(n => n.endsWith('.tmp')), 'no temporary file is left behind')
  // A folder that went away: the put resolves, nothing is recorded.
  fs.rmSync(dir, { recursive: true, force: true })
  await dc.put('gone', block(9))
  t.absent(dc.has('gone'), 'a write that failed is not recorded')
})

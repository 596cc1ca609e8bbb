// The on-disk block cache: blocks come back as written, the least recently used go first beyond the bound,
// the cache survives a restart, a slot that holds anything but the block asked for is a miss, and a write
// it cannot make (too many queued, cut short by a full disk, a folder it cannot use) only costs the entry.
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { DiskCache, CACHE_FILE } from '../src/log/disk-cache.js'
import { tmpdir } from './helpers.js'

const ROOT = path.resolve(import.meta.dirname, '..')

const SLOT = 4096
const block = (n: number, size = SLOT): Buffer => Buffer.alloc(size, n)

function cacheDir (t: { teardown: (fn: () => void) => void }): string {
  const dir = path.join(tmpdir(), 'cache')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  return dir
}

test('blocks read back, the least recently used leave first, and a restart keeps the rest', async t => {
  const dir = cacheDir(t)
  const dc = new DiskCache(dir, 3 * SLOT, SLOT)
  for (let i = 0; i < 3; i++) await dc.put(`k${i}`, block(i))
  t.alike(await dc.get('k0'), block(0), 'a block reads back as written')
  await dc.put('k3', block(3))
  t.is(dc.size, 3 * SLOT, 'the bound holds')
  t.absent(dc.has('k1'), 'the least recently used block left (k0 was just read)')
  t.ok(dc.has('k0') && dc.has('k2') && dc.has('k3'))
  t.alike(await dc.get('k3'), block(3), 'the block written into the freed slot reads back')
  t.is(fs.statSync(path.join(dir, CACHE_FILE)).size, 3 * (64 + SLOT), 'one file of three slots')
  await dc.close()

  const again = new DiskCache(dir, 3 * SLOT, SLOT)
  t.is(again.size, 3 * SLOT, 'a restart finds what was cached')
  // Recency is rebuilt from the order of writing, not from the slots: k0 (slot 0) was written first, then
  // k2 (slot 2), then k3 (slot 1), so two new blocks push out k0 and then k2.
  await again.put('k4', block(4))
  await again.put('k5', block(5))
  t.absent(again.has('k0') || again.has('k2'), 'after a restart the blocks written longest ago leave first')
  for (const k of ['k3', 'k4', 'k5']) t.alike(await again.get(k), block(Number(k.slice(1))), `${k} after the restart`)
  await again.close()

  // A lower bound at the next start cuts the file down to it.
  const smaller = new DiskCache(dir, 2 * SLOT, SLOT)
  t.is(smaller.size, 2 * SLOT)
  t.is(fs.statSync(path.join(dir, CACHE_FILE)).size, 2 * (64 + SLOT), 'the file is cut to the lower bound')
  let found = 0
  for (const k of ['k3', 'k4', 'k5']) {
    const b = await smaller.get(k)
    if (b) {
      t.alike(b, block(Number(k.slice(1))), `${k} is intact`)
      found++
    }
  }
  t.is(found, 2, 'the blocks in the slots kept are still there')
  await smaller.close()
})

test('a slot that does not hold the block asked for is a miss; a dropped block stays gone after a restart', async t => {
  const dir = cacheDir(t)
  const dc = new DiskCache(dir, 4 * SLOT, SLOT)
  await dc.put('a', block(1))
  await dc.put('b', block(2))
  await dc.put('short', block(3, 100))
  t.alike(await dc.get('short'), block(3, 100), 'a block shorter than a slot reads back at its length')
  await dc.close()

  // Another program wrote over b's header: a miss, and b leaves the index.
  const file = path.join(dir, CACHE_FILE)
  const fd = fs.openSync(file, 'r+')
  fs.writeSync(fd, Buffer.from('not a header'), 0, 12, 64 + SLOT)
  fs.closeSync(fd)
  const dc2 = new DiskCache(dir, 4 * SLOT, SLOT)
  t.absent(dc2.has('b'), 'a slot with a broken header is not loaded')
  t.ok(dc2.has('a'))
  // The same, while running: a's header changed behind the cache's back.
  const fd2 = fs.openSync(file, 'r+')
  fs.writeSync(fd2, Buffer.alloc(64), 0, 64, 0)
  fs.closeSync(fd2)
  t.is(await dc2.get('a'), null, 'a slot whose header no longer names the block is a miss')
  t.absent(dc2.has('a'), 'and the entry goes')
  // Dropped on purpose (a chunk in it failed to open): gone now and after a restart.
  t.ok(dc2.has('short'))
  dc2.drop('short')
  t.absent(dc2.has('short'))
  await dc2.close()
  const dc3 = new DiskCache(dir, 4 * SLOT, SLOT)
  t.absent(dc3.has('short'), 'a dropped block does not come back at the next start')
  t.is(dc3.size, 0)
  // Its freed slots are used again before the file grows.
  await dc3.put('c', block(4))
  t.alike(await dc3.get('c'), block(4))
  t.is(fs.statSync(file).size, 2 * (64 + SLOT) + 64 + 100, 'a freed slot was reused: the file did not grow')
  await dc3.close()
})

test('a write cut short at the end of the file is not loaded, and files of the old layout are removed', async t => {
  const dir = cacheDir(t)
  const dc = new DiskCache(dir, 4 * SLOT, SLOT)
  await dc.put('whole', block(1))
  await dc.put('cut', block(2))
  await dc.close()
  const file = path.join(dir, CACHE_FILE)
  fs.truncateSync(file, 64 + SLOT + 64 + SLOT / 2)
  fs.writeFileSync(path.join(dir, '17-1000042-3'), block(9))
  fs.writeFileSync(path.join(dir, '17-1000042-2.tmp'), block(9))
  const again = new DiskCache(dir, 4 * SLOT, SLOT)
  t.ok(again.has('whole'))
  t.absent(again.has('cut'), 'a block whose bytes do not all lie in the file is not loaded')
  t.alike(fs.readdirSync(dir), [CACHE_FILE], 'a file per block (the old layout) is removed')
  await again.put('next', block(3))
  t.alike(await again.get('next'), block(3))
  t.alike(await again.get('whole'), block(1))
  await again.close()
})

test('puts that are not awaited: one write per key, a bounded queue, never a rejection', async t => {
  const dir = cacheDir(t)
  const dc = new DiskCache(dir, 1 << 30, SLOT)
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
  // Too big for a slot, or a key too long for the header: not cached, no error.
  await dc.put('big', block(5, SLOT + 1))
  await dc.put('k'.repeat(41), block(5))
  t.absent(dc.has('big') || dc.has('k'.repeat(41)), 'a block larger than a slot, or a key over 40 bytes, is not cached')
  // A write under way while the cache closes: close waits for it, so it is there at the next start.
  const late = dc.put('late', block(6))
  const reading = dc.get('same')
  await dc.close()
  t.ok(dc.has('late'), 'close waited for the write under way')
  t.alike(await reading, block(1), 'and for the read')
  await late
  t.is(await dc.get('same'), null, 'a closed cache answers every read with a miss')
  await dc.put('after', block(7))
  t.absent(dc.has('after'), 'and caches nothing more')
  const again = new DiskCache(dir, 1 << 30, SLOT)
  t.alike(await again.get('late'), block(6), 'the block written while closing is there after a restart')
  await again.close()
})

test('a write the disk cuts short is not recorded, and its slot never serves torn bytes', async t => {
  const dir = cacheDir(t)
  const slot = 64 * 1024
  // A file size limit (200 blocks of 512 bytes) stands in for a full disk: the write of the second block
  // stops at 100 KiB, and the system reports a short write rather than an error.
  const script = [
    "import { DiskCache } from './src/log/disk-cache.ts'",
    `const dc = new DiskCache(${JSON.stringify(dir)}, 1 << 30, ${slot})`,
    `await dc.put('a', Buffer.alloc(${slot}, 1))`,
    `await dc.put('b', Buffer.alloc(${slot}, 2))`,
    "const out = { a: dc.has('a'), b: dc.has('b'), size: dc.size }",
    'await dc.close()',
    'console.log(JSON.stringify(out))'
  ].join('\n')
  const r = spawnSync('sh', ['-c', `ulimit -f 200; exec "${process.execPath}" --import tsx --input-type=module -e "$0"`, script], { cwd: ROOT, encoding: 'utf8' })
  t.is(r.status, 0, r.stderr)
  const out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}')
  t.alike(out, { a: true, b: false, size: slot }, 'the block written in full is cached, the one cut short is not')
  t.is(fs.statSync(path.join(dir, CACHE_FILE)).size, 100 * 1024, 'the disk took only part of the second block')
  const again = new DiskCache(dir, 1 << 30, slot)
  t.absent(again.has('b'), 'nor does it come back at the next start')
  t.alike(await again.get('a'), Buffer.alloc(slot, 1))
  // Its slot is used again, and a block written there in full reads back whole.
  await again.put('c', Buffer.alloc(slot, 3))
  t.alike(await again.get('c'), Buffer.alloc(slot, 3))
  t.is(fs.statSync(path.join(dir, CACHE_FILE)).size, 2 * (64 + slot), 'in the slot the short write left')
  await again.close()
})

test('a cache whose folder cannot be used is off, and says why', async t => {
  const dir = cacheDir(t)
  fs.mkdirSync(path.dirname(dir), { recursive: true })
  fs.writeFileSync(dir, 'a file where the folder should be')
  const dc = new DiskCache(dir, 1 << 30, SLOT)
  t.ok(dc.problem && dc.problem.includes(dir), String(dc.problem))
  await dc.put('k', block(1))
  t.absent(dc.has('k'), 'it caches nothing')
  t.is(await dc.get('k'), null)
  await dc.close()
})

test('a slot being read is not given to another block', async t => {
  const dir = cacheDir(t)
  const dc = new DiskCache(dir, 2 * SLOT, SLOT)
  await dc.put('x', block(1))
  await dc.put('y', block(2))
  // Both slots are being read when the next block needs one.
  const readY = dc.get('y')
  const readX = dc.get('x')
  await dc.put('z', block(3))
  t.absent(dc.has('z'), 'with every slot being read, the new block is not cached')
  t.alike(await readY, block(2), 'each read gets its block whole')
  t.alike(await readX, block(1))
  await dc.put('z', block(3))
  t.ok(dc.has('z'), 'once the reads are done, it is')
  t.absent(dc.has('y'), 'in the slot of the least recently used block')
  t.alike(await dc.get('z'), block(3))
  t.alike(await dc.get('x'), block(1))
  await dc.close()
})

// The filesystem layer's memory of writes in progress ends with them: a daemon that writes, packs and
// removes files for months keeps no trace of each file it ever wrote. Runs the engine in this process on a
// home with local partners, without a mount.
// Run: node --import tsx test/bookkeeping.test.ts
import test from 'brittle'
import { Engine } from '../src/daemon/engine.js'
import { Home } from '../src/home.js'
import { PACK_IDLE_MS } from '../src/config.js'
import { init, sleep, until } from './helpers.js'

// An engine on a fresh home with local partners, closed after the test.
async function started (t: Parameters<typeof init>[0]): Promise<Engine> {
  const s = await init(t)
  const engine = new Engine(new Home(s.home))
  await engine.start()
  // Before the home goes (init's teardown): closing syncs files in it.
  t.teardown(() => engine.close(false), { order: -1 })
  return engine
}

test('per-file write bookkeeping is forgotten once files are packed, removed, or idle', async t => {
  const engine = await started(t)
  const fs = engine.fs
  const data = Buffer.alloc(200_000, 3)
  // Under the disk lock, so that no packer round runs in between.
  await engine.disk.lock.run(async () => {
    for (let i = 0; i < 40; i++) {
      const fh = fs.create(`/f${i}`, 0o644)
      t.is(await fs.write(fh, data, data.length, 0), data.length)
      fs.flush(fh)
      await fs.release(fh)
    }
    t.is(fs.gens.size, 40, 'every written file has block generations while it waits to be packed')
    t.is(fs.writing.size, 40, 'and its run of writes is known')
    // Removed before they were packed: nothing of them may stay behind.
    for (let i = 0; i < 15; i++) await fs.unlink(`/f${i}`)
    t.is(fs.gens.size, 25, 'a removed file\'s generations go with it')
    t.is(fs.writing.size, 25, 'and so does its run')
  })
  // A file still open keeps its run (and the highest block it wrote) through a pause.
  const open = fs.create('/open', 0o644)
  await fs.write(open, data, data.length, 0)
  fs.flush(open)

  await sleep(PACK_IDLE_MS + 100)
  await engine.sync()
  t.is(fs.gens.size, 0, 'packed blocks keep no generation')
  t.alike([...fs.writing.keys()], [fs.getattr('/open').ino], 'runs of closed files that ended are forgotten, the open file\'s stays')
  await fs.release(open)
  // Forgotten at the next packer round, which the next write brings.
  const later = fs.create('/later', 0o644)
  await fs.write(later, data, data.length, 0)
  await fs.release(later)
  await sleep(PACK_IDLE_MS + 100)
  await engine.sync()
  t.is(fs.writing.size, 0, 'and goes once the file is closed')
  const back = Buffer.alloc(data.length)
  const fh = await fs.open('/f39', 0)
  t.is(await fs.read(fh, back, back.length, 0), data.length)
  t.alike(back, data, 'a packed file still reads back')
  await fs.release(fh)
})

// A removed file's block may still sit in a segment on its way to the partners when a new file gets the
// same inode number: the store does not give a number again while it is open, but after a restart it counts
// on from the highest one left, which may be a removed file's (set here by hand). When that segment lands,
// the packer must not take the old block for the new file's.
test('a new file that reuses a removed file\'s inode number keeps its own bytes when the old file\'s segment lands', async t => {
  const engine = await started(t)
  const fs = engine.fs
  const inSegment = (engine.packer as unknown as { inSegment: Map<string, number> }).inSegment
  const n = 100_000
  const a = Buffer.alloc(n, 0x41)
  const b = Buffer.alloc(n, 0x42)
  let fh = fs.create('/a', 0o644)
  await fs.write(fh, a, n, 0)
  fs.flush(fh)
  await fs.release(fh)
  const inoA = fs.getattr('/a').ino
  // The packer takes the file once it is idle, and appends its block to the open segment, which waits a
  // little for more data before it is written.
  await until(() => inSegment.has(inoA + ':0'), 15_000, 5)
  t.ok(inSegment.has(inoA + ':0'), 'the removed file\'s block is in a segment not yet stored')
  await fs.unlink('/a')
  ;(fs as unknown as { meta: { nextIno: number } }).meta.nextIno = inoA
  fh = fs.create('/b', 0o644)
  t.is(fs.attrOfHandle(fh).ino, inoA, 'the new file has the removed file\'s inode number')
  await fs.write(fh, b, n, 0)
  fs.flush(fh)
  await fs.release(fh)
  await engine.sync()
  const back = Buffer.alloc(n)
  fh = await fs.open('/b', 0)
  t.is(await fs.read(fh, back, n, 0), n)
  await fs.release(fh)
  t.ok(back.equals(b), `the new file reads back its own bytes (first bytes: ${back.subarray(0, 4).toString()})`)
})

// Handle numbers start over after 2^31 - 1; one still open must not be given out again.
test('handle numbers start over at the top of their range and pass over handles still open', async t => {
  const engine = await started(t)
  const fs = engine.fs
  const counter = fs as unknown as { nextFh: number }
  const kept = fs.create('/kept', 0o644)
  t.is(kept, 1, 'the first handle is 1')
  counter.nextFh = 0x7fffffff - 1
  const a = fs.create('/a', 0o644)
  const b = fs.create('/b', 0o644)
  const c = fs.create('/c', 0o644)
  t.alike([a, b, c], [0x7fffffff - 1, 0x7fffffff, 2], 'the count goes to the top, starts over, and passes over handle 1, still open')
  await fs.write(kept, Buffer.from('kept'), 4, 0)
  await fs.write(c, Buffer.from('c'), 1, 0)
  for (const fh of [kept, a, b, c]) await fs.release(fh)
  t.is(fs.getattr('/kept').size, 4, 'the file behind the kept handle got its own write')
  t.is(fs.getattr('/c').size, 1)
})

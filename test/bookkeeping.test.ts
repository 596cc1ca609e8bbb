// The filesystem layer's memory of writes in progress ends with them: a daemon that writes, packs and
// removes files for months keeps no trace of each file it ever wrote. Runs the engine in this process on a
// home with local partners, without a mount.
// Run: node --import tsx test/bookkeeping.test.ts
import test from 'brittle'
import { Engine } from '../src/daemon/engine.js'
import { Home } from '../src/home.js'
import { PACK_IDLE_MS } from '../src/config.js'
import { init, sleep } from './helpers.js'

test('per-file write bookkeeping is forgotten once files are packed, removed, or idle', async t => {
  const s = await init(t)
  const engine = new Engine(new Home(s.home))
  await engine.start()
  t.teardown(() => engine.close(false))
  const fs = engine.fs
  const data = Buffer.alloc(200_000, 3)
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

  await sleep(PACK_IDLE_MS + 100)
  await engine.sync()
  t.is(fs.gens.size, 0, 'packed blocks keep no generation')
  t.is(fs.writing.size, 0, 'runs that ended are forgotten')
  const back = Buffer.alloc(data.length)
  const fh = await fs.open('/f39', 0)
  t.is(await fs.read(fh, back, back.length, 0), data.length)
  t.alike(back, data, 'a packed file still reads back')
  await fs.release(fh)
})

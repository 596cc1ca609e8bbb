// Sealing on worker threads gives the same bytes as sealing inline, leaves the caller's small buffers
// usable, and keeps working when its threads die. Uses the built files: the worker runs compiled code.
import test from 'brittle'
import crypto from 'node:crypto'
import { PooledSealer, InlineSealer } from '../dist/crypto/seal-pool.js'
import { deriveKeys, newSecret } from '../dist/crypto/keys.js'

const keys = deriveKeys(newSecret())

for (const readsInline of [false, true]) {
  test(`pooled and inline sealing agree, on either side of the inline size, and small or shared buffers survive (reads ${readsInline ? 'inline' : 'on the worker'})`, async t => {
    const pool = PooledSealer.create(keys, { readsInline })
    t.teardown(() => pool.close())
    t.ok(pool.threads >= 1, 'runs on worker threads')
    t.is((pool as PooledSealer).readsInline, readsInline)
    const inline = new InlineSealer(keys)
    const small = Buffer.from('a small file')
    const big = crypto.randomBytes(300_000)
    const slice = big.subarray(1000, 1000 + 128 * 1024)
    // Chunks up to 16 KiB are sealed on the calling thread, larger ones on a worker: both sides of the line.
    for (const plain of [small, crypto.randomBytes(16 * 1024), crypto.randomBytes(16 * 1024 + 1), slice]) {
      const before = Buffer.from(plain)
      const a = await pool.chunk(plain)
      const b = await inline.chunk(before)
      t.alike(a.id, b.id)
      t.alike(a.sealed, b.sealed)
      t.alike(await pool.open(a.id, a.sealed), before)
    }
    t.is(small.toString(), 'a small file', 'a pooled small buffer was not moved away')
    t.is(big.length, 300_000, 'the buffer a slice came from is intact')
    const ids = [crypto.randomBytes(32), crypto.randomBytes(32)]
    const payloads = [crypto.randomBytes(4096), crypto.randomBytes(4096)]
    const blocks = await pool.sealBlocks(3, 9, ids, payloads)
    t.alike(blocks, await inline.sealBlocks(3, 9, ids, payloads))
    // The verdict carries the block (moved to the worker and back when reads run there).
    const verdict = await pool.checkBlock(ids[0], 3, 9, blocks[0])
    t.is(verdict.check, 'ok')
    t.is((await pool.checkBlock(ids[1], 3, 9, verdict.block)).check, 'corrupt', 'another partner id')
  })
}

test('with two cores, reads open and check on the calling thread; with more, on the workers', async t => {
  const pool = PooledSealer.create(keys) as PooledSealer
  t.teardown(() => pool.close())
  t.is(pool.readsInline, pool.threads === 1, `${pool.threads} sealing thread(s)`)
})

test('when its threads die, the pool seals inline instead of hanging', async t => {
  const pool = PooledSealer.create(keys)
  t.teardown(() => pool.close())
  for (const w of (pool as unknown as { workers: Array<{ terminate: () => Promise<number> }> }).workers) await w.terminate()
  const plain = crypto.randomBytes(5000)
  const sealed = await pool.chunk(plain)
  t.alike(await pool.open(sealed.id, sealed.sealed), plain)
})

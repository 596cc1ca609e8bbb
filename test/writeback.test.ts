// The write-back store: data reads back at its offsets, holes read as zeros, and writers are held back
// while the store is over its byte bound.
import test from 'brittle'
import fs from 'node:fs'
import { WriteBack } from '../src/fs/writeback.js'
import { tmpdir } from './helpers.js'

test('data reads back at its offsets and what was never written reads as zeros', async t => {
  const dir = tmpdir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const wb = new WriteBack(dir, 1 << 20)
  await wb.write(7, Buffer.from('hello'), 1000)
  const out = await wb.read(7, 995, 12)
  t.alike(out, Buffer.concat([Buffer.alloc(5), Buffer.from('hello'), Buffer.alloc(2)]))
  await wb.truncate(7, 1002)
  t.alike(await wb.read(7, 1000, 5), Buffer.from('he\0\0\0'), 'bytes past a truncate read as zeros')
  await wb.close()
})

test('writers wait while the store is over its bound and go on once the packer frees room', async t => {
  const dir = tmpdir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const wb = new WriteBack(dir, 1000)
  wb.adjust(1500)
  t.ok(wb.full())
  let released = false
  const waiting = wb.waitForRoom().then(() => { released = true })
  await new Promise(resolve => setImmediate(resolve))
  t.absent(released, 'held back while over the bound')
  wb.adjust(-600)
  await waiting
  t.ok(released, 'released once below the bound')
  t.absent(wb.full())
  await wb.close()
})

test('more files than the open-file limit keep their data and can be synced', async t => {
  const dir = tmpdir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const wb = new WriteBack(dir, 1 << 30)
  for (let ino = 1; ino <= 300; ino++) await wb.write(ino, Buffer.from(`file ${ino}`), 0)
  for (const ino of [1, 150, 300]) {
    await wb.sync(ino)
    t.is((await wb.read(ino, 0, `file ${ino}`.length)).toString(), `file ${ino}`)
  }
  await wb.close()
})

// The metadata store's write-ahead log is checkpointed by a thread of its own: committed pages reach the
// database file without the store's thread copying them, the log stays bounded under a long run of
// commits (past its ceiling the store checkpoints itself, after waiting for a round of the thread), and
// stopping the thread first lets the store close as the last connection, leaving a complete database file.
// Uses the built files: the checkpointer runs compiled code.
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import { MetaStore, WAL_CEILING_PAGES } from '../dist/fs/meta-store.js'
import { CKPT_IDLE, CKPT_THREAD } from '../dist/fs/wal-lock.js'
import { sleep, tmpdir } from './helpers.js'

const PAGE = 4096
const FRAME = PAGE + 24
const CEILING_BYTES = 32 + WAL_CEILING_PAGES * FRAME
// A commit of one 16 KiB value writes its overflow pages, its leaf and at most a few pages of the tree above.
const ONE_COMMIT_BYTES = 16 * FRAME

function fresh (t: { teardown: (fn: () => unknown) => void }): string {
  const dir = tmpdir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'meta.db')
}

// Commits n transactions of one value each (every value its own pages), letting other work run between
// every ten as the daemon's thread does between FUSE requests.
async function commit (meta: MetaStore, n: number, size: number, from = 0): Promise<void> {
  for (let i = from; i < from + n; i++) {
    meta.tx(() => meta.kvSet(`k${i}`, Buffer.alloc(size, i & 0xff)))
    if (i % 10 === 9) await new Promise(resolve => setImmediate(resolve))
  }
}

async function until (fn: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (!fn()) {
    if (Date.now() > end) return false
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return true
}

const size = (f: string): number => fs.existsSync(f) ? fs.statSync(f).size : 0

test('committed pages reach the database file through the checkpointer thread', async t => {
  // Without the thread, 100 small commits (a few hundred pages) stay in the log: SQLite's own checkpoint
  // waits for 1,000.
  const plainFile = fresh(t)
  const plain = new MetaStore(plainFile)
  const plainBefore = size(plainFile)
  await commit(plain, 100, 1000)
  await new Promise(resolve => setTimeout(resolve, 1000))
  t.is(size(plainFile), plainBefore, 'no thread: the database file is unchanged')
  plain.close()

  const file = fresh(t)
  const meta = new MetaStore(file)
  meta.checkpointInBackground()
  const before = size(file)
  await commit(meta, 100, 1000)
  t.ok(await until(() => size(file) > before, 20_000), 'the pages are copied into the database file')
  await meta.stopCheckpointer()
  meta.close()
  t.absent(fs.existsSync(file + '-wal'), 'the store closed as the last connection: no log is left')
  const again = new MetaStore(file)
  t.alike(again.kvGet('k99'), Buffer.alloc(1000, 99), 'everything committed reads back')
  again.close()
})

test('the log stays bounded under a long run of commits, and stopping twice is harmless', async t => {
  const file = fresh(t)
  const meta = new MetaStore(file)
  meta.checkpointInBackground()
  // Over 48,000 pages, three times the ceiling. However the thread's rounds fall, the log stops at the
  // ceiling plus the commit that passed it.
  let most = 0
  for (let from = 0; from < 12000; from += 100) {
    await commit(meta, 100, 4 * PAGE, from)
    most = Math.max(most, size(file + '-wal'))
  }
  t.ok(most > 0 && most <= CEILING_BYTES + ONE_COMMIT_BYTES,
    `log of at most ${most} bytes for ${12000 * 4 * FRAME} written; checkpoints at the ceiling: ${meta.ceilingCheckpoints}`)
  await meta.stopCheckpointer()
  await meta.stopCheckpointer()
  await commit(meta, 10, PAGE, 12000)
  meta.close()
  const again = new MetaStore(file)
  t.alike(again.kvGet('k11999'), Buffer.alloc(4 * PAGE, 11999 & 0xff))
  t.alike(again.kvGet('k12009'), Buffer.alloc(PAGE, 12009 & 0xff), 'commits after the thread stopped are kept')
  again.close()
})

test('past the ceiling the store waits for the round of the thread, then checkpoints the log itself', async t => {
  const file = fresh(t)
  const wal = file + '-wal'
  const meta = new MetaStore(file)
  meta.checkpointInBackground()
  // SQLite's own checkpoint off, and the word the store shares with the thread set as by a round that does
  // not end: nothing copies the log until the store does it at the ceiling.
  meta.db.pragma('wal_autocheckpoint = 0')
  const lock = (meta as unknown as { ckptLock: Int32Array }).ckptLock
  t.ok(lock instanceof Int32Array, 'the store shares a word with the thread')
  Atomics.store(lock, 0, CKPT_THREAD)
  // Another thread ends the round once the log is past the ceiling and the store waits on the word: it
  // wakes the word's waiters until one was woken (the store, which finds the word still held and waits
  // again), then frees the word. A store that did not wait would never be found waiting.
  const ender = new Worker(`
    const { workerData: { lock, wal, ceiling, idle }, parentPort } = require('node:worker_threads')
    const fs = require('node:fs')
    const nap = new Int32Array(new SharedArrayBuffer(4))
    while (!(fs.existsSync(wal) && fs.statSync(wal).size > ceiling)) Atomics.wait(nap, 0, 0, 5)
    const end = Date.now() + 30000
    let woke = 0
    while (woke === 0 && Date.now() < end) {
      woke = Atomics.notify(lock, 0)
      if (woke === 0) Atomics.wait(nap, 0, 0, 5)
    }
    Atomics.store(lock, 0, idle)
    Atomics.notify(lock, 0)
    parentPort.postMessage(woke)
  `, { eval: true, workerData: { lock, wal, ceiling: CEILING_BYTES, idle: CKPT_IDLE } })
  const ended = new Promise<number>(resolve => ender.once('message', resolve))
  t.teardown(() => ender.terminate())

  let most = 0
  let n = 0
  // Bounded: the ceiling is about 2,100 of these commits away.
  while (meta.ceilingCheckpoints === 0 && n < 20_000) {
    meta.tx(() => meta.kvSet(`k${n}`, Buffer.alloc(4 * PAGE, n & 0xff)))
    most = Math.max(most, size(wal))
    n++
  }
  t.ok(await ended >= 1, 'the store waited on the word while the round lasted')
  // After a wait that ran out the store does not checkpoint, so this one followed the round's end.
  t.is(meta.ceilingCheckpoints, 1, `the store checkpointed at the ceiling, after ${n} commits`)
  t.ok(size(file) > PAGE, 'the pages were copied into the database file')
  t.ok(most > CEILING_BYTES && most <= CEILING_BYTES + ONE_COMMIT_BYTES, `log of at most ${most} bytes`)
  await commit(meta, 10, 4 * PAGE, n)
  await meta.stopCheckpointer()
  const [r] = meta.db.pragma('wal_checkpoint(PASSIVE)') as Array<{ busy: number, log: number }>
  t.ok(r.busy === 0 && r.log > 0 && r.log <= 10 * 16, `the next commits wrote the log from its beginning (${r.log} pages in it)`)
  t.ok(size(wal) <= CEILING_BYTES, 'and the log file was cut back to the ceiling')
  meta.close()
  const again = new MetaStore(file)
  t.alike(again.kvGet(`k${n + 9}`), Buffer.alloc(4 * PAGE, (n + 9) & 0xff), 'everything committed reads back')
  t.alike(again.kvGet('k0'), Buffer.alloc(4 * PAGE, 0))
  again.close()
})

test('a round of the thread that outlasts the wait costs one wait, not one per commit', async t => {
  const file = fresh(t)
  const meta = new MetaStore(file)
  meta.checkpointInBackground()
  meta.db.pragma('wal_autocheckpoint = 0')
  const lock = (meta as unknown as { ckptLock: Int32Array }).ckptLock
  Atomics.store(lock, 0, CKPT_THREAD)
  let n = 0
  // Bounded: the ceiling is about 2,100 of these commits away, and the commit that passes it waits 10 s.
  while (meta.ceilingWaitsRunOut === 0 && n < 20_000) {
    meta.tx(() => meta.kvSet(`k${n}`, Buffer.alloc(4 * PAGE, n & 0xff)))
    n++
  }
  t.is(meta.ceilingWaitsRunOut, 1, `the wait ran out, after ${n} commits`)
  t.is(meta.ceilingCheckpoints, 0, 'with the round still on, the store did not checkpoint')
  await commit(meta, 20, 4 * PAGE, n)
  t.is(meta.ceilingWaitsRunOut, 1, 'the next commits, with the same round on, did not wait')
  t.is(meta.ceilingCheckpoints, 0)
  // The round ends. The next commit finds the word free and checkpoints, unless the thread, trying again
  // every 20 ms, takes the word first and copies the log itself; either way the log starts over.
  Atomics.store(lock, 0, CKPT_IDLE)
  let more = 0
  const deadline = Date.now() + 60_000
  while (size(file + '-wal') > CEILING_BYTES && Date.now() < deadline) {
    await commit(meta, 1, 4 * PAGE, n + 20 + more++)
    await sleep(10)
  }
  t.ok(size(file + '-wal') <= CEILING_BYTES, `once the round ended, the log started over (checkpoints by the store: ${meta.ceilingCheckpoints})`)
  t.is(meta.ceilingWaitsRunOut, 1, 'and no wait ran out again')
  await meta.stopCheckpointer()
  meta.close()
  const again = new MetaStore(file)
  t.alike(again.kvGet(`k${n + 19 + more}`), Buffer.alloc(4 * PAGE, (n + 19 + more) & 0xff), 'everything committed reads back')
  again.close()
})

test('inode numbers are not given again while the store is open, also after the highest is deleted', async t => {
  const file = fresh(t)
  const attrs = { mode: 0o100644, uid: 0, gid: 0, nlink: 1, size: 0, atime: 0, mtime: 0, ctime: 0, rdev: 0, target: null, parent: 0 }
  let meta = new MetaStore(file)
  const a = meta.tx(() => meta.createInode(attrs))
  const b = meta.tx(() => meta.createInode(attrs))
  t.is(b, a + 1)
  meta.tx(() => meta.deleteInode(b))
  const c = meta.tx(() => meta.createInode(attrs))
  t.is(c, b + 1, 'the deleted highest number is passed over')
  meta.close()
  // A new store (a new mount: the kernel holds nothing of the old one) counts on from the highest left.
  meta = new MetaStore(file)
  t.is(meta.tx(() => meta.createInode(attrs)), c + 1)
  meta.close()
})

// The metadata store's write-ahead log is checkpointed by a thread of its own: committed pages reach the
// database file without the store's thread copying them, the log stays bounded under a long run of
// commits, and stopping the thread first lets the store close as the last connection, leaving a complete
// database file. Uses the built files: the checkpointer runs compiled code.
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { MetaStore, WAL_CHECKPOINT_PAGES } from '../dist/fs/meta-store.js'
import { tmpdir } from './helpers.js'

const PAGE = 4096

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
  // Over 48,000 pages, six times the size at which SQLite's own checkpoint lets the log start over.
  await commit(meta, 12000, 4 * PAGE)
  const frame = PAGE + 24
  const log = size(file + '-wal')
  t.ok(log > 0 && log <= 2 * WAL_CHECKPOINT_PAGES * frame, `log of ${log} bytes, for ${12000 * 4 * frame} written`)
  await meta.stopCheckpointer()
  await meta.stopCheckpointer()
  await commit(meta, 10, PAGE, 12000)
  meta.close()
  const again = new MetaStore(file)
  t.alike(again.kvGet('k11999'), Buffer.alloc(4 * PAGE, 11999 & 0xff))
  t.alike(again.kvGet('k12009'), Buffer.alloc(PAGE, 12009 & 0xff), 'commits after the thread stopped are kept')
  again.close()
})

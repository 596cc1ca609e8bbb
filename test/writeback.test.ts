// The write-back store: data reads back at its offsets, holes read as zeros, and writers are held back
// while the store is over its byte bound.
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { WriteBack, INLINE_MAX_BYTES } from '../src/fs/writeback.js'
import { MetaStore } from '../src/fs/meta-store.js'
import { tmpdir, until } from './helpers.js'

// A fresh folder with a metadata store in it, both gone after the test; the write-back store goes in wbDir.
function setup (t: { teardown: (fn: () => unknown) => void }): { meta: MetaStore, wbDir: string } {
  const dir = tmpdir()
  const meta = new MetaStore(path.join(dir, 'meta.db'))
  // The store closes before its folder goes: closed later, SQLite would write its files again.
  t.teardown(() => {
    if (meta.db.open) meta.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { meta, wbDir: path.join(dir, 'wb') }
}

test('data reads back at its offsets and what was never written reads as zeros', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 20, meta)
  await wb.write(7, Buffer.from('hello'), 1000)
  const out = await wb.read(7, 995, 12)
  t.alike(out, Buffer.concat([Buffer.alloc(5), Buffer.from('hello'), Buffer.alloc(2)]))
  await wb.truncate(7, 1002)
  t.alike(await wb.read(7, 1000, 5), Buffer.from('he\0\0\0'), 'bytes past a truncate read as zeros')
  await wb.close()
})

test('writers wait while the store is over its bound and go on once the packer frees room', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1000, meta)
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
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 30, meta)
  // Written past the inline limit, so each inode gets a file.
  const at = INLINE_MAX_BYTES
  for (let ino = 1; ino <= 300; ino++) await wb.write(ino, Buffer.from(`file ${ino}`), at)
  t.is(fs.readdirSync(wbDir).length, 300)
  for (const ino of [1, 150, 300]) {
    await wb.sync(ino)
    t.is((await wb.read(ino, at, `file ${ino}`.length)).toString(), `file ${ino}`)
  }
  await wb.close()
})

test('small files stay inline: stored with the next metadata transaction, never in a file of their own', async t => {
  const dir = tmpdir()
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'meta.db')
  const wbDir = path.join(dir, 'wb')
  let meta = new MetaStore(file)
  let wb = new WriteBack(wbDir, 1 << 20, meta)
  wb.write(5, Buffer.from('small file'), 0)
  wb.write(6, Buffer.from('not yet stored'), 0)
  t.is((await wb.read(5, 0, 10)).toString(), 'small file', 'reads back before it is stored')
  meta.tx(() => meta.kvSet('x', 1))
  wb.write(6, Buffer.from('NOT'), 0)
  t.alike(fs.readdirSync(wbDir).filter(n => /^\d+$/.test(n)), [], 'no file of its own was created')
  t.alike(wb.logFiles(), ['inline.1'], 'the data went to the inline log')
  t.ok(fs.readFileSync(path.join(wbDir, 'inline.1')).includes('small file'))
  const inMeta = fs.readdirSync(dir).filter(n => n.startsWith('meta.db')).map(n => fs.readFileSync(path.join(dir, n)))
  t.ok(inMeta.length >= 2 && inMeta.every(b => !b.includes('small file') && !b.includes('not yet stored')),
    'the metadata store and its log hold no byte of it')
  // A process that dies now keeps what the transaction stored, not what came after it.
  const copy = path.join(dir, 'copy.db')
  meta.db.exec(`VACUUM INTO '${copy}'`)
  fs.cpSync(wbDir, path.join(dir, 'wb2'), { recursive: true })
  const other = new MetaStore(copy)
  const seen = new WriteBack(path.join(dir, 'wb2'), 1 << 20, other)
  t.is((await seen.read(5, 0, 10)).toString(), 'small file')
  t.is((await seen.read(6, 0, 14)).toString(), 'not yet stored')
  t.alike(seen.inodes().sort(), [5, 6])
  other.close()

  // A transaction that fails stores nothing, and the data waits for the next one.
  t.exception(() => meta.tx(() => { throw new Error('boom') }))
  t.is((await wb.read(6, 0, 14)).toString(), 'NOT yet stored')
  await wb.close()
  meta.close()
  meta = new MetaStore(file)
  wb = new WriteBack(wbDir, 1 << 20, meta)
  t.is((await wb.read(6, 0, 14)).toString(), 'NOT yet stored', 'close stored the rest')
  await wb.close()
  meta.close()
})

test('an inline file that grows past the limit moves to a file with its bytes; remove forgets both', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 20, meta)
  wb.write(9, Buffer.from('head'), 0)
  wb.save()
  wb.write(9, Buffer.from('tail'), INLINE_MAX_BYTES + 100)
  t.alike(fs.readdirSync(wbDir).filter(n => !n.startsWith('inline.')), ['9'])
  t.is((await wb.read(9, 0, 4)).toString(), 'head')
  t.is((await wb.read(9, INLINE_MAX_BYTES + 100, 4)).toString(), 'tail')
  t.alike(await wb.read(9, 4, 8), Buffer.alloc(8), 'the gap reads as zeros')
  wb.save()
  const rows = (): number => (meta.db.prepare('SELECT count(*) AS n FROM wb_spans').get() as { n: number }).n
  t.is(rows(), 0, 'the inline row went')

  wb.write(10, Buffer.from('gone soon'), 0)
  wb.save()
  t.is(rows(), 1)
  await wb.remove(10)
  await wb.remove(9)
  t.alike(await wb.read(10, 0, 9), Buffer.alloc(9), 'a removed inode reads as zeros at once')
  t.alike(wb.inodes(), [])
  wb.save()
  t.is(rows(), 0)
  t.alike(fs.readdirSync(wbDir).filter(n => /^\d+$/.test(n)), [], 'the file is gone at once')
  // The inline log nothing names any more goes once the metadata store's log is synced.
  let synced = 0
  await wb.tidy(async () => { synced++ })
  t.is(synced, 1, 'the metadata store was synced first')
  // Its blocks are freed in the background.
  await until(() => fs.readdirSync(wbDir).length === 0, 15_000)
  t.alike(fs.readdirSync(wbDir), [], 'nothing is left behind')
  await wb.close()
  // A daemon killed before the background unlink ran leaves the renamed file: the next start deletes it.
  fs.writeFileSync(path.join(wbDir, '12.gone3'), 'left over')
  const again = new WriteBack(wbDir, 1 << 20, meta)
  t.alike(fs.readdirSync(wbDir), [], 'leftovers are deleted at start')
  t.alike(again.inodes(), [])
  await again.close()
})

test('work that waits for a commit runs after the outermost one, and not at all after a rollback', async t => {
  const { meta } = setup(t)
  const ran: string[] = []
  meta.onCommit(() => ran.push('outside'))
  t.alike(ran, ['outside'], 'outside a transaction it runs at once')
  meta.tx(() => {
    meta.tx(() => meta.onCommit(() => ran.push('nested')))
    t.alike(ran, ['outside'], 'not when the nested transaction ends')
  })
  t.alike(ran, ['outside', 'nested'], 'once the outermost one committed')
  t.exception(() => meta.tx(() => {
    meta.tx(() => meta.onCommit(() => ran.push('rolled back')))
    throw new Error('boom')
  }))
  // A nested transaction that fails inside one that goes on: its work is dropped, the rest runs.
  meta.tx(() => {
    try {
      meta.tx(() => {
        meta.onCommit(() => ran.push('inner failed'))
        throw new Error('inner')
      })
    } catch {}
    meta.onCommit(() => ran.push('outer'))
  })
  t.alike(ran, ['outside', 'nested', 'outer'])
})

test('a large write starts its way to the disk every 8 MiB, one flush at a time, without changing what reads back', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 30, meta)
  const MiB = Buffer.alloc(1024 * 1024, 7)
  for (let i = 0; i < 7; i++) wb.write(3, MiB, i * MiB.length)
  t.is(wb.flushesAhead, 0, 'nothing before 8 MiB')
  wb.write(3, MiB, 7 * MiB.length)
  t.is(wb.flushesAhead, 1, 'one flush once 8 MiB were written')
  t.alike(await wb.read(3, 8 * MiB.length - 2, 4), Buffer.from([7, 7, 0, 0]), 'data and hole read back as written')
  // Removing the file while its flush may still run: the flush goes quietly and a new file starts clean.
  await wb.remove(3)
  for (let i = 0; i < 8; i++) wb.write(3, Buffer.alloc(1024 * 1024, 9), i * MiB.length)
  t.ok(wb.flushesAhead >= 1 && wb.flushesAhead <= 2, 'at most one more flush for the new file')
  await wb.sync(3)
  t.alike(await wb.read(3, 0, 3), Buffer.from([9, 9, 9]), 'the new file reads back its own data')
  await wb.close()
})

test('the inline log moves to a new file as it grows, and a file goes once no row names it', async t => {
  const { meta, wbDir } = setup(t)
  // A log file of 100 bytes at most before the next one starts.
  let wb = new WriteBack(wbDir, 1 << 20, meta, 100)
  const data = (i: number): Buffer => Buffer.alloc(60, 0x61 + i)
  for (let i = 0; i < 4; i++) {
    wb.write(20 + i, data(i), 0)
    wb.save()
  }
  // 60 bytes, then 120 (past 100: the next one starts), and so on: two files of two each.
  t.alike(wb.logFiles(), ['inline.1', 'inline.2'], 'a new file once one passed the size')
  // The metadata store's log is synced while the file is still there.
  const seen: string[][] = []
  const syncMeta = async (): Promise<void> => { seen.push(wb.logFiles()) }
  await wb.tidy(syncMeta)
  t.is(seen.length, 0, 'nothing to delete, no sync')
  await wb.remove(20)
  wb.save()
  await wb.tidy(syncMeta)
  t.alike(wb.logFiles(), ['inline.1', 'inline.2'], 'a file another row names stays')
  await wb.remove(21)
  wb.save()
  await wb.tidy(syncMeta)
  t.alike(seen, [['inline.1', 'inline.2']], 'the metadata store was synced once, before the file went')
  t.alike(wb.logFiles(), ['inline.2'], 'the file no row names went')
  for (let i = 2; i < 4; i++) t.alike(await wb.read(20 + i, 0, 60), data(i), 'the others read back')
  await wb.close()

  // A restart: data reads back from the log, and a file left with no row (a daemon that died before
  // deleting it) goes at the first look.
  fs.writeFileSync(path.join(wbDir, 'inline.9'), 'orphan')
  wb = new WriteBack(wbDir, 1 << 20, meta, 100)
  for (let i = 2; i < 4; i++) t.alike(await wb.read(20 + i, 0, 60), data(i), 'reads back after a restart')
  wb.write(30, Buffer.from('after the restart'), 0)
  wb.save()
  t.ok(wb.logFiles().includes('inline.10'), `a new run appends to a file of a new number (${wb.logFiles().join(' ')})`)
  await wb.tidy(syncMeta)
  t.absent(wb.logFiles().includes('inline.9'), 'the orphan went')
  for (const ino of [22, 23, 30]) await wb.remove(ino)
  wb.save()
  await wb.tidy(syncMeta)
  t.alike(wb.logFiles(), [], 'with nothing inline, no log file is left')
  await wb.close()
})

test('fsync moves a file\'s inline data into the metadata store, where it stays until the file leaves', async t => {
  const { meta, wbDir } = setup(t)
  let wb = new WriteBack(wbDir, 1 << 20, meta)
  const spans = (): number => (meta.db.prepare('SELECT count(*) AS n FROM wb_spans').get() as { n: number }).n
  const table = (): number => (meta.db.prepare('SELECT count(*) AS n FROM wb_inline').get() as { n: number }).n
  wb.write(40, Buffer.from('hello'), 0)
  wb.save()
  t.is(spans(), 1, 'closed, not synced: in the inline log')
  await wb.sync(40)
  t.is(spans(), 0)
  t.is(table(), 1, 'synced: in the metadata store, which the caller syncs next')
  // A later change (no fsync) stays in the store too: a power loss cannot leave a durable row naming bytes
  // that never reached the disk, and the synced bytes are never the only ones moved.
  wb.write(40, Buffer.from(' world'), 5)
  wb.save()
  t.is(table(), 1)
  t.is(spans(), 0, 'a change after the sync does not go to the log')
  t.is((await wb.read(40, 0, 11)).toString(), 'hello world')
  await wb.close()
  // After a restart as well.
  wb = new WriteBack(wbDir, 1 << 20, meta)
  t.is((await wb.read(40, 0, 11)).toString(), 'hello world', 'reads back after a restart')
  t.alike(wb.inodes(), [40])
  wb.write(40, Buffer.from('!'), 11)
  wb.save()
  t.alike([table(), spans()], [1, 0], 'and changes stay in the store')
  // Data from the log that a restart finds is synced into the store too.
  wb.write(41, Buffer.from('from the log'), 0)
  wb.save()
  await wb.close()
  wb = new WriteBack(wbDir, 1 << 20, meta)
  await wb.sync(41)
  t.alike([table(), spans()], [2, 0], 'fsync after a restart moves data the log held')
  t.is((await wb.read(41, 0, 12)).toString(), 'from the log')
  await wb.remove(40)
  await wb.remove(41)
  wb.save()
  t.alike([table(), spans()], [0, 0], 'removed with the file')
  // Without a sync, a new file's data goes to the log again.
  wb.write(40, Buffer.from('new'), 0)
  wb.save()
  t.alike([table(), spans()], [0, 1])
  await wb.close()
})

test('a transaction nested in another, or one after a rollback, appends nothing twice', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 20, meta)
  wb.write(60, Buffer.alloc(40, 1), 0)
  meta.tx(() => meta.tx(() => meta.kvSet('x', 1)))
  t.is(fs.statSync(path.join(wbDir, 'inline.1')).size, 40, 'nested: appended once')
  wb.write(61, Buffer.alloc(30, 2), 0)
  t.exception(() => meta.tx(() => { throw new Error('boom') }))
  wb.save()
  t.is(fs.statSync(path.join(wbDir, 'inline.1')).size, 70, 'rolled back, then committed: appended once')
  t.alike(await wb.read(61, 0, 30), Buffer.alloc(30, 2))
  await wb.close()
})

test('a log file mostly of garbage has its live data stored again, and then goes', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 20, meta, 100)
  const b = Buffer.alloc(10, 0x62)
  wb.write(50, b, 0)
  wb.save()
  for (let i = 0; i < 2; i++) {
    wb.write(51, Buffer.alloc(50, 0x30 + i), 0)
    wb.save()
  }
  // 110 bytes, 60 of them live: the next append goes to a new file.
  t.alike(wb.logFiles(), ['inline.1'])
  wb.write(51, Buffer.alloc(50, 0x39), 0)
  wb.save()
  // inline.1 now holds 10 live bytes of 110: tidying stores them again and deletes the file.
  t.alike(wb.logFiles(), ['inline.1', 'inline.2'])
  await wb.tidy(async () => {})
  t.alike(wb.logFiles(), ['inline.2'], 'the sparse file went once its live data moved')
  t.is(fs.statSync(path.join(wbDir, 'inline.2')).size, 60, 'its live data was appended to the current file')
  t.alike(await wb.read(50, 0, 10), b, 'the moved data reads back')
  t.alike(await wb.read(51, 0, 50), Buffer.alloc(50, 0x39))
  await wb.close()
})

test('data changed in memory after a transaction rolled back is what the next one stores', async t => {
  const { meta, wbDir } = setup(t)
  let wb = new WriteBack(wbDir, 1 << 20, meta)
  wb.write(70, Buffer.from('hello'), 0)
  // The transaction appends 'hello' to the log, then fails.
  t.exception(() => meta.tx(() => { throw new Error('boom') }))
  // Same length: the buffer in memory could be changed in place.
  wb.write(70, Buffer.from('HELLO'), 0)
  wb.save()
  t.is((await wb.read(70, 0, 5)).toString(), 'HELLO')
  await wb.close()
  wb = new WriteBack(wbDir, 1 << 20, meta)
  t.is((await wb.read(70, 0, 5)).toString(), 'HELLO', 'the stored row names the new bytes')
  await wb.close()
})

test('compaction leaves alone a file written while it ran', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 20, meta, 100)
  wb.write(80, Buffer.alloc(10, 1), 0)
  wb.write(81, Buffer.alloc(10, 2), 0)
  wb.save()
  for (let i = 0; i < 2; i++) {
    wb.write(82, Buffer.alloc(45, 0x30 + i), 0)
    wb.save()
  }
  wb.write(82, Buffer.alloc(45, 0x39), 0)
  wb.save()
  // inline.1 holds 20 live bytes of 110; compaction copies them, syncs, then moves the rows.
  const running = wb.tidy(async () => {})
  wb.write(80, Buffer.alloc(10, 7), 0)
  wb.save()
  await running
  await wb.tidy(async () => {})
  t.alike(await wb.read(80, 0, 10), Buffer.alloc(10, 7), 'the write made during compaction stays')
  t.alike(await wb.read(81, 0, 10), Buffer.alloc(10, 2), 'the other moved file reads back')
  t.alike(wb.logFiles(), ['inline.2'], 'and the sparse file went')
  await wb.close()
})

test('tidying runs one call at a time', async t => {
  const { meta, wbDir } = setup(t)
  const wb = new WriteBack(wbDir, 1 << 20, meta, 100)
  const make = async (ino: number): Promise<void> => {
    wb.write(ino, Buffer.alloc(60, ino), 0)
    wb.save()
    await wb.remove(ino)
    wb.save()
  }
  let inside = 0
  let overlapped = false
  const syncMeta = async (): Promise<void> => {
    if (++inside > 1) overlapped = true
    await new Promise(resolve => setTimeout(resolve, 50))
    inside--
  }
  await make(90)
  const first = wb.tidy(syncMeta)
  await make(91)
  const second = wb.tidy(syncMeta)
  await Promise.all([first, second])
  t.absent(overlapped, 'the second call waited for the first')
  t.alike(wb.logFiles(), [], 'both files went')
  await wb.close()
})

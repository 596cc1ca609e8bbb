// POSIX semantics of the mount as a user sees them from another process: data at any offset, append,
// truncate, sparse files, rename, unlink, rmdir, links, symlinks, modes, owners, times, stat, statfs, fsync,
// Linux's error numbers, and everything still there after unmount and mount.
// Run: node --import tsx test/fs-semantics.test.ts
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { init, mount, unmount, status, sync, sh, run, isMounted, killDaemon, type Setup, mounted, errCode, pread, pwrite, until, writebackFiles } from './helpers.js'

const CHUNK = 128 * 1024
// mounted(t) makes a home of 512 slots: a logical disk of 512 segments of k = 4 blocks of about 256 KiB.
const LOGICAL_BYTES = 512 * 4 * 2 * (CHUNK + 16)




// Runs python3 code in another process; the code prints one JSON value.
async function py (code: string, ...args: string[]): Promise<any> {
  const r = await run('python3', ['-c', code, ...args])
  if (r.code !== 0) throw new Error(`python3 failed: ${r.stderr}`)
  return JSON.parse(r.stdout)
}



const zeros = (buf: Buffer): boolean => buf.every(b => b === 0)

test('a file reads back what was written at any offset, across chunk boundaries, before and after packing', async t => {
  const s = await mounted(t)
  const file = path.join(s.mnt, 'data.bin')
  let mirror = Buffer.alloc(0)
  const writeAt = (pos: number, len: number): void => {
    const buf = crypto.randomBytes(len)
    pwrite(file, buf, pos, fs.existsSync(file) ? 'r+' : 'w+')
    if (pos + len > mirror.length) mirror = Buffer.concat([mirror, Buffer.alloc(pos + len - mirror.length)])
    buf.copy(mirror, pos)
  }
  writeAt(0, 1000)
  writeAt(1, 10)
  writeAt(CHUNK - 7, 14)
  writeAt(3 * CHUNK + 5, 200_000)
  writeAt(4095, 2)
  writeAt(700_000, 1)
  t.ok(fs.readFileSync(file).equals(mirror), 'whole file matches after scattered writes')
  t.is(fs.statSync(file).size, mirror.length)
  t.ok(pread(file, 14, CHUNK - 7).equals(mirror.subarray(CHUNK - 7, CHUNK + 7)), 'a read across a chunk boundary')

  await sync(s.home)
  t.ok(fs.readFileSync(file).equals(mirror), 'same bytes once the data lives in the log')
  // Partial overwrites of packed blocks keep the bytes around them.
  writeAt(CHUNK + 100, 50)
  writeAt(2 * CHUNK - 1, 2)
  t.ok(fs.readFileSync(file).equals(mirror), 'partial overwrites of packed blocks keep their neighbours')
  await sync(s.home)
  t.ok(fs.readFileSync(file).equals(mirror), 'and after packing again')
  t.ok(pread(file, 100, mirror.length + 10).length === 0, 'a read past the end returns nothing')
})

test('O_APPEND writes land at the end of the file whatever the offset, also through two descriptors', async t => {
  const s = await mounted(t)
  const file = path.join(s.mnt, 'log.txt')
  fs.writeFileSync(file, 'abc')
  const a = fs.openSync(file, 'a')
  const b = fs.openSync(file, 'a')
  fs.writeSync(a, Buffer.from('1'), 0, 1, 0) // position is ignored for O_APPEND, as on Linux
  fs.writeSync(b, '2')
  fs.writeSync(a, '3')
  fs.closeSync(a)
  fs.closeSync(b)
  t.is(fs.readFileSync(file, 'utf8'), 'abc123')
  fs.appendFileSync(file, 'xyz')
  t.is(fs.readFileSync(file, 'utf8'), 'abc123xyz')
  await sync(s.home)
  fs.appendFileSync(file, '!')
  t.is(fs.readFileSync(file, 'utf8'), 'abc123xyz!', 'appending to packed data')
  const r = await sh(`echo line1 >> '${file}.2' && echo line2 >> '${file}.2' && cat '${file}.2'`)
  t.is(r.stdout, 'line1\nline2\n', 'shell >> appends')
})

test('truncate and ftruncate shrink and grow; bytes past a shrink read as zeros after growing again', async t => {
  const s = await mounted(t)
  const data = crypto.randomBytes(3 * CHUNK + 1234)
  const file = path.join(s.mnt, 'f')
  fs.writeFileSync(file, data)
  const before = fs.statSync(file)

  fs.truncateSync(file, 1000)
  t.is(fs.statSync(file).size, 1000)
  t.ok(fs.readFileSync(file).equals(data.subarray(0, 1000)))
  fs.truncateSync(file, data.length)
  let now = fs.readFileSync(file)
  t.is(now.length, data.length)
  t.ok(now.subarray(0, 1000).equals(data.subarray(0, 1000)), 'kept bytes unchanged')
  t.ok(zeros(now.subarray(1000)), 'bytes past the shrink are zeros')
  t.ok(fs.statSync(file).mtimeMs >= before.mtimeMs, 'truncate updates mtime')

  fs.writeFileSync(file, data)
  const fd = fs.openSync(file, 'r+')
  fs.ftruncateSync(fd, CHUNK + 10)
  t.is(fs.fstatSync(fd).size, CHUNK + 10)
  fs.ftruncateSync(fd, 5 * CHUNK)
  fs.closeSync(fd)
  now = fs.readFileSync(file)
  t.is(now.length, 5 * CHUNK)
  t.ok(now.subarray(0, CHUNK + 10).equals(data.subarray(0, CHUNK + 10)))
  t.ok(zeros(now.subarray(CHUNK + 10)), 'ftruncate: zeros past the shrink')

  fs.writeFileSync(file, data)
  fs.truncateSync(file, 2 * CHUNK) // exactly on a chunk boundary
  fs.truncateSync(file, data.length)
  now = fs.readFileSync(file)
  t.ok(now.subarray(0, 2 * CHUNK).equals(data.subarray(0, 2 * CHUNK)) && zeros(now.subarray(2 * CHUNK)), 'shrink to a chunk boundary')

  fs.truncateSync(file, 0)
  t.is(fs.statSync(file).size, 0)
  t.is(fs.readFileSync(file).length, 0)
  fs.writeFileSync(file, 'new', { flag: 'r+' })
  t.is(fs.readFileSync(file, 'utf8'), 'new', 'writable after truncation to zero')
  // O_TRUNC on open
  fs.writeFileSync(file, data)
  fs.writeFileSync(file, 'short')
  t.is(fs.readFileSync(file, 'utf8'), 'short', 'O_TRUNC on open drops the old contents')
})

test('truncate of packed data (after coopfs sync) shrinks and regrows to zeros', async t => {
  const s = await mounted(t)
  const data = crypto.randomBytes(3 * CHUNK + 999)
  const a = path.join(s.mnt, 'a')
  const b = path.join(s.mnt, 'b')
  const c = path.join(s.mnt, 'c')
  fs.writeFileSync(a, data)
  fs.writeFileSync(b, data)
  fs.writeFileSync(c, data)
  await sync(s.home)
  t.is((await status(s.home)).bytesPending, 0, 'everything lives in the log, none in the write-back store')

  fs.truncateSync(a, 1000)
  fs.truncateSync(a, data.length)
  let now = fs.readFileSync(a)
  t.ok(now.subarray(0, 1000).equals(data.subarray(0, 1000)), 'truncate: kept bytes')
  t.ok(zeros(now.subarray(1000)), 'truncate: zeros past the shrink')

  const fd = fs.openSync(b, 'r+')
  fs.ftruncateSync(fd, CHUNK + 77)
  fs.ftruncateSync(fd, data.length + CHUNK)
  fs.closeSync(fd)
  now = fs.readFileSync(b)
  t.is(now.length, data.length + CHUNK)
  t.ok(now.subarray(0, CHUNK + 77).equals(data.subarray(0, CHUNK + 77)), 'ftruncate: kept bytes')
  t.ok(zeros(now.subarray(CHUNK + 77)), 'ftruncate: zeros past the shrink')

  fs.truncateSync(c, 2 * CHUNK)
  fs.truncateSync(c, 3 * CHUNK)
  now = fs.readFileSync(c)
  t.ok(now.subarray(0, 2 * CHUNK).equals(data.subarray(0, 2 * CHUNK)) && zeros(now.subarray(2 * CHUNK)), 'shrink to a chunk boundary')

  await sync(s.home)
  t.ok(fs.readFileSync(a).subarray(0, 1000).equals(data.subarray(0, 1000)) && zeros(fs.readFileSync(a).subarray(1000)), 'same after packing the truncated files')
  t.ok(zeros(fs.readFileSync(b).subarray(CHUNK + 77)))
})

test('sparse files: holes read as zeros and st_blocks stays below the size', async t => {
  const s = await mounted(t)
  const file = path.join(s.mnt, 'sparse')
  fs.writeFileSync(file, '')
  pwrite(file, Buffer.from('tail'), 20 * 1024 * 1024)
  pwrite(file, Buffer.from('mid'), 3 * 1024 * 1024)
  let st = fs.statSync(file)
  t.is(st.size, 20 * 1024 * 1024 + 4)
  t.ok(st.blocks * 512 < st.size / 10, `st_blocks ${st.blocks} covers only the written blocks`)
  t.ok(zeros(pread(file, 1024 * 1024, 0)), 'the hole at the start reads as zeros')
  t.ok(zeros(pread(file, 4096, 10 * 1024 * 1024)), 'a hole in the middle reads as zeros')
  t.is(pread(file, 3, 3 * 1024 * 1024).toString(), 'mid')
  t.is(pread(file, 10, 20 * 1024 * 1024).toString(), 'tail')
  await sync(s.home)
  st = fs.statSync(file)
  t.ok(st.blocks * 512 < st.size / 10, 'still sparse once packed')
  t.ok(zeros(pread(file, 4096, 10 * 1024 * 1024)) && pread(file, 4, 20 * 1024 * 1024).toString() === 'tail')

  const grown = path.join(s.mnt, 'grown')
  fs.writeFileSync(grown, '')
  fs.truncateSync(grown, 64 * 1024 * 1024)
  st = fs.statSync(grown)
  t.is(st.size, 64 * 1024 * 1024)
  t.is(st.blocks, 0, 'a file grown by truncate holds no blocks')
  const r = await sh(`cmp -n 1048576 '${grown}' /dev/zero && echo same`)
  t.is(r.stdout.trim(), 'same', 'reads as zeros')
})

test('rename replaces an existing file, moves across directories and moves whole directories', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.writeFileSync(m('a'), 'A')
  fs.writeFileSync(m('b'), 'B')
  const inoA = fs.statSync(m('a')).ino
  fs.renameSync(m('a'), m('b'))
  t.is(fs.readFileSync(m('b'), 'utf8'), 'A', 'the target now holds the source')
  t.is(fs.statSync(m('b')).ino, inoA, 'same inode under the new name')
  t.is(errCode(() => fs.statSync(m('a'))), 'ENOENT', 'the old name is gone')
  t.alike(fs.readdirSync(s.mnt).sort(), ['b'])

  fs.mkdirSync(m('d1'))
  fs.mkdirSync(m('d2'))
  fs.writeFileSync(m('d1/f'), 'F')
  fs.renameSync(m('d1/f'), m('d2/g'))
  t.is(fs.readFileSync(m('d2/g'), 'utf8'), 'F', 'moved across directories')
  t.alike(fs.readdirSync(m('d1')), [])

  fs.mkdirSync(m('d1/sub/deeper'), { recursive: true })
  fs.writeFileSync(m('d1/sub/deeper/x'), 'X')
  const rootLinks = fs.statSync(s.mnt).nlink
  const d2Links = fs.statSync(m('d2')).nlink
  fs.renameSync(m('d1'), m('d2/moved'))
  t.is(fs.readFileSync(m('d2/moved/sub/deeper/x'), 'utf8'), 'X', 'a directory moves with its contents')
  t.is(errCode(() => fs.statSync(m('d1'))), 'ENOENT')
  t.is(fs.statSync(s.mnt).nlink, rootLinks - 1, 'the old parent lost a subdirectory link')
  t.is(fs.statSync(m('d2')).nlink, d2Links + 1, 'the new parent gained one')
  t.is(fs.realpathSync(m('d2/moved/sub/..')), m('d2/moved'), '.. follows the move')

  fs.mkdirSync(m('empty'))
  fs.renameSync(m('d2/moved'), m('empty'))
  t.is(fs.readFileSync(m('empty/sub/deeper/x'), 'utf8'), 'X', 'a directory replaces an empty directory')

  fs.renameSync(m('b'), m('b'))
  t.is(fs.readFileSync(m('b'), 'utf8'), 'A', 'rename onto itself changes nothing')
  fs.linkSync(m('b'), m('b2'))
  fs.renameSync(m('b'), m('b2'))
  t.ok(fs.existsSync(m('b')) && fs.existsSync(m('b2')), 'rename between two links of one file leaves both, as POSIX says')
  t.is(await sh(`mv '${m('b2')}' '${m('empty/sub')}/' && cat '${m('empty/sub/b2')}'`).then(r => r.stdout), 'A', 'mv into a directory')
})

test('rename errors: into its own subdirectory EINVAL, over a non-empty directory ENOTEMPTY, type mismatches, missing source', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.mkdirSync(m('a/b/c'), { recursive: true })
  fs.mkdirSync(m('full'))
  fs.writeFileSync(m('full/x'), 'x')
  fs.writeFileSync(m('file'), 'f')
  fs.mkdirSync(m('dir'))
  t.is(errCode(() => fs.renameSync(m('a'), m('a/b/c/a'))), 'EINVAL', 'a directory into its own subdirectory')
  t.is(errCode(() => fs.renameSync(m('a'), m('a/inside'))), 'EINVAL', 'a directory into itself')
  t.is(errCode(() => fs.renameSync(m('a'), m('full'))), 'ENOTEMPTY', 'over a non-empty directory')
  t.is(errCode(() => fs.renameSync(m('file'), m('dir'))), 'EISDIR', 'a file over a directory')
  t.is(errCode(() => fs.renameSync(m('dir'), m('file'))), 'ENOTDIR', 'a directory over a file')
  t.is(errCode(() => fs.renameSync(m('nope'), m('x'))), 'ENOENT', 'a missing source')
  t.is(errCode(() => fs.renameSync(m('file'), m('nodir/x'))), 'ENOENT', 'into a missing directory')
  t.is(errCode(() => fs.renameSync(m('file'), m('file/x'))), 'ENOTDIR', 'into a file')
  t.is(fs.readFileSync(m('full/x'), 'utf8'), 'x', 'nothing changed')
  t.ok(fs.existsSync(m('a/b/c')) && fs.existsSync(m('file')) && fs.existsSync(m('dir')))
})

test('unlink removes a name; rmdir removes an empty directory and refuses a non-empty one with ENOTEMPTY', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.mkdirSync(m('d'))
  fs.writeFileSync(m('d/f'), 'f')
  t.is(errCode(() => fs.rmdirSync(m('d'))), 'ENOTEMPTY')
  t.is(errCode(() => fs.unlinkSync(m('d'))), 'EISDIR', 'unlink of a directory')
  t.is(errCode(() => fs.rmdirSync(m('d/f'))), 'ENOTDIR', 'rmdir of a file')
  fs.unlinkSync(m('d/f'))
  t.is(errCode(() => fs.statSync(m('d/f'))), 'ENOENT')
  t.is(errCode(() => fs.unlinkSync(m('d/f'))), 'ENOENT', 'unlink twice')
  const links = fs.statSync(s.mnt).nlink
  fs.rmdirSync(m('d'))
  t.is(errCode(() => fs.statSync(m('d'))), 'ENOENT')
  t.is(fs.statSync(s.mnt).nlink, links - 1, 'the parent lost the link of the removed directory')
  t.alike(fs.readdirSync(s.mnt), [])
  fs.mkdirSync(m('d'))
  fs.writeFileSync(m('d/f'), 'again')
  t.is(fs.readFileSync(m('d/f'), 'utf8'), 'again', 'names can be used again')
  const r = await sh(`rm -rf '${m('d')}' && ls -A '${s.mnt}'`)
  t.is(r.code, 0)
  t.is(r.stdout, '', 'rm -rf empties the tree')
})

test('an open file that is unlinked keeps its data for the open descriptor, and its name is gone at once', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.mkdirSync(m('d'))
  const fd = fs.openSync(m('d/tmp'), 'w+')
  fs.writeSync(fd, 'hello')
  fs.unlinkSync(m('d/tmp'))
  t.alike(fs.readdirSync(m('d')), [], 'no name left in the listing, hidden or not')
  t.is(errCode(() => fs.statSync(m('d/tmp'))), 'ENOENT')
  t.is(fs.fstatSync(fd).nlink, 0, 'the open file has no links')
  fs.writeSync(fd, ' world')
  const buf = Buffer.alloc(11)
  fs.readSync(fd, buf, 0, 11, 0)
  t.is(buf.toString(), 'hello world', 'still readable and writable through the descriptor')
  fs.closeSync(fd)
  fs.rmdirSync(m('d'))
  t.alike(fs.readdirSync(s.mnt), [], 'the directory could be removed')

  fs.writeFileSync(m('target'), 'old contents')
  const old = fs.openSync(m('target'), 'r')
  fs.writeFileSync(m('new'), 'new contents')
  fs.renameSync(m('new'), m('target'))
  t.alike(fs.readdirSync(s.mnt), ['target'], 'rename over an open file leaves one name')
  const b2 = Buffer.alloc(12)
  fs.readSync(old, b2, 0, 12, 0)
  t.is(b2.toString(), 'old contents', 'the replaced file stays readable while open')
  fs.closeSync(old)
  t.is(fs.readFileSync(m('target'), 'utf8'), 'new contents')

  fs.writeFileSync(m('linked'), 'L')
  fs.linkSync(m('linked'), m('other'))
  const held = fs.openSync(m('linked'), 'r')
  fs.unlinkSync(m('linked'))
  fs.closeSync(held)
  t.is(fs.readFileSync(m('other'), 'utf8'), 'L', 'an open file with another link keeps that link')
  t.alike(fs.readdirSync(s.mnt).sort(), ['other', 'target'])

  // An open name of a hard-linked file, unlinked: the link count says one name, but the open descriptor
  // (libfuse's hidden name) and the other name are two kernel inodes, and each sees what the other writes.
  fs.writeFileSync(m('p1'), 'P')
  const fd2 = fs.openSync(m('p1'), 'r+')
  fs.linkSync(m('p1'), m('p2'))
  fs.unlinkSync(m('p1'))
  t.is(fs.statSync(m('p2')).nlink, 1, 'one name left')
  fs.writeSync(fd2, Buffer.alloc(10_000, 1), 0, 10_000, 0)
  fs.fchmodSync(fd2, 0o600)
  const seen = fs.statSync(m('p2'))
  t.alike([seen.size, seen.mode & 0o777], [10_000, 0o600], 'a write and a chmod through the descriptor show through the name')
  t.is(fs.readFileSync(m('p2')).length, 10_000)
  fs.writeFileSync(m('p2'), 'shorter')
  t.is(fs.fstatSync(fd2).size, 7, 'and a write through the name shows through the descriptor')
  fs.closeSync(fd2)
  fs.unlinkSync(m('p2'))

  // libfuse's hidden names are only its own business: a user may use such a name like any other.
  const lookalike = '.fuse_hidden0000000a00000001'
  fs.renameSync(m('other'), m(lookalike))
  t.alike(fs.readdirSync(s.mnt).sort(), [lookalike, 'target'], 'a closed file renamed to a hidden-looking name is listed')
  t.is(fs.readFileSync(m(lookalike), 'utf8'), 'L')
})

test('hard links share one inode number and count their links', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.writeFileSync(m('a'), 'shared')
  fs.mkdirSync(m('sub'))
  // Looked at while it has one name (so the kernel may keep its attributes), then linked from that name.
  t.is(fs.statSync(m('a')).nlink, 1)
  fs.linkSync(m('a'), m('b'))
  t.is(fs.statSync(m('a')).nlink, 2, 'the name a link was made from counts it at once')
  fs.linkSync(m('a'), m('sub/c'))
  const a = fs.statSync(m('a'))
  const c = fs.statSync(m('sub/c'))
  t.is(c.ino, a.ino, 'same inode number')
  t.is(c.nlink, 3, 'three names')
  t.is(fs.readFileSync(m('sub/c'), 'utf8'), 'shared', 'same contents')
  // Every name shows a change made through another at once (libfuse 2 gives each name a kernel inode of
  // its own, so the kernel must not keep their attributes).
  t.is(fs.statSync(m('a')).nlink, 3, 'the first name counts the links made after it was last looked at')
  fs.chmodSync(m('b'), 0o600)
  fs.chownSync(m('b'), 65534, 65533)
  const viaA = fs.statSync(m('a'))
  t.alike([viaA.mode & 0o7777, viaA.uid, viaA.gid], [0o600, 65534, 65533], 'chmod and chown through one name show through the others')
  fs.unlinkSync(m('b'))
  t.is(fs.statSync(m('sub/c')).nlink, 2, 'an unlink through one name shows through the others')
  fs.linkSync(m('a'), m('b'))
  fs.unlinkSync(m('a'))
  fs.unlinkSync(m('b'))
  fs.linkSync(m('sub/c'), m('d'))
  t.is(fs.statSync(m('d')).nlink, 2, 'the count falls with each unlink and rises with each link')
  fs.unlinkSync(m('sub/c'))
  fs.linkSync(m('d'), m('e'))
  t.is(fs.statSync(m('e')).nlink, 2)
  t.is(fs.readFileSync(m('e'), 'utf8'), 'shared', 'data survives the removal of the first name')
  t.is(errCode(() => fs.linkSync(m('d'), m('e'))), 'EEXIST', 'link over an existing name')
  t.is(errCode(() => fs.linkSync(m('sub'), m('sub2'))), 'EPERM', 'no hard links to directories')
  t.is(errCode(() => fs.linkSync(m('nope'), m('x'))), 'ENOENT')
  const r = await sh(`ls -i '${m('d')}' '${m('e')}' | awk '{print $1}' | uniq | wc -l`)
  t.is(r.stdout.trim(), '1', 'ls -i shows one inode number')
})

test('a rename from one name of a file onto another of its names changes nothing, also while the target is open', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.writeFileSync(m('e'), 'one file')
  fs.linkSync(m('e'), m('d'))
  fs.linkSync(m('e'), m('c'))
  fs.renameSync(m('e'), m('d'))
  t.alike(fs.readdirSync(s.mnt).sort(), ['c', 'd', 'e'], 'closed target: every name stays')
  // An open target is first moved to a hidden name by libfuse, then the source renamed onto its name.
  const fd = fs.openSync(m('d'), 'r+')
  fs.renameSync(m('e'), m('d'))
  t.alike(fs.readdirSync(s.mnt).filter(n => !n.startsWith('.fuse_hidden')).sort(), ['c', 'd', 'e'], 'open target: every name stays')
  t.is(fs.fstatSync(fd).nlink, 3, 'the open descriptor, now under libfuse\'s hidden name, counts three names')
  fs.writeSync(fd, 'ONE', 0)
  fs.closeSync(fd)
  t.ok(await until(() => fs.readdirSync(s.mnt).length === 3, 5000), 'the hidden name goes with the last close')
  t.is(fs.statSync(m('c')).nlink, 3, 'three names')
  t.is(fs.readFileSync(m('e'), 'utf8'), 'ONE file', 'the open descriptor wrote to the same file')
  // A different file renamed over the open name still replaces it.
  const fd2 = fs.openSync(m('d'), 'r')
  fs.writeFileSync(m('x'), 'other')
  fs.renameSync(m('x'), m('d'))
  t.is(fs.readFileSync(m('d'), 'utf8'), 'other')
  t.is(fs.readFileSync(fd2, 'utf8'), 'ONE file', 'the open descriptor keeps the file it opened')
  fs.closeSync(fd2)
  t.ok(await until(() => fs.statSync(m('c')).nlink === 2, 5000), 'the replaced name no longer counts')
  await unmount(s.mnt)
  await mount(s)
  t.alike(fs.readdirSync(s.mnt).sort(), ['c', 'd', 'e'], 'the same names after a remount')
  t.is(fs.statSync(m('e')).nlink, 2)
  // Open names unlinked: e while c still names the file, then c, the last.
  for (const [name, left] of [['e', 1], ['c', 0]] as const) {
    const fd = fs.openSync(m(name), 'r')
    fs.unlinkSync(m(name))
    t.is(fs.fstatSync(fd).nlink, left, `${name} unlinked while open: its descriptor counts ${left} name(s) left`)
    // For the last name the kernel keeps the attributes the change answers with; with names left it asks again.
    fs.fchmodSync(fd, 0o600)
    t.is(fs.fstatSync(fd).nlink, left, 'and after a change through the descriptor')
    fs.closeSync(fd)
  }
  // A name of the user's own that looks like libfuse's hidden names counts its links as any other (the
  // answer to the link is made from the new name's attributes).
  fs.writeFileSync(m('f'), 'mine')
  const lookalike = m('.fuse_hidden0000000a0000000b')
  fs.linkSync(m('f'), lookalike)
  t.is(fs.statSync(lookalike).nlink, 2, 'a link named like a hidden name counts two links')
  t.is(fs.statSync(m('f')).nlink, 2)
})

test('data written through one name of a hard-linked file reads back through a descriptor open on another', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const before = Buffer.alloc(300_000, 'a')
  fs.writeFileSync(m('a'), before)
  fs.linkSync(m('a'), m('b'))
  const viaB = fs.openSync(m('b'), 'r')
  t.ok(pread(m('b'), 300_000, 0).equals(before))
  t.ok(fs.readFileSync(viaB).equals(before), 'read once through the open descriptor, so the kernel holds the pages')
  pwrite(m('a'), Buffer.alloc(1000, 'W'), 150_000)
  const got = Buffer.alloc(1000)
  fs.readSync(viaB, got, 0, 1000, 150_000)
  t.ok(got.equals(Buffer.alloc(1000, 'W')), 'a write through the other name shows at once')
  fs.truncateSync(m('a'), 100_000)
  t.is(fs.fstatSync(viaB).size, 100_000, 'so does a truncate')
  fs.truncateSync(m('a'), 200_000)
  const tail = Buffer.alloc(10)
  fs.readSync(viaB, tail, 0, 10, 150_000)
  t.ok(tail.equals(Buffer.alloc(10)), 'bytes cut off and grown again read as zeros')
  // An open name that is unlinked keeps its pages under libfuse's hidden name: writes through the name
  // left still reach it.
  const viaA = fs.openSync(m('a'), 'r')
  fs.readFileSync(viaA)
  fs.unlinkSync(m('a'))
  pwrite(m('b'), Buffer.from('through b'), 0)
  const head = Buffer.alloc(9)
  fs.readSync(viaA, head, 0, 9, 0)
  t.is(head.toString(), 'through b', 'the descriptor of the unlinked name sees the write')
  fs.closeSync(viaA)
  fs.closeSync(viaB)
  // An appending descriptor on one name after the file grew through the other: the bytes go to the file's
  // real end, and the descriptor reads them there (the kernel's size of the appending name is the old one).
  fs.writeFileSync(m('c'), Buffer.alloc(10_000, 'c'))
  fs.linkSync(m('c'), m('d'))
  const appender = fs.openSync(m('c'), 'a+')
  t.is(fs.fstatSync(appender).size, 10_000)
  pwrite(m('d'), Buffer.alloc(5000, 'd'), 50_000)
  fs.writeSync(appender, Buffer.alloc(3 * 4096, 'A'))
  const want = Buffer.concat([Buffer.alloc(10_000, 'c'), Buffer.alloc(40_000), Buffer.alloc(5000, 'd'), Buffer.alloc(3 * 4096, 'A')])
  t.ok(fs.readFileSync(m('d')).equals(want), 'the append lands at the end the other name made')
  // Read below where the kernel would have put the bytes (10,000 + 12,288), so that its size asks for nothing.
  const viaAppender = Buffer.alloc(20_000)
  const n = fs.readSync(appender, viaAppender, 0, viaAppender.length, 0)
  t.ok(viaAppender.subarray(0, n).equals(want.subarray(0, 20_000)), `and the descriptor reads zeros where the file has them (${n} bytes)`)
  fs.closeSync(appender)
  const st = await status(s.home)
  if (st.fuse.layer === 'fuse-native' && st.fuse.addon) t.ok(st.fuse.siblingCachesDropped > 0, `status counts the dropped caches (${st.fuse.siblingCachesDropped})`)
  else t.comment('no kernel caching of other names to drop: one kernel inode per file, or no addon')
})

test('symlinks: readlink gives the target, lstat describes the link, stat and open follow it', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.mkdirSync(m('dir'))
  fs.writeFileSync(m('dir/file'), 'through the link')
  fs.symlinkSync('dir/file', m('rel'))
  fs.symlinkSync(m('dir'), m('abs'))
  fs.symlinkSync('nowhere', m('dangling'))
  t.is(fs.readlinkSync(m('rel')), 'dir/file')
  t.is(fs.readlinkSync(m('abs')), m('dir'))
  t.is(fs.readFileSync(m('rel'), 'utf8'), 'through the link')
  t.is(fs.readFileSync(m('abs/file'), 'utf8'), 'through the link', 'a link to a directory is traversed')
  const l = fs.lstatSync(m('rel'))
  t.ok(l.isSymbolicLink())
  t.is(l.size, 'dir/file'.length, 'a link\'s size is its target length')
  t.ok(fs.statSync(m('rel')).isFile(), 'stat follows the link')
  t.is(errCode(() => fs.statSync(m('dangling'))), 'ENOENT', 'a dangling link')
  t.ok(fs.lstatSync(m('dangling')).isSymbolicLink())
  t.is(errCode(() => fs.readlinkSync(m('dir'))), 'EINVAL', 'readlink of a non-link')
  t.is(errCode(() => fs.symlinkSync('x', m('rel'))), 'EEXIST')
  const long = 'x/'.repeat(2000) + 'end'
  fs.symlinkSync(long, m('long'))
  t.is(fs.readlinkSync(m('long')), long, 'a 4003-byte target')
  fs.symlinkSync('loop2', m('loop1'))
  fs.symlinkSync('loop1', m('loop2'))
  t.is(errCode(() => fs.readFileSync(m('loop1'))), 'ELOOP')
  fs.writeFileSync(m('rel'), 'written through')
  t.is(fs.readFileSync(m('dir/file'), 'utf8'), 'written through', 'writing through a link writes its target')
  fs.unlinkSync(m('rel'))
  t.ok(fs.existsSync(m('dir/file')), 'removing a link keeps its target')
})

test('chmod sets permission bits (setuid, setgid, sticky too); chown sets numeric owner and group', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.writeFileSync(m('f'), 'x')
  fs.mkdirSync(m('d'))
  const before = fs.statSync(m('f'))
  for (const mode of [0o000, 0o644, 0o4755, 0o2711, 0o1777, 0o7777]) {
    fs.chmodSync(m('f'), mode)
    t.is(fs.statSync(m('f')).mode & 0o7777, mode, `mode ${mode.toString(8)}`)
  }
  t.ok(fs.statSync(m('f')).isFile(), 'chmod keeps the file type')
  t.ok(fs.statSync(m('f')).ctimeMs >= before.ctimeMs, 'chmod updates ctime')
  fs.chmodSync(m('d'), 0o1777)
  t.is(fs.statSync(m('d')).mode & 0o7777, 0o1777)
  t.ok(fs.statSync(m('d')).isDirectory())

  fs.chmodSync(m('f'), 0o644)
  fs.chownSync(m('f'), 1234, 5678)
  let st = fs.statSync(m('f'))
  t.is(st.uid, 1234)
  t.is(st.gid, 5678)
  fs.chownSync(m('f'), -1, 42)
  st = fs.statSync(m('f'))
  t.is(st.uid, 1234, 'uid -1 leaves the owner')
  t.is(st.gid, 42)
  fs.chownSync(m('f'), 4000000000, -1)
  t.is(fs.statSync(m('f')).uid, 4000000000, 'ids above 2^31')
  fs.symlinkSync('f', m('link'))
  fs.lchownSync(m('link'), 77, 88)
  t.is(fs.lstatSync(m('link')).uid, 77, 'lchown changes the link')
  t.is(fs.statSync(m('link')).uid, 4000000000, 'and not its target')
  const r = await sh(`chown 501:20 '${m('d')}' && stat -c '%u:%g' '${m('d')}'`)
  t.is(r.stdout.trim(), '501:20', 'chown(1) with numeric ids')
  fs.chmodSync(m('f'), 0o6755)
  fs.chownSync(m('f'), 1, 1)
  t.is(fs.statSync(m('f')).mode & 0o6000, 0, 'chown clears setuid and setgid, as on Linux')
})

test('utimens sets explicit atime and mtime, each its own value', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.writeFileSync(m('f'), 'x')
  fs.mkdirSync(m('d'))
  const atime = new Date('2001-02-03T04:05:06.789Z')
  const mtime = new Date('2011-12-13T14:15:16.125Z')
  fs.utimesSync(m('f'), atime, mtime)
  let st = fs.statSync(m('f'))
  t.is(st.atimeMs, atime.getTime(), 'atime as given (millisecond precision)')
  t.is(st.mtimeMs, mtime.getTime(), 'mtime as given, not the atime')
  fs.utimesSync(m('d'), mtime, atime)
  st = fs.statSync(m('d'))
  t.is(st.atimeMs, mtime.getTime())
  t.is(st.mtimeMs, atime.getTime(), 'on a directory too')
  fs.symlinkSync('f', m('l'))
  fs.lutimesSync(m('l'), atime, atime)
  t.is(fs.lstatSync(m('l')).mtimeMs, atime.getTime(), 'lutimes sets the link\'s times')
  t.is(fs.statSync(m('f')).mtimeMs, mtime.getTime(), 'and leaves the target\'s')

  const r = await sh(`touch -d '2005-06-07 08:09:10 UTC' '${m('f')}' && stat -c '%X %Y' '${m('f')}'`)
  t.is(r.stdout.trim(), '1118131750 1118131750', 'touch -d sets both')
  const before = Date.now()
  fs.utimesSync(m('f'), atime, mtime)
  await sh(`touch '${m('f')}'`)
  st = fs.statSync(m('f'))
  t.ok(st.mtimeMs >= before - 1000 && st.atimeMs >= before - 1000, 'touch sets both to now')
  const ct = fs.statSync(m('f')).ctimeMs
  fs.utimesSync(m('f'), atime, mtime)
  t.ok(fs.statSync(m('f')).ctimeMs >= ct, 'utimens updates ctime')


  const py3 = await py(`import os, sys, json
os.utime(sys.argv[1], ns=(1_000_000_000_123_000_000, 1_200_000_000_456_000_000))
st = os.stat(sys.argv[1])
print(json.dumps([st.st_atime_ns, st.st_mtime_ns]))`, m('f'))
  t.alike(py3, [1_000_000_000_123_000_000, 1_200_000_000_456_000_000], 'nanosecond calls keep millisecond precision')
})

// libfuse 2.9 (the high-level API fuse-native is built on) passes a utimensat(2) that omits one of the
// times (touch -m, touch -a) on only when the filesystem says it can take UTIME_OMIT; fuse-native does not,
// so the preload addon's fuse_new (native/preload.c) does.
test('touch -a and touch -m change one time and keep the other', async t => {
  const s = await mounted(t)
  const layer = (await status(s.home)).fuse
  t.ok(layer?.layer === 'kernel' || layer?.addon === true, 'status: the kernel session, or the preload addon between fuse-native and libfuse')
  const f = path.join(s.mnt, 'f')
  fs.writeFileSync(f, 'x')
  const old = new Date('2001-01-01T00:00:00Z')
  fs.utimesSync(f, old, old)
  const before = Date.now()
  await sh(`touch -m '${f}'`)
  let st = fs.statSync(f)
  t.is(st.atimeMs, old.getTime(), 'atime kept')
  t.ok(st.mtimeMs >= before - 1000 && st.mtimeMs <= Date.now() + 1000, 'mtime set to now')
  const r = await sh(`touch -a -d @1900000000 '${f}' && stat -c '%X' '${f}' && touch -m -d @1950000000 '${f}' && stat -c '%X %Y' '${f}'`)
  t.alike(r.stdout.trim().split('\n'), ['1900000000', '1900000000 1950000000'], 'touch -a sets only atime, touch -m -d only mtime')
  const py3 = await py(`import os, sys, json
os.utime(sys.argv[1], ns=(1_000_000_000_000_000_000, 1_100_000_000_000_000_000))
st = os.stat(sys.argv[1])
print(json.dumps([st.st_atime_ns, st.st_mtime_ns]))`, f)
  t.alike(py3, [1_000_000_000_000_000_000, 1_100_000_000_000_000_000], 'both given: both set')
  st = fs.statSync(f)
  t.ok(st.ctimeMs >= before - 1000, 'ctime follows')
})

test('stat reports size, nlink, blocks and times that follow the file', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const t0 = Date.now()
  fs.writeFileSync(m('f'), '')
  let st = fs.statSync(m('f'))
  t.ok(st.isFile())
  t.is(st.size, 0)
  t.is(st.nlink, 1)
  t.is(st.blocks, 0, 'an empty file holds no blocks')
  t.is(st.mode & 0o777, 0o666 & ~process.umask(), 'mode from the creating call and the umask')
  t.ok(st.mtimeMs >= t0 - 1000 && st.mtimeMs <= Date.now() + 1000, 'mtime is the creation time')
  t.ok(st.ctimeMs >= t0 - 1000 && st.atimeMs >= t0 - 1000)
  t.is(st.uid, process.getuid!(), 'owned by its creator, here the daemon\'s own user')

  const old = new Date('2000-01-01T00:00:00Z')
  fs.utimesSync(m('f'), old, old)
  fs.writeFileSync(m('f'), Buffer.alloc(10_000, 1), { flag: 'r+' })
  st = fs.statSync(m('f'))
  t.is(st.size, 10_000)
  t.ok(st.blocks * 512 >= 10_000, `st_blocks ${st.blocks} covers the data`)
  t.is(st.blksize, 4096)
  t.ok(st.mtimeMs > old.getTime() && st.ctimeMs > old.getTime(), 'a write updates mtime and ctime')

  fs.mkdirSync(m('d'))
  const dirBefore = fs.statSync(m('d'))
  t.ok(dirBefore.isDirectory())
  t.is(dirBefore.nlink, 2, 'an empty directory has two links')
  fs.utimesSync(m('d'), old, old)
  fs.mkdirSync(m('d/s1'))
  fs.mkdirSync(m('d/s2'))
  fs.writeFileSync(m('d/file'), 'x')
  const dir = fs.statSync(m('d'))
  t.is(dir.nlink, 4, 'two more for two subdirectories, none for a file')
  t.ok(dir.mtimeMs > old.getTime(), 'creating entries updates the directory\'s mtime')
  t.ok(dir.blocks > 0 && dir.blksize === 4096)
  t.not(fs.statSync(m('d/s1')).ino, fs.statSync(m('d/s2')).ino, 'distinct inode numbers')
})

test('statfs: df shows the logical disk size, and free space falls after writing', async t => {
  const s = await mounted(t)
  const st = await status(s.home)
  const before = fs.statfsSync(s.mnt)
  t.is(before.bsize, 4096)
  const total = Math.floor(st.usableBytes / 4096) * 4096
  t.is(before.blocks * before.bsize, total, 'total is the usable part of the logical disk')
  t.ok(total <= LOGICAL_BYTES && total > LOGICAL_BYTES / 2, `${total} bytes of a ${LOGICAL_BYTES}-byte logical disk`)
  t.ok(before.bfree > before.blocks * 0.95, 'an empty filesystem is nearly all free')
  t.is(before.bavail, before.bfree)

  const df = await sh(`df -B1 --output=size,avail '${s.mnt}' | tail -1`)
  const [size] = df.stdout.trim().split(/\s+/).map(Number)
  t.is(size, total, 'df shows the same size')

  const written = 20 * 1024 * 1024
  fs.writeFileSync(path.join(s.mnt, 'big'), crypto.randomBytes(written))
  for (let i = 0; i < 10; i++) fs.writeFileSync(path.join(s.mnt, `small${i}`), 'x')
  const after = fs.statfsSync(s.mnt)
  t.ok((before.bfree - after.bfree) * after.bsize >= written, `free space fell by ${(before.bfree - after.bfree) * after.bsize} bytes`)
  t.is(before.ffree - after.ffree, 11, 'free inodes fell by the files made')
  await sync(s.home)
  const packed = fs.statfsSync(s.mnt)
  t.ok((before.bfree - packed.bfree) * packed.bsize >= written, 'still used once packed')
  fs.unlinkSync(path.join(s.mnt, 'big'))
  const freed = fs.statfsSync(s.mnt)
  t.ok(freed.bfree > packed.bfree, 'deleting gives space back')
})

// Linux 4.20 and later take requests of up to 1 MiB from a daemon that asks for them (the preload addon
// does, for libfuse 2): one write(2) of 1 MiB reaches the filesystem whole, spanning eight chunks.
test('requests of up to 1 MiB: single large writes and reads at any offset, through fsync and kill -9', async t => {
  const s = await mounted(t)
  const [major, minor] = os.release().split('.').map(Number)
  const bigKernel = major > 4 || (major === 4 && minor >= 20)
  const fuseInfo = (await status(s.home)).fuse
  t.is(fuseInfo?.requestBytes, bigKernel && fuseInfo?.addon ? 1024 * 1024 : 128 * 1024, 'status: the largest request the kernel may send')
  const file = path.join(s.mnt, 'big.bin')
  const mirror = crypto.randomBytes(40 * 1024 * 1024 + 12345)
  const fd = fs.openSync(file, 'w+')
  // Whole 1 MiB writes, then writes of odd sizes at odd offsets across chunk boundaries.
  for (let pos = 0; pos < mirror.length; pos += 1024 * 1024) fs.writeSync(fd, mirror, pos, Math.min(1024 * 1024, mirror.length - pos), pos)
  for (const [pos, len] of [[3 * CHUNK - 5, 1024 * 1024], [7, 1024 * 1024 + 3], [mirror.length - 1000, 1000], [5 * 1024 * 1024 + 1, 2 * 1024 * 1024 + 17]]) {
    crypto.randomFillSync(mirror, pos, len)
    fs.writeSync(fd, mirror, pos, len, pos)
  }
  const back = Buffer.alloc(1024 * 1024 + 99)
  t.is(fs.readSync(fd, back, 0, back.length, CHUNK + 1), back.length, 'a read of more than 1 MiB returns all of it')
  t.ok(back.equals(mirror.subarray(CHUNK + 1, CHUNK + 1 + back.length)), 'with the bytes written')
  fs.fsyncSync(fd)
  // fsync alone made the file durable: the daemon dies with the descriptor still open.
  await killDaemon(s)
  try { fs.closeSync(fd) } catch {}
  await mount(s)
  t.ok(fs.readFileSync(file).equals(mirror), 'the whole file is there after kill -9 and mount')
  await sync(s.home)
  const packed = Buffer.alloc(3 * 1024 * 1024)
  const rfd = fs.openSync(file, 'r')
  t.is(fs.readSync(rfd, packed, 0, packed.length, 999_999), packed.length)
  fs.closeSync(rfd)
  t.ok(packed.equals(mirror.subarray(999_999, 999_999 + packed.length)), 'and reads back once packed into the log')
  await unmount(s.mnt)
})

// The preload addon answers libfuse's attribute request right after a create with what the daemon handed
// it with the create (native/preload.c, fgetattr_quick): they must be what the daemon stores, for the
// creating user, and must not outlive the request.
test('a new file\'s attributes come with its create: the same at once and after a remount, also for another user', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const fuseBefore = (await status(s.home)).fuse
  const pick = (st: fs.Stats): number[] => [st.ino, st.mode, st.uid, st.gid, st.nlink, st.size, st.blocks, st.mtimeMs, st.ctimeMs]
  const names = Array.from({ length: 20 }, (_, i) => `new${i}`)
  const umask = parseInt(/^Umask:\s*(\d+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0', 8)
  const atOnce = new Map<string, number[]>()
  for (const [i, name] of names.entries()) {
    const fd = fs.openSync(m(name), 'wx', 0o600 + i)
    atOnce.set(name, pick(fs.fstatSync(fd)))
    fs.closeSync(fd)
  }
  // Another user creates too (the daemon then gives the file to the caller, which changes its owner and
  // ctime after the create); the child prints what fstat said right after each create.
  const others = ['o0', 'o1', 'o2']
  const asRoot = process.getuid?.() === 0
  if (asRoot) {
    fs.chmodSync(s.mnt, 0o1777)
    const code = 'const fs = require("fs"); const out = {}; for (const n of process.argv.slice(1)) { const fd = fs.openSync(n, "wx", 0o644); const st = fs.fstatSync(fd); out[n] = [st.uid, st.gid, st.size, st.nlink]; fs.closeSync(fd) }; console.log(JSON.stringify(out))'
    const r = await sh(`cd '${s.mnt}' && setpriv --reuid=65534 --regid=65533 --clear-groups '${process.execPath}' -e '${code}' ${others.join(' ')}`)
    t.is(r.code, 0, r.stderr)
    const seen = r.code === 0 ? JSON.parse(r.stdout) : {}
    for (const n of others) t.alike(seen[n], [65534, 65533, 0, 1], `${n}: fstat right after another user's create shows that user as owner`)
  }
  const fuseAfter = (await status(s.home)).fuse
  if (fuseBefore?.layer === 'fuse-native' && fuseBefore?.addon) {
    const answered = (fuseAfter?.answered?.createAttrs ?? 0) - (fuseBefore?.answered?.createAttrs ?? 0)
    t.is(answered, names.length, `the addon answered the attribute request of each create but the other user's (${answered})`)
  }
  await unmount(s.mnt)
  await mount(s)
  for (const [i, name] of names.entries()) {
    if (!fs.existsSync(m(name))) {
      t.fail(`${name} is gone after the remount`)
      continue
    }
    const later = pick(fs.statSync(m(name)))
    t.alike(atOnce.get(name), later, `${name}: attributes right after create are the stored ones`)
    t.is(later[1] & 0o7777, (0o600 + i) & ~umask, `${name}: mode as asked, less the umask`)
  }
  const uidOf = (name: string): number | string => {
    try {
      return fs.statSync(m(name)).uid
    } catch (err) {
      return (err as { code?: string }).code ?? 'error'
    }
  }
  if (asRoot) for (const n of others) t.is(uidOf(n), 65534, `${n} still belongs to its creator`)
  await unmount(s.mnt)
})

// The preload addon answers the flush of a read-only descriptor itself (native/preload.c); a writer's
// close must still commit its writes.
test('read-only descriptors open and close beside a writer; what the writer\'s close confirmed survives kill -9', async t => {
  const s = await mounted(t)
  const file = path.join(s.mnt, 'shared.bin')
  const data = crypto.randomBytes(200_000)
  const w = fs.openSync(file, 'w')
  for (let i = 0; i < 20; i++) {
    fs.writeSync(w, data, i * 10_000, 10_000, i * 10_000)
    const r = fs.openSync(file, 'r')
    const got = Buffer.alloc(10_000)
    t.is(fs.readSync(r, got, 0, got.length, i * 10_000), 10_000)
    if (!got.equals(data.subarray(i * 10_000, (i + 1) * 10_000))) t.fail(`reader ${i} saw other bytes`)
    fs.closeSync(r)
  }
  fs.closeSync(w)
  await killDaemon(s)
  await mount(s)
  t.ok(fs.readFileSync(file).equals(data), 'the bytes the writer closed are there after kill -9')
  await unmount(s.mnt)
})

// The preload addon answers releases and the daemon takes them before its next request, and on a timer
// (native/preload.c, release_noted): what a release does must still happen.
test('releases answered by the addon: an unlinked file goes with its write-back data, a lone close is taken on the timer, every release counts', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const fuseBefore = (await status(s.home)).fuse
  const fd = fs.openSync(m('doomed'), 'w')
  fs.writeSync(fd, crypto.randomBytes(300_000))
  fs.unlinkSync(m('doomed'))
  t.is(writebackFiles(s.home).length, 1, 'the open, unlinked file keeps its write-back file')
  fs.closeSync(fd)
  t.ok(await until(() => writebackFiles(s.home).length === 0, 15_000), 'its write-back file goes once it is closed')
  t.alike(fs.readdirSync(s.mnt), [], 'no name left')
  // A close with no request after it: only the timer can take its release (status asks the daemon over its
  // control socket, not through the mount).
  const openHandles = async (): Promise<number> => (await status(s.home)).fuse?.openHandles
  const idle = await openHandles()
  const lone = fs.openSync(m('lone'), 'w')
  fs.writeSync(lone, 'x')
  t.is(await openHandles(), idle + 1, 'an open file holds a handle')
  fs.closeSync(lone)
  let left = await openHandles()
  for (const end = Date.now() + 15_000; left !== idle && Date.now() < end;) {
    await new Promise(resolve => setTimeout(resolve, 50))
    left = await openHandles()
  }
  t.is(left, idle, 'and the handle goes after the close without another request')
  // Files written through many short-lived handles end with their last write, also after a remount.
  const rounds = 200
  for (let i = 0; i < rounds; i++) fs.writeFileSync(m(`f${i % 10}`), `round ${i}`)
  for (let j = 0; j < 10; j++) t.is(fs.readFileSync(m(`f${j}`), 'utf8'), `round ${rounds - 10 + j}`, `f${j} holds its last write`)
  if (fuseBefore?.layer === 'fuse-native' && fuseBefore?.addon) {
    // The kernel sends a release after close(2) has returned, so the last ones may still be on their way.
    const want = 1 + 1 + rounds + 10
    const count = async (): Promise<number> => ((await status(s.home)).fuse?.answered?.release ?? 0) - (fuseBefore?.answered?.release ?? 0)
    let answered = await count()
    for (const end = Date.now() + 15_000; answered !== want && Date.now() < end;) {
      await new Promise(resolve => setTimeout(resolve, 50))
      answered = await count()
    }
    t.is(answered, want, 'the addon answered every release')
  }
  await unmount(s.mnt)
  await mount(s)
  for (let j = 0; j < 10; j++) t.is(fs.readFileSync(m(`f${j}`), 'utf8'), `round ${rounds - 10 + j}`, `f${j} after a remount`)
  t.alike(fs.readdirSync(s.mnt).sort(), ['lone', ...Array.from({ length: 10 }, (_, j) => `f${j}`)].sort())
  await unmount(s.mnt)
})

test('fsync of a file and of a directory return, and fsynced data survives kill -9 of the daemon', async t => {
  const s = await mounted(t)
  const data = crypto.randomBytes(300_000)
  fs.mkdirSync(path.join(s.mnt, 'd'))
  const fd = fs.openSync(path.join(s.mnt, 'd/f'), 'w')
  fs.writeSync(fd, data)
  fs.fsyncSync(fd)
  fs.fdatasyncSync(fd)
  const dfd = fs.openSync(path.join(s.mnt, 'd'), 'r')
  fs.fsyncSync(dfd)
  fs.closeSync(dfd)
  // The file stays open: only fsync made it durable.
  await killDaemon(s)
  try { fs.closeSync(fd) } catch {}
  await mount(s)
  t.ok(fs.readFileSync(path.join(s.mnt, 'd/f')).equals(data), 'the fsynced bytes are there')
  await unmount(s.mnt)
})

test('errors are Linux\'s: ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, ENAMETOOLONG', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.mkdirSync(m('dir'))
  fs.writeFileSync(m('dir/x'), 'x')
  fs.writeFileSync(m('file'), 'f')
  const long = 'n'.repeat(256)
  const cases: Array<[string, () => unknown, string]> = [
    ['stat of a missing name', () => fs.statSync(m('missing')), 'ENOENT'],
    ['open of a missing file', () => fs.openSync(m('missing'), 'r'), 'ENOENT'],
    ['create in a missing directory', () => fs.writeFileSync(m('missing/x'), ''), 'ENOENT'],
    ['mkdir of an existing name', () => fs.mkdirSync(m('file')), 'EEXIST'],
    ['O_EXCL create of an existing file', () => fs.openSync(m('file'), 'wx'), 'EEXIST'],
    ['symlink over an existing name', () => fs.symlinkSync('t', m('dir')), 'EEXIST'],
    ['a file used as a directory', () => fs.statSync(m('file/x')), 'ENOTDIR'],
    ['create under a file', () => fs.writeFileSync(m('file/x'), ''), 'ENOTDIR'],
    ['readdir of a file', () => fs.readdirSync(m('file')), 'ENOTDIR'],
    ['rmdir of a file', () => fs.rmdirSync(m('file')), 'ENOTDIR'],
    ['open of a directory for writing', () => fs.openSync(m('dir'), 'w'), 'EISDIR'],
    ['read of a directory', () => fs.readFileSync(m('dir')), 'EISDIR'],
    ['unlink of a directory', () => fs.unlinkSync(m('dir')), 'EISDIR'],
    ['rmdir of a non-empty directory', () => fs.rmdirSync(m('dir')), 'ENOTEMPTY'],
    ['create with a 256-byte name', () => fs.writeFileSync(m(long), ''), 'ENAMETOOLONG'],
    ['stat of a 256-byte name', () => fs.statSync(m(long)), 'ENAMETOOLONG'],
    ['mkdir with a 256-byte name', () => fs.mkdirSync(m(long)), 'ENAMETOOLONG'],
    ['rename to a 256-byte name', () => fs.renameSync(m('file'), m(long)), 'ENAMETOOLONG']
  ]
  for (const [what, fn, code] of cases) t.is(errCode(fn), code, what)
  t.alike(fs.readdirSync(s.mnt).sort(), ['dir', 'file'], 'no failed call left anything behind')
})

test('rename across two coopfs mounts is EXDEV, and mv copies instead', async t => {
  const a = await mounted(t)
  const b = await mounted(t)
  fs.writeFileSync(path.join(a.mnt, 'f'), 'crossing')
  fs.mkdirSync(path.join(a.mnt, 'd'))
  t.is(errCode(() => fs.renameSync(path.join(a.mnt, 'f'), path.join(b.mnt, 'f'))), 'EXDEV')
  t.is(errCode(() => fs.renameSync(path.join(a.mnt, 'd'), path.join(b.mnt, 'd'))), 'EXDEV')
  t.is(errCode(() => fs.linkSync(path.join(a.mnt, 'f'), path.join(b.mnt, 'g'))), 'EXDEV', 'link across mounts')
  const r = await sh(`mv '${path.join(a.mnt, 'f')}' '${path.join(b.mnt, 'f')}'`)
  t.is(r.code, 0, r.stderr || 'exits 0')
  t.is(fs.readFileSync(path.join(b.mnt, 'f'), 'utf8'), 'crossing')
  t.absent(fs.existsSync(path.join(a.mnt, 'f')))
})

// The daemon runs as root in this test, so the mount is open to every user (allow_other); setpriv runs a
// command as another user and group.
test('new files, directories, links and fifos belong to the user who made them; set-group-ID directories pass their group on', { skip: process.getuid?.() !== 0 }, async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.chmodSync(s.mnt, 0o1777)
  const as = (cmd: string): Promise<{ code: number, stdout: string, stderr: string }> =>
    sh(`cd '${s.mnt}' && setpriv --reuid=65534 --regid=65533 --clear-groups sh -c '${cmd}'`)
  let r = await as('touch f && mkdir d && ln -s f l && mkfifo p && echo hi > d/g && chmod 600 f')
  t.is(r.code, 0, `the other user creates, writes into its own directory and chmods its own file: ${r.stderr}`)
  // Attributes picked from lstat, or the error code: a missing file fails its check, not the test file.
  const attrs = (name: string, pick: (st: fs.Stats) => number[]): number[] | string => {
    try {
      return pick(fs.lstatSync(m(name)))
    } catch (err) {
      return (err as { code?: string }).code ?? 'error'
    }
  }
  const owner = (name: string): number[] | string => attrs(name, st => [st.uid, st.gid])
  for (const name of ['f', 'd', 'l', 'p', 'd/g']) t.alike(owner(name), [65534, 65533], `${name} belongs to its creator`)
  t.is(fs.existsSync(m('d/g')) ? fs.readFileSync(m('d/g'), 'utf8') : null, 'hi\n', 'what it wrote into its own directory is there')
  fs.mkdirSync(m('shared'))
  fs.chownSync(m('shared'), 0, 1234)
  fs.chmodSync(m('shared'), 0o2777)
  r = await as('touch shared/x && mkdir shared/y')
  t.is(r.code, 0, r.stderr)
  t.alike(owner('shared/x'), [65534, 1234], 'in a set-group-ID directory: the creator\'s user, the directory\'s group')
  t.alike(attrs('shared/y', st => [st.gid, st.mode & 0o2000]), [1234, 0o2000], 'a new directory there takes the group and the bit')
  fs.mkdirSync(m('mine'), 0o755)
  r = await as('touch mine/z')
  t.is(r.code, 1, 'a directory of root\'s stays closed to the other user')
  t.ok(/Permission denied/.test(r.stderr), r.stderr)
  await unmount(s.mnt)
  await mount(s)
  t.alike([owner('f')[0], owner('shared/x')[1]], [65534, 1234], 'owners survive a remount')
})

test('cp -a into the mount keeps modes, owners, times, symlinks and hard links', async t => {
  const s = await mounted(t)
  const src = path.join(s.dir, 'src')
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true })
  fs.writeFileSync(path.join(src, 'f'), 'file')
  fs.writeFileSync(path.join(src, 'sub/g'), crypto.randomBytes(200_000))
  fs.chmodSync(path.join(src, 'f'), 0o640)
  fs.chmodSync(path.join(src, 'sub'), 0o750)
  fs.chownSync(path.join(src, 'f'), 1001, 1002)
  fs.symlinkSync('f', path.join(src, 'link'))
  fs.linkSync(path.join(src, 'f'), path.join(src, 'hard'))
  fs.utimesSync(path.join(src, 'f'), new Date('2004-04-04T04:04:04.250Z'), new Date('2005-05-05T05:05:05.500Z'))
  fs.utimesSync(path.join(src, 'sub'), new Date('2006-06-06T06:06:06Z'), new Date('2007-07-07T07:07:07Z'))
  const r = await sh(`cp -a '${src}' '${s.mnt}/copy'`)
  t.is(r.code, 0, r.stderr || 'exits 0')
  const dst = path.join(s.mnt, 'copy')
  for (const name of ['f', 'sub', 'sub/g', 'link', 'hard']) {
    const a = fs.lstatSync(path.join(src, name))
    const b = fs.lstatSync(path.join(dst, name))
    t.is(b.mode, a.mode, `${name}: mode`)
    t.is(b.uid, a.uid, `${name}: uid`)
    t.is(b.gid, a.gid, `${name}: gid`)
    if (!a.isDirectory()) t.is(b.size, a.size, `${name}: size`)
    t.is(Math.floor(b.mtimeMs), Math.floor(a.mtimeMs), `${name}: mtime`)
  }
  t.is(fs.readlinkSync(path.join(dst, 'link')), 'f')
  t.is(fs.statSync(path.join(dst, 'hard')).ino, fs.statSync(path.join(dst, 'f')).ino, 'hard links stay linked')
  t.ok(fs.readFileSync(path.join(dst, 'sub/g')).equals(fs.readFileSync(path.join(src, 'sub/g'))))
})

test('data and attributes survive unmount and mount', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const files: Record<string, Buffer> = {
    empty: Buffer.alloc(0),
    small: Buffer.from('small file'),
    'dir/medium': crypto.randomBytes(CHUNK + 17),
    'dir/sub/large': crypto.randomBytes(3 * 1024 * 1024 + 5)
  }
  fs.mkdirSync(m('dir/sub'), { recursive: true })
  for (const [name, data] of Object.entries(files)) fs.writeFileSync(m(name), data)
  fs.writeFileSync(m('sparse'), '')
  pwrite(m('sparse'), Buffer.from('far'), 50 * 1024 * 1024)
  fs.symlinkSync('dir/medium', m('link'))
  fs.chmodSync(m('dir/medium'), 0o4711)
  fs.chmodSync(m('dir/sub'), 0o1700)
  fs.chownSync(m('small'), 321, 654)
  // Linked after the chown: the kernel caches each name's attributes on its own for up to a second.
  fs.linkSync(m('small'), m('dir/hardlink'))
  fs.utimesSync(m('dir/medium'), new Date('2001-01-01T01:01:01.111Z'), new Date('2002-02-02T02:02:02.222Z'))
  await py(`import os, sys
os.setxattr(sys.argv[1], 'user.note', b'kept')
os.setxattr(sys.argv[2], 'user.dir', b'\\x00\\xffbinary')
print('null')`, m('small'), m('dir'))
  // The tree in the second half of the test is changed after one sync, so both packed and unpacked data
  // cross the unmount.
  await sync(s.home)
  fs.writeFileSync(m('after-sync'), 'only in the write-back store')
  pwrite(m('dir/sub/large'), Buffer.from('patched'), 1000)
  files['dir/sub/large'].write('patched', 1000)

  const names = ['empty', 'small', 'dir', 'dir/medium', 'dir/sub', 'dir/sub/large', 'sparse', 'link', 'dir/hardlink', 'after-sync']
  const attrs = (): Record<string, unknown> => Object.fromEntries(names.map(n => {
    const st = fs.lstatSync(m(n))
    return [n, { ino: st.ino, mode: st.mode, uid: st.uid, gid: st.gid, nlink: st.nlink, size: st.size, mtimeMs: st.mtimeMs, atimeMs: st.atimeMs }]
  }))
  const xattrs = `import os, sys, json
print(json.dumps([[n, os.getxattr(p, n).hex()] for p in sys.argv[1:] for n in sorted(os.listxattr(p))]))`
  const before = attrs()
  const xBefore = await py(xattrs, m('small'), m('dir'))
  await unmount(s.mnt)
  t.absent(isMounted(s.mnt))
  await mount(s)
  t.alike(attrs(), before, 'inode numbers, modes, owners, link counts, sizes and times are the same')
  for (const [name, data] of Object.entries(files)) t.ok(fs.readFileSync(m(name)).equals(data), `${name}: same bytes`)
  t.is(fs.readFileSync(m('after-sync'), 'utf8'), 'only in the write-back store')
  t.is(pread(m('sparse'), 3, 50 * 1024 * 1024).toString(), 'far')
  t.ok(zeros(pread(m('sparse'), 65536, 1024 * 1024)), 'the hole is still a hole')
  t.is(fs.readlinkSync(m('link')), 'dir/medium')
  t.alike(await py(xattrs, m('small'), m('dir')), xBefore, 'extended attributes')
  t.alike(xBefore, [['user.note', Buffer.from('kept').toString('hex')], ['user.dir', '00ff62696e617279']])
})

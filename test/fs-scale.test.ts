// Limits of the mount as a user meets them: files past 4 GiB (sparse), names of 255 and 256 bytes, trees
// 100 levels deep, and 100,000 entries in one directory, all driven from other processes.
// Run: node --import tsx test/fs-scale.test.ts
import test from 'brittle'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, sync, sh, run, type Setup, mounted, errCode, pread, pwrite } from './helpers.js'


// Generous stall guards for the long tests; no test depends on speed.
const LONG = { timeout: 15 * 60_000 }





const GiB = 1024 * 1024 * 1024

test('a sparse file past 5 GiB keeps its bytes and its exact size, also packed and after a remount', LONG, async t => {
  const s = await mounted(t)
  const file = path.join(s.mnt, 'huge')
  const far = 5 * GiB + 12345
  pwrite(file, Buffer.from('start'), 0)
  pwrite(file, Buffer.from('past five GiB'), far)
  pwrite(file, Buffer.from('at 4 GiB'), 4 * GiB - 4) // straddles the 32-bit boundary
  let st = fs.statSync(file)
  t.is(st.size, far + 13, 'size is exact')
  t.ok(st.blocks * 512 < 4 * 1024 * 1024, `only written blocks count (${st.blocks} blocks)`)
  t.is(pread(file, 13, far).toString(), 'past five GiB')
  t.is(pread(file, 8, 4 * GiB - 4).toString(), 'at 4 GiB', 'a write across the 4 GiB boundary')
  t.ok(pread(file, 65536, 3 * GiB).every(b => b === 0), 'the hole reads as zeros')
  t.is(pread(file, 100, far + 13).length, 0, 'nothing past the end')

  await sync(s.home)
  t.is(pread(file, 13, far).toString(), 'past five GiB', 'read back from the log')
  const df = fs.statfsSync(s.mnt)
  t.ok(df.bfree * df.bsize > 200 * 1024 * 1024, 'the holes take no space on the logical disk')

  fs.truncateSync(file, 4 * GiB + 2)
  t.is(fs.statSync(file).size, 4 * GiB + 2)
  t.is(pread(file, 10, 4 * GiB - 4).toString(), 'at 4 G', 'truncate past 4 GiB keeps the bytes before it')
  fs.truncateSync(file, 6 * GiB)
  t.ok(pread(file, 13, far).every(b => b === 0), 'the cut bytes are gone after growing again')

  await unmount(s.mnt)
  await mount(s)
  st = fs.statSync(file)
  t.is(st.size, 6 * GiB, 'size survives a remount')
  t.is(pread(file, 5, 0).toString(), 'start')
  t.is(pread(file, 6, 4 * GiB - 4).toString(), 'at 4 G')
  const r = await sh(`dd if='${file}' bs=1 skip=${4 * GiB - 4} count=6 status=none`)
  t.is(r.stdout, 'at 4 G', 'dd reads at a 64-bit offset')
})

test('names of 255 bytes work; 256 bytes give ENAMETOOLONG, for ASCII and multibyte names', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const ascii255 = 'a'.repeat(255)
  const utf255 = 'é'.repeat(127) + 'x' // 2 * 127 + 1 bytes
  const utf256 = 'é'.repeat(128)
  const cjk255 = '水'.repeat(85) // 3 bytes each
  t.is(Buffer.byteLength(utf255), 255)
  t.is(Buffer.byteLength(cjk255), 255)
  for (const name of [ascii255, utf255, cjk255]) {
    fs.writeFileSync(m(name), name)
    t.is(fs.readFileSync(m(name), 'utf8'), name, `a ${Buffer.byteLength(name)}-byte name of ${name.length} characters`)
  }
  fs.mkdirSync(m('d'.repeat(255)))
  fs.writeFileSync(m('d'.repeat(255) + '/' + 'f'.repeat(255)), 'nested')
  fs.symlinkSync(ascii255, m('l'.repeat(255)))
  t.is(fs.readFileSync(m('l'.repeat(255)), 'utf8'), ascii255, 'a symlink with a 255-byte name')
  fs.renameSync(m(ascii255), m('r'.repeat(255)))
  t.alike(fs.readdirSync(s.mnt).sort(), [cjk255, 'd'.repeat(255), 'l'.repeat(255), 'r'.repeat(255), utf255].sort(), 'readdir lists the long names whole')

  const ascii256 = 'b'.repeat(256)
  for (const name of [ascii256, utf256]) {
    t.is(errCode(() => fs.writeFileSync(m(name), '')), 'ENAMETOOLONG', `create, ${Buffer.byteLength(name)} bytes`)
    t.is(errCode(() => fs.mkdirSync(m(name))), 'ENAMETOOLONG', 'mkdir')
    t.is(errCode(() => fs.symlinkSync('x', m(name))), 'ENAMETOOLONG', 'symlink')
    t.is(errCode(() => fs.linkSync(m(cjk255), m(name))), 'ENAMETOOLONG', 'link')
    t.is(errCode(() => fs.renameSync(m(cjk255), m(name))), 'ENAMETOOLONG', 'rename')
    t.is(errCode(() => fs.statSync(m(name))), 'ENAMETOOLONG', 'lookup')
  }
  t.is(fs.readdirSync(s.mnt).length, 5, 'nothing was made by the refused calls')
})

test('a tree 100 levels deep can be made, walked, moved and removed', LONG, async t => {
  const s = await mounted(t)
  const levels = Array.from({ length: 100 }, (_, i) => `level${String(i).padStart(3, '0')}`)
  const deep = path.join(s.mnt, ...levels)
  fs.mkdirSync(deep, { recursive: true })
  fs.writeFileSync(path.join(deep, 'leaf.txt'), 'at the bottom')
  t.is(fs.readFileSync(path.join(deep, 'leaf.txt'), 'utf8'), 'at the bottom')
  const found = await run('find', [s.mnt, '-name', 'leaf.txt'])
  t.is(found.stdout.trim(), path.join(deep, 'leaf.txt'), 'find walks all the way down')
  const dirs = await run('find', [s.mnt, '-mindepth', '1', '-type', 'd'])
  t.is(dirs.stdout.trim().split('\n').length, 100, '100 directories')
  t.is(fs.statSync(path.join(s.mnt, levels[0])).nlink, 3, 'each level has one subdirectory link')

  // A path of more than 4096 bytes cannot be given in one call, but a tree can be that deep: walk it by
  // relative steps from inside.
  const r = await sh(`cd '${deep}' && for i in $(seq 1 30); do mkdir "very-long-directory-name-number-$i-${'x'.repeat(100)}" && cd "very-long-directory-name-number-$i-${'x'.repeat(100)}" || exit 1; done && echo bottom > f && cat f && pwd | wc -c`)
  t.is(r.code, 0, r.stderr || 'exits 0')
  t.is(r.stdout.split('\n')[0], 'bottom', 'a file under a path longer than PATH_MAX')
  t.ok(Number(r.stdout.split('\n')[1]) > 4096, `the path is ${r.stdout.split('\n')[1].trim()} bytes long`)

  fs.renameSync(path.join(s.mnt, levels[0]), path.join(s.mnt, 'moved'))
  t.is(fs.readFileSync(path.join(s.mnt, 'moved', ...levels.slice(1), 'leaf.txt'), 'utf8'), 'at the bottom', 'the whole tree moved')
  const rm = await sh(`rm -rf '${path.join(s.mnt, 'moved')}'`)
  t.is(rm.code, 0, rm.stderr || 'exits 0')
  t.alike(fs.readdirSync(s.mnt), [], 'rm -rf removes it all')
})

test('100,000 entries in one directory are all listed by readdir and each is reachable', LONG, async t => {
  const s = await mounted(t)
  const dir = path.join(s.mnt, 'many')
  fs.mkdirSync(dir)
  const total = 100_000
  const writers = 4
  const per = total / writers
  // mknod makes an empty file in one call (no open and close); four processes at once.
  const code = `import os, sys
d, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(start, start + n):
    os.mknod(os.path.join(d, 'entry-%06d' % i))
print(n)`
  const results = await Promise.all(Array.from({ length: writers }, (_, w) => run('python3', ['-c', code, dir, String(w * per), String(per)])))
  t.ok(results.every(r => r.code === 0), results.map(r => r.stderr).join('') || 'every creator exits 0')

  const names = fs.readdirSync(dir)
  t.is(names.length, total, 'readdir returns every entry once')
  const set = new Set(names)
  t.is(set.size, total, 'no duplicates')
  let missing = 0
  for (let i = 0; i < total; i++) if (!set.has('entry-' + String(i).padStart(6, '0'))) missing++
  t.is(missing, 0, 'every name is there')
  const ls = await sh(`ls -f '${dir}' | wc -l`)
  t.is(Number(ls.stdout.trim()), total + 2, 'ls -f sees them and . and ..')
  for (const i of [0, 1, 4_999, 50_000, 99_999]) {
    const st = fs.statSync(path.join(dir, 'entry-' + String(i).padStart(6, '0')))
    t.ok(st.isFile() && st.size === 0, `entry ${i} can be stat'ed`)
  }
  fs.writeFileSync(path.join(dir, 'entry-050000'), 'replaced')
  t.is(fs.readFileSync(path.join(dir, 'entry-050000'), 'utf8'), 'replaced', 'an entry can be written')
  fs.unlinkSync(path.join(dir, 'entry-000000'))
  fs.renameSync(path.join(dir, 'entry-000001'), path.join(dir, 'renamed'))
  t.is(fs.readdirSync(dir).length, total - 1, 'unlink and rename among them')
  t.is(errCode(() => fs.rmdirSync(dir)), 'ENOTEMPTY')
})

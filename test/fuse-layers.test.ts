// Both FUSE layers serve the same filesystem: the kernel session (the default) and fuse-native (chosen
// with COOPFS_FUSE_LAYER=fuse-native). The same work through each must give the same tree, and status
// must say which layer serves the mount.
// Run: node --import tsx test/fuse-layers.test.ts
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, status, run } from './helpers.js'

const DATA = crypto.randomBytes(300_000)

// Creates, writes, renames, links, unlinks an open file, truncates, changes modes and times; returns what
// the tree looks like afterwards.
function work (mnt: string): Record<string, unknown> {
  const m = (p: string): string => path.join(mnt, p)
  fs.mkdirSync(m('d'))
  fs.mkdirSync(m('d/sub'))
  fs.writeFileSync(m('d/a'), DATA)
  fs.appendFileSync(m('d/a'), 'tail')
  fs.renameSync(m('d/a'), m('d/b'))
  fs.linkSync(m('d/b'), m('d/c'))
  fs.symlinkSync('b', m('d/s'))
  const open = fs.openSync(m('d/gone'), 'w+')
  fs.writeSync(open, 'still here')
  fs.unlinkSync(m('d/gone'))
  const viaFd = Buffer.alloc(10)
  fs.readSync(open, viaFd, 0, 10, 0)
  fs.closeSync(open)
  fs.writeFileSync(m('d/t'), 'x'.repeat(5000))
  fs.truncateSync(m('d/t'), 1234)
  fs.chmodSync(m('d/t'), 0o640)
  fs.utimesSync(m('d/t'), new Date('2001-02-03T04:05:06Z'), new Date('2002-03-04T05:06:07Z'))
  fs.writeFileSync(m('d/c'), 'through the other name')
  return look(mnt, viaFd.toString())
}

function look (mnt: string, viaFd = ''): Record<string, unknown> {
  const m = (p: string): string => path.join(mnt, p)
  const b = fs.statSync(m('d/b'))
  const t = fs.statSync(m('d/t'))
  return {
    names: fs.readdirSync(m('d')).sort(),
    b: fs.readFileSync(m('d/b'), 'utf8'),
    bLinks: b.nlink,
    sameInode: b.ino === fs.statSync(m('d/c')).ino,
    link: fs.readlinkSync(m('d/s')),
    dirLinks: fs.statSync(m('d')).nlink,
    t: [t.size, t.mode & 0o7777, t.atime.toISOString(), t.mtime.toISOString()],
    viaFd
  }
}

const want = {
  names: ['b', 'c', 's', 'sub', 't'],
  b: 'through the other name',
  bLinks: 2,
  sameInode: true,
  link: 'b',
  dirLinks: 3,
  t: [1234, 0o640, '2001-02-03T04:05:06.000Z', '2002-03-04T05:06:07.000Z']
}

for (const layer of ['kernel', 'fuse-native']) {
  test(`the ${layer} layer: the same tree, before and after a remount`, async t => {
    const s = await init(t, { slots: 512 })
    const env = { ...process.env, COOPFS_FUSE_LAYER: layer }
    await mount(s, [], env)
    t.is((await status(s.home)).fuse?.layer, layer, 'status names the layer')
    t.alike(work(s.mnt), { ...want, viaFd: 'still here' }, 'the work gives the tree expected')
    await unmount(s.mnt)
    await mount(s, [], env)
    t.alike(look(s.mnt), { ...want, viaFd: '' }, 'and it is there after mounting again')
    await unmount(s.mnt)
  })
}

test('without COOPFS_FUSE_LAYER the kernel session serves the mount', async t => {
  const s = await init(t, { slots: 512 })
  const env = { ...process.env }
  delete env.COOPFS_FUSE_LAYER
  await mount(s, [], env)
  t.is((await status(s.home)).fuse?.layer, 'kernel')
  await unmount(s.mnt)
})

// POSIX: rewinddir makes later reads see the directory as it is now; a listing loop that removes what it
// reads must come to an end.
test('rewinddir reads the directory anew, on both layers', async t => {
  for (const layer of ['kernel', 'fuse-native']) {
    const s = await init(t, { slots: 512 })
    await mount(s, [], { ...process.env, COOPFS_FUSE_LAYER: layer })
    const d = path.join(s.mnt, 'd')
    fs.mkdirSync(d)
    for (let i = 0; i < 5; i++) fs.writeFileSync(path.join(d, `old${i}`), 'x')
    const script = `opendir(my $d, $ARGV[0]) or die; my @first = grep { !/^\\./ } readdir($d);
      unlink("$ARGV[0]/$_") for @first; open(my $f, '>', "$ARGV[0]/new") or die; close $f;
      rewinddir($d); my @second = grep { !/^\\./ } readdir($d); print join(',', sort @first), ' | ', join(',', sort @second)`
    const r = await run('perl', ['-e', script, d])
    t.is(r.stdout, 'old0,old1,old2,old3,old4 | new', `${layer}: after rewinddir only the new name (${r.stderr.trim()})`)
    await unmount(s.mnt)
  }
})

// Times the kernel's fields hold but a millisecond count cannot (2^47 s and beyond): the daemon answers
// with the nearest it can, and goes on serving.
test('a time far in the future is kept as near as it can be, and the mount goes on', async t => {
  const s = await init(t, { slots: 512 })
  await mount(s)
  const f = path.join(s.mnt, 'f')
  fs.writeFileSync(f, 'x')
  const r = await run('python3', ['-c', `import os, sys
os.utime(sys.argv[1], ns=(140737488355330_999000000, 2**62 * 10**9))
st = os.stat(sys.argv[1])
print(st.st_atime_ns // 10**9, st.st_mtime_ns // 10**9 > 2**61)`, f])
  t.is(r.code, 0, r.stderr)
  const [atime, farMtime] = r.stdout.trim().split(' ')
  t.ok(Math.abs(Number(atime) - 140737488355330) <= 1, `2^47 s + 2.999 reads back as ${atime} s`)
  t.is(farMtime, 'True', '2^62 s reads back beyond 2^61 s')
  t.is(fs.readFileSync(f, 'utf8'), 'x', 'and the mount still serves')
  fs.writeFileSync(path.join(s.mnt, 'g'), 'y')
  t.is(fs.readFileSync(path.join(s.mnt, 'g'), 'utf8'), 'y')
  await unmount(s.mnt)
})

// Both FUSE layers serve the same filesystem: the kernel session (the default) and fuse-native (chosen
// with COOPFS_FUSE_LAYER=fuse-native). The same work through each must give the same tree, and status
// must say which layer serves the mount.
// Run: node --import tsx test/fuse-layers.test.ts
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, status } from './helpers.js'

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

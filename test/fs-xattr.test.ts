// Extended attributes on the mount, driven from another process with python3's os.*xattr calls (Node has no
// xattr API) and raw getxattr/listxattr through ctypes for size queries: values are really stored, flags
// and error numbers are Linux's, copies with cp -a and rsync -aX keep them, and they outlive a remount.
// Run: node --import tsx test/fs-xattr.test.ts
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, sync, sh, run, type Setup, mounted } from './helpers.js'



// Runs a list of xattr operations (JSON on stdin) in one python3 process. Each result is ['ok', value] or [errno name].
// Values travel as hex. Operations: set/lset PATH NAME HEX [FLAGS], get/lget PATH NAME, list/llist PATH,
// remove PATH NAME, size PATH NAME (getxattr with size 0), getn PATH NAME N (buffer of N bytes),
// listsize PATH, listn PATH N.
const DRIVER = `
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.getxattr.restype = ctypes.c_ssize_t
libc.listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
libc.listxattr.restype = ctypes.c_ssize_t
def check(r):
  if r < 0:
    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))
  return r
def buf(n):
  return ctypes.create_string_buffer(n) if n else None
def op(o):
  k, p = o[0], o[1]
  if k == 'set': return os.setxattr(p, o[2], bytes.fromhex(o[3]), o[4] if len(o) > 4 else 0)
  if k == 'lset': return os.setxattr(p, o[2], bytes.fromhex(o[3]), o[4] if len(o) > 4 else 0, follow_symlinks=False)
  if k == 'get': return os.getxattr(p, o[2]).hex()
  if k == 'lget': return os.getxattr(p, o[2], follow_symlinks=False).hex()
  if k == 'list': return sorted(os.listxattr(p))
  if k == 'llist': return sorted(os.listxattr(p, follow_symlinks=False))
  if k == 'remove': return os.removexattr(p, o[2])
  if k == 'size': return check(libc.getxattr(p.encode(), o[2].encode(), None, 0))
  if k == 'getn': return check(libc.getxattr(p.encode(), o[2].encode(), buf(o[3]), o[3]))
  if k == 'listsize': return check(libc.listxattr(p.encode(), None, 0))
  if k == 'listn': return check(libc.listxattr(p.encode(), buf(o[2]), o[2]))
  raise ValueError(k)
out = []
for o in json.load(sys.stdin):
  try:
    out.append(['ok', op(o)])
  except OSError as e:
    # errno 95 has two names; Linux documents xattr calls with EOPNOTSUPP.
    out.append(['EOPNOTSUPP' if e.errno == errno.EOPNOTSUPP else errno.errorcode.get(e.errno, str(e.errno))])
print(json.dumps(out))
`

type Op = Array<string | number>

async function xattr (ops: Op[]): Promise<unknown[][]> {
  const r = await run('python3', ['-c', DRIVER], { input: JSON.stringify(ops) })
  if (r.code !== 0) throw new Error(`python3 failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as unknown[][]
}

async function one (...op: Op): Promise<unknown[]> {
  return (await xattr([op]))[0]
}

const hex = (s: string | Buffer): string => Buffer.from(s).toString('hex')
const XATTR_CREATE = 1
const XATTR_REPLACE = 2

test('extended attributes are stored: set, get, list and remove, on files and directories', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  const d = path.join(s.mnt, 'd')
  fs.writeFileSync(f, 'x')
  fs.mkdirSync(d)
  const binary = Buffer.from([0, 1, 2, 255, 0, 10, 13])
  const res = await xattr([
    ['set', f, 'user.text', hex('hello')],
    ['set', f, 'user.binary', hex(binary)],
    ['set', f, 'user.empty', ''],
    ['set', d, 'user.onDir', hex('dir value')],
    ['list', f],
    ['get', f, 'user.text'],
    ['get', f, 'user.binary'],
    ['get', f, 'user.empty'],
    ['get', d, 'user.onDir'],
    ['list', d],
    ['set', f, 'user.text', hex('a much longer value than before')],
    ['get', f, 'user.text'],
    ['set', f, 'user.text', hex('s')],
    ['get', f, 'user.text'],
    ['remove', f, 'user.binary'],
    ['list', f],
    ['get', f, 'user.binary']
  ])
  t.alike(res.slice(0, 4), [['ok', null], ['ok', null], ['ok', null], ['ok', null]], 'set')
  t.alike(res[4], ['ok', ['user.binary', 'user.empty', 'user.text']], 'list')
  t.alike(res[5], ['ok', hex('hello')])
  t.alike(res[6], ['ok', hex(binary)], 'binary values with NUL bytes')
  t.alike(res[7], ['ok', ''], 'an empty value')
  t.alike(res[8], ['ok', hex('dir value')], 'on a directory')
  t.alike(res[9], ['ok', ['user.onDir']])
  t.alike(res[11], ['ok', hex('a much longer value than before')], 'replaced by a longer value')
  t.alike(res[13], ['ok', hex('s')], 'replaced by a shorter value')
  t.alike(res[15], ['ok', ['user.empty', 'user.text']], 'removed from the list')
  t.alike(res[16], ['ENODATA'], 'removed for good')

  const names = Array.from({ length: 100 }, (_, i) => `user.n${String(i).padStart(3, '0')}`)
  await xattr(names.map(n => ['set', f, n, hex(n)]))
  const [list] = await xattr([['list', f]])
  t.alike(list, ['ok', ['user.empty', ...names, 'user.text']], '100 more names')
  const back = await xattr(names.map(n => ['get', f, n]))
  t.ok(back.every((r, i) => r[1] === hex(names[i])), 'each with its own value')
})

test('XATTR_CREATE on an existing name is EEXIST; XATTR_REPLACE, get and remove of a missing name are ENODATA', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  fs.writeFileSync(f, 'x')
  const res = await xattr([
    ['set', f, 'user.a', hex('1'), XATTR_CREATE],
    ['set', f, 'user.a', hex('2'), XATTR_CREATE],
    ['get', f, 'user.a'],
    ['set', f, 'user.b', hex('3'), XATTR_REPLACE],
    ['list', f],
    ['set', f, 'user.a', hex('4'), XATTR_REPLACE],
    ['get', f, 'user.a'],
    ['get', f, 'user.missing'],
    ['remove', f, 'user.missing'],
    ['get', path.join(s.mnt, 'nofile'), 'user.a'],
    ['set', path.join(s.mnt, 'nofile'), 'user.a', '']
  ])
  t.alike(res[0], ['ok', null], 'XATTR_CREATE of a new name')
  t.alike(res[1], ['EEXIST'], 'XATTR_CREATE of an existing name')
  t.alike(res[2], ['ok', hex('1')], 'the value stayed')
  t.alike(res[3], ['ENODATA'], 'XATTR_REPLACE of a missing name')
  t.alike(res[4], ['ok', ['user.a']], 'and nothing was created')
  t.alike(res[5], ['ok', null], 'XATTR_REPLACE of an existing name')
  t.alike(res[6], ['ok', hex('4')])
  t.alike(res[7], ['ENODATA'], 'get of a missing name')
  t.alike(res[8], ['ENODATA'], 'remove of a missing name')
  t.alike(res[9], ['ENOENT'], 'get on a missing file')
  t.alike(res[10], ['ENOENT'], 'set on a missing file')
})

test('size queries: size 0 returns the length, a buffer too small gets ERANGE, for values and for the name list', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  const empty = path.join(s.mnt, 'empty')
  fs.writeFileSync(f, 'x')
  fs.writeFileSync(empty, 'x')
  const res = await xattr([
    ['set', f, 'user.k', hex('value123')],
    ['set', f, 'user.long', hex(Buffer.alloc(5000, 7))],
    ['size', f, 'user.k'],
    ['getn', f, 'user.k', 3],
    ['getn', f, 'user.k', 8],
    ['getn', f, 'user.k', 100],
    ['size', f, 'user.long'],
    ['getn', f, 'user.long', 4999],
    ['listsize', f],
    ['listn', f, 4],
    ['listn', f, 17],
    ['listsize', empty],
    ['size', f, 'user.none']
  ])
  t.alike(res[2], ['ok', 8], 'size 0 gives the value length')
  t.alike(res[3], ['ERANGE'], 'a 3-byte buffer for 8 bytes')
  t.alike(res[4], ['ok', 8], 'an exact buffer')
  t.alike(res[5], ['ok', 8], 'a larger buffer')
  t.alike(res[6], ['ok', 5000])
  t.alike(res[7], ['ERANGE'], 'one byte short')
  t.alike(res[8], ['ok', 'user.k\0user.long\0'.length], 'size 0 gives the list length, terminators included')
  t.alike(res[9], ['ERANGE'])
  t.alike(res[10], ['ok', 17], 'an exact list buffer')
  t.alike(res[11], ['ok', 0], 'no names: length 0')
  t.alike(res[12], ['ENODATA'])
})

test('limits: values up to 64 KiB are kept, longer ones are E2BIG; names over 255 bytes are ERANGE', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  fs.writeFileSync(f, 'x')
  const big = crypto.randomBytes(65536)
  const res = await xattr([
    ['set', f, 'user.big', big.toString('hex')],
    ['get', f, 'user.big'],
    ['set', f, 'user.bigger', Buffer.alloc(65537).toString('hex')],
    ['set', f, 'user.' + 'n'.repeat(250), hex('ok')],
    ['set', f, 'user.' + 'n'.repeat(251), hex('too long')],
    ['list', f]
  ])
  t.alike(res[0], ['ok', null], 'a 64 KiB value')
  t.ok(res[1][1] === big.toString('hex'), 'read back whole')
  t.alike(res[2], ['E2BIG'], 'one byte more')
  t.alike(res[3], ['ok', null], 'a 255-byte name')
  t.alike(res[4], ['ERANGE'], 'a 256-byte name')
  t.alike(res[5], ['ok', ['user.big', 'user.' + 'n'.repeat(250)]])
})

test('POSIX ACL attributes are refused with EOPNOTSUPP, so cp -a sets modes with chmod', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  fs.writeFileSync(f, 'x')
  // A minimal access ACL: user::rw-, group::r--, other::---.
  const acl = '02000000' + '01000600ffffffff' + '04000400ffffffff' + '20000000ffffffff'
  const res = await xattr([
    ['set', f, 'system.posix_acl_access', acl],
    ['get', f, 'system.posix_acl_access'],
    ['list', f]
  ])
  t.alike(res[0], ['EOPNOTSUPP'], 'no ACL support is claimed')
  t.alike(res[1], ['EOPNOTSUPP'])
  t.alike(res[2], ['ok', []])
  t.is(fs.statSync(f).mode & 0o777, 0o644, 'the mode is untouched')

  const src = path.join(s.dir, 'src')
  fs.mkdirSync(src)
  for (const [name, mode] of [['a', 0o640], ['b', 0o600], ['c', 0o755], ['d', 0o604]] as const) {
    fs.writeFileSync(path.join(src, name), name)
    fs.chmodSync(path.join(src, name), mode)
  }
  fs.chmodSync(src, 0o710)
  const r = await sh(`cp -a '${src}' '${s.mnt}/copy'`)
  t.is(r.code, 0, r.stderr || 'exits 0')
  for (const name of ['a', 'b', 'c', 'd']) {
    t.is(fs.statSync(path.join(s.mnt, 'copy', name)).mode & 0o7777, fs.statSync(path.join(src, name)).mode & 0o7777, `cp -a keeps the mode of ${name}`)
  }
  t.is(fs.statSync(path.join(s.mnt, 'copy')).mode & 0o7777, 0o710, 'and of the directory')
})

test('extended attributes belong to the inode: shared by hard links, kept through rename, gone with the file', async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  fs.writeFileSync(m('a'), 'x')
  await one('set', m('a'), 'user.tag', hex('mine'))
  fs.linkSync(m('a'), m('b'))
  t.alike(await one('get', m('b'), 'user.tag'), ['ok', hex('mine')], 'seen through a hard link')
  await one('set', m('b'), 'user.second', hex('2'))
  t.alike(await one('list', m('a')), ['ok', ['user.second', 'user.tag']], 'set through one link, seen through the other')
  fs.renameSync(m('a'), m('renamed'))
  t.alike(await one('get', m('renamed'), 'user.tag'), ['ok', hex('mine')], 'kept through rename')
  fs.unlinkSync(m('renamed'))
  fs.unlinkSync(m('b'))
  fs.writeFileSync(m('a'), 'new file, same name')
  t.alike(await one('list', m('a')), ['ok', []], 'a new file under the old name has none')
  fs.mkdirSync(m('d'))
  await one('set', m('d'), 'user.x', hex('1'))
  fs.renameSync(m('d'), m('e'))
  t.alike(await one('get', m('e'), 'user.x'), ['ok', hex('1')], 'a directory keeps them through rename')
})

test('trusted.* and security.* attributes are stored; a symlink has its own, and user.* on a symlink is EPERM', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  const l = path.join(s.mnt, 'l')
  fs.writeFileSync(f, 'x')
  fs.symlinkSync('f', l)
  const res = await xattr([
    ['set', f, 'trusted.t', hex('T')],
    ['set', f, 'security.s', hex('S')],
    ['get', f, 'trusted.t'],
    ['get', f, 'security.s'],
    ['list', f],
    ['lset', l, 'trusted.link', hex('L')],
    ['llist', l],
    ['lget', l, 'trusted.link'],
    ['list', l],
    ['lset', l, 'user.x', hex('no')]
  ])
  t.alike(res.slice(0, 2), [['ok', null], ['ok', null]])
  t.alike(res[2], ['ok', hex('T')])
  t.alike(res[3], ['ok', hex('S')])
  t.alike(res[4], ['ok', ['security.s', 'trusted.t']])
  t.alike(res[5], ['ok', null], 'trusted.* on the link itself')
  t.alike(res[6], ['ok', ['trusted.link']])
  t.alike(res[7], ['ok', hex('L')])
  t.alike(res[8], ['ok', ['security.s', 'trusted.t']], 'following the link shows the target\'s')
  t.alike(res[9], ['EPERM'], 'user.* on a symlink, as Linux says')
})

test('cp -a keeps extended attributes', async t => {
  const s = await mounted(t)
  const src = path.join(s.dir, 'src')
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true })
  fs.writeFileSync(path.join(src, 'f'), 'file')
  fs.writeFileSync(path.join(src, 'sub/g'), crypto.randomBytes(100_000))
  const value = crypto.randomBytes(3000)
  await xattr([
    ['set', path.join(src, 'f'), 'user.color', hex('blue')],
    ['set', path.join(src, 'f'), 'user.blob', value.toString('hex')],
    ['set', path.join(src, 'sub'), 'user.dir', hex('yes')],
    ['set', path.join(src, 'sub/g'), 'trusted.t', hex('t')]
  ])
  const r = await sh(`cp -a '${src}' '${s.mnt}/copy'`)
  t.is(r.code, 0, r.stderr || 'exits 0')
  const dst = path.join(s.mnt, 'copy')
  const res = await xattr([
    ['list', path.join(dst, 'f')],
    ['get', path.join(dst, 'f'), 'user.color'],
    ['get', path.join(dst, 'f'), 'user.blob'],
    ['get', path.join(dst, 'sub'), 'user.dir'],
    ['get', path.join(dst, 'sub/g'), 'trusted.t']
  ])
  t.alike(res[0], ['ok', ['user.blob', 'user.color']])
  t.alike(res[1], ['ok', hex('blue')])
  t.ok(res[2][1] === value.toString('hex'), 'a 3000-byte value')
  t.alike(res[3], ['ok', hex('yes')], 'on a directory')
  t.alike(res[4], ['ok', hex('t')], 'trusted.*')
  t.ok(fs.readFileSync(path.join(dst, 'sub/g')).equals(fs.readFileSync(path.join(src, 'sub/g'))))
})

const rsync = fs.existsSync('/usr/bin/rsync') || fs.existsSync('/bin/rsync')
test('rsync -aX keeps extended attributes, modes and mtimes (skipped where rsync is not installed)', { skip: !rsync }, async t => {
  const s = await mounted(t)
  const src = path.join(s.dir, 'src')
  fs.mkdirSync(path.join(src, 'sub'), { recursive: true })
  fs.writeFileSync(path.join(src, 'f'), 'file')
  fs.chmodSync(path.join(src, 'f'), 0o640)
  await xattr([
    ['set', path.join(src, 'f'), 'user.color', hex('green')],
    ['set', path.join(src, 'sub'), 'user.dir', hex('yes')]
  ])
  const mtime = new Date('2005-05-05T05:05:05Z')
  fs.utimesSync(path.join(src, 'f'), mtime, mtime)
  const r = await sh(`rsync -aX '${src}/' '${s.mnt}/copy/'`)
  t.is(r.code, 0, r.stderr || 'exits 0')
  const dst = path.join(s.mnt, 'copy')
  t.alike(await one('get', path.join(dst, 'f'), 'user.color'), ['ok', hex('green')])
  t.alike(await one('get', path.join(dst, 'sub'), 'user.dir'), ['ok', hex('yes')])
  t.is(fs.statSync(path.join(dst, 'f')).mode & 0o777, 0o640)
  t.is(fs.statSync(path.join(dst, 'f')).mtimeMs, mtime.getTime(), 'mtime kept')
  const again = await sh(`rsync -aXi '${src}/' '${s.mnt}/copy/'`)
  t.is(again.stdout.trim(), '', 'a second rsync finds nothing to do')
})

test('extended attributes survive sync, unmount and mount', async t => {
  const s = await mounted(t)
  const f = path.join(s.mnt, 'f')
  const d = path.join(s.mnt, 'd')
  fs.writeFileSync(f, 'x')
  fs.mkdirSync(d)
  const big = crypto.randomBytes(65536)
  await xattr([
    ['set', f, 'user.a', hex('A')],
    ['set', f, 'user.big', big.toString('hex')],
    ['set', d, 'trusted.d', hex('D')]
  ])
  await sync(s.home)
  await one('set', f, 'user.late', hex('after the sync'))
  await one('remove', f, 'user.a')
  await unmount(s.mnt)
  await mount(s)
  const res = await xattr([['list', f], ['get', f, 'user.big'], ['get', f, 'user.late'], ['get', d, 'trusted.d']])
  t.alike(res[0], ['ok', ['user.big', 'user.late']], 'the names, removal included')
  t.ok(res[1][1] === big.toString('hex'), 'a 64 KiB value')
  t.alike(res[2], ['ok', hex('after the sync')])
  t.alike(res[3], ['ok', hex('D')])
})

// Linux removes security.capability when a file is written (file_remove_privs). Through fuse-native the
// kernel asks for it before every write and the preload addon answers while no file has one
// (native/preload.c); the kernel session takes the removal on itself (handle_killpriv_v2), so these check
// that it happens as soon as one is stored, and that a remount knows of stored ones.
test('a write removes security.capability, as on any Linux filesystem, also after a remount', { skip: process.getuid?.() !== 0 }, async t => {
  const s = await mounted(t)
  const a = path.join(s.mnt, 'a')
  const b = path.join(s.mnt, 'b')
  fs.writeFileSync(a, 'a')
  fs.writeFileSync(b, 'b')
  // A version 2 capability set (CAP_NET_BIND_SERVICE permitted): the kernel checks the value's form.
  const caps = Buffer.from('AQAAAgAEAAAAAAAAAAAAAAAAAAA=', 'base64').toString('hex')
  t.alike(await one('get', a, 'security.capability'), ['ENODATA'], 'no attribute on a file without one')
  t.alike(await one('set', b, 'security.capability', caps), ['ok', null])
  t.alike(await one('get', b, 'security.capability'), ['ok', caps])
  fs.appendFileSync(b, 'more')
  t.alike(await one('get', b, 'security.capability'), ['ENODATA'], 'the write removed it')
  t.alike(await one('set', b, 'security.capability', caps), ['ok', null])
  await unmount(s.mnt)
  await mount(s)
  t.alike(await one('get', b, 'security.capability'), ['ok', caps], 'kept through the remount')
  fs.appendFileSync(b, 'more')
  t.alike(await one('get', b, 'security.capability'), ['ENODATA'], 'the first write after the remount removed it')
  fs.appendFileSync(a, 'more')
  t.is(fs.readFileSync(b, 'utf8'), 'bmoremore')
  t.is(fs.readFileSync(a, 'utf8'), 'amore')
})

// With handle_killpriv_v2 (the kernel session) the filesystem, not the kernel, drops privileges on
// truncate and chown, as Linux does: capabilities on any truncate or chown, set-user-ID on a chown and on a
// truncate by a caller without CAP_FSETID, set-group-ID with them when the group may execute the file.
test('truncate and chown drop security.capability and set-user-ID, as on Linux', { skip: process.getuid?.() !== 0 }, async t => {
  const s = await mounted(t)
  const m = (p: string): string => path.join(s.mnt, p)
  const caps = Buffer.from('AQAAAgAEAAAAAAAAAAAAAAAAAAA=', 'base64').toString('hex')
  for (const f of ['t', 'c', 'u']) fs.writeFileSync(m(f), 'data')
  t.alike(await one('set', m('t'), 'security.capability', caps), ['ok', null])
  fs.truncateSync(m('t'), 2)
  t.alike(await one('get', m('t'), 'security.capability'), ['ENODATA'], 'a truncate removed the capabilities')
  t.alike(await one('set', m('c'), 'security.capability', caps), ['ok', null])
  fs.chmodSync(m('c'), 0o6755)
  fs.chownSync(m('c'), 1, 1)
  t.alike(await one('get', m('c'), 'security.capability'), ['ENODATA'], 'a chown removed the capabilities')
  t.is(fs.statSync(m('c')).mode & 0o7777, 0o755, 'and set-user-ID and set-group-ID')
  // Root truncating keeps the bits (CAP_FSETID); another user writing through a descriptor opened with
  // O_TRUNC does not.
  fs.chmodSync(m('u'), 0o6777)
  fs.truncateSync(m('u'), 1)
  t.is(fs.statSync(m('u')).mode & 0o7777, 0o6777, 'root truncating keeps set-user-ID')
  fs.chmodSync(s.mnt, 0o777)
  // From inside the mount: the test's own folders above it are closed to other users.
  const r = await sh(`cd '${s.mnt}' && setpriv --reuid=65534 --regid=65534 --clear-groups truncate -s 0 u`)
  t.is(r.code, 0, r.stderr)
  t.is(fs.statSync(m('u')).mode & 0o7777, 0o0777, 'another user truncating drops set-user-ID and set-group-ID')
  await unmount(s.mnt)
})

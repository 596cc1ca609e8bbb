// Recovery on a new machine: with the home gone, the recovery key and the partner areas bring back every
// file's bytes, mode, times, extended attributes and links.
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { cli, init, mount, sync, unmount, partnerDirs, sh, status, killDaemon, type Run, type Setup } from './helpers.js'
import { snapshot, writeTree, xattrOf } from './tree.js'

// Mounts at s.mnt with --recover into the new home newHome, the key given through the environment.
function recoverWithKey (s: Setup, newHome: string, partners: string[], key: string): Promise<Run> {
  return cli(['mount', s.mnt, '--recover', '--home', path.join(s.dir, newHome), '--local-partners', partners.join(',')], { COOPFS_RECOVERY_KEY: key })
}

test('a new home recovers the whole tree from the recovery key and the partners alone', async t => {
  const s = await init(t, { partnersOutside: true })
  await mount(s)
  await writeTree(s.mnt)
  const before = snapshot(s.mnt)
  await sync(s.home)
  await unmount(s.mnt)
  const partners = partnerDirs(s.home)
  fs.rmSync(s.home, { recursive: true })

  const keyFile = path.join(s.dir, 'recovery.key')
  fs.writeFileSync(keyFile, s.recoveryKey + '\n')
  const home2 = path.join(s.dir, 'home2')
  const r = await cli(['mount', s.mnt, '--recover', '--home', home2, '--local-partners', partners.join(','), '--recovery-key-file', keyFile])
  t.is(r.code, 0, r.stderr)
  const after = snapshot(s.mnt)
  t.alike([...after.keys()], [...before.keys()], 'same names')
  for (const [rel, e] of before) {
    const a = after.get(rel)!
    t.alike({ ...a, ino: 0 }, { ...e, ino: 0 }, `${rel}: same type, mode, size, time, links and bytes`)
  }
  t.is(after.get('hardlink')!.ino, after.get('docs/small.txt')!.ino, 'hard link still shares the inode')
  t.is(await xattrOf(path.join(s.mnt, 'docs/small.txt')), 'blue', 'extended attribute restored')
  await unmount(s.mnt)
})

test('the recovery key can come from the environment', async t => {
  const s = await init(t, { partnersOutside: true })
  await mount(s)
  fs.writeFileSync(path.join(s.mnt, 'f'), 'env key')
  await unmount(s.mnt)
  const partners = partnerDirs(s.home)
  fs.rmSync(s.home, { recursive: true })
  const r = await recoverWithKey(s, 'h2', partners, s.recoveryKey)
  t.is(r.code, 0, r.stderr)
  t.is(fs.readFileSync(path.join(s.mnt, 'f'), 'utf8'), 'env key')
  await unmount(s.mnt)
})

test('a wrong recovery key or one with a typo is one clear error, and nothing is mounted', async t => {
  const s = await init(t, { partnersOutside: true })
  await mount(s)
  fs.writeFileSync(path.join(s.mnt, 'f'), 'x')
  await unmount(s.mnt)
  const partners = partnerDirs(s.home)

  const other = await init(t)
  const wrong = await recoverWithKey(s, 'h2', partners, other.recoveryKey)
  t.is(wrong.code, 1)
  t.is(wrong.stderr.trim(), 'coopfs: this recovery key does not match the backup on these partners')
  t.absent(fs.existsSync(path.join(s.dir, 'h2', 'key.json')), 'no identity written')

  const last = s.recoveryKey.slice(-1)
  const typo = s.recoveryKey.slice(0, -1) + (last === 'A' ? 'B' : 'A')
  const bad = await recoverWithKey(s, 'h3', partners, typo)
  t.is(bad.code, 1)
  t.ok(/typo/.test(bad.stderr) && bad.stderr.trim().split('\n').length === 1, bad.stderr)
  t.is(fs.readdirSync(s.mnt).length, 0, 'nothing mounted')
})

test('data packed in the background is checkpointed without a sync and survives the loss of the machine', async t => {
  const s = await init(t, { partnersOutside: true })
  const r = await cli(['mount', s.mnt, '--home', s.home], { COOPFS_CHECKPOINT_INTERVAL_MS: '300' })
  t.is(r.code, 0, r.stderr)
  const data = crypto.randomBytes(2 * 1024 * 1024 + 3)
  fs.writeFileSync(path.join(s.mnt, 'background.bin'), data)
  // Bounded by count, not time: wait until the daemon reports everything stored and checkpointed.
  let settled = false
  for (let i = 0; i < 600 && !settled; i++) {
    const st = await status(s.home)
    settled = st.bytesPending === 0 && st.changedSinceCheckpoint === false && st.checkpoint > 0
    if (!settled) await new Promise(resolve => setTimeout(resolve, 100))
  }
  t.ok(settled, 'the daemon reports the data stored and checkpointed')
  await killDaemon(s)
  const partners = partnerDirs(s.home)
  fs.rmSync(s.home, { recursive: true })
  const rec = await recoverWithKey(s, 'h2', partners, s.recoveryKey)
  t.is(rec.code, 0, rec.stderr)
  t.ok(fs.readFileSync(path.join(s.mnt, 'background.bin')).equals(data), 'the file comes back whole')
  await unmount(s.mnt)
})

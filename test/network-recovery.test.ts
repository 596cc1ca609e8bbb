// End to end over a real network on loopback: a bootstrap node and six partner processes; the owner writes
// a tree, syncs, loses m partners and still reads everything, loses its whole machine and recovers the tree
// from the recovery key alone, then prefetches it and reads it with every partner gone. Partners hold no
// plaintext.
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { cli, sh, status, unmount } from './helpers.js'
import { snapshot, writeTree, xattrOf } from './tree.js'
import { addPartner, grepTree, initNode, killNode, partnerOf, serve, startNet, waitOnline } from './net-helpers.js'

const SLOTS = 256
const MARKER = 'plaintext-marker-7f3a9c'

test('six partners on loopback: sync, lose m partners, lose the machine, recover everything', { timeout: 300_000 }, async t => {
  const net = await startNet(t)
  const owner = await initNode(net, 'owner', ['--slots', String(SLOTS)])
  const partners = await Promise.all([0, 1, 2, 3, 4, 5].map(i => partnerOf(net, `p${i}`, owner, SLOTS)))
  for (const p of partners) await addPartner(owner, p, SLOTS)
  const mnt = path.join(net.dir, 'mnt')
  fs.mkdirSync(mnt)
  const m1 = await cli(['mount', mnt, '--home', owner.home])
  t.is(m1.code, 0, m1.stderr)
  await waitOnline(owner, 6)

  const st0 = await status(owner.home)
  t.is(st0.publicKey, owner.publicKey, 'status --json names the node\'s own key')
  const list = JSON.parse((await cli(['partners', 'list', '--home', owner.home, '--json'])).stdout) as Array<{ key: string, state: string, online: boolean, column: number }>
  t.is(list.length, 6)
  t.ok(list.every(r => r.state === 'active' && r.online), 'every agreement active and online')
  t.alike(list.map(r => r.column).sort(), [0, 1, 2, 3, 4, 5], 'each partner holds one stripe column')

  await writeTree(mnt)
  fs.writeFileSync(path.join(mnt, 'marker.txt'), (MARKER + '\n').repeat(1000))
  const big = crypto.randomBytes(6 * 1024 * 1024 + 5)
  fs.writeFileSync(path.join(mnt, 'big.bin'), big)
  const before = snapshot(mnt)

  const synced = await cli(['sync', '--home', owner.home, '--timeout', '60'])
  t.is(synced.code, 0, synced.stderr)
  const st1 = await status(owner.home)
  t.is(st1.bytesPending, 0)
  t.ok(st1.bytesDurable > big.length, 'the data counts as durable at the partners')
  t.is(st1.safeToPowerOff, true, 'safe to power off after sync')
  const text = await cli(['status', '--home', owner.home])
  t.ok(/safe to power off: yes/.test(text.stdout), 'status says so in words')

  for (const p of partners) t.alike(grepTree(p.home, Buffer.from(MARKER)), [], `partner ${path.basename(p.home)} holds no plaintext`)
  const used = JSON.parse((await cli(['partners', 'list', '--home', partners[0].home, '--json'])).stdout) as Array<{ usedSlots: number }>
  t.ok(used[0].usedSlots > 0, 'the partner reports the slots the owner filled')
  // The owner's count of its blocks at that partner agrees (the partner also keeps blocks of stripes no
  // longer live, so its count may be higher).
  const column = (st1.partners as Array<{ id: string, blocksHeld: number }>).find(c => c.id === partners[0].publicKey)
  t.ok(column !== undefined && column.blocksHeld > 0 && column.blocksHeld <= used[0].usedSlots,
    `the owner counts ${column?.blocksHeld} of its blocks at the partner, which fills ${used[0].usedSlots} slots`)

  // m partners die; with an empty cache every file still reads back, decoded from the others.
  killNode(partners[0])
  killNode(partners[1])
  await unmount(mnt)
  const dropCache = (): void => fs.rmSync(path.join(owner.home, 'cache'), { recursive: true, force: true })
  dropCache()
  t.is((await cli(['mount', mnt, '--home', owner.home])).code, 0)
  // The four partners left are reconnected first: this is about decoding, not about how fast dials are.
  await waitOnline(owner, 4)
  const degraded = snapshot(mnt)
  t.alike([...degraded.entries()].map(([k, v]) => [k, v.hash]), [...before.entries()].map(([k, v]) => [k, v.hash]), 'every file reads back with two partners down')

  // One more partner gone is more than the code tolerates: reads fail with EIO after a bounded wait and
  // the mount stays responsive; once the partners are back, the same read works.
  killNode(partners[2])
  await unmount(mnt)
  dropCache()
  t.is((await cli(['mount', mnt, '--home', owner.home])).code, 0)
  await waitOnline(owner, 3)
  const started = Date.now()
  const failed = await sh(`cat '${path.join(mnt, 'big.bin')}' > /dev/null`)
  t.not(failed.code, 0, 'reading with three partners down fails')
  t.ok(/Input\/output error/.test(failed.stderr), failed.stderr.trim())
  t.ok(Date.now() - started < 120_000, 'and does not hang')
  t.ok(fs.statSync(path.join(mnt, 'big.bin')).size === big.length, 'the mount still answers')
  for (const p of partners.slice(0, 3)) await serve(p)
  await waitOnline(owner, 6)
  const again = await sh(`sha256sum '${path.join(mnt, 'big.bin')}'`)
  t.is(again.stdout.split(' ')[0], crypto.createHash('sha256').update(big).digest('hex'), 'reads work again once partners return')

  // The machine is lost: home and mount point gone. A new home recovers from the recovery key alone.
  await unmount(mnt)
  fs.rmSync(owner.home, { recursive: true, force: true })
  fs.rmSync(mnt, { recursive: true, force: true })
  const mnt2 = path.join(net.dir, 'mnt2')
  fs.mkdirSync(mnt2)
  const keyFile = path.join(net.dir, 'recovery.key')
  fs.writeFileSync(keyFile, owner.recoveryKey + '\n')
  const newHome = path.join(net.dir, 'owner2')
  const rec = await cli(['mount', mnt2, '--recover', '--home', newHome, '--recovery-key-file', keyFile, ...net.flags])
  t.is(rec.code, 0, rec.stderr)
  const after = snapshot(mnt2)
  t.alike([...after.keys()], [...before.keys()], 'every path is back')
  for (const [p, e] of before) {
    const a = after.get(p)!
    t.alike({ type: a.type, mode: a.mode, size: a.size, mtimeMs: a.mtimeMs, nlink: a.nlink, hash: a.hash, target: a.target }, { type: e.type, mode: e.mode, size: e.size, mtimeMs: e.mtimeMs, nlink: e.nlink, hash: e.hash, target: e.target }, `${p} restored`)
  }
  t.is(after.get('hardlink')!.ino, after.get('docs/small.txt')!.ino, 'hard link restored as a link')
  t.is(await xattrOf(path.join(mnt2, 'docs/small.txt')), 'blue', 'extended attribute restored')
  const st2 = await status(newHome)
  t.is(st2.publicKey, owner.publicKey, 'the recovered node has the same identity')
  await waitOnline({ ...owner, home: newHome }, 6)
  t.is((await cli(['sync', '--home', newHome, '--timeout', '60'])).code, 0, 'the recovered node stores new checkpoints')

  // prefetch pulls the whole tree into the local cache: with every partner gone and memory caches empty
  // (a new daemon), every file still reads.
  const pre = await cli(['prefetch', mnt2])
  t.is(pre.code, 0, pre.stderr)
  t.ok(/prefetched \/: \d+ files/.test(pre.stdout), pre.stdout.trim())
  t.ok(/100%/.test(pre.stderr), 'progress reaches 100%')
  for (const p of partners) killNode(p)
  await unmount(mnt2)
  t.is((await cli(['mount', mnt2, '--home', newHome])).code, 0)
  const offline = snapshot(mnt2)
  t.alike([...offline.entries()].map(([k, v]) => [k, v.hash]), [...before.entries()].map(([k, v]) => [k, v.hash]), 'every file reads from the local cache with no partner up')
})

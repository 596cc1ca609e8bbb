// The network around the partners, on loopback with a local bootstrap node: a key without an agreement gets
// nothing, partners add refuses what cannot work, sync --timeout, blocks a partner missed follow it when it
// returns, a partner that restored gets its share back, the demo starts and stops everything, and a
// bootstrap node that does not answer does not keep a mount from coming up.
import test from 'brittle'
import crypto from 'node:crypto'
import dgram from 'node:dgram'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import HyperDHT from 'hyperdht'
import { cli, running, sh, status, unmount, unmountQuietly } from './helpers.js'
import { HOST, addPartner, handlers, initNode, killNode, partnerOf, serve, startNet, waitFor, waitOnline } from './net-helpers.js'
import { NetNode } from '../src/net/node.js'

test('a key with no agreement gets nothing', { timeout: 300_000 }, async t => {
  const net = await startNet(t)
  const partner = await initNode(net, 'p0', ['--slots', '64'])
  const owner = await initNode(net, 'owner', ['--slots', '64'])
  await addPartner(partner, owner, 64)
  await serve(partner)

  const refuse = handlers({ propose: async () => ({ reason: 'no' }) })
  const stranger = new NetNode({ keyPair: HyperDHT.keyPair(), bootstrap: [net.bootstrap], host: HOST, handlers: refuse, allow: () => false })
  await stranger.start()
  t.teardown(() => stranger.destroy())
  stranger.connectTo(Buffer.from(partner.publicKey, 'hex'))
  const peer = await stranger.waitPeer(partner.publicKey, 5000)
  t.is(peer, null, 'the partner does not let a stranger connect')

  const r = await cli(['partners', 'list', '--home', partner.home, '--json'])
  const rows = JSON.parse(r.stdout) as Array<{ key: string }>
  t.alike(rows.map(x => x.key), [owner.publicKey], 'and records nothing about it')
})

test('partners add: bad keys, own key and agreements that do not fit are refused in one line', { timeout: 300_000 }, async t => {
  const net = await startNet(t)
  const node = await initNode(net, 'p0', ['--slots', '64'])
  const bad = await cli(['partners', 'add', 'xyz', '--home', node.home])
  t.not(bad.code, 0)
  t.ok(/not a coopfs public key/.test(bad.stderr) && bad.stderr.trim().split('\n').length === 1, bad.stderr)
  const own = await cli(['partners', 'add', node.publicKey, '--home', node.home])
  t.not(own.code, 0)
  t.ok(/own key/.test(own.stderr), own.stderr)
  const huge = await cli(['partners', 'add', 'ab'.repeat(32), '--home', node.home, '--slots', String(1 << 24)])
  t.not(huge.code, 0)
  t.ok(/reserving .* needs more than/.test(huge.stderr) && huge.stderr.trim().split('\n').length === 1, huge.stderr)
  const list = JSON.parse((await cli(['partners', 'list', '--home', node.home, '--json'])).stdout) as unknown[]
  t.is(list.length, 0, 'nothing was recorded for the refused agreement')
})

test('sync --timeout gives up with a reason when too few partners are up; late blocks follow when they return', { timeout: 300_000 }, async t => {
  const net = await startNet(t)
  const owner = await initNode(net, 'owner', ['--slots', '64', '--k', '2', '--m', '1'])
  const partners = await Promise.all([0, 1, 2].map(i => partnerOf(net, `p${i}`, owner, 64, i === 0)))
  for (const p of partners) await addPartner(owner, p, 64)
  const mnt = path.join(net.dir, 'mnt')
  fs.mkdirSync(mnt)
  t.is((await cli(['mount', mnt, '--home', owner.home])).code, 0)
  const data = crypto.randomBytes(300_000)
  fs.writeFileSync(path.join(mnt, 'f'), data)
  const started = Date.now()
  const r = await cli(['sync', '--home', owner.home, '--timeout', '3'])
  t.not(r.code, 0, 'sync fails')
  t.ok(/not everything is at the partners|timeout/.test(r.stderr) && r.stderr.trim().split('\n').length === 1, r.stderr)
  t.ok(Date.now() - started < 30_000, 'soon after the timeout')
  const st = await status(owner.home)
  t.is(st.safeToPowerOff, false, 'not safe to power off')
  // With two of three partners up a stripe reaches its quorum (w = n - 1); the third partner's blocks wait
  // in the persistent queue and are sent when it comes back.
  await serve(partners[1])
  await waitFor('two partners', async () => (await status(owner.home)).partnersOnline === 2)
  const ok = await cli(['sync', '--home', owner.home, '--timeout', '60'])
  t.is(ok.code, 0, ok.stderr)
  const st1 = await status(owner.home)
  t.is(st1.safeToPowerOff, true)
  t.ok(st1.blocksLagging > 0, `blocks wait for the partner that is away (${st1.blocksLagging})`)
  const held = (st: Record<string, any>, p: { publicKey: string }): number => st.partners.find((c: { id: string }) => c.id === p.publicKey).blocksHeld
  t.ok(held(st1, partners[2]) < held(st1, partners[1]), `the partner away holds fewer of the owner's blocks (${held(st1, partners[2])} of ${held(st1, partners[1])})`)
  await serve(partners[2])
  await waitFor('the lagging blocks to reach the third partner', async () => (await status(owner.home)).blocksLagging === 0)
  const st2 = await status(owner.home)
  t.ok(held(st2, partners[2]) > 0 && held(st2, partners[2]) === held(st2, partners[1]), 'once back, it holds as many as the others')
  // Now any two partners hold everything: lose the first one and read from the other two.
  killNode(partners[0])
  await unmount(mnt)
  t.is((await cli(['mount', mnt, '--home', owner.home])).code, 0)
  await waitOnline(owner, 2)
  t.alike(fs.readFileSync(path.join(mnt, 'f')), data, 'the file reads back from the partners that were late')
})

test('a partner that restored on a new machine gets its share back', { timeout: 300_000 }, async t => {
  const net = await startNet(t)
  const a = await initNode(net, 'a', ['--slots', '64', '--k', '1', '--m', '1'])
  const b = await initNode(net, 'b', ['--slots', '64', '--k', '1', '--m', '1'])
  const s = await initNode(net, 's', ['--slots', '64'])
  for (const [x, y] of [[a, b], [b, a], [a, s], [s, a], [b, s], [s, b]]) await addPartner(x, y, 64)
  await serve(s)
  const mntA = path.join(net.dir, 'mntA')
  const mntB = path.join(net.dir, 'mntB')
  fs.mkdirSync(mntA)
  fs.mkdirSync(mntB)
  t.is((await cli(['mount', mntA, '--home', a.home])).code, 0)
  t.is((await cli(['mount', mntB, '--home', b.home])).code, 0)
  await waitOnline(a, 2)
  await waitOnline(b, 2)
  const dataA = crypto.randomBytes(1_500_000)
  fs.writeFileSync(path.join(mntA, 'a.bin'), dataA)
  t.is((await cli(['sync', '--home', a.home, '--timeout', '60'])).code, 0)
  fs.writeFileSync(path.join(mntB, 'b.txt'), 'from b')
  t.is((await cli(['sync', '--home', b.home, '--timeout', '60'])).code, 0)

  // B's machine dies; B recovers on a new home and tells its partners, and A sends B its share again.
  killNode(b)
  await sh(`fusermount -uz '${mntB}' 2>/dev/null || true`)
  fs.rmSync(b.home, { recursive: true, force: true })
  const b2 = { ...b, home: path.join(net.dir, 'b2') }
  const rec = await cli(['mount', mntB, '--recover', '--home', b2.home, ...net.flags], { COOPFS_RECOVERY_KEY: b.recoveryKey })
  t.is(rec.code, 0, rec.stderr)
  t.is(fs.readFileSync(path.join(mntB, 'b.txt'), 'utf8'), 'from b', 'B has its own tree back')
  const heldForA = async (): Promise<number> => {
    const rows = JSON.parse((await cli(['partners', 'list', '--home', b2.home, '--json'])).stdout) as Array<{ key: string, usedSlots: number }>
    return rows.find(r => r.key === a.publicKey)?.usedSlots ?? 0
  }
  // B's new home started with an empty area for A; A hears that B restored and queues its column again.
  await waitFor('A to resend its share to B', async () => (await heldForA()) > 0 && (await status(a.home)).blocksLagging === 0, 90_000)
  t.ok(/restored: [1-9]\d* blocks to send it again/.test(fs.readFileSync(path.join(a.home, 'daemon.log'), 'utf8')), 'A queued its column for B')
  t.ok(await heldForA() > 0, 'B holds A\'s blocks again')

  // With the spare partner gone, A's data comes from B alone (k = 1).
  killNode(s)
  await unmount(mntA)
  t.is((await cli(['mount', mntA, '--home', a.home])).code, 0)
  await waitOnline(a, 1)
  t.alike(fs.readFileSync(path.join(mntA, 'a.bin')), dataA, 'A reads its file from the blocks B reloaded')
})

test('coopfs demo starts a bootstrap node and partners, mounts, and unmount stops all of it', { timeout: 300_000 }, async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-demo-test-'))
  const mnt = path.join(dir, 'coopfs-demo')
  t.teardown(async () => {
    await unmountQuietly(mnt)
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const r = await cli(['demo', mnt, '--partners', '3'])
  t.is(r.code, 0, r.stderr)
  t.ok(/backed by 3 partners/.test(r.stdout), r.stdout)
  const home = /status --home (\S+)/.exec(r.stdout)![1]
  const st = await status(home)
  t.is(st.partnersOnline, 3, 'every partner is online')
  fs.writeFileSync(path.join(mnt, 'hello.txt'), 'hello from the demo')
  t.is((await cli(['sync', '--home', home, '--timeout', '60'])).code, 0)
  const pids = [st.pid as number, ...fs.readdirSync(path.dirname(home)).filter(n => n.startsWith('partner')).map(n => Number(fs.readFileSync(path.join(path.dirname(home), n, 'daemon.pid'), 'utf8')))]
  const u = await cli(['unmount', mnt])
  t.is(u.code, 0, u.stderr)
  t.ok(/stopped the demo/.test(u.stdout), u.stdout)
  const alive = pids.filter(running)
  t.alike(alive, [], 'the daemon and every partner stopped')
  t.absent(fs.existsSync(path.dirname(home)), 'the demo folder is gone')
})

test('a bootstrap node that never answers does not keep the mount from coming up', { timeout: 300_000 }, async t => {
  // A UDP socket on loopback that takes every packet and answers none: a DHT bootstrapping through it
  // waits out its timeouts, like a machine whose network is down.
  const hole = dgram.createSocket('udp4')
  hole.on('message', () => {})
  await new Promise<void>(resolve => hole.bind(0, HOST, () => resolve()))
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-offline-'))
  const home = path.join(dir, 'home')
  const mnt = path.join(dir, 'mnt')
  fs.mkdirSync(mnt)
  t.teardown(async () => {
    await unmountQuietly(mnt)
    hole.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const init = await cli(['init', '--home', home, '--bootstrap', `${HOST}:${hole.address().port}`, '--host', HOST])
  t.is(init.code, 0, init.stderr)
  const m = await cli(['mount', mnt, '--home', home])
  t.is(m.code, 0, m.stderr)
  const log = fs.readFileSync(path.join(home, 'daemon.log'), 'utf8')
  t.ok(/did not answer within \d+ s; going on/.test(log), 'the daemon went on without the DHT')
  fs.writeFileSync(path.join(mnt, 'offline.txt'), 'written while offline')
  t.is(fs.readFileSync(path.join(mnt, 'offline.txt'), 'utf8'), 'written while offline')
  const st = await status(home)
  t.is(st.partnersOnline, 0, 'no partner is reachable')
  t.ok(st.bytesPending > 0, 'the file waits in the write-back store')
  const pid = st.pid as number
  await unmount(mnt)
  t.absent(running(pid), 'the daemon stopped')
  t.is((await cli(['mount', mnt, '--home', home])).code, 0)
  t.is(fs.readFileSync(path.join(mnt, 'offline.txt'), 'utf8'), 'written while offline', 'the file is there after a remount')
})

// The partner service in-process, with real parts: PartnerService instances with their own homes and keys,
// real HyperDHT nodes and a bootstrap node on 127.0.0.1, reserved areas on disk. Covers friend-mode
// agreements, reserved space, block and master block requests, refusals, strangers, quotas and restarts.
// Run: node --import tsx test/service.test.ts
import test from 'brittle'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import HyperDHT from 'hyperdht'
import { CoopError } from '../src/errors.js'
import { QUOTA_FACTOR } from '../src/config.js'
import { deriveKeys, newSecret, type Keys } from '../src/crypto/keys.js'
import { encodeMaster, type MasterBody } from '../src/log/master-block.js'
import { readAgreements } from '../src/serve/agreements.js'
import { PartnerService, SLOT_BYTES } from '../src/serve/service.js'
import type { Peer } from '../src/net/peer.js'
import { freeUdpPort } from '../src/net/node.js'
import { outcome, sleep, until } from './helpers.js'

const HOST = '127.0.0.1'
// Per request; generous for a slow machine, far below the test timeout.
const T = 8000

interface Teardown {
  teardown: (fn: () => unknown, opts?: { order?: number }) => void
}

async function failure (p: Promise<unknown>): Promise<CoopError | null> {
  try {
    await p
    return null
  } catch (err) {
    return err as CoopError
  }
}

// A block as the owner writes them: the block magic first (the partner counts slots that start with it), then
// bytes that differ per seed.
function block (seed: number, size = SLOT_BYTES): Buffer {
  const b = Buffer.alloc(size)
  let x = (seed * 2654435761) >>> 0 || 1
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13
    x ^= x >>> 17
    x ^= x << 5
    x >>>= 0
    if (i + 4 <= size) b.writeUInt32LE(x, i)
  }
  if (size >= 4) Buffer.from('CPFB').copy(b, 0)
  return b
}

function masterBody (seq: number): MasterBody {
  return {
    k: 4,
    m: 2,
    blockSize: 262_144,
    chunkSize: 131_072,
    slots: 16,
    partners: [],
    checkpoint: { seq, dbBytes: 0, pieces: [] },
    createdAt: new Date().toISOString()
  }
}

function hexOf (keys: Keys): string {
  return keys.publicKey.toString('hex')
}

interface Net {
  bootstrap: string[]
  dir: string
  // A started service with its own home (or the given one) and keys (or the given ones).
  service: (opts: { dial: boolean, keys?: Keys, homeDir?: string }) => Promise<Svc>
}

interface Svc {
  svc: PartnerService
  home: string
  keys: Keys
  hex: string
}

// A bootstrap node on 127.0.0.1 and services on it, all stopped (and their homes removed) at teardown.
async function network (t: Teardown): Promise<Net> {
  const port = await freeUdpPort(HOST)
  const boot = HyperDHT.bootstrapper(port, HOST, { host: HOST })
  await boot.ready()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-service-'))
  const services: PartnerService[] = []
  t.teardown(async () => {
    await Promise.all(services.map(s => s.close().catch(() => {})))
    await boot.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const bootstrap = [`${HOST}:${port}`]
  return {
    bootstrap,
    dir,
    service: async ({ dial, keys, homeDir }) => {
      const k = keys ?? deriveKeys(newSecret())
      const home = homeDir ?? fs.mkdtempSync(path.join(dir, 'home-'))
      const svc = new PartnerService({ homeDir: home, keys: k, bootstrap, host: HOST, dial })
      services.push(svc)
      await svc.start()
      return { svc, home, keys: k, hex: hexOf(k) }
    }
  }
}

// A partner (gives space, does not dial) and an owner (dials it), each having added the other.
async function pair (t: Teardown, opts: { partnerSlots?: number, ownerSlots?: number, partnerDials?: boolean } = {}) {
  const net = await network(t)
  const partner = await net.service({ dial: opts.partnerDials ?? false })
  const owner = await net.service({ dial: true })
  await partner.svc.add(owner.hex, opts.partnerSlots ?? 16)
  await owner.svc.add(partner.hex, opts.ownerSlots ?? 16)
  return { net, partner, owner }
}

// The owner's connection to the partner once the agreement is active on both sides and requests are served.
async function activePeer (t: { ok: (v: unknown, m?: string) => void }, owner: Svc, partner: Svc): Promise<Peer> {
  const active = await until(() => owner.svc.agreement(partner.hex)?.state === 'active' &&
    partner.svc.agreement(owner.hex)?.state === 'active', 20_000)
  t.ok(active, 'the agreement is active on both sides')
  if (!active) throw new Error('the agreement never became active')
  return await servedPeer(owner, partner.hex, 20_000)
}

// A connection from the owner to hex that answers a ping, dialing again as long as it takes (up to ms).
async function servedPeer (owner: Svc, hex: string, ms: number): Promise<Peer> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    const peer = await owner.svc.node.waitPeer(hex, Math.max(1, Math.min(3000, deadline - Date.now())))
    if (peer && await outcome(peer.ping(3000)) === 'ok') return peer
    await sleep(100)
  }
  throw new Error(`no served connection to ${hex.slice(0, 12)} within ${ms} ms`)
}

function slotsFile (home: string, ownerHex: string): string {
  return path.join(home, 'held', ownerHex, 'slots.dat')
}

function readSlot (file: string, slot: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(SLOT_BYTES)
    const n = fs.readSync(fd, buf, 0, SLOT_BYTES, slot * SLOT_BYTES)
    return buf.subarray(0, n)
  } finally {
    fs.closeSync(fd)
  }
}

function usedSlots (svc: PartnerService, hex: string): number | undefined {
  return svc.list().find(r => r.key === hex)?.usedSlots
}

// Records, in one sequence, when file writes complete and when fdatasyncs start and end (every FileHandle in
// this process), so a test can check what an acknowledgement came after.
interface IoEvent { kind: 'written' | 'syncStart' | 'syncEnd' | 'ack', pos?: number, start?: number, slot?: number }

async function traceFileHandles (t: Teardown, file: string): Promise<IoEvent[]> {
  const fh = await fsp.open(file, 'r')
  const proto = Object.getPrototypeOf(fh) as { write: (...a: any[]) => Promise<any>, datasync: () => Promise<void> }
  await fh.close()
  const events: IoEvent[] = []
  const write = proto.write
  const datasync = proto.datasync
  proto.write = async function (this: unknown, ...args: any[]) {
    const r = await write.apply(this, args)
    events.push({ kind: 'written', pos: typeof args[3] === 'number' ? args[3] : undefined })
    return r
  }
  proto.datasync = async function (this: unknown) {
    const start = events.push({ kind: 'syncStart' }) - 1
    await datasync.call(this)
    events.push({ kind: 'syncEnd', start })
  }
  t.teardown(() => {
    proto.write = write
    proto.datasync = datasync
  })
  return events
}

test('friend mode: both sides add each other; the agreement turns active on both with each other\'s recovery topic', async t => {
  const net = await network(t)
  const a = await net.service({ dial: true })
  const b = await net.service({ dial: true })
  await a.svc.add(b.hex, 16)
  t.is(a.svc.agreement(b.hex)?.state, 'proposed', 'an agreement only one side added is proposed')
  await b.svc.add(a.hex, 16)
  const active = await until(() => a.svc.list()[0]?.state === 'active' && b.svc.list()[0]?.state === 'active', 20_000)
  t.ok(active, 'active on both sides')
  t.alike(a.svc.list().map(r => [r.key, r.slots, r.state]), [[b.hex, 16, 'active']], 'a lists b')
  t.alike(b.svc.list().map(r => [r.key, r.slots, r.state]), [[a.hex, 16, 'active']], 'b lists a')
  t.is(a.svc.agreement(b.hex)?.topic, b.svc.topic.toString('hex'), 'a keeps b\'s recovery topic')
  t.is(b.svc.agreement(a.hex)?.topic, a.svc.topic.toString('hex'), 'b keeps a\'s recovery topic')
  t.not(a.svc.topic.toString('hex'), b.svc.topic.toString('hex'))
  t.absent(a.svc.agreement(b.hex)?.reason)
  // Saved, not only in memory.
  t.alike(readAgreements(a.home).map(x => [x.key, x.state, x.topic]), [[b.hex, 'active', b.svc.topic.toString('hex')]], 'a\'s agreements.json')
  t.alike(readAgreements(b.home).map(x => [x.key, x.state, x.topic]), [[a.hex, 'active', a.svc.topic.toString('hex')]], 'b\'s agreements.json')
  // Each side serves the other over the connection it dials.
  const ab = await servedPeer(a, b.hex, 15_000)
  const ba = await servedPeer(b, a.hex, 15_000)
  t.is(await outcome(ab.ping(T)), 'ok', 'a reaches b')
  t.is(await outcome(ba.ping(T)), 'ok', 'b reaches a')
  t.ok(await until(() => a.svc.list()[0].online && b.svc.list()[0].online, 20_000), 'both list the other online')
})

test('mismatched slots: the owner\'s agreement is rejected with both counts, and nothing is served', async t => {
  const { partner, owner } = await pair(t, { partnerSlots: 16, ownerSlots: 32 })
  t.ok(await until(() => owner.svc.agreement(partner.hex)?.state === 'rejected', 20_000), 'the owner\'s agreement is rejected')
  const reason = owner.svc.agreement(partner.hex)?.reason ?? ''
  t.ok(/\b16\b/.test(reason) && /\b32\b/.test(reason), `the reason names both slot counts: ${reason}`)
  t.alike(owner.svc.list().map(r => [r.state, r.reason]), [['rejected', reason]], 'list() shows the rejection and why')
  t.is(readAgreements(owner.home)[0]?.state, 'rejected', 'saved as rejected')
  t.is(partner.svc.agreement(owner.hex)?.state, 'proposed', 'the partner\'s side stays proposed')
  t.absent(partner.svc.agreement(owner.hex)?.topic, 'and holds no topic')
  t.absent(owner.svc.agreement(partner.hex)?.topic)

  // The partner lets the connection in (it has an agreement for the key) but answers no request on it: it
  // closes the connection instead.
  const unanswered = ['ECLOSED', 'ETIMEDOUT']
  const peer = await owner.svc.node.waitPeer(partner.hex, 30_000)
  t.ok(peer, 'the owner holds a connection to the partner')
  const w = peer ? await outcome(peer.writeBlock(0, block(1), T)) : 'no connection'
  t.ok(unanswered.includes(w), `a write is not served: ${w}`)
  const again = await owner.svc.node.waitPeer(partner.hex, 30_000)
  const m = again ? await outcome(again.putMaster(encodeMaster(owner.keys, 1, masterBody(1)), T)) : 'no connection'
  t.ok(unanswered.includes(m), `nor a master block: ${m}`)
  t.is(usedSlots(partner.svc, owner.hex), 0, 'no slot used')
  t.ok(readSlot(slotsFile(partner.home, owner.hex), 0).equals(Buffer.alloc(SLOT_BYTES)), 'slot 0 is still zeros')
  t.absent(fs.existsSync(path.join(partner.home, 'held', owner.hex, 'master.blk')), 'no master block kept')
})

test('reserved space: made on disk with the agreement; an agreement that cannot fit is refused and leaves nothing', async t => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-service-'))
  const svc = new PartnerService({ homeDir: home, keys: deriveKeys(newSecret()), bootstrap: ['127.0.0.1:9'], host: HOST })
  t.teardown(async () => {
    await svc.close()
    fs.rmSync(home, { recursive: true, force: true })
  })
  await svc.load() // offline: no network is started
  const owner = hexOf(deriveKeys(newSecret()))
  const a = await svc.add(owner, 16)
  t.is(a.state, 'proposed')
  const file = slotsFile(home, owner)
  t.is(fs.statSync(file).size, 16 * SLOT_BYTES, 'held/<key>/slots.dat is slots * SLOT_BYTES')
  t.alike(readAgreements(home).map(x => [x.key, x.slots, x.state]), [[owner, 16, 'proposed']], 'the agreement is saved')
  t.is(usedSlots(svc, owner), 0)
  t.is((await svc.add(owner, 16)).createdAt, a.createdAt, 'adding the same agreement again gives the one there is')
  t.is(await outcome(svc.add(owner, 32)), 'EEXIST', 'another slot count for the same key is refused')
  t.is(await outcome(svc.add(hexOf(svc.keys), 16)), 'EUSAGE', 'this node\'s own key is refused')

  const st = fs.statfsSync(home)
  const free = st.bavail * st.bsize
  const tooMany = Math.ceil(2 * free / SLOT_BYTES) + 16
  const big = hexOf(deriveKeys(newSecret()))
  const err = await failure(svc.add(big, tooMany))
  t.is(err?.code, 'ENOSPC', `an agreement larger than the disk is refused: ${String(err)}`)
  t.absent(svc.agreement(big), 'no agreement in memory')
  t.alike(svc.list().map(r => r.key), [owner], 'list() did not grow')
  t.alike(readAgreements(home).map(x => x.key), [owner], 'none saved')
  t.absent(fs.existsSync(path.join(home, 'held', big)), 'no held folder for it')
  t.alike(fs.readdirSync(path.join(home, 'held')), [owner], 'held/ holds only the first area')
  t.is(fs.statSync(file).size, 16 * SLOT_BYTES, 'the first area is untouched')
})

test('blocks: round trip, never written, outside the reservation, wrong size, usedSlots', async t => {
  const { partner, owner } = await pair(t)
  const peer = await activePeer(t, owner, partner)
  t.is(usedSlots(partner.svc, owner.hex), 0)

  const b3 = block(3)
  t.is(await outcome(peer.writeBlock(3, b3, T)), 'ok', 'write slot 3')
  const got = await peer.readBlock(3, T)
  t.ok(got !== null && got.equals(b3), 'slot 3 reads back the exact bytes')
  t.is(await peer.readBlock(4, T), null, 'a slot never written answers not found')
  t.is(usedSlots(partner.svc, owner.hex), 1)

  const leaks = [partner.home, os.tmpdir(), path.join('held', owner.hex), 'slots.dat']
  for (const [what, p] of [
    ['write slot 16', peer.writeBlock(16, block(16), T)],
    ['read slot 16', peer.readBlock(16, T)],
    ['write slot 2^32-1', peer.writeBlock(2 ** 32 - 1, block(17), T)]
  ] as Array<[string, Promise<unknown>]>) {
    const err = await failure(p)
    t.is(err?.code, 'ESLOT', `${what}: ESLOT`)
    t.ok(/outside/.test(String(err?.message)), `${what}: says why: ${String(err?.message)}`)
    t.absent(leaks.some(l => String(err?.message).includes(l)), `${what}: names no path of the partner`)
  }
  for (const size of [SLOT_BYTES - 1, SLOT_BYTES + 1, 0]) {
    const err = await failure(peer.writeBlock(5, block(5, size), T))
    t.is(err?.code, 'EBLOCK', `a block of ${size} bytes: EBLOCK`)
    t.absent(leaks.some(l => String(err?.message).includes(l)), 'names no path of the partner')
  }
  t.is(await peer.readBlock(5, T), null, 'refused writes left slot 5 unwritten')
  t.is(usedSlots(partner.svc, owner.hex), 1, 'refused writes use no slot')
  t.absent(peer.closed, 'refusals leave the connection open')

  t.is(await outcome(peer.writeBlock(0, block(100), T)), 'ok')
  t.is(await outcome(peer.writeBlock(15, block(115), T)), 'ok', 'the last slot of the reservation')
  t.is(usedSlots(partner.svc, owner.hex), 3)
  const b3b = block(33)
  t.is(await outcome(peer.writeBlock(3, b3b, T)), 'ok', 'overwrite slot 3')
  t.is(usedSlots(partner.svc, owner.hex), 3, 'an overwrite uses no new slot')
  t.ok((await peer.readBlock(3, T))?.equals(b3b), 'the overwrite reads back')
  t.ok((await peer.readBlock(15, T))?.equals(block(115)))
  t.is(owner.svc.list()[0].usedSlots, 0, 'the owner\'s own reservation for the partner is untouched')
})

test('an acknowledged write is in slots.dat at slot * SLOT_BYTES, and the ack came after an fdatasync that followed it', async t => {
  const { partner, owner } = await pair(t)
  const peer = await activePeer(t, owner, partner)
  const file = slotsFile(partner.home, owner.hex)
  const events = await traceFileHandles(t, file)
  const slots = [7, 2, 9, 11, 0, 14, 5, 1]
  await Promise.all(slots.map(async (slot, i) => {
    await peer.writeBlock(slot, block(700 + i), T)
    events.push({ kind: 'ack', slot })
  }))
  for (const [i, slot] of slots.entries()) {
    t.ok(readSlot(file, slot).equals(block(700 + i)), `slot ${slot} is in the file at ${slot} * SLOT_BYTES`)
    const ack = events.findIndex(e => e.kind === 'ack' && e.slot === slot)
    const written = events.findIndex(e => e.kind === 'written' && e.pos === slot * SLOT_BYTES)
    const synced = events.some((e, j) => j < ack && e.kind === 'syncEnd' && e.start! > written)
    t.ok(written >= 0 && written < ack && synced, `slot ${slot}: written, then synced by an fdatasync started after it, then acknowledged`)
  }
  const syncs = events.filter(e => e.kind === 'syncEnd').length
  t.ok(syncs >= 1 && syncs <= slots.length, `${syncs} fdatasyncs for ${slots.length} concurrent writes`)
  t.is(usedSlots(partner.svc, owner.hex), slots.length)
})

test('master blocks: the owner\'s own are kept, others refused, never an older one over a newer one', async t => {
  const { partner, owner } = await pair(t)
  const peer = await activePeer(t, owner, partner)
  t.is(await peer.getMaster(T), null, 'no master block yet')
  const v5 = encodeMaster(owner.keys, 5, masterBody(5))
  t.is(await outcome(peer.putMaster(v5, T)), 'ok', 'version 5 is kept')
  t.ok((await peer.getMaster(T))?.equals(v5), 'and read back')

  const other = deriveKeys(newSecret())
  const err = await failure(peer.putMaster(encodeMaster(other, 9, masterBody(9)), T))
  t.is(err?.code, 'EBLOCK', `a master block of another key is refused: ${String(err?.message)}`)
  const forged = encodeMaster({ ...other, publicKey: owner.keys.publicKey }, 9, masterBody(9))
  t.is(await outcome(peer.putMaster(forged, T)), 'EBLOCK', 'one claiming the owner\'s key but signed by another is refused')
  const flipped = Buffer.from(encodeMaster(owner.keys, 9, masterBody(9)))
  flipped[60] ^= 1
  t.is(await outcome(peer.putMaster(flipped, T)), 'EBLOCK', 'one altered after signing is refused')
  t.is(await outcome(peer.putMaster(Buffer.from('not a master block'), T)), 'EBLOCK', 'garbage is refused')

  const err2 = await failure(peer.putMaster(encodeMaster(owner.keys, 3, masterBody(3)), T))
  t.is(err2?.code, 'ESTALE', `an older version is refused: ${String(err2?.message)}`)
  t.ok((await peer.getMaster(T))?.equals(v5), 'the newer one is still held')
  t.ok(fs.readFileSync(path.join(partner.home, 'held', owner.hex, 'master.blk')).equals(v5), 'and on disk')
  const v6 = encodeMaster(owner.keys, 6, masterBody(6))
  t.is(await outcome(peer.putMaster(v6, T)), 'ok', 'a newer version replaces it')
  t.ok((await peer.getMaster(T))?.equals(v6))
  t.is(await outcome(peer.putMaster(encodeMaster(owner.keys, 5, masterBody(5)), T)), 'ESTALE', 'the one it replaced is now stale')
})

test('a key with no agreement gets no connection to the partner, and the partner\'s list does not grow', async t => {
  const { net, partner, owner } = await pair(t)
  await activePeer(t, owner, partner)
  const stranger = await net.service({ dial: true })
  await stranger.svc.add(partner.hex, 16) // only on its own side: it dials the partner
  const started = Date.now()
  const p = await stranger.svc.node.waitPeer(partner.hex, 4000)
  t.is(p, null, 'waitPeer gives nothing')
  const waited = Date.now() - started
  t.ok(waited >= 3990 && waited < 30_000, `after the time asked, without hanging (${waited} ms)`)
  t.is(stranger.svc.agreement(partner.hex)?.state, 'proposed', 'the stranger\'s proposal was never answered')
  t.alike(partner.svc.list().map(r => r.key), [owner.hex], 'the partner lists only its partner')
  t.absent(partner.svc.agreement(stranger.hex))
  t.absent(partner.svc.node.seen(stranger.hex), 'no connection from the stranger reached the partner')
  t.absent(fs.existsSync(path.join(partner.home, 'held', stranger.hex)))
  const peer = await servedPeer(owner, partner.hex, 10_000)
  t.is(await outcome(peer.ping(T)), 'ok', 'the partner still serves its partner')
})

test('quotas: writes and reads stop at QUOTA_FACTOR * reserved bytes; restored lifts them', async t => {
  const { partner, owner } = await pair(t, { partnerSlots: 16, ownerSlots: 16 })
  const peer = await activePeer(t, owner, partner)
  const limit = QUOTA_FACTOR * 16 // in full blocks
  const restoredEvents: string[] = []
  partner.svc.on('restored', (hex: string) => restoredEvents.push(hex))

  let writes = 0
  let writeErr: CoopError | null = null
  for (let i = 0; i < limit + 2; i++) {
    writeErr = await failure(peer.writeBlock(i % 16, block(i), T))
    if (writeErr) break
    writes++
  }
  t.is(writeErr?.code, 'EQUOTA', `writes end with EQUOTA: ${String(writeErr?.message)}`)
  t.is(writes, limit, `exactly ${limit} full blocks (${QUOTA_FACTOR} * 16 * SLOT_BYTES bytes) were written`)
  t.ok(/quota/.test(String(writeErr?.message)), 'the reason says quota')
  t.is(await outcome(peer.writeBlock(0, block(999), T)), 'EQUOTA', 'and the next write too')
  t.ok((await peer.readBlock(0, T))?.equals(block(limit - 16)), 'the refused write did not reach the slot')
  t.absent(peer.closed, 'the connection stays open')
  t.is(await outcome(peer.ping(T)), 'ok')

  // The read above was the first read.
  let reads = 1
  let readErr: CoopError | null = null
  for (let i = 1; i < limit + 2; i++) {
    readErr = await failure(peer.readBlock(i % 16, T))
    if (readErr) break
    reads++
  }
  t.is(readErr?.code, 'EQUOTA', `reads end with EQUOTA: ${String(readErr?.message)}`)
  t.is(reads, limit, `exactly ${limit} reads of a slot were served`)

  t.is(await outcome(peer.restored(T)), 'ok', 'the owner says it restored')
  t.alike(restoredEvents, [owner.hex], 'the partner noted it')
  for (let i = 0; i < 4; i++) {
    t.is(await outcome(peer.writeBlock(i, block(2000 + i), T)), 'ok', `write ${i} after restored succeeds`)
  }
  t.ok((await peer.readBlock(2, T))?.equals(block(2002)), 'reads succeed again')
  t.ok((await peer.readBlock(3, T))?.equals(block(2003)))
})

test('persistence: a partner restarted on the same home keeps the agreement, the blocks and the master block', async t => {
  const { net, partner, owner } = await pair(t)
  const peer = await activePeer(t, owner, partner)
  const b = block(55)
  t.is(await outcome(peer.writeBlock(5, b, T)), 'ok')
  const v7 = encodeMaster(owner.keys, 7, masterBody(7))
  t.is(await outcome(peer.putMaster(v7, T)), 'ok')
  const topic = partner.svc.agreement(owner.hex)?.topic

  await partner.svc.close()
  t.ok(await until(() => peer.closed, 20_000), 'the owner\'s connection closed with the partner')
  const again = await net.service({ dial: false, keys: partner.keys, homeDir: partner.home })
  const row = again.svc.list()
  t.alike(row.map(r => [r.key, r.slots, r.state, r.usedSlots]), [[owner.hex, 16, 'active', 1]], 'the agreement is still active, one slot used')
  t.is(again.svc.agreement(owner.hex)?.topic, topic, 'with the owner\'s topic')

  const p2 = await servedPeer(owner, partner.hex, 25_000)
  t.ok((await p2.readBlock(5, T))?.equals(b), 'the block reads back')
  t.is(await p2.readBlock(6, T), null, 'an unwritten slot still answers not found')
  t.ok((await p2.getMaster(T))?.equals(v7), 'the master block is still there')
  t.is(await outcome(p2.putMaster(encodeMaster(owner.keys, 6, masterBody(6)), T)), 'ESTALE', 'and its version still counts')
  t.is(owner.svc.agreement(partner.hex)?.state, 'active', 'the owner\'s side is still active')
})

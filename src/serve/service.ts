// The partner service: this node's side of every agreement. It reserves space for each partner, answers
// their requests (only from that partner's key, only for its own slots, within its quotas), announces the
// recovery topics partners gave it, and keeps the connections that the owner side (NetPartner) uses.
import fs from 'node:fs'
import path from 'node:path'
import { EventEmitter } from 'node:events'
import { CoopError } from '../errors.js'
import { BLOCK_SIZE_BYTES, DHT_JOIN_WAIT_MS, PING_INTERVAL_MS, PING_TIMEOUT_MS, QUOTA_FACTOR, QUOTA_WINDOW_MS, REQUEST_TIMEOUT_MS, RESTORE_WINDOW_MS } from '../config.js'
import { keyedHash } from '../crypto/seal.js'
import type { Keys } from '../crypto/keys.js'
import { BLOCK_HEADER_BYTES } from '../stripe/block.js'
import { fmtBytes } from '../partners/local-dir.js'
import { NetNode } from '../net/node.js'
import type { Handlers, Peer } from '../net/peer.js'
import { HeldArea } from './held.js'
import { readAgreements, writeAgreements, type Agreement } from './agreements.js'

export const SLOT_BYTES = BLOCK_HEADER_BYTES + BLOCK_SIZE_BYTES
export const MIN_SLOTS = 16
export const MAX_SLOTS = 1 << 24

export function recoveryTopic (keys: Keys): Buffer {
  return keyedHash(keys.recoveryTopicKey, Buffer.from('coopfs recovery topic'))
}

export interface ServiceOptions {
  homeDir: string
  keys: Keys
  bootstrap?: string[]
  host?: string
  log?: (line: string) => void
  // Accept connections from any key (a recovering owner looking for its partners); requests still need an
  // agreement.
  acceptAll?: boolean
  // Dial the partners (the daemons do; a service opened only to add or list agreements does not).
  dial?: boolean
}

export interface PartnerRow {
  key: string
  slots: number
  state: Agreement['state']
  reason?: string
  online: boolean
  usedSlots: number
  lastSeen: string | null
}

interface Usage {
  windowStart: number
  read: number
  written: number
  restoreUntil: number
}

export class PartnerService extends EventEmitter {
  private net: NetNode | null = null
  readonly keys: Keys
  readonly topic: Buffer
  private readonly homeDir: string
  private readonly heldDir: string
  private readonly log: (line: string) => void
  private agreements: Agreement[]
  private readonly held = new Map<string, HeldArea>()
  private readonly usage = new Map<string, Usage>()
  private readonly lastSeen = new Map<string, number>()
  // Partners still to be told that this node restored (cleared as each one acknowledges).
  private restoredPending = new Set<string>()
  private pinger: NodeJS.Timeout | null = null
  private closed = false
  private loaded = false
  private readonly opts: ServiceOptions

  constructor (opts: ServiceOptions) {
    super()
    this.homeDir = opts.homeDir
    this.heldDir = path.join(opts.homeDir, 'held')
    this.keys = opts.keys
    this.topic = recoveryTopic(opts.keys)
    this.log = opts.log ?? (() => {})
    this.opts = opts
    this.agreements = readAgreements(opts.homeDir)
  }

  get node (): NetNode {
    if (!this.net) throw new CoopError('ENONET', 'the network is not started')
    return this.net
  }

  // Opens the reserved areas (and nothing on the network): enough to add or list agreements offline.
  async load (): Promise<void> {
    if (this.loaded) return
    this.loaded = true
    for (const a of this.agreements) await this.openArea(a, false)
    const pendingFile = this.restoredFile()
    if (fs.existsSync(pendingFile)) {
      this.restoredPending = new Set(JSON.parse(fs.readFileSync(pendingFile, 'utf8')) as string[])
    }
  }

  async start (): Promise<void> {
    await this.load()
    const opts = this.opts
    this.net = new NetNode({
      keyPair: { publicKey: opts.keys.publicKey, secretKey: opts.keys.secretKey },
      bootstrap: opts.bootstrap,
      host: opts.host,
      handlers: this.handlers(),
      allow: key => opts.acceptAll === true || this.find(key.toString('hex')) !== undefined
    })
    this.net.on('peer', (peer: Peer) => { this.onPeer(peer) })
    this.net.on('inbound', (peer: Peer) => {
      this.lastSeen.set(peer.hex, Date.now())
      // The partner (re)started: the connection this node holds to it may be a dead one from before.
      this.checkLink(peer.hex)
    })
    this.net.on('peer-closed', (peer: Peer) => this.emit('offline', peer.hex))
    let late = false
    this.net.on('joined', (answered: number) => {
      if (answered === 0) this.log('no DHT node answered: partners are out of reach until one does (the DHT keeps trying)')
      else if (late) this.log(`joined the DHT (${answered} nodes answered)`)
    })
    this.net.on('join-failed', (err: Error) => { if (late) this.log(`joining the DHT failed: ${err.message}`) })
    if (!await this.net.start(DHT_JOIN_WAIT_MS)) {
      late = true
      this.log(`the DHT did not answer within ${DHT_JOIN_WAIT_MS / 1000} s; going on while it joins in the background`)
    }
    for (const a of this.agreements) this.track(a)
    this.pinger = setInterval(() => { this.pingAll() }, PING_INTERVAL_MS)
    this.pinger.unref()
  }

  private restoredFile (): string {
    return path.join(this.homeDir, 'restored-pending.json')
  }

  private find (hex: string): Agreement | undefined {
    return this.agreements.find(a => a.key === hex)
  }

  private save (): void {
    writeAgreements(this.homeDir, this.agreements)
  }

  private async openArea (a: Agreement, create: boolean): Promise<HeldArea> {
    let area = this.held.get(a.key)
    if (!area) {
      area = await HeldArea.open(path.join(this.heldDir, a.key), Buffer.from(a.key, 'hex'), a.slots, SLOT_BYTES, create)
      this.held.set(a.key, area)
    }
    return area
  }

  // Keep a connection to the partner (when this node stores data on partners) and, once the agreement
  // holds, announce the partner's recovery topic.
  private track (a: Agreement): void {
    if (this.opts.dial) this.node.connectTo(Buffer.from(a.key, 'hex'))
    if (a.topic) this.node.announce(Buffer.from(a.topic, 'hex'))
  }

  // Friend mode: reserve the space for the partner now and confirm with it when it connects.
  async add (hex: string, slots: number): Promise<Agreement> {
    if (hex === this.keys.publicKey.toString('hex')) throw new CoopError('EUSAGE', 'that is this node\'s own key')
    if (!/^[0-9a-f]{64}$/.test(hex)) throw new CoopError('EUSAGE', 'a partner key is 64 hex digits')
    if (!Number.isInteger(slots) || slots < MIN_SLOTS || slots > MAX_SLOTS) throw new CoopError('EUSAGE', `an agreement is for ${MIN_SLOTS} to ${MAX_SLOTS} slots`)
    const have = this.find(hex)
    if (have) {
      if (have.slots !== slots) throw new CoopError('EEXIST', `an agreement with ${hex.slice(0, 16)} for ${have.slots} slots exists already`)
      return have
    }
    checkSpace(this.heldDir, slots * SLOT_BYTES, [...this.held.values()])
    const a: Agreement = { key: hex, slots, state: 'proposed', createdAt: new Date().toISOString() }
    try {
      await this.openArea(a, true)
    } catch (err) {
      fs.rmSync(path.join(this.heldDir, hex), { recursive: true, force: true })
      throw err
    }
    this.agreements.push(a)
    this.save()
    if (this.net && !this.closed) {
      this.track(a)
      const peer = this.net.peer(hex)
      if (peer) this.onPeer(peer)
    }
    return a
  }

  list (): PartnerRow[] {
    return this.agreements.map(a => {
      const seen = this.lastSeen.get(a.key)
      return {
        key: a.key,
        slots: a.slots,
        state: a.state,
        ...(a.reason ? { reason: a.reason } : {}),
        online: a.state === 'active' && (this.net?.seen(a.key) ?? false),
        usedSlots: this.held.get(a.key)?.usedSlots() ?? 0,
        lastSeen: seen ? new Date(seen).toISOString() : a.lastSeen ?? null
      }
    })
  }

  online (hex: string): boolean {
    return this.find(hex)?.state === 'active' && this.net?.peer(hex) !== undefined
  }

  agreement (hex: string): Agreement | undefined {
    return this.find(hex)
  }

  markRestored (keys: string[]): void {
    this.restoredPending = new Set(keys)
    fs.writeFileSync(this.restoredFile(), JSON.stringify([...this.restoredPending]), { mode: 0o600 })
  }

  // A peer connected: confirm a proposed agreement, tell it this node restored, mark it seen.
  private onPeer (peer: Peer): void {
    const a = this.find(peer.hex)
    this.lastSeen.set(peer.hex, Date.now())
    if (!a) return
    if (a.state !== 'active') {
      peer.propose(a.slots, this.topic, REQUEST_TIMEOUT_MS).then(answer => {
        if (answer.kind === 'accept') {
          if (answer.slots !== a.slots) return
          this.activate(a, answer.topic)
        } else if (answer.kind === 'reject') {
          a.state = 'rejected'
          a.reason = answer.reason
          this.save()
          this.log(`partner ${a.key.slice(0, 16)} rejected the agreement: ${answer.reason}`)
        }
      }, err => this.log(`agreement with ${a.key.slice(0, 16)}: ${(err as Error).message}`))
    } else {
      this.emit('online', peer.hex)
    }
    if (this.restoredPending.has(peer.hex)) {
      peer.restored(REQUEST_TIMEOUT_MS).then(() => {
        this.restoredPending.delete(peer.hex)
        this.markRestored([...this.restoredPending])
        this.log(`told ${peer.hex.slice(0, 16)} that this node restored`)
      }, () => {})
    }
  }

  private activate (a: Agreement, topic: Buffer): void {
    const changed = a.state !== 'active' || a.topic !== topic.toString('hex')
    a.state = 'active'
    delete a.reason
    a.topic = topic.toString('hex')
    if (changed) {
      this.save()
      this.node.announce(topic)
      this.log(`agreement with ${a.key.slice(0, 16)} is active (${a.slots} slots each way)`)
    }
    this.emit('online', a.key)
  }

  private pingAll (): void {
    for (const peer of this.node.connected()) {
      // Only agreements both sides hold: the other side answers nothing else.
      if (this.find(peer.hex)?.state === 'active') this.ping(peer)
    }
  }

  private ping (peer: Peer): void {
    peer.ping(PING_TIMEOUT_MS).then(() => this.lastSeen.set(peer.hex, Date.now()), () => {
      // No answer in time: drop the connection so it is dialed afresh.
      peer.destroy()
    })
  }

  private checkLink (hex: string): void {
    if (!this.net) return
    const out = this.net.peer(hex)
    if (out) this.ping(out)
    else this.net.hurry(hex)
  }

  private active (peer: Peer): { a: Agreement, area: HeldArea } {
    const a = this.find(peer.hex)
    const area = this.held.get(peer.hex)
    if (!a || a.state !== 'active' || !area) throw new CoopError('ENOAGREEMENT', 'no agreement')
    this.lastSeen.set(peer.hex, Date.now())
    return { a, area }
  }

  // Reads and writes of each partner are limited to QUOTA_FACTOR times its reserved space per window,
  // lifted for a while after it says it restored.
  private charge (a: Agreement, kind: 'read' | 'written', bytes: number): void {
    const now = Date.now()
    let u = this.usage.get(a.key)
    if (!u || now - u.windowStart > QUOTA_WINDOW_MS) {
      u = { windowStart: now, read: 0, written: 0, restoreUntil: u?.restoreUntil ?? 0 }
      this.usage.set(a.key, u)
    }
    const limit = QUOTA_FACTOR * a.slots * SLOT_BYTES
    if (now > u.restoreUntil && u[kind] + bytes > limit) {
      throw new CoopError('EQUOTA', `${kind} quota of ${fmtBytes(limit)} per ${Math.round(QUOTA_WINDOW_MS / 3600000)} h used up`)
    }
    u[kind] += bytes
  }

  private handlers (): Handlers {
    return {
      propose: async (peer, slots, topic) => {
        const a = this.find(peer.hex)
        if (!a) throw new CoopError('ENOAGREEMENT', 'no agreement')
        if (a.slots !== slots) return { reason: `this side reserved ${a.slots} slots for you, you proposed ${slots}` }
        this.activate(a, topic)
        return { slots: a.slots, topic: this.topic }
      },
      // Quotas count what was stored or served, not requests refused.
      writeBlock: async (peer, slot, data) => {
        const { a, area } = this.active(peer)
        area.checkBlock(slot, data)
        this.charge(a, 'written', data.length)
        await area.writeBlock(slot, data)
      },
      readBlock: async (peer, slot) => {
        const { a, area } = this.active(peer)
        area.checkSlot(slot)
        this.charge(a, 'read', 0)
        const block = await area.readBlock(slot)
        if (block) this.charge(a, 'read', block.length)
        return block
      },
      getMaster: async peer => this.active(peer).area.getMaster(),
      putMaster: async (peer, data) => { await this.active(peer).area.putMaster(data) },
      ping: async peer => { this.active(peer) },
      restored: async peer => {
        const { a } = this.active(peer)
        const u = this.usage.get(a.key) ?? { windowStart: Date.now(), read: 0, written: 0, restoreUntil: 0 }
        u.restoreUntil = Date.now() + RESTORE_WINDOW_MS
        this.usage.set(a.key, u)
        this.log(`partner ${a.key.slice(0, 16)} restored on a new machine; its quotas are lifted for a while`)
        this.emit('restored', a.key)
      }
    }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.pinger) clearInterval(this.pinger)
    for (const a of this.agreements) {
      const seen = this.lastSeen.get(a.key)
      if (seen) a.lastSeen = new Date(seen).toISOString()
    }
    if (this.agreements.length && this.net) this.save()
    await this.net?.destroy()
    for (const area of this.held.values()) await area.close()
  }
}

// A new reservation must fit beside what earlier reservations may still claim (their areas are sparse
// until partners fill them).
function checkSpace (dir: string, bytes: number, areas: HeldArea[]): void {
  let promised = 0
  for (const area of areas) {
    const st = fs.statSync(area.file())
    promised += Math.max(0, st.size - st.blocks * 512)
  }
  const fsst = fs.statfsSync(fs.existsSync(dir) ? dir : path.dirname(dir))
  const free = fsst.bavail * fsst.bsize
  if (bytes + promised > free) {
    throw new CoopError('ENOSPC', `reserving ${fmtBytes(bytes)} for this partner needs more than the ${fmtBytes(Math.max(0, free - promised))} left on this disk (${fmtBytes(promised)} is already promised to other partners)`)
  }
}

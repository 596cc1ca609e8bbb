// A coopfs node on the network: a HyperDHT node (bound to the configured host) keyed with the owner's
// identity. Connections go one way each: a node dials the partners it stores its data on and sends its
// requests over that connection; it serves its partners' requests on the connections they dial in. (With a
// single connection per pair, as Hyperswarm keeps, two partners dialing each other at the same moment can
// leave one side holding a connection the other dropped.) The server's firewall turns away every key the
// node has no business with before the handshake completes.
import dgram from 'node:dgram'
import { EventEmitter } from 'node:events'
import HyperDHT from 'hyperdht'
import { CoopError } from '../errors.js'
import { Peer, type Handlers } from './peer.js'

// Dial again after 0.5, 1, 2, 5 and then every 10 s while a partner stays away.
const REDIAL_BACKOFFS_MS = [500, 1000, 2000, 5000, 10_000]
// A connection whose coopfs channel does not open in this time is dropped and dialed afresh; the limit
// doubles with each failed attempt. (HyperDHT completes the Noise handshake through a relay, so a dial can
// report open while the direct path to the partner never carries a byte; on loopback the channel opens
// within milliseconds when the path works.)
const OPEN_TIMEOUT_MS = 1500
// Topic announcements are renewed this often (DHT records expire).
const ANNOUNCE_EVERY_MS = 5 * 60_000
// Time given to the server to take its announcements back when the node stops.
const SERVER_CLOSE_MS = 5000

export interface NetOptions {
  keyPair: { publicKey: Buffer, secretKey: Buffer }
  bootstrap?: string[]
  host?: string
  handlers: Handlers
  // Whether a connection from this key may come in.
  allow: (key: Buffer) => boolean
  // The first limit for a connection's channel to open (default OPEN_TIMEOUT_MS).
  openTimeoutMs?: number
}

// A UDP port free on host right now (for a bootstrap node started next).
export function freeUdpPort (host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4')
    sock.once('error', reject)
    sock.bind(0, host, () => {
      const port = sock.address().port
      sock.close(() => resolve(port))
    })
  })
}

export function parseBootstrap (text: string | undefined): string[] | undefined {
  if (!text) return undefined
  const list = text.split(',').map(s => s.trim()).filter(Boolean)
  for (const a of list) {
    const m = /^([^:\s]+):(\d+)$/.exec(a)
    if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new CoopError('EUSAGE', `bootstrap address '${a}' is not HOST:PORT`)
  }
  return list
}

interface Link {
  key: Buffer
  peer: Peer | null
  attempts: number
  timer: NodeJS.Timeout | null
  dialing: boolean
}

interface DhtServer {
  listen (keyPair: { publicKey: Buffer, secretKey: Buffer }): Promise<void>
  close (): Promise<void>
}

interface DhtQuery extends AsyncIterable<{ peers: Array<{ publicKey: Buffer }> }> {
  finished (): Promise<void>
  destroy (): void
}

type Dht = HyperDHT & {
  createServer (opts: { firewall: (key: Buffer) => boolean }, onconnection: (socket: any) => void): DhtServer
  connect (key: Buffer, opts: { keyPair: { publicKey: Buffer, secretKey: Buffer } }): any
  announce (topic: Buffer, keyPair: { publicKey: Buffer, secretKey: Buffer }): DhtQuery
  lookup (topic: Buffer): DhtQuery
  toArray (): Array<{ host: string, port: number }>
}

export class NetNode extends EventEmitter {
  readonly publicKey: Buffer
  readonly dht: Dht
  private server: DhtServer | null = null
  private readonly opts: NetOptions
  private readonly openTimeoutMs: number
  private readonly links = new Map<string, Link>()
  private readonly inbound = new Map<string, Set<Peer>>()
  private readonly topics = new Map<string, Buffer>()
  private announcer: NodeJS.Timeout | null = null
  private destroyed = false
  // Dials started, retries included.
  dials = 0

  constructor (opts: NetOptions) {
    super()
    this.opts = opts
    this.openTimeoutMs = opts.openTimeoutMs ?? OPEN_TIMEOUT_MS
    this.publicKey = opts.keyPair.publicKey
    // Ephemeral: coopfs nodes use the DHT but do not route for it. Measured on loopback: left to adapt,
    // nodes turn persistent after about 10 s and, until they announce again, dials to them report open but
    // carry nothing (2-40 s of failed dials); made persistent from the start, every node that dies stays in
    // the others' routing tables and a restarting node took 12 s to come up. Ephemeral nodes keep only the
    // stable nodes (the bootstrap) in the tables; an occasional first dial that carries nothing is dropped
    // after OPEN_TIMEOUT_MS and the next one works.
    // Reachability: a new node counts itself firewalled until the DHT has checked that others can reach it
    // (10-25 s here). Until then a server does not take its dials at once but waits for a first packet,
    // which from partners that had run for minutes on loopback did not come: the dial reported open and
    // carried nothing, and a recovered node took up to 26 s to reach all its partners. A node bound to a
    // loopback address is reachable by every node that can talk to it at all, so it says so from the start
    // (recovery then finds and reaches six partners in under a second). Elsewhere the DHT's own check
    // decides.
    this.dht = new HyperDHT({
      bootstrap: opts.bootstrap,
      host: opts.host,
      keyPair: opts.keyPair,
      ephemeral: true,
      ...(isLoopback(opts.host) ? { firewalled: false } : {})
    }) as Dht
  }

  // Joins the DHT and starts taking connections, waiting at most waitMs for that: on a machine that is
  // offline, or whose bootstrap nodes do not answer (or whose names do not resolve), the first round of
  // the DHT's bootstrap takes 12 s or more, and that must not hold up a mount. A join not finished by then
  // goes on in the background; 'joined' tells when it ends, with the number of DHT nodes that answered.
  // Resolves to whether it finished in time; fails if the join failed in that time.
  async start (waitMs = Infinity): Promise<boolean> {
    let joined = false
    let failure: unknown = null
    const joining = this.join().then(() => {
      joined = true
      if (!this.destroyed) this.emit('joined', this.dht.toArray().length)
    }, err => {
      failure = err
      if (!this.destroyed) this.emit('join-failed', err)
    })
    if (waitMs === Infinity) await joining
    else await bounded(joining, waitMs)
    if (failure !== null) throw failure
    return joined
  }

  private async join (): Promise<void> {
    await this.dht.ready()
    if (this.destroyed) return
    this.server = this.dht.createServer({ firewall: key => this.destroyed || !this.opts.allow(key) }, socket => this.onInbound(socket))
    await this.server.listen(this.opts.keyPair)
    if (this.destroyed) return
    this.announcer = setInterval(() => {
      for (const t of this.topics.values()) this.announceOnce(t)
    }, ANNOUNCE_EVERY_MS)
    this.announcer.unref()
  }

  private onInbound (socket: any): void {
    const key: Buffer = socket.remotePublicKey
    if (this.destroyed || !this.opts.allow(key)) {
      socket.on('error', () => {})
      socket.destroy()
      return
    }
    const peer = this.wrap(socket, key, this.openTimeoutMs * 4)
    let set = this.inbound.get(peer.hex)
    if (!set) this.inbound.set(peer.hex, set = new Set())
    set.add(peer)
    peer.once('close', () => {
      set!.delete(peer)
      if (!set!.size && this.inbound.get(peer.hex) === set) this.inbound.delete(peer.hex)
    })
    peer.opened.then(ok => { if (ok && !peer.closed) this.emit('inbound', peer) }, () => {})
  }

  private wrap (socket: any, key: Buffer, openTimeoutMs: number): Peer {
    const peer = new Peer(socket, key, this.opts.handlers)
    setTimeout(() => { if (!peer.remoteVersion) peer.destroy() }, openTimeoutMs).unref()
    return peer
  }

  // Keeps a connection to key for this node's own requests, redialing whenever it drops.
  connectTo (key: Buffer): void {
    const hex = key.toString('hex')
    if (this.links.has(hex) || this.destroyed) return
    const link: Link = { key, peer: null, attempts: 0, timer: null, dialing: false }
    this.links.set(hex, link)
    this.dial(link)
  }

  private dial (link: Link): void {
    if (this.destroyed || this.links.get(link.key.toString('hex')) !== link || link.dialing) return
    link.dialing = true
    this.dials++
    const socket = this.dht.connect(link.key, { keyPair: this.opts.keyPair })
    socket.on('error', () => {})
    const peer = this.wrap(socket, link.key, this.openTimeoutMs * 2 ** Math.min(link.attempts, 3))
    peer.opened.then(ok => {
      link.dialing = false
      if (!ok || peer.closed) return
      link.attempts = 0
      link.peer = peer
      this.emit('peer', peer)
    }, () => {})
    peer.once('close', () => {
      link.dialing = false
      if (link.peer === peer) {
        link.peer = null
        this.emit('peer-closed', peer)
      }
      this.redial(link)
    })
  }

  private redial (link: Link): void {
    if (this.destroyed || this.links.get(link.key.toString('hex')) !== link || link.timer) return
    const wait = REDIAL_BACKOFFS_MS[Math.min(link.attempts, REDIAL_BACKOFFS_MS.length - 1)]
    link.attempts++
    link.timer = setTimeout(() => {
      link.timer = null
      this.dial(link)
    }, wait)
    link.timer.unref()
  }

  // Dial now rather than at the end of the back-off (the partner was just seen elsewhere, say).
  hurry (hex: string): void {
    const link = this.links.get(hex)
    if (!link || link.peer || link.dialing) return
    if (link.timer) clearTimeout(link.timer)
    link.timer = null
    link.attempts = 0
    this.dial(link)
  }

  forget (key: Buffer): void {
    const hex = key.toString('hex')
    const link = this.links.get(hex)
    this.links.delete(hex)
    if (link?.timer) clearTimeout(link.timer)
    link?.peer?.destroy()
  }

  // The open connection this node dialed to key, if there is one.
  peer (hex: string): Peer | undefined {
    const p = this.links.get(hex)?.peer
    return p && !p.closed ? p : undefined
  }

  // Whether key has a connection open either way.
  seen (hex: string): boolean {
    return this.peer(hex) !== undefined || (this.inbound.get(hex)?.size ?? 0) > 0
  }

  connected (): Peer[] {
    const out: Peer[] = []
    for (const l of this.links.values()) if (l.peer && !l.peer.closed) out.push(l.peer)
    return out
  }

  // Waits up to ms for the connection this node dials to key.
  async waitPeer (hex: string, ms: number): Promise<Peer | null> {
    const now = this.peer(hex)
    if (now || ms <= 0 || this.destroyed) return now ?? null
    this.hurry(hex)
    return new Promise(resolve => {
      const done = (p: Peer | null): void => {
        clearTimeout(timer)
        this.off('peer', onPeer)
        resolve(p)
      }
      const onPeer = (p: Peer): void => { if (p.hex === hex) done(p) }
      const timer = setTimeout(() => done(null), ms)
      this.on('peer', onPeer)
    })
  }

  // Partners announce the recovery topics of the owners they hold data for; an owner that lost its disk
  // looks them up there.
  announce (topic: Buffer): void {
    const hex = topic.toString('hex')
    if (this.topics.has(hex)) return
    this.topics.set(hex, topic)
    this.announceOnce(topic)
  }

  private announceOnce (topic: Buffer): void {
    if (this.destroyed) return
    this.dht.announce(topic, this.opts.keyPair).finished().catch(() => {})
  }

  // The keys announced on topic.
  async lookup (topic: Buffer): Promise<Buffer[]> {
    const found = new Map<string, Buffer>()
    try {
      for await (const reply of this.dht.lookup(topic)) {
        for (const p of reply.peers) found.set(p.publicKey.toString('hex'), p.publicKey)
      }
    } catch {}
    return [...found.values()]
  }

  address (): { host: string, port: number } {
    return this.dht.address()
  }

  async destroy (): Promise<void> {
    if (this.destroyed) return
    this.destroyed = true
    if (this.announcer) clearInterval(this.announcer)
    for (const l of this.links.values()) {
      if (l.timer) clearTimeout(l.timer)
      l.peer?.destroy()
    }
    this.links.clear()
    for (const set of this.inbound.values()) for (const p of set) p.destroy()
    // Closing the server takes its announcements back from the DHT, a round of queries that can wait on
    // nodes that are gone: it gets a bounded time, then the DHT is destroyed regardless.
    if (this.server) await bounded(this.server.close(), SERVER_CLOSE_MS)
    await this.dht.destroy({ force: true }).catch(() => {})
  }
}

// Waits for p (its failure ignored) or ms, whichever comes first.
function bounded (p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const limit = new Promise<void>(resolve => { timer = setTimeout(resolve, ms) })
  return Promise.race([p.then(() => {}, () => {}), limit]).finally(() => clearTimeout(timer))
}

export function isLoopback (host: string | undefined): boolean {
  return host !== undefined && (/^127\.\d+\.\d+\.\d+$/.test(host) || host === '::1' || host === 'localhost')
}

// One connection to another coopfs node: the coopfs protomux channel on a Noise stream, with requests
// (each waiting for the answer that repeats its id, within a timeout) in both directions. Anything
// malformed or unexpected closes this connection and nothing else.
import { EventEmitter } from 'node:events'
import type { Duplex } from 'node:stream'
import Protomux from 'protomux'
import { CoopError } from '../errors.js'
import {
  MESSAGES, MESSAGE_NAMES, PROTOCOL, PROTOCOL_VERSION, REPLY, REPLY_CODE_NAMES, hello,
  type Hello, type MessageName, type Reply
} from './wire.js'

// Requests this side serves at once for one peer; more are answered "busy".
const MAX_INBOUND = 64
// Requests this side has outstanding to one peer; more wait their turn.
const MAX_OUTBOUND = 32

export type Answer =
  | { kind: 'reply', code: number, data: Buffer, text: string }
  | { kind: 'accept', slots: number, topic: Buffer }
  | { kind: 'reject', reason: string }

// What a node does with the requests of a peer. A handler that throws a CoopError answers with that
// error's reply code; anything else answers "failed" without details.
export interface Handlers {
  propose (peer: Peer, slots: number, topic: Buffer): Promise<{ slots: number, topic: Buffer } | { reason: string }>
  writeBlock (peer: Peer, slot: number, data: Buffer): Promise<void>
  readBlock (peer: Peer, slot: number): Promise<Buffer | null>
  getMaster (peer: Peer): Promise<Buffer | null>
  putMaster (peer: Peer, data: Buffer): Promise<void>
  ping (peer: Peer): Promise<void>
  restored (peer: Peer): Promise<void>
}

export const REPLY_FOR_CODE: Record<string, number> = {
  ENOAGREEMENT: REPLY.noAgreement,
  ESLOT: REPLY.badSlot,
  EQUOTA: REPLY.quota,
  EBLOCK: REPLY.badBlock,
  EBUSY: REPLY.busy,
  ESTALE: REPLY.stale
}

interface Waiter {
  resolve: (a: Answer) => void
  reject: (e: Error) => void
  timer: NodeJS.Timeout
}

type Senders = Record<MessageName, { send (v: unknown): boolean }>

export class Peer extends EventEmitter {
  readonly remoteKey: Buffer
  readonly hex: string
  readonly opened: Promise<boolean>
  remoteVersion = 0
  closed = false
  private closing = false
  private readonly socket: Duplex
  private readonly channel: ReturnType<Protomux['createChannel']>
  private readonly send: Senders
  private readonly waiting = new Map<number, Waiter>()
  private nextId = 1
  private inbound = 0
  private outbound = 0
  private readonly queue: Array<() => void> = []

  constructor (socket: Duplex, remoteKey: Buffer, private readonly handlers: Handlers) {
    super()
    this.socket = socket
    this.remoteKey = remoteKey
    this.hex = remoteKey.toString('hex')
    let markOpen: (ok: boolean) => void = () => {}
    this.opened = new Promise(resolve => { markOpen = resolve })
    socket.on('error', () => {})
    socket.once('close', () => this.onClose(markOpen))
    const mux = Protomux.from(socket)
    const channel = mux.createChannel({
      protocol: PROTOCOL,
      handshake: hello,
      onopen: (h: Hello) => {
        if (h.version !== PROTOCOL_VERSION) {
          this.destroy(new CoopError('EPROTO', `peer speaks protocol version ${h.version}, this node ${PROTOCOL_VERSION}`))
          return
        }
        this.remoteVersion = h.version
        markOpen(true)
      },
      onclose: () => this.destroy()
    })
    if (!channel) {
      this.channel = null
      this.send = {} as Senders
      socket.destroy()
      return
    }
    this.channel = channel
    const send: Partial<Senders> = {}
    for (const name of MESSAGE_NAMES) {
      send[name] = channel.addMessage({
        encoding: MESSAGES[name],
        onmessage: (m: any) => this.onMessage(name, m)
      })
    }
    this.send = send as Senders
    // protomux drops messages of a type the channel does not know; both ends speak the same version (hello
    // checks it), so such a message is a broken peer: close the connection. (_recv is protomux's per-channel
    // dispatch; test/wire.test.ts checks that this still holds.)
    const ch = channel as unknown as { _recv: (type: number, state: unknown) => unknown }
    const recv = ch._recv.bind(channel)
    ch._recv = (type, state) => {
      if (type >= MESSAGE_NAMES.length) {
        this.destroy(new CoopError('EPROTO', `peer sent unknown message type ${type}`))
        return null
      }
      return recv(type, state)
    }
    channel.open({ version: PROTOCOL_VERSION, features: 0 })
  }

  destroy (err?: Error): void {
    if (this.closed) return
    // Messages already received in the same batch are not served once the connection is condemned.
    this.closing = true
    this.socket.destroy(err)
  }

  private onClose (markOpen: (ok: boolean) => void): void {
    if (this.closed) return
    this.closed = true
    markOpen(false)
    for (const w of this.waiting.values()) {
      clearTimeout(w.timer)
      w.reject(new CoopError('ECLOSED', `connection to ${this.hex.slice(0, 12)} closed`))
    }
    this.waiting.clear()
    for (const go of this.queue.splice(0)) go()
    this.emit('close')
  }

  // ---- outbound requests ----

  private async request (name: MessageName, fields: Record<string, unknown>, timeoutMs: number): Promise<Answer> {
    while (this.outbound >= MAX_OUTBOUND && !this.closed) await new Promise<void>(resolve => this.queue.push(resolve))
    if (this.closed || this.closing) throw new CoopError('ECLOSED', `connection to ${this.hex.slice(0, 12)} closed`)
    this.outbound++
    try {
      const id = this.nextId++
      return await new Promise<Answer>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.waiting.delete(id)
          reject(new CoopError('ETIMEDOUT', `peer ${this.hex.slice(0, 12)} did not answer ${name} in ${timeoutMs} ms`))
        }, timeoutMs)
        this.waiting.set(id, { resolve, reject, timer })
        let sent = false
        try {
          sent = this.send[name].send({ id, ...fields })
        } catch {}
        // Not sent (the channel is closing, or the fields do not encode): fail now, not at the timeout.
        if (!sent && (this.closed || this.closing || !this.channel?.opened)) {
          clearTimeout(timer)
          this.waiting.delete(id)
          reject(new CoopError('ECLOSED', `connection to ${this.hex.slice(0, 12)} closed`))
        }
      })
    } finally {
      this.outbound--
      this.queue.shift()?.()
    }
  }

  private async expectReply (name: MessageName, fields: Record<string, unknown>, timeoutMs: number): Promise<Reply> {
    const a = await this.request(name, fields, timeoutMs)
    if (a.kind !== 'reply') throw this.protocolError(`answered ${name} with ${a.kind}`)
    if (a.code !== REPLY.ok && a.code !== REPLY.notFound) {
      throw new CoopError(REPLY_CODE_NAMES[a.code] ?? 'EFAILED', `peer ${this.hex.slice(0, 12)} refused ${name}: ${a.text || 'no reason given'}`)
    }
    return { id: 0, code: a.code, data: a.data, text: a.text }
  }

  async propose (slots: number, topic: Buffer, timeoutMs: number): Promise<Answer> {
    const a = await this.request('propose', { slots, topic }, timeoutMs)
    if (a.kind === 'reply') throw this.protocolError('answered propose with a reply')
    return a
  }

  async writeBlock (slot: number, data: Buffer, timeoutMs: number): Promise<void> {
    await this.expectReply('writeBlock', { slot, data }, timeoutMs)
  }

  async readBlock (slot: number, timeoutMs: number): Promise<Buffer | null> {
    const r = await this.expectReply('readBlock', { slot }, timeoutMs)
    return r.code === REPLY.notFound ? null : r.data
  }

  async getMaster (timeoutMs: number): Promise<Buffer | null> {
    const r = await this.expectReply('getMaster', {}, timeoutMs)
    return r.code === REPLY.notFound ? null : r.data
  }

  async putMaster (data: Buffer, timeoutMs: number): Promise<void> {
    await this.expectReply('putMaster', { data }, timeoutMs)
  }

  async ping (timeoutMs: number): Promise<void> {
    await this.expectReply('ping', {}, timeoutMs)
  }

  async restored (timeoutMs: number): Promise<void> {
    await this.expectReply('restored', {}, timeoutMs)
  }

  private protocolError (what: string): CoopError {
    const err = new CoopError('EPROTO', `peer ${this.hex.slice(0, 12)} broke the protocol: ${what}`)
    this.destroy(err)
    return err
  }

  // ---- inbound messages ----

  private onMessage (name: MessageName, m: any): void {
    if (this.closed || this.closing) return
    switch (name) {
      case 'reply': return this.answer(m.id, { kind: 'reply', code: m.code, data: m.data, text: m.text })
      case 'accept': return this.answer(m.id, { kind: 'accept', slots: m.slots, topic: m.topic })
      case 'reject': return this.answer(m.id, { kind: 'reject', reason: m.reason })
    }
    if (this.inbound >= MAX_INBOUND) {
      // A proposal is answered with accept or reject, never with a reply.
      if (name === 'propose') this.send.reject.send({ id: m.id, reason: 'busy: too many requests at once' })
      else this.send.reply.send({ id: m.id, code: REPLY.busy, data: Buffer.alloc(0), text: 'too many requests at once' })
      return
    }
    this.inbound++
    this.serve(name, m).catch(() => {}).finally(() => { this.inbound-- })
  }

  private answer (id: number, a: Answer): void {
    const w = this.waiting.get(id)
    // An answer to nothing asked (or asked and given up on after its timeout) is ignored: a late answer
    // is normal, and acting on it could not do harm.
    if (!w) return
    this.waiting.delete(id)
    clearTimeout(w.timer)
    w.resolve(a)
  }

  private async serve (name: MessageName, m: any): Promise<void> {
    const h = this.handlers
    const reply = (code: number, data?: Buffer | null, text = ''): void => {
      if (!this.closed && !this.closing) this.send.reply.send({ id: m.id, code, data: data ?? Buffer.alloc(0), text })
    }
    try {
      switch (name) {
        case 'propose': {
          const r = await h.propose(this, m.slots, m.topic)
          if (this.closed || this.closing) return
          if ('reason' in r) this.send.reject.send({ id: m.id, reason: r.reason.slice(0, 200) })
          else this.send.accept.send({ id: m.id, slots: r.slots, topic: r.topic })
          return
        }
        case 'writeBlock': await h.writeBlock(this, m.slot, m.data); return reply(REPLY.ok)
        case 'readBlock': {
          const b = await h.readBlock(this, m.slot)
          return b ? reply(REPLY.ok, b) : reply(REPLY.notFound)
        }
        case 'getMaster': {
          const b = await h.getMaster(this)
          return b ? reply(REPLY.ok, b) : reply(REPLY.notFound)
        }
        case 'putMaster': await h.putMaster(this, m.data); return reply(REPLY.ok)
        case 'ping': await h.ping(this); return reply(REPLY.ok)
        case 'restored': await h.restored(this); return reply(REPLY.ok)
      }
    } catch (err) {
      const e = (err ?? {}) as CoopError
      if (e.code === 'ENOAGREEMENT') {
        // A key without an agreement gets nothing: not even an answer.
        this.destroy()
        return
      }
      const code = REPLY_FOR_CODE[e.code]
      reply(code ?? REPLY.failed, null, code ? String(e.message).slice(0, 200) : 'the request failed')
    }
  }
}

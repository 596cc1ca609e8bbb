// The coopfs wire protocol: one protomux channel per connection, compact-encoding messages. Both ends of a
// connection may send requests; every request carries an id that its answer repeats. docs/PROTOCOL.md
// describes each message byte by byte.
import c from 'compact-encoding'

export const PROTOCOL = 'coopfs'
export const PROTOCOL_VERSION = 1

// Larger fields are refused before anything is allocated for them.
export const MAX_BLOCK_BYTES = 1 << 20
export const MAX_MASTER_BYTES = 8 << 20
export const MAX_TEXT_BYTES = 1024
export const MAX_SLOT = 2 ** 32 - 1

type State = { start: number, end: number, buffer: Buffer | null }

interface Encoding<T> {
  preencode (state: State, v: T): void
  encode (state: State, v: T): void
  decode (state: State): T
}

function fail (what: string): never {
  throw new Error(`malformed message: ${what}`)
}

// A length-prefixed field of at most max bytes, as a view into the frame; refused before anything is
// allocated for a length over max or past the frame's end.
function bytesField (state: State, max: number, what = 'field'): Buffer {
  const len = c.uint.decode(state)
  if (len > max) fail(what === 'text' ? 'text too long' : `field of ${len} bytes, at most ${max} allowed`)
  if (state.end - state.start < len) fail(`truncated ${what}`)
  const b = state.buffer!.subarray(state.start, state.start + len)
  state.start += len
  return b
}

// view: decode to a view into the received frame instead of a copy. A message of a block's size arrives in a
// buffer of its own (the secret stream assembles it, or hands on the transport's delivery that held it
// whole), and nothing writes to it afterwards, so the view keeps nothing much bigger than the block alive;
// copying 256 KiB per block read back cost a restoring daemon's main thread about 0.45 s per 512 MiB.
function boundedBuffer (max: number, view = false): Encoding<Buffer> {
  return {
    preencode (state, v) { c.buffer.preencode(state, v) },
    encode (state, v) { c.buffer.encode(state, v) },
    decode (state) {
      const b = bytesField(state, max)
      return view ? b : Buffer.from(b)
    }
  }
}

const block = boundedBuffer(MAX_BLOCK_BYTES, true)
const master = boundedBuffer(MAX_MASTER_BYTES)
// A reply's data: a block read back (the hot path of a restore), a master block, or nothing.
const replyData = boundedBuffer(MAX_MASTER_BYTES, true)
// A copy, not a view into the received frame: topics are kept for as long as the node runs.
const topic: Encoding<Buffer> = {
  preencode (state, v) { (c.fixed32 as unknown as Encoding<Buffer>).preencode(state, v) },
  encode (state, v) { (c.fixed32 as unknown as Encoding<Buffer>).encode(state, v) },
  decode (state) { return Buffer.from((c.fixed32 as unknown as Encoding<Buffer>).decode(state)) }
}

const text: Encoding<string> = {
  preencode (state, v) { c.string.preencode(state, v) },
  encode (state, v) { c.string.encode(state, v) },
  decode (state) { return bytesField(state, MAX_TEXT_BYTES, 'text').toString('utf8') }
}

const slotNumber: Encoding<number> = {
  preencode (state, v) { c.uint.preencode(state, v) },
  encode (state, v) { c.uint.encode(state, v) },
  decode (state) {
    const v = c.uint.decode(state)
    if (v > MAX_SLOT) fail('slot out of range')
    return v
  }
}

// A struct of named fields, each with its encoding, in order. Decoding fails on bytes left over.
function struct<T extends object> (fields: Array<[keyof T & string, Encoding<any>]>): Encoding<T> {
  return {
    preencode (state, v) {
      for (const [name, enc] of fields) enc.preencode(state, (v as Record<string, unknown>)[name])
    },
    encode (state, v) {
      for (const [name, enc] of fields) enc.encode(state, (v as Record<string, unknown>)[name])
    },
    decode (state) {
      const out: Record<string, unknown> = {}
      for (const [name, enc] of fields) out[name] = enc.decode(state)
      return out as T
    }
  }
}

// Whole-message encodings also refuse trailing bytes.
function message<T extends object> (fields: Array<[keyof T & string, Encoding<any>]>): Encoding<T> {
  const s = struct<T>(fields)
  return {
    preencode: s.preencode,
    encode: s.encode,
    decode (state) {
      const v = s.decode(state)
      if (state.start !== state.end) fail('trailing bytes')
      return v
    }
  }
}

const id = c.uint as unknown as Encoding<number>

export interface Hello { version: number, features: number }
export interface Propose { id: number, slots: number, topic: Buffer }
export interface Accept { id: number, slots: number, topic: Buffer }
export interface Reject { id: number, reason: string }
export interface WriteBlock { id: number, slot: number, data: Buffer }
export interface ReadBlock { id: number, slot: number }
export interface PutMaster { id: number, data: Buffer }
export interface Bare { id: number }
export interface Reply { id: number, code: number, data: Buffer, text: string }

export const hello = message<Hello>([['version', c.uint], ['features', c.uint]])

// Message types, in protomux message order: never reorder, only append.
export const MESSAGES = {
  propose: message<Propose>([['id', id], ['slots', slotNumber], ['topic', topic]]),
  accept: message<Accept>([['id', id], ['slots', slotNumber], ['topic', topic]]),
  reject: message<Reject>([['id', id], ['reason', text]]),
  writeBlock: message<WriteBlock>([['id', id], ['slot', slotNumber], ['data', block]]),
  readBlock: message<ReadBlock>([['id', id], ['slot', slotNumber]]),
  getMaster: message<Bare>([['id', id]]),
  putMaster: message<PutMaster>([['id', id], ['data', master]]),
  ping: message<Bare>([['id', id]]),
  restored: message<Bare>([['id', id]]),
  reply: message<Reply>([['id', id], ['code', c.uint], ['data', replyData], ['text', text]])
} as const

export type MessageName = keyof typeof MESSAGES
export const MESSAGE_NAMES = Object.keys(MESSAGES) as MessageName[]

// Reply codes: 0 is success; the rest name why a request was refused.
export const REPLY = {
  ok: 0,
  noAgreement: 1,
  badSlot: 2,
  quota: 3,
  badBlock: 4,
  busy: 5,
  notFound: 6,
  stale: 7,
  failed: 8
} as const

export const REPLY_CODE_NAMES: Record<number, string> = {
  1: 'ENOAGREEMENT',
  2: 'ESLOT',
  3: 'EQUOTA',
  4: 'EBLOCK',
  5: 'EBUSY',
  6: 'ENOTFOUND',
  7: 'ESTALE',
  8: 'EFAILED'
}

export function encode<T> (enc: Encoding<T>, v: T): Buffer {
  return c.encode(enc as any, v) as Buffer
}

export function decode<T> (enc: Encoding<T>, buf: Buffer): T {
  return c.decode(enc as any, buf) as T
}

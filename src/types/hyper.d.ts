// The parts of protomux and hyperdht coopfs uses (the packages ship no types).
declare module 'protomux' {
  import type { Duplex } from 'node:stream'
  interface Message {
    send (value: unknown): boolean
  }
  interface Channel {
    opened: boolean
    closed: boolean
    addMessage (opts: { encoding: unknown, onmessage?: (value: any) => void }): Message
    open (handshake?: unknown): void
    close (): void
    cork (): void
    uncork (): void
  }
  interface ChannelOptions {
    protocol: string
    id?: Buffer | null
    handshake?: unknown
    onopen?: (handshake: any) => void | Promise<void>
    onclose?: () => void | Promise<void>
    ondestroy?: () => void | Promise<void>
  }
  class Protomux {
    static from (stream: Duplex): Protomux
    createChannel (opts: ChannelOptions): Channel | null
    destroy (err?: Error): void
  }
  export = Protomux
}

declare module 'hyperdht' {
  import { EventEmitter } from 'node:events'
  interface KeyPair { publicKey: Buffer, secretKey: Buffer }
  interface DHTOptions {
    bootstrap?: Array<string | { host: string, port: number }>
    host?: string
    port?: number
    keyPair?: KeyPair
    ephemeral?: boolean
    firewalled?: boolean
    anyPort?: boolean
  }
  class HyperDHT extends EventEmitter {
    constructor (opts?: DHTOptions)
    static bootstrapper (port: number, host: string, opts?: DHTOptions): HyperDHT
    static keyPair (seed?: Buffer): KeyPair
    defaultKeyPair: KeyPair
    destroyed: boolean
    ready (): Promise<void>
    address (): { host: string, port: number }
    destroy (opts?: { force?: boolean }): Promise<void>
  }
  export = HyperDHT
}

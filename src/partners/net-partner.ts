// A partner reached over the network: the owner's side of an agreement, on the connection the partner
// service keeps. A read from a partner that is offline reports the block missing at once (the partner set
// decodes around it, and waits a bounded time only when too few partners are up); writes fail after a
// bounded wait so the stripe can count its acks.
import { CoopError } from '../errors.js'
import { READ_WAIT_MS, REQUEST_TIMEOUT_MS, WRITE_WAIT_MS } from '../config.js'

const MASTER_WAIT_MS = READ_WAIT_MS
import type { NetNode } from '../net/node.js'
import type { Peer } from '../net/peer.js'
import type { Partner } from './partner.js'

// Where a NetPartner finds its connection: the partner service (which also knows whether the agreement
// holds), or a bare node while recovering.
export interface PeerSource {
  readonly node: NetNode
  online (hex: string): boolean
}

export class NetPartner implements Partner {
  readonly id: Buffer
  readonly label: string
  readonly slots: number
  private readonly hex: string
  private readonly service: PeerSource

  constructor (service: PeerSource, id: Buffer, slots: number) {
    this.service = service
    this.id = id
    this.hex = id.toString('hex')
    this.label = this.hex.slice(0, 16)
    this.slots = slots
  }

  online (): boolean {
    return this.service.online(this.hex)
  }

  private async peer (waitMs: number): Promise<Peer | null> {
    const deadline = Date.now() + waitMs
    for (;;) {
      if (this.online()) {
        const p = this.service.node.peer(this.hex)
        if (p) return p
      }
      const left = deadline - Date.now()
      if (left <= 0) return null
      // The connection may be up before the agreement is confirmed on it: look again shortly.
      await this.service.node.waitPeer(this.hex, Math.min(left, 200))
      if (!this.service.node.peer(this.hex)) await new Promise(resolve => setTimeout(resolve, Math.min(left, 200)))
    }
  }

  private async must (): Promise<Peer> {
    const p = await this.peer(WRITE_WAIT_MS)
    if (!p) throw new CoopError('EOFFLINE', `partner ${this.label} is offline`)
    return p
  }

  async writeBlock (slot: number, block: Buffer): Promise<void> {
    await (await this.must()).writeBlock(slot, block, REQUEST_TIMEOUT_MS)
  }

  async readBlock (slot: number): Promise<Buffer | null> {
    const p = this.online() ? this.service.node.peer(this.hex) : undefined
    if (!p) return null
    try {
      return await p.readBlock(slot, REQUEST_TIMEOUT_MS)
    } catch {
      return null
    }
  }

  async waitOnline (ms: number): Promise<boolean> {
    return (await this.peer(ms)) !== null
  }

  // Partners acknowledge a block only once it is on their disk.
  async flush (): Promise<void> {}

  async putMaster (data: Buffer): Promise<void> {
    await (await this.must()).putMaster(data, REQUEST_TIMEOUT_MS)
  }

  async getMaster (): Promise<Buffer | null> {
    const p = await this.peer(MASTER_WAIT_MS)
    return p ? p.getMaster(REQUEST_TIMEOUT_MS) : null
  }

  async close (): Promise<void> {}
}

// A column of the stripe that no partner fills yet: every write to it misses, every read finds nothing.
export class AbsentPartner implements Partner {
  readonly id: Buffer
  readonly label: string
  readonly slots: number

  constructor (index: number, slots: number) {
    this.id = Buffer.alloc(32)
    this.label = `(no partner yet for column ${index})`
    this.slots = slots
  }

  online (): boolean { return false }
  async writeBlock (): Promise<void> { throw new CoopError('EOFFLINE', 'no partner for this column yet') }
  async readBlock (): Promise<Buffer | null> { return null }
  async flush (): Promise<void> {}
  async putMaster (): Promise<void> { throw new CoopError('EOFFLINE', 'no partner for this column yet') }
  async getMaster (): Promise<Buffer | null> { return null }
  async close (): Promise<void> {}
}

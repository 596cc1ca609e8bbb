// The partner set: places the n blocks of each stripe (one per partner, all at the same slot), waits for w
// acknowledgements, reads data blocks back (systematic first, decoding from any k when needed) and keeps
// the master block on every partner.
import { CoopError } from '../errors.js'
import { READ_WAIT_MS } from '../config.js'
import { blockPayload, type BlockCheck } from '../stripe/block.js'
import type { Sealer } from '../crypto/seal-pool.js'
import type { ReedSolomon } from '../stripe/reed-solomon.js'
import type { Partner } from './partner.js'

const MAX_DAMAGE_RECORDS = 100

export interface DamageRecord {
  slot: number
  block: number
  partner: string
  problem: Exclude<BlockCheck, 'ok'>
  at: string
}

export interface PartnerSetOptions {
  partners: Partner[]
  k: number
  m: number
  blockSize: number
  rs: ReedSolomon
  writeQuorum?: number
  // How long a read waits for partners that are away when too few are up to decode.
  readWaitMs?: number
  // Computes and checks block MACs (with the owner's integrity key), inline or on worker threads.
  sealer: Sealer
}

export class PartnerSet {
  readonly partners: Partner[]
  readonly k: number
  readonly m: number
  readonly n: number
  readonly blockSize: number
  readonly writeQuorum: number
  readonly readWaitMs: number
  private readonly gaveUpAt = new Map<Partner, number>()
  readonly damage: DamageRecord[] = []
  damageCount = 0
  private readonly sealer: Sealer
  private readonly rs: ReedSolomon
  // Called for every block of a stripe its partner did not take (before or after the stripe reached its
  // quorum): the block has to be rebuilt and sent later.
  onMissed: (slot: number, version: number, index: number) => void = () => {}

  constructor ({ partners, k, m, blockSize, rs, writeQuorum = Math.max(k, k + m - 1), readWaitMs = READ_WAIT_MS, sealer }: PartnerSetOptions) {
    if (partners.length !== k + m) throw new CoopError('EPARTNERS', `a k=${k}, m=${m} stripe needs ${k + m} partners; ${partners.length} configured`)
    this.partners = partners
    this.k = k
    this.m = m
    this.n = k + m
    this.blockSize = blockSize
    this.writeQuorum = writeQuorum
    this.readWaitMs = readWaitMs
    this.sealer = sealer
    this.rs = rs
  }

  // Rotating placement spreads data blocks (the ones read first) over every partner.
  partnerFor (slot: number, index: number): Partner {
    return this.partners[(index + slot) % this.n]
  }

  // data holds the k data blocks of the stripe back to back.
  async writeStripe (slot: number, version: number, data: Buffer): Promise<void> {
    const shards: Buffer[] = []
    for (let i = 0; i < this.k; i++) shards.push(data.subarray(i * this.blockSize, (i + 1) * this.blockSize))
    const parity = await this.rs.encode(shards)
    const targets = shards.concat(parity).map((_, i) => this.partnerFor(slot, i))
    const blocks = await this.sealer.sealBlocks(slot, version, targets.map(p => p.id), shards.concat(parity))
    let acks = 0
    let failures = 0
    const errors: string[] = []
    await new Promise<void>((resolve, reject) => {
      blocks.forEach((block, i) => {
        const p = targets[i]
        p.writeBlock(slot, block).then(() => {
          if (++acks === this.writeQuorum) resolve()
        }, (err: Error) => {
          this.onMissed(slot, version, i)
          errors.push(`${p.label}: ${err.message}`)
          if (++failures > this.n - this.writeQuorum) {
            reject(new CoopError('EWRITE', `stripe ${slot} reached only ${acks} of ${this.writeQuorum} partners (${errors.join('; ')})`))
          }
        })
      })
    })
  }

  // Returns data blocks first..last (inclusive) of the stripe, back to back, verified.
  // skip names a block not to read (the one being rebuilt).
  async readData (slot: number, version: number, first: number, last: number, skip = -1): Promise<Buffer> {
    const wanted: number[] = []
    for (let i = first; i <= last; i++) wanted.push(i)
    const shards: (Buffer | null)[] = new Array(this.n).fill(null)
    const tried = new Set<number>(skip >= 0 ? [skip] : [])
    const fetch = async (indexes: number[]): Promise<void> => {
      await Promise.all(indexes.map(async i => {
        tried.add(i)
        shards[i] = await this.fetchBlock(slot, version, i)
      }))
    }
    await fetch(wanted.filter(i => i !== skip))
    if (wanted.every(i => shards[i] !== null)) return concat(wanted.map(i => shards[i]!))

    const rest: number[] = []
    for (let i = 0; i < this.n; i++) if (!tried.has(i)) rest.push(i)
    await fetch(rest)
    let present = shards.filter(s => s !== null).length
    if (present < this.k) {
      // Too few partners answered: give the ones that are away a bounded time to come back, then retry them.
      const missing: number[] = []
      for (let i = 0; i < this.n; i++) if (shards[i] === null && i !== skip) missing.push(i)
      const back = await Promise.all(missing.map(i => this.waitFor(this.partnerFor(slot, i))))
      await fetch(missing.filter((_, j) => back[j]))
      present = shards.filter(s => s !== null).length
    }
    if (present < this.k) {
      throw new CoopError('EIO', `stripe ${slot}: only ${present} of the ${this.k} blocks needed could be read and verified`)
    }
    const rebuilt = await this.rs.reconstruct(shards, wanted)
    return concat(rebuilt)
  }

  // A partner that did not come back within the read wait is not waited for again for a while: later reads
  // fail (or decode) at once instead of each waiting in turn.
  private async waitFor (p: Partner): Promise<boolean> {
    if (!p.waitOnline) return false
    const gaveUp = this.gaveUpAt.get(p)
    if (gaveUp !== undefined && Date.now() - gaveUp < this.readWaitMs * 3) return p.online()
    const back = await p.waitOnline(this.readWaitMs)
    if (back) this.gaveUpAt.delete(p)
    else this.gaveUpAt.set(p, Date.now())
    return back
  }

  // Rebuilds block index of a stripe from the others (any k) and sends it to its partner: for a partner
  // that was away when the stripe was written, or lost its disk.
  async rebuildBlock (slot: number, version: number, index: number): Promise<void> {
    const data = await this.readData(slot, version, 0, this.k - 1, index)
    const shards: Buffer[] = []
    for (let i = 0; i < this.k; i++) shards.push(data.subarray(i * this.blockSize, (i + 1) * this.blockSize))
    const payload = index < this.k ? shards[index] : (await this.rs.encode(shards))[index - this.k]
    const p = this.partnerFor(slot, index)
    const [block] = await this.sealer.sealBlocks(slot, version, [p.id], [payload])
    await p.writeBlock(slot, block)
  }

  private async fetchBlock (slot: number, version: number, index: number): Promise<Buffer | null> {
    const p = this.partnerFor(slot, index)
    // A partner that is away is not damage: its blocks are simply not there to read now.
    if (!p.online()) return null
    let block: Buffer | null = null
    try {
      block = await p.readBlock(slot)
    } catch {
      block = null
    }
    const verdict = await this.sealer.checkBlock(p.id, slot, version, block)
    const check = verdict.check
    if (check === 'ok') return blockPayload(verdict.block!)
    this.recordDamage({ slot, block: index, partner: p.label, problem: check, at: new Date().toISOString() })
    return null
  }

  private recordDamage (d: DamageRecord): void {
    this.damageCount++
    this.damage.push(d)
    if (this.damage.length > MAX_DAMAGE_RECORDS) this.damage.shift()
  }

  async flush (): Promise<void> {
    await Promise.all(this.partners.map(p => p.flush()))
  }

  // The master block goes to every partner; it counts as stored once w of them hold it.
  async putMaster (data: Buffer): Promise<number> {
    const results = await Promise.allSettled(this.partners.map(p => p.putMaster(data)))
    const ok = results.filter(r => r.status === 'fulfilled').length
    if (ok < this.writeQuorum) throw new CoopError('EWRITE', `the master block reached only ${ok} of ${this.writeQuorum} partners`)
    return ok
  }

  async getMasters (): Promise<Buffer[]> {
    const results = await Promise.allSettled(this.partners.map(p => p.getMaster()))
    const out: Buffer[] = []
    for (const r of results) if (r.status === 'fulfilled' && r.value) out.push(r.value)
    return out
  }

  async close (): Promise<void> {
    await Promise.all(this.partners.map(p => p.close()))
  }
}

function concat (bufs: Buffer[]): Buffer {
  return bufs.length === 1 ? bufs[0] : Buffer.concat(bufs)
}

// The space this node reserves for one partner: a preallocated area of slots on local disk and the
// partner's master block. Writes are acknowledged once they are on disk; concurrent writes share one
// fdatasync.
import fsp from 'node:fs/promises'
import { LocalDirPartner } from '../partners/local-dir.js'
import { masterSigned } from '../log/master-block.js'
import { CoopError } from '../errors.js'

const MAGIC = Buffer.from('CPFB')

export class HeldArea {
  readonly owner: Buffer
  readonly slots: number
  readonly slotBytes: number
  private readonly area: LocalDirPartner
  private readonly used = new Set<number>()
  private syncing: Promise<void> | null = null
  private syncAgain = false
  private masterVersion = -1

  private constructor (owner: Buffer, area: LocalDirPartner) {
    this.owner = owner
    this.area = area
    this.slots = area.slots
    this.slotBytes = area.slotBytes
  }

  // Reserves the area (refused when the disk could not hold it) or opens the one made before.
  static async open (dir: string, owner: Buffer, slots: number, slotBytes: number, create: boolean): Promise<HeldArea> {
    const area = create ? LocalDirPartner.create(dir, slots, slotBytes) : LocalDirPartner.open(dir)
    const held = new HeldArea(owner, area)
    await held.scan()
    return held
  }

  // Which slots hold a block: written slots start with the block magic, untouched ones are zeros.
  private async scan (): Promise<void> {
    const fh = await fsp.open(this.area.slotsFile, 'r')
    try {
      const head = Buffer.alloc(4)
      for (let s = 0; s < this.slots; s++) {
        const { bytesRead } = await fh.read(head, 0, 4, s * this.slotBytes)
        if (bytesRead === 4 && head.equals(MAGIC)) this.used.add(s)
      }
    } finally {
      await fh.close()
    }
    const m = await this.area.getMaster()
    this.masterVersion = m ? (masterSigned(m, this.owner) ?? -1) : -1
  }

  file (): string {
    return this.area.slotsFile
  }

  usedSlots (): number {
    return this.used.size
  }

  // Errors name the slot, never this node's paths: their text goes back to the partner.
  checkSlot (slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots) {
      throw new CoopError('ESLOT', `slot ${slot} is outside the ${this.slots} slots reserved`)
    }
  }

  // A partner stores sealed blocks only: the right size, starting with the block magic (which is also how
  // the slots in use are found again after a restart).
  checkBlock (slot: number, block: Buffer): void {
    this.checkSlot(slot)
    if (block.length !== this.slotBytes) throw new CoopError('EBLOCK', `block of ${block.length} bytes does not fit a ${this.slotBytes}-byte slot`)
    if (!block.subarray(0, 4).equals(MAGIC)) throw new CoopError('EBLOCK', 'not a coopfs block (no block header)')
  }

  async writeBlock (slot: number, block: Buffer): Promise<void> {
    this.checkBlock(slot, block)
    await this.area.writeBlock(slot, block)
    this.used.add(slot)
    await this.sync()
  }

  async readBlock (slot: number): Promise<Buffer | null> {
    this.checkSlot(slot)
    if (!this.used.has(slot)) return null
    return this.area.readBlock(slot)
  }

  // Group commit: a write waits for an fdatasync that started after it.
  private async sync (): Promise<void> {
    if (this.syncing) {
      this.syncAgain = true
      while (this.syncing) await this.syncing
      if (!this.syncAgain) return
    }
    this.syncAgain = false
    this.syncing = this.area.flush().finally(() => { this.syncing = null })
    await this.syncing
  }

  // Only the owner's own signed master blocks, never older than the one held.
  async putMaster (data: Buffer): Promise<void> {
    const version = masterSigned(data, this.owner)
    if (version === null) throw new CoopError('EBLOCK', 'master block is not signed by its owner')
    if (version < this.masterVersion) throw new CoopError('ESTALE', `master block version ${version} is older than the ${this.masterVersion} held`)
    await this.area.putMaster(data)
    this.masterVersion = version
  }

  getMaster (): Promise<Buffer | null> {
    return this.area.getMaster()
  }

  close (): Promise<void> {
    return this.area.close()
  }
}

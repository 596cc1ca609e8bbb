// A partner that is a directory on this machine: the reserved area is one preallocated file of
// slots * slotBytes, and the master block is a file replaced atomically.
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { CoopError } from '../errors.js'
import { writeFileAtomic } from '../home.js'
import { randomBytes } from '../crypto/seal.js'
import type { Partner } from './partner.js'

const INFO_FILE = 'partner.json'
const SLOTS_FILE = 'slots.dat'
const MASTER_FILE = 'master.blk'

interface DirInfo {
  format: number
  id: string
  slots: number
  slotBytes: number
}

export class LocalDirPartner implements Partner {
  readonly id: Buffer
  readonly label: string
  readonly slots: number
  readonly slotBytes: number
  private readonly dir: string
  private fd: Promise<fsp.FileHandle> | null = null
  private dirtySinceFlush = false

  private constructor (dir: string, info: DirInfo) {
    this.dir = dir
    this.id = Buffer.from(info.id, 'hex')
    this.label = dir
    this.slots = info.slots
    this.slotBytes = info.slotBytes
  }

  // Reserves the area: a sparse file of the full size, refused when the disk could not hold it.
  static create (dir: string, slots: number, slotBytes: number): LocalDirPartner {
    fs.mkdirSync(dir, { recursive: true })
    if (fs.existsSync(path.join(dir, INFO_FILE))) {
      throw new CoopError('EEXIST', `${dir} already holds a partner area; use an empty directory`)
    }
    const bytes = slots * slotBytes
    const st = fs.statfsSync(dir)
    const free = st.bavail * st.bsize
    if (bytes > free) {
      throw new CoopError('ENOSPC', `${dir}: reserving ${fmtBytes(bytes)} for a partner needs more than the ${fmtBytes(free)} free on that disk`)
    }
    const fd = fs.openSync(path.join(dir, SLOTS_FILE), 'w', 0o600)
    fs.ftruncateSync(fd, bytes)
    fs.closeSync(fd)
    const info: DirInfo = { format: 1, id: randomBytes(32).toString('hex'), slots, slotBytes }
    writeFileAtomic(path.join(dir, INFO_FILE), JSON.stringify(info) + '\n', 0o600)
    return new LocalDirPartner(dir, info)
  }

  static open (dir: string): LocalDirPartner {
    const info = readInfo(dir)
    if (!info) throw new CoopError('ENOPARTNER', `${dir} is not a coopfs partner directory`)
    return new LocalDirPartner(dir, info)
  }

  // The partner a configuration names. A directory that is gone (a lost disk) gives a partner that is
  // offline; one that holds another partner's area is refused.
  static attach (dir: string, id: string, slots: number, slotBytes: number): LocalDirPartner {
    const info = readInfo(dir)
    if (info && (info.id !== id || info.slotBytes !== slotBytes)) {
      throw new CoopError('ENOPARTNER', `${dir} holds another partner's area than the one configured`)
    }
    return new LocalDirPartner(dir, info ?? { format: 1, id, slots, slotBytes })
  }

  online (): boolean {
    return fs.existsSync(path.join(this.dir, SLOTS_FILE))
  }

  // One descriptor however many first calls race for it; a failed open is tried again next time.
  private handle (): Promise<fsp.FileHandle> {
    if (!this.fd) {
      const opening = fsp.open(path.join(this.dir, SLOTS_FILE), 'r+')
      opening.catch(() => { if (this.fd === opening) this.fd = null })
      this.fd = opening
    }
    return this.fd
  }

  get slotsFile (): string {
    return path.join(this.dir, SLOTS_FILE)
  }

  private checkSlot (slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots) {
      throw new CoopError('ESLOT', `slot ${slot} is outside the ${this.slots} slots reserved on ${this.label}`)
    }
  }

  async writeBlock (slot: number, block: Buffer): Promise<void> {
    this.checkSlot(slot)
    if (block.length !== this.slotBytes) throw new CoopError('EBLOCK', `block of ${block.length} bytes does not fit a ${this.slotBytes}-byte slot`)
    const fh = await this.handle()
    await fh.write(block, 0, block.length, slot * this.slotBytes)
    this.dirtySinceFlush = true
  }

  async readBlock (slot: number): Promise<Buffer | null> {
    this.checkSlot(slot)
    let fh: fsp.FileHandle
    try {
      fh = await this.handle()
    } catch {
      return null
    }
    const buf = Buffer.allocUnsafe(this.slotBytes)
    try {
      const { bytesRead } = await fh.read(buf, 0, buf.length, slot * this.slotBytes)
      return bytesRead === buf.length ? buf : null
    } catch {
      return null
    }
  }

  async flush (): Promise<void> {
    if (!this.fd || !this.dirtySinceFlush) return
    this.dirtySinceFlush = false
    await (await this.fd).datasync()
  }

  async putMaster (data: Buffer): Promise<void> {
    if (!this.online()) throw new CoopError('EOFFLINE', `${this.label} is not reachable`)
    writeFileAtomic(path.join(this.dir, MASTER_FILE), data, 0o600)
  }

  async getMaster (): Promise<Buffer | null> {
    try {
      return await fsp.readFile(path.join(this.dir, MASTER_FILE))
    } catch {
      return null
    }
  }

  async close (): Promise<void> {
    const fd = this.fd
    this.fd = null
    if (fd) await fd.then(h => h.close(), () => {})
  }
}

function readInfo (dir: string): DirInfo | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, INFO_FILE), 'utf8')) as DirInfo
  } catch {
    return null
  }
}

export function fmtBytes (n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024
    i++
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`
}

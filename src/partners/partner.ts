// What the layers above need from one partner: a reserved area of slots holding sealed blocks, and a copy of
// the owner's master block. Local directories implement it for unit tests and the local engine; network
// peers implement the same interface.

export interface PartnerInfo {
  id: string // hex
  label: string
  online: boolean
  slots: number
}

export interface Partner {
  readonly id: Buffer
  readonly label: string
  readonly slots: number
  online (): boolean
  // block is header + payload, exactly slotBytes long.
  writeBlock (slot: number, block: Buffer): Promise<void>
  // null when the slot was never written or the partner cannot be reached (at once when it is offline).
  readBlock (slot: number): Promise<Buffer | null>
  // Resolves true once the partner is reachable, false after ms; partners that are never away need not
  // implement it.
  waitOnline? (ms: number): Promise<boolean>
  // Makes every block written so far durable on the partner's disk.
  flush (): Promise<void>
  putMaster (data: Buffer): Promise<void>
  getMaster (): Promise<Buffer | null>
  close (): Promise<void>
}

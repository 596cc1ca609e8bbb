// The master block: replicated on every partner, outside the stripes, so that a machine that lost
// everything can start from any current partner. Layout:
//
//   0  4  magic "CPFM"
//   4  1  format (1)
//   5  3  reserved, zero
//   8  8  version (u64 LE): the checkpoint sequence number; the highest valid version wins
//  16 32  owner's public key (ed25519)
//  48  4  body length (u32 LE)
//  52  .  body: XChaCha20-Poly1305 under the metadata key (nonce || ciphertext), bytes 0..52 as associated data
//   .  64 ed25519 signature by the owner over everything before it
import { CoopError } from '../errors.js'
import { sealRecord, openRecord, sign, verify } from '../crypto/seal.js'
import type { Keys } from '../crypto/keys.js'
import type { Layout } from '../home.js'

const MAGIC = Buffer.from('CPFM')
const FORMAT = 1
const HEADER_BYTES = 52
const SIG_BYTES = 64

export interface CheckpointPiece {
  id: string // hex chunk id
  slot: number
  version: number
  off: number
  len: number
}

// What a recovered node needs to take up its partners' side again: the agreements it had.
export interface AgreementRecord {
  key: string
  slots: number
  topic?: string
  state?: 'proposed' | 'active' | 'rejected'
}

export interface MasterBody extends Layout {
  agreements?: AgreementRecord[]
  network?: { bootstrap?: string[], host?: string }
  checkpoint: {
    seq: number
    dbBytes: number
    pieces: CheckpointPiece[]
  }
  createdAt: string
}

export function encodeMaster (keys: Keys, version: number, body: MasterBody): Buffer {
  const header = Buffer.alloc(HEADER_BYTES)
  MAGIC.copy(header, 0)
  header[4] = FORMAT
  header.writeBigUInt64LE(BigInt(version), 8)
  keys.publicKey.copy(header, 16)
  const sealed = sealRecord(keys.metadataKey, Buffer.from(JSON.stringify(body)), header.subarray(0, 48))
  header.writeUInt32LE(sealed.length, 48)
  const unsigned = Buffer.concat([header, sealed])
  return Buffer.concat([unsigned, sign(keys.secretKey, unsigned)])
}

// Returns null for anything that is not a master block of this owner with a valid signature.
export function decodeMaster (keys: Keys, buf: Buffer): { version: number, body: MasterBody } | null {
  const version = masterSigned(buf, keys.publicKey)
  if (version === null) return null
  const bodyLen = buf.readUInt32LE(48)
  const plain = openRecord(keys.metadataKey, buf.subarray(HEADER_BYTES, HEADER_BYTES + bodyLen), buf.subarray(0, 48))
  if (!plain) return null
  return { version, body: JSON.parse(plain.toString()) as MasterBody }
}

// The version of a master block whose signature checks out under owner's public key, or null. Partners
// use it: they can check who signed a master block without being able to read it.
export function masterSigned (buf: Buffer, owner: Buffer): number | null {
  if (buf.length < HEADER_BYTES + SIG_BYTES || !buf.subarray(0, 4).equals(MAGIC) || buf[4] !== FORMAT) return null
  if (!buf.subarray(16, 48).equals(owner)) return null
  const bodyLen = buf.readUInt32LE(48)
  if (HEADER_BYTES + bodyLen + SIG_BYTES !== buf.length) return null
  if (!verify(owner, buf.subarray(0, HEADER_BYTES + bodyLen), buf.subarray(HEADER_BYTES + bodyLen))) return null
  return Number(buf.readBigUInt64LE(8))
}

// The owner's public key a master block claims, whether or not it verifies: used to tell a wrong recovery
// key apart from partners that hold nothing.
export function masterOwner (buf: Buffer): Buffer | null {
  if (buf.length < HEADER_BYTES || !buf.subarray(0, 4).equals(MAGIC)) return null
  return buf.subarray(16, 48)
}

export function newestMaster (keys: Keys, blocks: Buffer[]): { version: number, body: MasterBody } {
  let best: { version: number, body: MasterBody } | null = null
  for (const b of blocks) {
    const m = decodeMaster(keys, b)
    if (m && (!best || m.version > best.version)) best = m
  }
  if (best) return best
  if (blocks.length && blocks.every(b => !masterOwner(b)?.equals(keys.publicKey))) {
    throw new CoopError('EBADKEY', 'this recovery key does not match the backup on these partners')
  }
  throw new CoopError('ENOMASTER', blocks.length
    ? 'no master block on the partners passed its signature check'
    : 'none of the partners holds a master block for this key')
}

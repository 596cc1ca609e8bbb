// The sealed block: a fixed header followed by the payload, filling one slot on one partner.
//
//   0  4  magic "CPFB"
//   4  1  format (1)
//   5  3  reserved, zero
//   8  4  slot            (u32 LE)
//  12  8  version         (u64 LE) - bumped every time the owner rewrites the slot
//  20  4  payload bytes   (u32 LE)
//  24  8  reserved, zero
//  32 32  BLAKE2b-256 keyed with the integrity key over partner id || header[0..32) || payload
//
// A partner can neither alter a block, move it to another slot, hand it to another partner, nor roll it
// back to an older version without the owner noticing: all four are inside the keyed hash.
import { keyedHash, HASH_BYTES } from '../crypto/seal.js'

export const BLOCK_HEADER_BYTES = 64
const MAGIC = Buffer.from('CPFB')
const FORMAT = 1
const MAC_OFFSET = 32

export type BlockCheck = 'ok' | 'missing' | 'corrupt' | 'wrong-slot' | 'stale'

export function sealBlock (integrityKey: Buffer, partnerId: Buffer, slot: number, version: number, payload: Buffer): Buffer {
  const block = Buffer.alloc(BLOCK_HEADER_BYTES + payload.length)
  MAGIC.copy(block, 0)
  block[4] = FORMAT
  block.writeUInt32LE(slot, 8)
  block.writeBigUInt64LE(BigInt(version), 12)
  block.writeUInt32LE(payload.length, 20)
  payload.copy(block, BLOCK_HEADER_BYTES)
  mac(integrityKey, partnerId, block).copy(block, MAC_OFFSET)
  return block
}

function mac (integrityKey: Buffer, partnerId: Buffer, block: Buffer): Buffer {
  return keyedHash(integrityKey, partnerId, block.subarray(0, MAC_OFFSET), block.subarray(BLOCK_HEADER_BYTES))
}

// Checks a block fetched from a partner against what the owner expects to find there.
export function checkBlock (integrityKey: Buffer, partnerId: Buffer, slot: number, version: number, block: Buffer | null): BlockCheck {
  if (!block) return 'missing'
  if (block.length < BLOCK_HEADER_BYTES || !block.subarray(0, 4).equals(MAGIC) || block[4] !== FORMAT) return 'corrupt'
  if (block.readUInt32LE(20) !== block.length - BLOCK_HEADER_BYTES) return 'corrupt'
  const expect = mac(integrityKey, partnerId, block)
  if (!expect.equals(block.subarray(MAC_OFFSET, MAC_OFFSET + HASH_BYTES))) return 'corrupt'
  if (block.readUInt32LE(8) !== slot) return 'wrong-slot'
  if (block.readBigUInt64LE(12) !== BigInt(version)) return 'stale'
  return 'ok'
}

export function blockPayload (block: Buffer): Buffer {
  return block.subarray(BLOCK_HEADER_BYTES)
}

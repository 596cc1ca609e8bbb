// The master secret and everything derived from it. The secret is 32 random bytes: topics and public keys
// derived from it are public, so it must never come from a password.
import sodium from 'sodium-native'
import { CoopError } from '../errors.js'

export const SECRET_BYTES = 32
const KDF_CONTEXT = Buffer.from('coopfs01')

// Subkey ids for crypto_kdf; never renumber: stored data depends on them.
const SUBKEY = {
  identity: 1,
  data: 2,
  chunkId: 3,
  integrity: 4,
  metadata: 5,
  recoveryTopic: 6
} as const

export interface Keys {
  secret: Buffer
  publicKey: Buffer
  secretKey: Buffer
  dataKey: Buffer
  chunkIdKey: Buffer
  integrityKey: Buffer
  metadataKey: Buffer
  recoveryTopicKey: Buffer
}

export function newSecret (): Buffer {
  const secret = sodium.sodium_malloc(SECRET_BYTES) as unknown as Buffer
  sodium.randombytes_buf(secret)
  return Buffer.from(secret)
}

export function deriveKeys (secret: Buffer): Keys {
  if (secret.length !== SECRET_BYTES) throw new CoopError('EKEY', 'the master secret must be 32 bytes')
  const sub = (id: number, len = 32): Buffer => {
    const out = Buffer.alloc(len)
    sodium.crypto_kdf_derive_from_key(out, id, KDF_CONTEXT, secret)
    return out
  }
  const publicKey = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES)
  const secretKey = Buffer.alloc(sodium.crypto_sign_SECRETKEYBYTES)
  sodium.crypto_sign_seed_keypair(publicKey, secretKey, sub(SUBKEY.identity))
  return {
    secret,
    publicKey,
    secretKey,
    dataKey: sub(SUBKEY.data),
    chunkIdKey: sub(SUBKEY.chunkId),
    integrityKey: sub(SUBKEY.integrity),
    metadataKey: sub(SUBKEY.metadata),
    recoveryTopicKey: sub(SUBKEY.recoveryTopic)
  }
}

// Recovery key: secret + 3 checksum bytes = 35 bytes = 56 base32 characters, shown in groups of four.
// Crockford's alphabet: no I, L, O or U, and the look-alikes are accepted when typed back.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
const CHECKSUM_BYTES = 3
const GROUP = 4

function checksum (secret: Buffer): Buffer {
  const out = Buffer.alloc(32)
  sodium.crypto_generichash(out, Buffer.concat([Buffer.from('coopfs recovery key'), secret]))
  return out.subarray(0, CHECKSUM_BYTES)
}

export function encodeRecoveryKey (secret: Buffer): string {
  const bytes = Buffer.concat([secret, checksum(secret)])
  let bits = 0
  let value = 0
  let out = ''
  for (const b of bytes) {
    value = (value << 8) | b
    bits += 8
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
    value &= (1 << bits) - 1
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31]
  return out.match(new RegExp(`.{1,${GROUP}}`, 'g'))!.join('-')
}

export function decodeRecoveryKey (text: string): Buffer {
  const clean = text.toUpperCase().replace(/[\s-]/g, '').replace(/O/g, '0').replace(/[IL]/g, '1')
  const expected = Math.ceil((SECRET_BYTES + CHECKSUM_BYTES) * 8 / 5)
  if (clean.length !== expected) {
    throw new CoopError('EBADKEY', `the recovery key must have ${expected} characters (without dashes); this one has ${clean.length}`)
  }
  const bytes: number[] = []
  let bits = 0
  let value = 0
  for (const ch of clean) {
    const v = ALPHABET.indexOf(ch)
    if (v < 0) throw new CoopError('EBADKEY', `the recovery key contains '${ch}', which is not a recovery key character`)
    value = (value << 5) | v
    bits += 5
    if (bits >= 8) {
      bytes.push((value >>> (bits - 8)) & 255)
      bits -= 8
      value &= (1 << bits) - 1
    }
  }
  const buf = Buffer.from(bytes.slice(0, SECRET_BYTES + CHECKSUM_BYTES))
  const secret = buf.subarray(0, SECRET_BYTES)
  if (!checksum(secret).equals(buf.subarray(SECRET_BYTES))) {
    throw new CoopError('EBADKEY', 'the recovery key has a typo: its checksum does not match')
  }
  return Buffer.from(secret)
}

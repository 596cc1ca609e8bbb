// Keys and seals: the recovery key round-trips and catches typos; blocks and master blocks verify only
// when untouched and in their place.
import test from 'brittle'
import { newSecret, deriveKeys, encodeRecoveryKey, decodeRecoveryKey } from '../src/crypto/keys.js'
import { sealChunk, openChunk, keyedHash } from '../src/crypto/seal.js'
import { sealBlock, checkBlock } from '../src/stripe/block.js'
import { encodeMaster, decodeMaster, newestMaster, type MasterBody } from '../src/log/master-block.js'

test('the recovery key round-trips, ignores case and dashes, and reads look-alike characters alike', t => {
  const secret = newSecret()
  const text = encodeRecoveryKey(secret)
  t.ok(decodeRecoveryKey(text).equals(secret))
  t.ok(decodeRecoveryKey(text.toLowerCase().replace(/-/g, ' ')).equals(secret))
  t.ok(decodeRecoveryKey(text.replace(/0/g, 'O').replace(/1/g, 'l')).equals(secret))
})

test('a mistyped recovery key is caught by its checksum', t => {
  const text = encodeRecoveryKey(newSecret())
  const i = text.length - 3
  const typo = text.slice(0, i) + (text[i] === 'Z' ? 'Y' : 'Z') + text.slice(i + 1)
  t.exception(() => decodeRecoveryKey(typo), /typo/)
  t.exception(() => decodeRecoveryKey(text.slice(5)), /characters/)
})

test('the same secret derives the same identity; another secret another one', t => {
  const secret = newSecret()
  t.ok(deriveKeys(secret).publicKey.equals(deriveKeys(Buffer.from(secret)).publicKey))
  t.absent(deriveKeys(newSecret()).publicKey.equals(deriveKeys(secret).publicKey))
})

test('a sealed chunk opens only with its key and id, and not after a bit flip', t => {
  const keys = deriveKeys(newSecret())
  const plain = Buffer.from('some file content')
  const id = keyedHash(keys.chunkIdKey, plain)
  const sealed = sealChunk(keys.dataKey, id, plain)
  t.ok(openChunk(keys.dataKey, id, sealed)!.equals(plain))
  t.absent(sealed.includes(plain), 'ciphertext does not contain the plaintext')
  const flipped = Buffer.from(sealed)
  flipped[3] ^= 1
  t.is(openChunk(keys.dataKey, id, flipped), null)
  t.is(openChunk(deriveKeys(newSecret()).dataKey, id, sealed), null)
  t.is(openChunk(keys.dataKey, keyedHash(keys.chunkIdKey, Buffer.from('other')), sealed), null)
})

test('a block verifies only at its partner, slot and version', t => {
  const keys = deriveKeys(newSecret())
  const partner = Buffer.alloc(32, 1)
  const payload = Buffer.alloc(1024, 7)
  const block = sealBlock(keys.integrityKey, partner, 5, 3, payload)
  t.is(checkBlock(keys.integrityKey, partner, 5, 3, block), 'ok')
  t.is(checkBlock(keys.integrityKey, partner, 6, 3, block), 'wrong-slot')
  t.is(checkBlock(keys.integrityKey, partner, 5, 4, block), 'stale')
  t.is(checkBlock(keys.integrityKey, Buffer.alloc(32, 2), 5, 3, block), 'corrupt', 'another partner id')
  const flipped = Buffer.from(block)
  flipped[100] ^= 1
  t.is(checkBlock(keys.integrityKey, partner, 5, 3, flipped), 'corrupt')
  t.is(checkBlock(keys.integrityKey, partner, 5, 3, null), 'missing')
})

test('the newest valid master block wins; forged or foreign ones are ignored', t => {
  const keys = deriveKeys(newSecret())
  const body = (seq: number): MasterBody => ({
    k: 4, m: 2, blockSize: 262144, chunkSize: 131072, slots: 16, partners: [],
    checkpoint: { seq, dbBytes: 0, pieces: [] }, createdAt: new Date(0).toISOString()
  })
  const v1 = encodeMaster(keys, 1, body(1))
  const v2 = encodeMaster(keys, 2, body(2))
  const forged = Buffer.from(encodeMaster(keys, 9, body(9)))
  forged[60] ^= 1
  t.is(decodeMaster(keys, forged), null)
  t.is(newestMaster(keys, [v1, forged, v2]).version, 2)
  t.absent(v2.includes(Buffer.from('"checkpoint"')), 'the body is encrypted')
  const stranger = deriveKeys(newSecret())
  t.exception(() => newestMaster(stranger, [v1, v2]), /does not match/)
})

// Sealing primitives: chunk encryption (XChaCha20-Poly1305) and keyed hashes (BLAKE2b).
import sodium from 'sodium-native'

export const HASH_BYTES = 32
export const MAC_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_ABYTES
const NONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES

export function keyedHash (key: Buffer, ...parts: Buffer[]): Buffer {
  const out = Buffer.alloc(HASH_BYTES)
  if (parts.length === 1) sodium.crypto_generichash(out, parts[0], key)
  else sodium.crypto_generichash_batch(out, parts, key)
  return out
}

// A chunk's id is the keyed hash of its plaintext, so identical chunks of one owner are stored once.
// The nonce comes from the id: the same plaintext under the same key always seals the same way, which is
// exactly what deduplication needs, and two different plaintexts never share a nonce.
export function sealChunk (dataKey: Buffer, id: Buffer, plain: Buffer): Buffer {
  const out = Buffer.allocUnsafe(plain.length + MAC_BYTES)
  sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(out, plain, id, null, id.subarray(0, NONCE_BYTES), dataKey)
  return out
}

// Returns null when the ciphertext was altered or belongs to another id.
export function openChunk (dataKey: Buffer, id: Buffer, sealed: Buffer): Buffer | null {
  if (sealed.length < MAC_BYTES) return null
  const out = Buffer.allocUnsafe(sealed.length - MAC_BYTES)
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, sealed, id, id.subarray(0, NONCE_BYTES), dataKey)
  } catch {
    return null
  }
  return out
}

// Random-nonce sealing for small records (the master block body): nonce || ciphertext.
export function sealRecord (key: Buffer, plain: Buffer, ad: Buffer): Buffer {
  const nonce = Buffer.alloc(NONCE_BYTES)
  sodium.randombytes_buf(nonce)
  const out = Buffer.alloc(NONCE_BYTES + plain.length + MAC_BYTES)
  nonce.copy(out)
  sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(out.subarray(NONCE_BYTES), plain, ad, null, nonce, key)
  return out
}

export function openRecord (key: Buffer, sealed: Buffer, ad: Buffer): Buffer | null {
  if (sealed.length < NONCE_BYTES + MAC_BYTES) return null
  const out = Buffer.alloc(sealed.length - NONCE_BYTES - MAC_BYTES)
  try {
    sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(out, null, sealed.subarray(NONCE_BYTES), ad, sealed.subarray(0, NONCE_BYTES), key)
  } catch {
    return null
  }
  return out
}

export function sign (secretKey: Buffer, message: Buffer): Buffer {
  const sig = Buffer.alloc(sodium.crypto_sign_BYTES)
  sodium.crypto_sign_detached(sig, message, secretKey)
  return sig
}

export function verify (publicKey: Buffer, message: Buffer, sig: Buffer): boolean {
  if (sig.length !== sodium.crypto_sign_BYTES) return false
  return sodium.crypto_sign_verify_detached(sig, message, publicKey)
}

export function randomBytes (n: number): Buffer {
  const b = Buffer.alloc(n)
  sodium.randombytes_buf(b)
  return b
}

// A buffer that alone owns its ArrayBuffer, so it can be moved to another thread. Posting a view clones
// its whole ArrayBuffer (for a slice of a segment, the whole segment), and moving a small buffer would take
// the shared pool of small buffers away from its other users; the copy uses Buffer.alloc, never the pool.
export function owned (b: Buffer): Buffer {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength) return b
  const copy = Buffer.alloc(b.length)
  b.copy(copy)
  return copy
}

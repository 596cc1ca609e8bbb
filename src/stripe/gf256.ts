/**
 * Arithmetic in GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11d),
 * the field used by the Reed-Solomon coder, and a pure TypeScript version of the
 * native addon's matrix × buffers operation. It is the fallback when the addon
 * cannot be built and the reference the addon is tested against.
 */

/** The reducing polynomial; must match GF_POLY in native/gf256.c. */
export const GF_POLY = 0x11d;
/** Number of field elements; a code can have at most FIELD_SIZE - 1 shards. */
export const FIELD_SIZE = 256;

/** A row-major matrix of field elements. */
export type Matrix = Uint8Array[];

// 2 generates the multiplicative group for 0x11d. EXP is doubled in length so
// that EXP[LOG[a] + LOG[b]] needs no modulo.
const EXP = new Uint8Array(2 * (FIELD_SIZE - 1));
const LOG = new Uint8Array(FIELD_SIZE);
// MUL_TABLE[c * 256 + x] = c * x: a 256-byte product row per coefficient (64 KiB).
const MUL_TABLE = new Uint8Array(FIELD_SIZE * FIELD_SIZE);

{
  let x = 1;
  for (let i = 0; i < FIELD_SIZE - 1; i++) {
    EXP[i] = x;
    EXP[i + FIELD_SIZE - 1] = x;
    LOG[x] = i;
    x <<= 1;
    if (x & 0x100) x ^= GF_POLY;
  }
  for (let a = 1; a < FIELD_SIZE; a++) {
    for (let b = 1; b < FIELD_SIZE; b++) {
      MUL_TABLE[a * FIELD_SIZE + b] = EXP[LOG[a] + LOG[b]];
    }
  }
}

export function mul(a: number, b: number): number {
  return MUL_TABLE[(a & 0xff) * FIELD_SIZE + (b & 0xff)];
}

export function div(a: number, b: number): number {
  if (b === 0) throw new RangeError('division by zero in GF(256)');
  if (a === 0) return 0;
  return EXP[LOG[a] + FIELD_SIZE - 1 - LOG[b]];
}

export function inv(a: number): number {
  return div(1, a);
}

/** A × B, for A of size r×n and B of size n×c. */
export function matMul(a: Matrix, b: Matrix): Matrix {
  const n = b.length;
  const cols = n === 0 ? 0 : b[0].length;
  return a.map((row) => {
    if (row.length !== n) throw new RangeError('matrix dimensions do not agree');
    const out = new Uint8Array(cols);
    for (let j = 0; j < n; j++) {
      const base = row[j] * FIELD_SIZE;
      if (base === 0) continue;
      const bj = b[j];
      for (let c = 0; c < cols; c++) out[c] ^= MUL_TABLE[base + bj[c]];
    }
    return out;
  });
}

/** Inverse of a square matrix by Gauss-Jordan elimination; throws if singular. */
export function invertMatrix(matrix: Matrix): Matrix {
  const n = matrix.length;
  // Work on [matrix | I]; the left half becomes I and the right half the inverse.
  const work = matrix.map((row, i) => {
    if (row.length !== n) throw new RangeError('matrix is not square');
    const r = new Uint8Array(2 * n);
    r.set(row);
    r[n + i] = 1;
    return r;
  });
  for (let col = 0; col < n; col++) {
    let pivot = col;
    while (pivot < n && work[pivot][col] === 0) pivot++;
    if (pivot === n) throw new RangeError('matrix is singular');
    [work[col], work[pivot]] = [work[pivot], work[col]];
    const pivotRow = work[col];
    const scale = inv(pivotRow[col]) * FIELD_SIZE;
    for (let c = 0; c < 2 * n; c++) pivotRow[c] = MUL_TABLE[scale + pivotRow[c]];
    for (let r = 0; r < n; r++) {
      const factor = work[r][col] * FIELD_SIZE;
      if (r === col || factor === 0) continue;
      const row = work[r];
      for (let c = 0; c < 2 * n; c++) row[c] ^= MUL_TABLE[factor + pivotRow[c]];
    }
  }
  return work.map((row) => row.slice(n));
}

/**
 * out[i] = XOR_j coefs[i * inputs.length + j] * inputs[j], byte by byte, over
 * buffers of equal length: the same contract as the native addon's mul().
 * Outputs must not overlap inputs.
 */
export function mulBuffers(coefs: Uint8Array, inputs: Uint8Array[], outputs: Uint8Array[]): void {
  const inCount = inputs.length;
  if (inCount < 1 || inCount >= FIELD_SIZE) throw new TypeError('inputs must hold 1 to 255 buffers');
  if (outputs.length < 1 || outputs.length >= FIELD_SIZE) {
    throw new TypeError('outputs must hold 1 to 255 buffers');
  }
  if (coefs.length !== inCount * outputs.length) {
    throw new TypeError('coefs.length must equal inputs.length * outputs.length');
  }
  const len = inputs[0].length;
  for (const buf of [...inputs, ...outputs]) {
    if (buf.length !== len) throw new TypeError('all inputs and outputs must have the same length');
  }
  for (let i = 0; i < outputs.length; i++) {
    const out = outputs[i];
    // The first input assigns, so outputs need not be zeroed beforehand.
    let table = MUL_TABLE.subarray(coefs[i * inCount] * FIELD_SIZE);
    let src = inputs[0];
    for (let p = 0; p < len; p++) out[p] = table[src[p]];
    for (let j = 1; j < inCount; j++) {
      table = MUL_TABLE.subarray(coefs[i * inCount + j] * FIELD_SIZE);
      src = inputs[j];
      for (let p = 0; p < len; p++) out[p] ^= table[src[p]];
    }
  }
}

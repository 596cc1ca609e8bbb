/**
 * Systematic Reed-Solomon erasure code over GF(256) for stripes of k data
 * shards and m parity shards (n = k + m <= 255).
 *
 * The encoding matrix is the k×k identity on top of an m×k Cauchy matrix. Every
 * square submatrix of a Cauchy matrix is invertible, so any k rows of the
 * stacked matrix are too: ANY k of the n shards reconstruct the stripe.
 *
 * The byte crunching is one operation, "coefficient matrix × buffers", done by
 * the project's N-API addon (native/, SIMD, off the main thread for the async
 * methods) or by the pure TypeScript fallback in gf256.ts.
 */
import { createRequire } from 'node:module';
import { FIELD_SIZE, type Matrix, inv, invertMatrix, matMul, mulBuffers } from './gf256.js';

/** Relative to the compiled file (dist/stripe/) or the source (src/stripe/). */
const ADDON_PATH = '../../native/build/Release/coopfs_gf256.node';
/** Set to "js" to never use the addon (read once, when the addon is first needed). */
const BACKEND_ENV = 'COOPFS_EC_BACKEND';
/** Decoding matrices kept per pattern of shards used; C(n, k) can be huge. */
const MAX_CACHED_DECODERS = 256;

export type Backend = 'native' | 'js';

export interface ReedSolomonOptions {
  k: number;
  m: number;
  /** 'auto' (default) uses the addon when it loads, else the TypeScript coder. */
  backend?: 'auto' | Backend;
}

/** The interface of native/gf256.c. */
export interface Gf256Addon {
  mul(coefs: Uint8Array, inputs: Uint8Array[], outputs: Uint8Array[]): void;
  mulAsync(
    coefs: Uint8Array,
    inputs: Uint8Array[],
    outputs: Uint8Array[],
    callback: (err: Error | null) => void,
  ): void;
  /** The kernel chosen for this CPU. */
  readonly simd: 'avx2' | 'ssse3' | 'scalar';
}

type AddonState = { addon: Gf256Addon } | { reason: string };
let addonState: AddonState | undefined;

function loadAddon(): AddonState {
  if (addonState === undefined) {
    if (process.env[BACKEND_ENV] === 'js') {
      addonState = { reason: `disabled by ${BACKEND_ENV}=js` };
    } else {
      try {
        addonState = { addon: createRequire(import.meta.url)(ADDON_PATH) as Gf256Addon };
      } catch (err) {
        // The first line names the problem; the rest is Node's require stack.
        const detail = String((err as Error).message).split('\n')[0];
        addonState = { reason: `cannot load ${ADDON_PATH}: ${detail}` };
      }
    }
  }
  return addonState;
}

/** Whether the native coder can be used, and if not, why. */
export function nativeAvailable(): { ok: boolean; reason?: string } {
  const state = loadAddon();
  return 'addon' in state ? { ok: true } : { ok: false, reason: state.reason };
}

/** The loaded addon itself, for tests and benchmarks; undefined if unavailable. */
export function nativeAddon(): Gf256Addon | undefined {
  const state = loadAddon();
  return 'addon' in state ? state.addon : undefined;
}

function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** A multiplication to run: outputs = coefs × inputs. */
interface Job {
  coefs: Uint8Array;
  inputs: Uint8Array[];
  outputs: Buffer[];
}

/** Checks that every buffer is a Uint8Array and all have one length; returns it. */
function commonLength(buffers: Uint8Array[], what: string): number {
  for (const buf of buffers) {
    if (!(buf instanceof Uint8Array)) throw new TypeError(`${what} must be Buffers`);
    if (buf.length !== buffers[0].length) throw new TypeError(`${what} must all have the same length`);
  }
  return buffers[0].length;
}

export class ReedSolomon {
  readonly k: number;
  readonly m: number;
  /** k + m: shard indices 0..k-1 are data, k..n-1 parity. */
  readonly n: number;
  /** Which coder runs the byte work. */
  readonly backend: Backend;

  readonly #addon: Gf256Addon | undefined;
  /** Parity rows of the encoding matrix (m×k Cauchy). */
  readonly #parityRows: Matrix;
  /** The same, flattened row-major as the coefficient argument of mul(). */
  readonly #parityCoefs: Uint8Array;
  /** Inverse of the encoding rows of a set of k present shards, keyed by their indices. */
  readonly #decoders = new Map<string, Matrix>();

  constructor({ k, m, backend = 'auto' }: ReedSolomonOptions) {
    if (!Number.isInteger(k) || !Number.isInteger(m) || k < 1 || m < 0 || k + m >= FIELD_SIZE) {
      throw new RangeError(`invalid code k=${k} m=${m}: need integers k >= 1, m >= 0, k + m <= 255`);
    }
    if (backend !== 'auto' && backend !== 'native' && backend !== 'js') {
      throw new TypeError(`unknown erasure-coding backend "${backend}"`);
    }
    this.k = k;
    this.m = m;
    this.n = k + m;

    if (backend === 'js') {
      this.#addon = undefined;
    } else {
      const state = loadAddon();
      if ('addon' in state) {
        this.#addon = state.addon;
      } else if (backend === 'native') {
        throw codedError('ERR_EC_NATIVE_UNAVAILABLE', `native erasure coder unavailable: ${state.reason}`);
      } else {
        this.#addon = undefined;
      }
    }
    this.backend = this.#addon ? 'native' : 'js';

    // Cauchy entries 1 / (x_r + y_c) with x_r = k + r and y_c = c: all x and y
    // are distinct field elements, so no denominator is zero.
    this.#parityRows = [];
    for (let r = 0; r < m; r++) {
      const row = new Uint8Array(k);
      for (let c = 0; c < k; c++) row[c] = inv((k + r) ^ c);
      this.#parityRows.push(row);
    }
    this.#parityCoefs = new Uint8Array(m * k);
    this.#parityRows.forEach((row, r) => this.#parityCoefs.set(row, r * k));
  }

  /**
   * Computes the m parity shards of k equal-length data shards. With the native
   * backend the work runs on the libuv pool: leave the buffers unmodified until
   * the promise settles (the same holds for reconstruct).
   */
  async encode(data: Buffer[]): Promise<Buffer[]> {
    return this.#runAsync(this.#encodeJob(data));
  }

  encodeSync(data: Buffer[]): Buffer[] {
    return this.#runSync(this.#encodeJob(data));
  }

  /**
   * Given all n shard slots, null for the missing ones and at least k present,
   * returns the shards at the indices in want (default: the k data shards).
   * Present shards are returned as they are, not copied.
   */
  async reconstruct(shards: (Buffer | null)[], want?: number[]): Promise<Buffer[]> {
    const { job, result, fill } = this.#reconstructJob(shards, want);
    if (job) fill(await this.#runAsync(job));
    return result as Buffer[];
  }

  reconstructSync(shards: (Buffer | null)[], want?: number[]): Buffer[] {
    const { job, result, fill } = this.#reconstructJob(shards, want);
    if (job) fill(this.#runSync(job));
    return result as Buffer[];
  }

  #encodeJob(data: Buffer[]): Job | undefined {
    if (!Array.isArray(data) || data.length !== this.k) {
      throw new TypeError(`encode needs an array of k=${this.k} data shards`);
    }
    const len = commonLength(data, 'data shards');
    if (this.m === 0) return undefined;
    const outputs = Array.from({ length: this.m }, () => Buffer.allocUnsafe(len));
    return { coefs: this.#parityCoefs, inputs: data, outputs };
  }

  #reconstructJob(shards: (Buffer | null)[], want: number[] = [...Array(this.k).keys()]) {
    if (!Array.isArray(shards) || shards.length !== this.n) {
      throw new TypeError(`reconstruct needs an array of n=${this.n} shard slots (null when missing)`);
    }
    if (!Array.isArray(want) || !want.every((i) => Number.isInteger(i) && i >= 0 && i < this.n)) {
      throw new TypeError(`want must be an array of shard indices in 0..${this.n - 1}`);
    }
    const present: number[] = [];
    for (let i = 0; i < this.n; i++) {
      if (shards[i] != null) present.push(i);
    }
    if (present.length < this.k) {
      throw codedError(
        'ERR_NOT_ENOUGH_SHARDS',
        `need ${this.k} of ${this.n} shards to reconstruct, only ${present.length} present`,
      );
    }
    commonLength(present.map((i) => shards[i] as Buffer), 'shards');

    const result = want.map((i) => shards[i] ?? null);
    const missing = [...new Set(want.filter((i) => shards[i] == null))];
    if (missing.length === 0) return { job: undefined, result, fill: () => {} };

    // The lowest present indices favour data shards, whose rows are unit
    // vectors: with every data shard present the decoder is the identity.
    const used = present.slice(0, this.k);
    const decoder = this.#decoder(used);
    const coefs = new Uint8Array(missing.length * this.k);
    missing.forEach((idx, r) => {
      // A data shard's row of the inverse gives it directly from the used
      // shards; a parity shard is its encoding row applied to that data.
      const row = idx < this.k ? decoder[idx] : matMul([this.#parityRows[idx - this.k]], decoder)[0];
      coefs.set(row, r * this.k);
    });
    const inputs = used.map((i) => shards[i] as Buffer);
    const outputs = missing.map(() => Buffer.allocUnsafe(inputs[0].length));
    const fill = (rebuilt: Buffer[]) => {
      want.forEach((idx, w) => {
        if (result[w] === null) result[w] = rebuilt[missing.indexOf(idx)];
      });
    };
    return { job: { coefs, inputs, outputs }, result, fill };
  }

  /** Inverse of the encoding matrix rows of the shards in used (k indices). */
  #decoder(used: number[]): Matrix {
    const key = used.join(',');
    let decoder = this.#decoders.get(key);
    if (decoder === undefined) {
      const rows = used.map((i) => {
        if (i >= this.k) return this.#parityRows[i - this.k];
        const unit = new Uint8Array(this.k);
        unit[i] = 1;
        return unit;
      });
      decoder = invertMatrix(rows);
      if (this.#decoders.size >= MAX_CACHED_DECODERS) {
        // Maps iterate in insertion order: drop the oldest pattern.
        this.#decoders.delete(this.#decoders.keys().next().value as string);
      }
      this.#decoders.set(key, decoder);
    }
    return decoder;
  }

  #runSync(job: Job | undefined): Buffer[] {
    if (!job) return [];
    if (this.#addon) {
      this.#addon.mul(job.coefs, job.inputs, job.outputs);
    } else {
      mulBuffers(job.coefs, job.inputs, job.outputs);
    }
    return job.outputs;
  }

  /** The addon runs on the libuv pool; the TypeScript coder cannot leave this thread. */
  #runAsync(job: Job | undefined): Promise<Buffer[]> {
    const addon = this.#addon;
    if (!job || !addon) return Promise.resolve(this.#runSync(job));
    return new Promise((resolve, reject) => {
      addon.mulAsync(job.coefs, job.inputs, job.outputs, (err) => (err ? reject(err) : resolve(job.outputs)));
    });
  }
}

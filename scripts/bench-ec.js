#!/usr/bin/env node
// Erasure-coding throughput on one core: k=4, m=2 stripes of 256 KiB blocks,
// native addon vs the TypeScript coder. The sync methods keep all work on the
// calling thread, so the figures are per core. Run `npm run build` first.
//
// MB/s counts data bytes (k blocks per stripe), 1 MB = 10^6 bytes.
import { randomBytes } from 'node:crypto';
import { ReedSolomon, nativeAddon, nativeAvailable } from '../dist/stripe/reed-solomon.js';

const K = 4;
const M = 2;
const BLOCK = 256 * 1024;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 1); // per measurement
const WARMUP_RUNS = 3;
const MISSING = [0, 1]; // data shards erased for the decode measurement
const TARGET_NATIVE_ENCODE = 1000; // MB/s, one core

const data = Array.from({ length: K }, () => randomBytes(BLOCK));
const dataBytes = K * BLOCK;

/** Runs fn repeatedly for SECONDS after a warm-up; returns MB/s of data. */
function rate(fn) {
  for (let i = 0; i < WARMUP_RUNS; i++) fn();
  let runs = 0;
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(SECONDS * 1e9));
  let now = start;
  while (now < deadline) {
    fn();
    runs++;
    now = process.hrtime.bigint();
  }
  return (runs * dataBytes) / (Number(now - start) / 1e9) / 1e6;
}

function measure(backend) {
  const rs = new ReedSolomon({ k: K, m: M, backend });
  const parity = rs.encodeSync(data);
  const shards = [...data, ...parity];
  for (const i of MISSING) shards[i] = null;
  // A wrong decoder would make every figure meaningless: check once first.
  const rebuilt = rs.reconstructSync(shards);
  if (!rebuilt.every((b, i) => b.equals(data[i]))) throw new Error(`${backend}: reconstruction is wrong`);
  return {
    encode: rate(() => rs.encodeSync(data)),
    decode: rate(() => rs.reconstructSync(shards)),
  };
}

const fmt = (x) => x.toFixed(x < 100 ? 1 : 0).padStart(7);
console.log(`erasure coding k=${K} m=${M}, ${BLOCK / 1024} KiB blocks, one core, MB/s of data`);

const js = measure('js');
const available = nativeAvailable();
if (!available.ok) {
  console.log(`js      encode ${fmt(js.encode)}   decode (${MISSING.length} data missing) ${fmt(js.decode)}`);
  console.log(`native  unavailable: ${available.reason}`);
  process.exit(1);
}
const native = measure('native');
const simd = nativeAddon().simd;
console.log(`native  encode ${fmt(native.encode)}   decode (${MISSING.length} data missing) ${fmt(native.decode)}   [${simd}]`);
console.log(`js      encode ${fmt(js.encode)}   decode (${MISSING.length} data missing) ${fmt(js.decode)}`);
console.log(`native/js  encode x${(native.encode / js.encode).toFixed(1)}   decode x${(native.decode / js.decode).toFixed(1)}`);
if (native.encode < TARGET_NATIVE_ENCODE) {
  console.log(`below target: native encode ${native.encode.toFixed(0)} < ${TARGET_NATIVE_ENCODE} MB/s`);
  process.exitCode = 1;
}

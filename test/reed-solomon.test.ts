// Reed-Solomon erasure coding: the native addon against the TypeScript coder,
// reconstruction from every erasure pattern, and argument checking.
// Run: node --import tsx test/reed-solomon.test.ts
import test from 'brittle';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { ReedSolomon, nativeAddon, nativeAvailable, type Backend } from '../src/stripe/reed-solomon.js';
import { div, inv, invertMatrix, matMul, mul, mulBuffers } from '../src/stripe/gf256.js';

// Odd sizes and sizes around the 16- and 32-byte SIMD widths exercise the scalar tails.
const LENGTHS = [0, 1, 7, 15, 16, 17, 31, 32, 33, 63, 100, 1000, 4097, 65537];
// Codes whose every erasure pattern of up to m shards is tried.
const PATTERN_CODES = [
  { k: 4, m: 2 },
  { k: 6, m: 2 },
  { k: 3, m: 3 },
];
const PATTERN_LENGTH = 1001;
const ADDON_FILE = fileURLToPath(new URL('../native/build/Release/coopfs_gf256.node', import.meta.url));
const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));

const native = nativeAvailable();
const BACKENDS: Backend[] = native.ok ? ['native', 'js'] : ['js'];
const needsNative = { skip: !native.ok };
if (!native.ok) console.log(`# native coder unavailable (${native.reason}): native tests skipped`);

function randomShards(count: number, len: number): Buffer[] {
  return Array.from({ length: count }, () => randomBytes(len));
}

/** All subsets of {0..n-1} with at most max elements. */
function subsetsUpTo(n: number, max: number): number[][] {
  const out: number[][] = [[]];
  for (let i = 0; i < n; i++) {
    for (const s of out.slice()) if (s.length < max) out.push([...s, i]);
  }
  return out;
}

/** Runs fn and returns what it threw (or undefined). */
function thrown(fn: () => unknown): (Error & { code?: string }) | undefined {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  return undefined;
}

test('GF(256) arithmetic follows the 0x11d field', (t) => {
  t.is(mul(2, 0x80), 0x1d, 'x * x^7 reduces by the polynomial');
  t.is(mul(0, 0xab), 0);
  t.is(mul(1, 0xab), 0xab);
  let allInverses = true;
  let divUndoesMul = true;
  for (let a = 1; a < 256; a++) {
    if (mul(a, inv(a)) !== 1) allInverses = false;
    for (let b = 1; b < 256; b += 17) if (div(mul(a, b), b) !== a) divUndoesMul = false;
  }
  t.ok(allInverses, 'a * inv(a) = 1 for every non-zero a');
  t.ok(divUndoesMul, '(a * b) / b = a');
  t.exception.all(() => div(1, 0), /division by zero/);

  const m = [Uint8Array.from([3, 7, 1]), Uint8Array.from([0, 5, 9]), Uint8Array.from([200, 1, 2])];
  const identity = matMul(m, invertMatrix(m)).map((row) => [...row]);
  t.alike(identity, [
    [1, 0, 0],
    [0, 1, 0],
    [0, 0, 1],
  ]);
  t.exception.all(() => invertMatrix([Uint8Array.from([1, 2]), Uint8Array.from([2, 4])]), /singular/);
});

test('native and js encoders produce identical parity', needsNative, (t) => {
  for (const { k, m } of [
    { k: 4, m: 2 },
    { k: 10, m: 6 }, // more outputs than one SIMD row group, and several chunks
    { k: 1, m: 3 },
  ]) {
    const nat = new ReedSolomon({ k, m, backend: 'native' });
    const js = new ReedSolomon({ k, m, backend: 'js' });
    t.is(nat.backend, 'native');
    t.is(js.backend, 'js');
    for (const len of LENGTHS) {
      const data = randomShards(k, len);
      const a = nat.encodeSync(data);
      const b = js.encodeSync(data);
      t.is(a.length, m);
      t.ok(
        a.every((p, i) => p.length === len && p.equals(b[i])),
        `k=${k} m=${m} length ${len}: same parity`,
      );
    }
  }
});

for (const simd of ['ssse3', 'scalar']) {
  // The addon picks its best kernel for this CPU; COOPFS_GF256_SIMD caps it, so
  // the other kernels are checked in a child process against the js coder.
  test(`native ${simd} kernel matches the js coder`, needsNative, (t) => {
    const inCount = 5;
    const outCount = 6;
    const len = 1000 + 33;
    const coefs = randomBytes(inCount * outCount);
    const inputs = randomShards(inCount, len);
    const child = `
      const addon = require(process.argv[1]);
      const { coefs, inputs, outCount } = JSON.parse(require('fs').readFileSync(0, 'utf8'));
      const ins = inputs.map((b) => Buffer.from(b, 'base64'));
      const outs = Array.from({ length: outCount }, () => Buffer.alloc(ins[0].length));
      addon.mul(Buffer.from(coefs, 'base64'), ins, outs);
      console.log(JSON.stringify({ simd: addon.simd, outputs: outs.map((b) => b.toString('base64')) }));`;
    const stdout = execFileSync(process.execPath, ['-e', child, ADDON_FILE], {
      env: { ...process.env, COOPFS_GF256_SIMD: simd },
      input: JSON.stringify({
        coefs: coefs.toString('base64'),
        inputs: inputs.map((b) => b.toString('base64')),
        outCount,
      }),
    });
    const result = JSON.parse(stdout.toString()) as { simd: string; outputs: string[] };
    t.is(result.simd, simd, 'the child ran the capped kernel');
    const expected = Array.from({ length: outCount }, () => Buffer.alloc(len));
    mulBuffers(coefs, inputs, expected);
    t.alike(result.outputs, expected.map((b) => b.toString('base64')));
  });
}

for (const { k, m } of PATTERN_CODES) {
  test(`k=${k} m=${m}: every pattern of up to ${m} erasures reconstructs`, (t) => {
    const n = k + m;
    const data = randomShards(k, PATTERN_LENGTH);
    const all = [...data, ...new ReedSolomon({ k, m, backend: 'js' }).encodeSync(data)];
    const everyIndex = [...Array(n).keys()];
    const patterns = subsetsUpTo(n, m);
    for (const backend of BACKENDS) {
      const rs = new ReedSolomon({ k, m, backend });
      let failures = 0;
      for (const erased of patterns) {
        const shards = all.map((s, i) => (erased.includes(i) ? null : s));
        const rebuilt = rs.reconstructSync(shards, everyIndex);
        if (!rebuilt.every((s, i) => s.equals(all[i]))) failures++;
        const dataOnly = rs.reconstructSync(shards);
        if (dataOnly.length !== k || !dataOnly.every((s, i) => s.equals(data[i]))) failures++;
      }
      t.is(failures, 0, `${backend}: ${patterns.length} patterns, all shards back`);
    }
  });
}

test('the widest code (k + m = 255) reconstructs after m erasures', (t) => {
  const k = 200;
  const m = 55;
  const data = randomShards(k, 257);
  for (const backend of BACKENDS) {
    const rs = new ReedSolomon({ k, m, backend });
    const shards: (Buffer | null)[] = [...data, ...rs.encodeSync(data)];
    for (let i = 0; i < m; i++) shards[i * 3] = null; // data and parity erased
    const rebuilt = rs.reconstructSync(shards);
    t.ok(
      rebuilt.every((s, i) => s.equals(data[i])),
      `${backend}: data recovered`,
    );
  }
});

test('fewer than k shards: ERR_NOT_ENOUGH_SHARDS', async (t) => {
  for (const backend of BACKENDS) {
    const rs = new ReedSolomon({ k: 4, m: 2, backend });
    const data = randomShards(4, 64);
    const shards: (Buffer | null)[] = [...data, ...rs.encodeSync(data)];
    shards[0] = shards[2] = shards[5] = null;
    t.is(thrown(() => rs.reconstructSync(shards))?.code, 'ERR_NOT_ENOUGH_SHARDS', `${backend}: sync throws`);
    const rejected = await rs.reconstruct(shards).then(
      () => undefined,
      (err: Error & { code?: string }) => err,
    );
    t.is(rejected?.code, 'ERR_NOT_ENOUGH_SHARDS', `${backend}: async rejects`);
    t.is(
      thrown(() => rs.reconstructSync([null, null, null, null, null, null]))?.code,
      'ERR_NOT_ENOUGH_SHARDS',
      `${backend}: nothing present`,
    );
  }
});

test('async and sync results agree', async (t) => {
  for (const backend of BACKENDS) {
    const rs = new ReedSolomon({ k: 4, m: 2, backend });
    for (const len of [1, 333, 256 * 1024 + 5]) {
      const data = randomShards(4, len);
      const syncParity = rs.encodeSync(data);
      const asyncParity = await rs.encode(data);
      t.ok(
        asyncParity.length === 2 && asyncParity.every((p, i) => p.equals(syncParity[i])),
        `${backend} length ${len}: encode`,
      );
      const shards = [null, data[1], null, data[3], ...syncParity];
      const want = [0, 2, 4];
      const syncOut = rs.reconstructSync(shards, want);
      const asyncOut = await rs.reconstruct(shards, want);
      t.ok(
        syncOut.every((s, i) => s.equals(asyncOut[i])) && asyncOut[0].equals(data[0]) && asyncOut[1].equals(data[2]),
        `${backend} length ${len}: reconstruct`,
      );
      t.is(asyncOut[2], syncParity[0], 'a present shard is returned as is');
    }
    // Several jobs in flight at once on the thread pool.
    const batch = Array.from({ length: 8 }, () => randomShards(4, 4099));
    const parities = await Promise.all(batch.map((d) => rs.encode(d)));
    t.ok(
      parities.every((p, i) => {
        const expected = rs.encodeSync(batch[i]);
        return p.every((b, j) => b.equals(expected[j]));
      }),
      `${backend}: concurrent encodes`,
    );
  }
});

test('addon rejects bad arguments with a TypeError', needsNative, async (t) => {
  const addon = nativeAddon()!;
  const a = Buffer.alloc(64);
  const b = Buffer.alloc(64);
  const out = Buffer.alloc(64);
  const big = Buffer.alloc(128);
  const cases: [string, () => unknown, RegExp][] = [
    ['coefs not bytes', () => addon.mul([1, 2] as unknown as Uint8Array, [a, b], [out]), /coefs must be a Uint8Array/],
    ['inputs not an array', () => addon.mul(Uint8Array.of(1), a as unknown as Buffer[], [out]), /inputs must be an array/],
    ['no inputs', () => addon.mul(new Uint8Array(0), [], [out]), /inputs must hold 1 to 255/],
    ['no outputs', () => addon.mul(new Uint8Array(0), [a], []), /outputs must hold 1 to 255/],
    ['256 inputs', () => addon.mul(new Uint8Array(256), Array(256).fill(a), [out]), /inputs must hold 1 to 255/],
    ['coefs count', () => addon.mul(Uint8Array.of(1, 2, 3), [a, b], [out]), /coefs.length must equal/],
    ['length mismatch', () => addon.mul(Uint8Array.of(1, 2), [a, Buffer.alloc(63)], [out]), /same length/],
    ['output length', () => addon.mul(Uint8Array.of(1, 2), [a, b], [Buffer.alloc(65)]), /same length/],
    ['not a buffer', () => addon.mul(Uint8Array.of(1, 2), [a, 'x' as unknown as Buffer], [out]), /every input must be/],
    ['Uint16Array', () => addon.mul(Uint8Array.of(1), [new Uint16Array(32) as unknown as Buffer], [out]), /every input must be/],
    ['in place', () => addon.mul(Uint8Array.of(1, 2), [a, b], [a.subarray(0)]), /overlaps an input/],
    ['outputs overlap', () => addon.mul(new Uint8Array(4), [a, b], [big.subarray(0, 64), big.subarray(32, 96)]), /outputs overlap/],
    ['missing arguments', () => (addon.mul as (...args: unknown[]) => void)(Uint8Array.of(1), [a]), /takes 3 arguments/],
    ['no callback', () => addon.mulAsync(Uint8Array.of(1), [a], [out], 'cb' as unknown as () => void), /callback must be a function/],
    ['async bad length', () => addon.mulAsync(Uint8Array.of(1), [a], [Buffer.alloc(1)], () => {}), /same length/],
  ];
  for (const [name, fn, message] of cases) {
    const err = thrown(fn);
    t.ok(err instanceof TypeError && message.test(err.message), `${name}: ${err?.message}`);
  }
  // A good call after all those still works, through both entry points.
  const coefs = Uint8Array.of(2, 3);
  a.fill(1);
  b.fill(1);
  addon.mul(coefs, [a, b], [out]);
  t.is(out[0], mul(2, 1) ^ mul(3, 1));
  out.fill(0);
  await new Promise<void>((resolve, reject) => addon.mulAsync(coefs, [a, b], [out], (err) => (err ? reject(err) : resolve())));
  t.is(out[63], 1, 'async result written: 2 ^ 3 = 1');
});

test('ReedSolomon rejects bad arguments', (t) => {
  t.exception.all(() => new ReedSolomon({ k: 0, m: 2 }), /invalid code/);
  t.exception.all(() => new ReedSolomon({ k: 200, m: 56 }), /invalid code/);
  t.exception.all(() => new ReedSolomon({ k: 4, m: 2, backend: 'gpu' as Backend }), /unknown erasure-coding backend/);
  const rs = new ReedSolomon({ k: 4, m: 2 });
  t.exception.all(() => rs.encodeSync(randomShards(3, 8)), /k=4 data shards/);
  t.exception.all(() => rs.encodeSync([...randomShards(3, 8), Buffer.alloc(9)]), /same length/);
  t.exception.all(() => rs.reconstructSync(randomShards(5, 8)), /n=6 shard slots/);
  t.exception.all(() => rs.reconstructSync(randomShards(6, 8), [6]), /shard indices/);
  t.alike(new ReedSolomon({ k: 3, m: 0 }).encodeSync(randomShards(3, 8)), [], 'm=0 has no parity');
});

test(`COOPFS_EC_BACKEND=js forces the TypeScript coder`, (t) => {
  const probe = `
    const rs = await import('./src/stripe/reed-solomon.ts');
    const code = new rs.ReedSolomon({ k: 4, m: 2 });
    let explicit;
    try { new rs.ReedSolomon({ k: 4, m: 2, backend: 'native' }); } catch (err) { explicit = err.code; }
    console.log(JSON.stringify({ backend: code.backend, available: rs.nativeAvailable(), explicit }));`;
  const stdout = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', probe], {
    cwd: REPO_ROOT,
    env: { ...process.env, COOPFS_EC_BACKEND: 'js' },
  });
  const result = JSON.parse(stdout.toString());
  t.is(result.backend, 'js');
  t.alike(result.available, { ok: false, reason: 'disabled by COOPFS_EC_BACKEND=js' });
  t.is(result.explicit, 'ERR_EC_NATIVE_UNAVAILABLE', 'asking for native explicitly fails loudly');
});

test('auto picks the native coder when it loads', needsNative, (t) => {
  t.is(new ReedSolomon({ k: 4, m: 2 }).backend, 'native');
  t.ok(['avx2', 'ssse3', 'scalar'].includes(nativeAddon()!.simd));
});

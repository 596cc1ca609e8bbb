// Sealing on worker threads. Every call has an inline twin (the same functions on the calling thread),
// used when no worker can be started, so the data path never depends on threads being available.
import os from 'node:os'
import fs from 'node:fs'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import { keyedHash, sealChunk, openChunk, owned } from './seal.js'
import { sealBlock, checkBlock, type BlockCheck } from '../stripe/block.js'
import type { Keys } from './keys.js'

export type SealRequest =
  | { seq: number, op: 'chunk', plain: Uint8Array }
  | { seq: number, op: 'open', id: Uint8Array, sealed: Uint8Array }
  | { seq: number, op: 'seal-blocks', slot: number, version: number, blockSize: number, partnerIds: Uint8Array[], payloads: Uint8Array }
  | { seq: number, op: 'check-block', slot: number, version: number, partnerId: Uint8Array, block: Uint8Array | null }

export type SealReply =
  | { seq: number, id: Uint8Array, sealed: Uint8Array }
  | { seq: number, plain: Uint8Array | null }
  | { seq: number, blocks: Uint8Array[] }
  | { seq: number, check: BlockCheck, block: Uint8Array | null }
  | { seq: number, error: string }

type Distribute<T> = T extends unknown ? Omit<T, 'seq'> : never
type Job = Distribute<SealRequest>

const WORKER_FILE = fileURLToPath(new URL('./seal-worker.js', import.meta.url))
const toBuf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength)


export interface Sealer {
  readonly threads: number
  chunk (plain: Buffer): Promise<{ id: Buffer, sealed: Buffer }>
  open (id: Buffer, sealed: Buffer): Promise<Buffer | null>
  sealBlocks (slot: number, version: number, partnerIds: Buffer[], payloads: Buffer[]): Promise<Buffer[]>
  // The block comes back with the verdict: the pooled sealer moves it to a worker and back.
  checkBlock (partnerId: Buffer, slot: number, version: number, block: Buffer | null): Promise<{ check: BlockCheck, block: Buffer | null }>
  close (): Promise<void>
}

export class InlineSealer implements Sealer {
  readonly threads = 0
  private readonly keys: Pick<Keys, 'dataKey' | 'chunkIdKey' | 'integrityKey'>

  constructor (keys: Pick<Keys, 'dataKey' | 'chunkIdKey' | 'integrityKey'>) {
    this.keys = keys
  }

  async chunk (plain: Buffer): Promise<{ id: Buffer, sealed: Buffer }> {
    const id = keyedHash(this.keys.chunkIdKey, plain)
    return { id, sealed: sealChunk(this.keys.dataKey, id, plain) }
  }

  async open (id: Buffer, sealed: Buffer): Promise<Buffer | null> {
    return openChunk(this.keys.dataKey, id, sealed)
  }

  async sealBlocks (slot: number, version: number, partnerIds: Buffer[], payloads: Buffer[]): Promise<Buffer[]> {
    return payloads.map((p, i) => sealBlock(this.keys.integrityKey, partnerIds[i], slot, version, p))
  }

  async checkBlock (partnerId: Buffer, slot: number, version: number, block: Buffer | null): Promise<{ check: BlockCheck, block: Buffer | null }> {
    return { check: checkBlock(this.keys.integrityKey, partnerId, slot, version, block), block }
  }

  async close (): Promise<void> {}
}

// Chunks up to this size are sealed and opened on the calling thread: for a small file's chunk the trip to a
// sealing thread and back (a message each way, a promise, buffers moved) costs the main thread more than the
// crypto itself.
const INLINE_CHUNK_BYTES = 16 * 1024

export class PooledSealer implements Sealer {
  readonly threads: number
  private readonly workers: Worker[]
  private readonly busy: number[]
  private readonly waiting = new Map<number, { resolve: (r: SealReply) => void, reject: (e: Error) => void, worker: number }>()
  private readonly dead = new Set<number>()
  // Takes over if every worker died, so the data path keeps going (slower) instead of waiting forever.
  private readonly inline: InlineSealer
  // Whether reads open chunks and check blocks on the calling thread (see create).
  readonly readsInline: boolean
  private closing = false
  private seq = 0

  private constructor (keys: Keys, threads: number, readsInline: boolean) {
    this.threads = threads
    this.readsInline = readsInline
    this.inline = new InlineSealer(keys)
    const workerData = { dataKey: keys.dataKey, chunkIdKey: keys.chunkIdKey, integrityKey: keys.integrityKey }
    this.workers = []
    this.busy = []
    for (let i = 0; i < threads; i++) {
      const w = new Worker(WORKER_FILE, { workerData })
      w.unref()
      w.on('message', (reply: SealReply) => this.settle(reply))
      w.on('error', err => this.failWorker(i, err))
      w.on('exit', code => this.failWorker(i, new Error(`sealing thread exited with code ${code}`)))
      this.workers.push(w)
      this.busy.push(0)
    }
  }

  // A pool of one thread per core beyond the main one, or the inline sealer where threads are not possible.
  // With a single thread (two cores) reads open their chunks and check their blocks on the calling thread:
  // a restore keeps both cores busy anyway (the transport, the partners), so the worker adds no parallel
  // work, only its costs: a copy of every block and chunk, a message and a wake-up each way. Restoring
  // 512 MiB from six partners on loopback, two runs each way: the daemon used 13.9-15.1 CPU-seconds
  // instead of 16.2-17.5, held 175-177 MiB instead of 202-206, and read 32.0-32.1 MB/s instead of
  // 28.8-31.8. Sealing (writes) stays on the worker, where it runs beside the FUSE writes.
  static create (keys: Keys, opts: { readsInline?: boolean } = {}): Sealer {
    const threads = Math.max(1, (os.availableParallelism?.() ?? os.cpus().length) - 1)
    if (!fs.existsSync(WORKER_FILE)) return new InlineSealer(keys)
    try {
      return new PooledSealer(keys, threads, opts.readsInline ?? threads === 1)
    } catch {
      return new InlineSealer(keys)
    }
  }

  private settle (reply: SealReply): void {
    const w = this.waiting.get(reply.seq)
    if (!w) return
    this.waiting.delete(reply.seq)
    this.busy[w.worker]--
    if ('error' in reply) w.reject(new Error(reply.error))
    else w.resolve(reply)
  }

  private failWorker (index: number, err: Error): void {
    if (this.closing) return
    this.dead.add(index)
    for (const [seq, w] of this.waiting) {
      if (w.worker !== index) continue
      this.waiting.delete(seq)
      w.reject(err)
    }
  }

  private allDead (): boolean {
    return this.dead.size === this.workers.length
  }

  private send (job: Job, transfer: ArrayBuffer[] = []): Promise<SealReply> {
    let worker = -1
    for (let i = 0; i < this.workers.length; i++) {
      if (!this.dead.has(i) && (worker < 0 || this.busy[i] < this.busy[worker])) worker = i
    }
    const seq = ++this.seq
    this.busy[worker]++
    return new Promise((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject, worker })
      this.workers[worker].postMessage({ ...job, seq }, transfer)
    })
  }

  async chunk (plain: Buffer): Promise<{ id: Buffer, sealed: Buffer }> {
    if (this.allDead() || plain.length <= INLINE_CHUNK_BYTES) return this.inline.chunk(plain)
    const moved = owned(plain)
    const r = await this.send({ op: 'chunk', plain: moved }, [moved.buffer as ArrayBuffer]) as { id: Uint8Array, sealed: Uint8Array }
    return { id: toBuf(r.id), sealed: toBuf(r.sealed) }
  }

  async open (id: Buffer, sealed: Buffer): Promise<Buffer | null> {
    if (this.readsInline || this.allDead() || sealed.length <= INLINE_CHUNK_BYTES) return this.inline.open(id, sealed)
    const moved = owned(sealed)
    const r = await this.send({ op: 'open', id: Buffer.from(id), sealed: moved }, [moved.buffer as ArrayBuffer]) as { plain: Uint8Array | null }
    return r.plain ? toBuf(r.plain) : null
  }

  async sealBlocks (slot: number, version: number, partnerIds: Buffer[], payloads: Buffer[]): Promise<Buffer[]> {
    if (this.allDead()) return this.inline.sealBlocks(slot, version, partnerIds, payloads)
    const blockSize = payloads[0].length
    const all = owned(Buffer.concat(payloads))
    const ids = partnerIds.map(p => Buffer.from(p))
    const r = await this.send({ op: 'seal-blocks', slot, version, blockSize, partnerIds: ids, payloads: all }, [all.buffer as ArrayBuffer]) as { blocks: Uint8Array[] }
    return r.blocks.map(toBuf)
  }

  async checkBlock (partnerId: Buffer, slot: number, version: number, block: Buffer | null): Promise<{ check: BlockCheck, block: Buffer | null }> {
    if (this.readsInline || this.allDead()) return this.inline.checkBlock(partnerId, slot, version, block)
    const moved = block ? owned(block) : null
    const r = await this.send({ op: 'check-block', slot, version, partnerId: Buffer.from(partnerId), block: moved }, moved ? [moved.buffer as ArrayBuffer] : []) as { check: BlockCheck, block: Uint8Array | null }
    return { check: r.check, block: r.block ? toBuf(r.block) : null }
  }

  async close (): Promise<void> {
    this.closing = true
    await Promise.all(this.workers.map(w => w.terminate()))
  }
}

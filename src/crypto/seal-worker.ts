// A worker thread that does the sealing work of the data path (hashing, encryption, block MACs), so the
// main thread, where every FUSE callback runs, stays free.
import { parentPort, workerData } from 'node:worker_threads'
import { keyedHash, sealChunk, openChunk, owned } from './seal.js'
import { sealBlock, checkBlock } from '../stripe/block.js'
import type { SealRequest, SealReply } from './seal-pool.js'

const keys = {
  data: Buffer.from(workerData.dataKey as Uint8Array),
  chunkId: Buffer.from(workerData.chunkIdKey as Uint8Array),
  integrity: Buffer.from(workerData.integrityKey as Uint8Array)
}

const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength)

function handle (req: SealRequest): { reply: SealReply, transfer: ArrayBuffer[] } {
  switch (req.op) {
    case 'chunk': {
      const plain = buf(req.plain)
      const id = keyedHash(keys.chunkId, plain)
      const sealed = owned(sealChunk(keys.data, id, plain))
      return { reply: { seq: req.seq, id, sealed }, transfer: [sealed.buffer as ArrayBuffer] }
    }
    case 'open': {
      const opened = openChunk(keys.data, buf(req.id), buf(req.sealed))
      const plain = opened ? owned(opened) : null
      return { reply: { seq: req.seq, plain }, transfer: plain ? [plain.buffer as ArrayBuffer] : [] }
    }
    case 'seal-blocks': {
      const all = buf(req.payloads)
      const blocks = req.partnerIds.map((pid, i) =>
        owned(sealBlock(keys.integrity, buf(pid), req.slot, req.version, all.subarray(i * req.blockSize, (i + 1) * req.blockSize))))
      return { reply: { seq: req.seq, blocks }, transfer: blocks.map(b => b.buffer as ArrayBuffer) }
    }
    case 'check-block': {
      const block = req.block ? buf(req.block) : null
      const check = checkBlock(keys.integrity, buf(req.partnerId), req.slot, req.version, block)
      return { reply: { seq: req.seq, check, block }, transfer: block ? [block.buffer as ArrayBuffer] : [] }
    }
  }
}

parentPort!.on('message', (req: SealRequest) => {
  try {
    const { reply, transfer } = handle(req)
    parentPort!.postMessage(reply, transfer)
  } catch (err) {
    parentPort!.postMessage({ seq: req.seq, error: (err as Error).message })
  }
})

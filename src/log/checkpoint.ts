// Metadata checkpoints: the metadata store is serialized and cut into chunks like file data. Pieces whose
// content did not change since the last checkpoint have the same chunk id and are not stored again, so a
// checkpoint costs what changed, not the size of the tree. The master block names the pieces.
import fs from 'node:fs'
import { CoopError } from '../errors.js'
import { openChunk } from '../crypto/seal.js'
import { encodeMaster, newestMaster, type MasterBody, type CheckpointPiece } from './master-block.js'
import { MetaStore, SEG_FREE, SEG_OPEN, SEG_LIVE, SEG_PENDING_FREE } from '../fs/meta-store.js'
import type { LogicalDisk, Loc } from './logical-disk.js'
import type { Keys } from '../crypto/keys.js'
import type { PartnerSet } from '../partners/partner-set.js'
import { layoutOf, type HomeConfig } from '../home.js'

const RECOVERY_VERSION_STEP = 1_000_000

// Writes a checkpoint and the master block naming it. The caller holds the disk lock and has packed what
// it wants included. Returns the new checkpoint sequence number.
export async function writeCheckpoint (disk: LogicalDisk, cfg: HomeConfig, chunkSize: number, extra: Partial<MasterBody> = {}): Promise<number> {
  const meta = disk.meta
  disk.retireEmptySegments()
  const snapshot = meta.serialize()
  const pieces: Array<{ id: Buffer, loc: Loc | null }> = []
  disk.useReserve = true
  try {
    for (let off = 0; off < snapshot.length; off += chunkSize) {
      const plain = snapshot.subarray(off, Math.min(off + chunkSize, snapshot.length))
      const id = disk.chunkId(plain)
      const piece: { id: Buffer, loc: Loc | null } = { id, loc: null }
      pieces.push(piece)
      if (meta.getChunk(id)) continue
      await disk.append(id, disk.seal(id, plain), loc => { piece.loc = loc })
    }
    await disk.flush()
  } finally {
    disk.useReserve = false
  }

  const manifest: CheckpointPiece[] = []
  meta.tx(() => {
    const old = meta.db.prepare('SELECT chunk FROM checkpoint_chunks').all() as Array<{ chunk: Buffer }>
    meta.db.prepare('DELETE FROM checkpoint_chunks').run()
    const insert = meta.db.prepare('INSERT INTO checkpoint_chunks (idx, chunk) VALUES (?, ?)')
    pieces.forEach((p, i) => {
      if (!meta.refChunk(p.id, p.loc ?? undefined)) throw new CoopError('EAGAIN', 'a checkpoint piece vanished while it was written')
      insert.run(i, p.id)
      const loc = meta.getChunk(p.id)!
      manifest.push({ id: p.id.toString('hex'), slot: loc.slot, version: loc.version, off: loc.off, len: loc.len })
    })
    for (const o of old) meta.unrefChunk(o.chunk)
  })

  // Every attempt gets a number of its own, recorded before the master block goes out: a master block that
  // reached some partners and then failed must never share its version with a different one.
  const seq = Math.max(Number(meta.kvGet('checkpointSeq') ?? 0), Number(meta.kvGet('checkpointSeqUsed') ?? 0)) + 1
  meta.kvSet('checkpointSeqUsed', seq)
  const body: MasterBody = {
    ...layoutOf(cfg),
    ...extra,
    checkpoint: { seq, dbBytes: snapshot.length, pieces: manifest },
    createdAt: new Date().toISOString()
  }
  await disk.partners.flush()
  await disk.partners.putMaster(encodeMaster(disk.keys, seq, body))
  meta.kvSet('checkpointSeq', seq)
  disk.releasePendingFree()
  return seq
}

// Rebuilds the metadata store at metaFile from the newest checkpoint the partners hold.
export async function restoreCheckpoint (keys: Keys, partners: PartnerSet, metaFile: string): Promise<MasterBody> {
  const { body } = newestMaster(keys, await partners.getMasters())
  const parts: Buffer[] = []
  for (const p of body.checkpoint.pieces) {
    const id = Buffer.from(p.id, 'hex')
    const B = partners.blockSize
    const first = Math.floor(p.off / B)
    const last = Math.floor((p.off + p.len - 1) / B)
    const data = await partners.readData(p.slot, p.version, first, last)
    const start = p.off - first * B
    const plain = openChunk(keys.dataKey, id, data.subarray(start, start + p.len))
    if (!plain) throw new CoopError('EIO', `checkpoint piece in slot ${p.slot} failed authentication`)
    parts.push(plain)
  }
  const db = Buffer.concat(parts)
  if (db.length !== body.checkpoint.dbBytes) throw new CoopError('EIO', 'the restored checkpoint has the wrong size')
  fs.writeFileSync(metaFile, db, { mode: 0o600 })

  const meta = new MetaStore(metaFile)
  try {
    meta.tx(() => {
      const d = meta.db
      // Data that was only in the lost machine's write-back store is gone; the extents still name the
      // version of each block that reached the partners.
      d.prepare('DELETE FROM dirty').run()
      d.prepare('DELETE FROM wb_inline').run()
      d.prepare('DELETE FROM wb_spans').run()
      d.prepare('UPDATE segments SET state = ? WHERE state IN (?, ?)').run(SEG_FREE, SEG_OPEN, SEG_PENDING_FREE)
      // The checkpoint's own pieces were stored after the snapshot was taken: record them now.
      const old = d.prepare('SELECT chunk FROM checkpoint_chunks').all() as Array<{ chunk: Buffer }>
      d.prepare('DELETE FROM checkpoint_chunks').run()
      const upsertSeg = d.prepare(`INSERT INTO segments (slot, version, state, used, live) VALUES (?, ?, ?, ?, 0)
        ON CONFLICT(slot) DO UPDATE SET version = excluded.version, state = excluded.state, used = max(used, excluded.used)`)
      const insert = d.prepare('INSERT INTO checkpoint_chunks (idx, chunk) VALUES (?, ?)')
      body.checkpoint.pieces.forEach((p, i) => {
        const id = Buffer.from(p.id, 'hex')
        upsertSeg.run(p.slot, p.version, SEG_LIVE, p.off + p.len)
        meta.refChunk(id, { slot: p.slot, off: p.off, len: p.len })
        insert.run(i, id)
      })
      for (const o of old) meta.unrefChunk(o.chunk)
      meta.kvSet('checkpointSeq', body.checkpoint.seq)
      // Slots the restored tree does not use may hold blocks written after this checkpoint: new versions
      // start far above anything seen, so a partner can never pass one of those off as current.
      const maxv = (d.prepare('SELECT coalesce(max(version), 0) AS v FROM segments').get() as { v: number }).v
      meta.kvSet('versionBase', Math.max(Number(meta.kvGet('versionBase') ?? 0), maxv) + RECOVERY_VERSION_STEP)
    })
  } finally {
    meta.close()
  }
  return body
}

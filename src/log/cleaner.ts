// The cleaner: copies the live chunks out of mostly-dead segments into the open segment, so the emptied
// segments can be reused after the next checkpoint. The caller holds the disk lock.
import { CLEAN_THRESHOLD } from '../config.js'
import { SEG_LIVE } from '../fs/meta-store.js'
import type { LogicalDisk } from './logical-disk.js'

const MAX_SEGMENTS_PER_PASS = 64

// With urgent set, any segment with dead space is a candidate, least live first.
export async function clean (disk: LogicalDisk, urgent = false): Promise<number> {
  const meta = disk.meta
  const limit = urgent ? 1 : CLEAN_THRESHOLD
  const candidates = meta.db.prepare(`SELECT slot, version, live FROM segments
    WHERE state = ? AND live < ? * ? AND live < used ORDER BY live LIMIT ?`)
    .all(SEG_LIVE, limit, disk.segmentBytes, MAX_SEGMENTS_PER_PASS) as Array<{ slot: number, version: number, live: number }>
  // Copy only what fits in the segments free now, less one kept for the checkpoint that releases the
  // victims: cleaning must never be what fills the disk.
  let budget = (disk.slotCounts().free - 1) * disk.segmentBytes
  const victims = []
  for (const c of candidates) {
    if (c.live > budget) break
    budget -= c.live
    victims.push(c)
  }
  if (victims.length < 2 && !(victims.length === 1 && victims[0].live === 0)) return 0
  disk.useReserve = true
  try {
    for (const v of victims) {
      for (const c of meta.chunksInSlot(v.slot)) {
        const sealed = Buffer.from(await disk.readSealed({ slot: v.slot, version: v.version, off: c.off, len: c.len }))
        await disk.append(c.id, sealed, loc => meta.moveChunk(c.id, v.slot, c.len, loc.slot, loc.off))
      }
    }
    await disk.flush()
  } finally {
    disk.useReserve = false
  }
  return victims.length
}

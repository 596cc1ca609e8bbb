// Checkpoints of the metadata store's write-ahead log, on a thread of their own. A checkpoint copies
// committed pages from the log into the database file and syncs both; run by SQLite after a commit it
// takes that time from the filesystem's thread, which answers every FUSE request. Here a second
// connection copies what is committed every few milliseconds while the store keeps appending (a PASSIVE
// checkpoint never blocks the writer). The store keeps SQLite's own checkpoint, at a higher mark than
// SQLite's default: by the time it runs, it finds most pages copied, syncs, and lets the store's next
// commit write the log from its beginning again (see MetaStore.checkpointInBackground). Each round takes
// the word it shares with the store (wal-lock.ts), and skips its turn while the store checkpoints.
import { parentPort, workerData } from 'node:worker_threads'
import Database from 'better-sqlite3'
import { CKPT_IDLE, CKPT_THREAD } from './wal-lock.js'

// After a round that copied nothing the pause doubles, up to the longest: an idle store costs two wake-ups
// a second, and a burst of commits after a quiet spell waits at most that long for its first round.
const SHORTEST_PAUSE_MS = 20
const LONGEST_PAUSE_MS = 500

interface CheckpointResult { busy: number, log: number, checkpointed: number }

const { file, lock } = workerData as { file: string, lock?: Int32Array }
const db = new Database(file)
db.pragma('synchronous = NORMAL')
db.pragma('cache_size = -512')
let pause = SHORTEST_PAUSE_MS
let copiedSoFar = -1
let timer: NodeJS.Timeout | null = null

function round (): void {
  // The store is checkpointing the log itself: try again soon.
  if (lock && Atomics.compareExchange(lock, 0, CKPT_IDLE, CKPT_THREAD) !== CKPT_IDLE) {
    timer = setTimeout(round, SHORTEST_PAUSE_MS)
    return
  }
  let copied = false
  try {
    const [r] = db.pragma('wal_checkpoint(PASSIVE)') as CheckpointResult[]
    copied = r !== undefined && r.checkpointed !== copiedSoFar
    copiedSoFar = r?.checkpointed ?? -1
  } catch {
    // Busy: the store's own checkpoint still runs, and the next round tries again.
  } finally {
    if (lock) {
      Atomics.store(lock, 0, CKPT_IDLE)
      Atomics.notify(lock, 0)
    }
  }
  pause = copied ? SHORTEST_PAUSE_MS : Math.min(pause * 2, LONGEST_PAUSE_MS)
  timer = setTimeout(round, pause)
}

parentPort?.on('message', (msg: unknown) => {
  if (msg !== 'close') return
  if (timer) clearTimeout(timer)
  timer = null
  db.close()
  parentPort?.close()
})

timer = setTimeout(round, pause)

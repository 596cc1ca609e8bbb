// Defaults for every tunable of coopfs, gathered in one place. Units are in the names.
// Every timing can be overridden (environment or options) so tests can run long schedules in seconds.

export const FORMAT_VERSION = 1

// Erasure coding: k data blocks + m parity blocks per stripe, one block per partner.
export const DEFAULT_K = 4
export const DEFAULT_M = 2

// File data is cut into chunks of at most this many bytes, aligned to file offsets.
export const CHUNK_SIZE_BYTES = 128 * 1024
// Sealing adds the Poly1305 tag to every chunk.
export const CHUNK_MAC_BYTES = 16
// Payload bytes of one stripe block: exactly two sealed full chunks, so full chunks fill segments (k blocks)
// without padding. A segment holds 1 MiB of file data at k = 4.
export const BLOCK_SIZE_BYTES = 2 * (CHUNK_SIZE_BYTES + CHUNK_MAC_BYTES)
// Slots reserved on each partner; the logical disk holds k * slots * BLOCK_SIZE_BYTES bytes.
export const DEFAULT_SLOTS = 8192

// Write-back store: bytes of dirty file data kept locally before writers are held back. By default a quarter
// of the free space on the home's disk when the daemon starts, within [MIN, MAX]; COOPFS_WRITEBACK_BYTES
// sets it.
export const WRITEBACK_MIN_BYTES = 256 * 1024 * 1024
export const WRITEBACK_MAX_BYTES = 4 * 1024 * 1024 * 1024
export const WRITEBACK_BYTES = envInt('COOPFS_WRITEBACK_BYTES', 0)
// Decrypted chunk cache held in memory.
export const CACHE_LIMIT_BYTES = 48 * 1024 * 1024
// Blocks read from network partners are also kept on local disk (in the home's cache folder), up to this.
export const DISK_CACHE_BYTES = envInt('COOPFS_DISK_CACHE_BYTES', 4 * 1024 * 1024 * 1024)

// A dirty block that has not been written to for this long is packed even if its file is still open.
export const PACK_IDLE_MS = envInt('COOPFS_PACK_IDLE_MS', 300)
// How often a daemon gives the pages of freed malloc memory back to the system; 0: never.
export const MALLOC_TRIM_MS = envInt('COOPFS_MALLOC_TRIM_MS', 5000)
// Blocks behind the end of a file that is still being written wait for the writer to pause while the
// write-back store is less than half full, for at most this long; after that they are packed behind it. A
// burst of writes then runs at the speed of the local disk and the sealing work follows it.
export const WRITE_BURST_MS = envInt('COOPFS_WRITE_BURST_MS', 10_000)
// Dirty blocks the packer looks at per page of the dirty list (at most eight pages a round).
export const PACK_SCAN_BLOCKS = Math.max(1, envInt('COOPFS_PACK_SCAN_BLOCKS', 4096))
// A partially filled segment is sealed and written after this long without new data.
export const SEGMENT_FLUSH_MS = envInt('COOPFS_SEGMENT_FLUSH_MS', 1000)
// Metadata checkpoints are written at most this often while the tree changes (and at sync/unmount).
export const CHECKPOINT_INTERVAL_MS = envInt('COOPFS_CHECKPOINT_INTERVAL_MS', 30_000)

// Fraction of the logical disk kept free for the cleaner and for checkpoints; writes past it get ENOSPC.
export const RESERVED_FRACTION = 0.08
export const MIN_RESERVED_SLOTS = 4
// Share of the unreserved segments file data may fill; the rest lets the cleaner compact partly filled ones.
export const FILL_LIMIT = 0.9
// Segments whose live bytes fall below this fraction are compacted by the cleaner.
export const CLEAN_THRESHOLD = 0.5

export const MAX_NAME_BYTES = 255
export const MAX_SYMLINK_BYTES = 4095
export const MAX_XATTR_VALUE_BYTES = 64 * 1024
export const MAX_XATTR_LIST_BYTES = 64 * 1024
export const MAX_FILE_BYTES = 2 ** 50

// Waiting for the daemon: mount readiness and control requests.
export const DAEMON_START_TIMEOUT_MS = 30_000
// How long a starting daemon waits for the DHT before it mounts anyway (the join goes on in the background).
export const DHT_JOIN_WAIT_MS = 5000
export const CONTROL_TIMEOUT_MS = 10 * 60_000
// How long the daemon waits for `fusermount -u` before it detaches the mount instead (daemon.ts), and the
// program it runs for that (a test puts one there that never returns).
export const UNMOUNT_WAIT_MS = Math.max(1000, envInt('COOPFS_UNMOUNT_WAIT_MS', 10_000))
export const FUSERMOUNT = process.env.COOPFS_FUSERMOUNT || 'fusermount'
// Which FUSE layer serves the mount: 'kernel' (the main thread reads and answers the kernel's protocol
// itself, src/fuse/kernel.ts; needs the coopfs_preload addon, else fuse-native serves) or 'fuse-native'
// (libfuse's threads hand each request to the main thread).
export const FUSE_LAYER: 'fuse-native' | 'kernel' = process.env.COOPFS_FUSE_LAYER === 'fuse-native' ? 'fuse-native' : 'kernel'

// Network: requests to a partner wait this long for an answer; reads wait this long for an offline partner
// to come back before decoding around it (and failing with EIO when too few are up); writes wait longer.
export const REQUEST_TIMEOUT_MS = envInt('COOPFS_REQUEST_TIMEOUT_MS', 15_000)
export const READ_WAIT_MS = envInt('COOPFS_READ_WAIT_MS', 10_000)
export const WRITE_WAIT_MS = envInt('COOPFS_WRITE_WAIT_MS', 5_000)
// Partners are pinged this often; one that does not answer within PING_TIMEOUT_MS is redialed.
export const PING_INTERVAL_MS = envInt('COOPFS_PING_INTERVAL_MS', 10_000)
export const PING_TIMEOUT_MS = envInt('COOPFS_PING_TIMEOUT_MS', 5_000)
// Each partner may read and write QUOTA_FACTOR times the space reserved for it per window; after it says it
// restored on a new machine, the limit is lifted for RESTORE_WINDOW_MS.
export const QUOTA_FACTOR = 3
export const QUOTA_WINDOW_MS = envInt('COOPFS_QUOTA_WINDOW_MS', 24 * 3600_000)
export const RESTORE_WINDOW_MS = envInt('COOPFS_RESTORE_WINDOW_MS', 7 * 24 * 3600_000)
// Recovery looks for partners on the recovery topic for up to RECOVERY_DISCOVERY_MS, and once one answered,
// waits up to RECOVERY_SETTLE_MS more for the others named in its master block.
export const RECOVERY_DISCOVERY_MS = envInt('COOPFS_RECOVERY_DISCOVERY_MS', 60_000)
export const RECOVERY_SETTLE_MS = envInt('COOPFS_RECOVERY_SETTLE_MS', 5_000)
// Background work that failed (partners unreachable) is retried after a delay that doubles up to this.
export const MAX_BACKOFF_MS = envInt('COOPFS_MAX_BACKOFF_MS', 30_000)

function envInt (name: string, fallback: number): number {
  const v = process.env[name]
  if (v === undefined || v === '') return fallback
  const n = Number(v)
  return Number.isFinite(n) && n >= 0 ? n : fallback
}

// coopfs prefetch: pulls the contents of a subtree from the partners into the local cache, a few chunks
// at a time, with a progress figure the CLI polls.
import { CoopError } from '../errors.js'
import type { MetaStore } from '../fs/meta-store.js'
import type { LogicalDisk } from '../log/logical-disk.js'

const ROOT_INO = 1
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const PARALLEL = 4

export interface PrefetchProgress {
  path: string
  files: number
  chunks: number
  chunksDone: number
  bytes: number
  bytesDone: number
  failed: number
  firstError: string | null
  running: boolean
}

export class Prefetch {
  readonly progress: PrefetchProgress
  readonly done: Promise<void>
  private cancelled = false

  constructor (meta: MetaStore, disk: LogicalDisk, rel: string, chunkSize: number) {
    const ino = resolve(meta, rel)
    const ids = new Map<string, Buffer>()
    let files = 0
    let bytes = 0
    const stack = [ino]
    while (stack.length) {
      const cur = stack.pop()!
      const inode = meta.getInode(cur)
      if (!inode) continue
      if ((inode.mode & S_IFMT) === S_IFDIR) {
        for (const e of meta.listDir(cur)) stack.push(e.ino)
      } else if ((inode.mode & S_IFMT) === S_IFREG) {
        files++
        for (const e of meta.extentsFrom(cur, 0)) {
          const key = e.chunk.toString('hex')
          if (ids.has(key)) continue
          ids.set(key, e.chunk)
          bytes += Math.min(chunkSize, Math.max(0, inode.size - e.blk * chunkSize))
        }
      }
    }
    this.progress = { path: '/' + rel.replace(/^\/+/, ''), files, chunks: ids.size, chunksDone: 0, bytes, bytesDone: 0, failed: 0, firstError: null, running: true }
    this.done = this.run(disk, [...ids.values()], chunkSize)
  }

  private async run (disk: LogicalDisk, ids: Buffer[], chunkSize: number): Promise<void> {
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < ids.length && !this.cancelled) {
        const id = ids[next++]
        try {
          const plain = await disk.readChunk(id)
          this.progress.bytesDone += Math.min(plain.length, chunkSize)
        } catch (err) {
          this.progress.failed++
          this.progress.firstError ??= (err as Error).message
        }
        this.progress.chunksDone++
      }
    }
    await Promise.all(Array.from({ length: PARALLEL }, worker))
    this.progress.bytesDone = Math.min(this.progress.bytesDone, this.progress.bytes)
    this.progress.running = false
  }

  cancel (): void {
    this.cancelled = true
  }
}

function resolve (meta: MetaStore, rel: string): number {
  let ino = ROOT_INO
  for (const name of rel.split('/').filter(Boolean)) {
    const next = meta.lookup(ino, name)
    if (next === undefined) throw new CoopError('ENOENT', `${rel} is not in the mounted tree`)
    ino = next
  }
  return ino
}

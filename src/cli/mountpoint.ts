// Mount point checks and the table of mounted coopfs filesystems (from /proc/self/mountinfo).
import fs from 'node:fs'
import path from 'node:path'
import { CoopError } from '../errors.js'

export interface CoopMount {
  mountpoint: string
  home: string
}

function unescape (s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)))
}

export function mountedAt (mountpoint: string): { fstype: string, source: string } | null {
  let text = ''
  try {
    text = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return null
  }
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ')
    if (!right) continue
    const mp = unescape(left.split(' ')[4])
    const [fstype, source] = right.split(' ')
    if (mp === mountpoint) return { fstype, source: unescape(source) }
  }
  return null
}

export function coopMountAt (mountpoint: string): CoopMount | null {
  const m = mountedAt(mountpoint)
  if (!m || !m.fstype.startsWith('fuse') || !m.source.startsWith('coopfs:')) return null
  return { mountpoint, home: m.source.slice('coopfs:'.length) }
}

export function checkMountpoint (dir: string): string {
  const mp = path.resolve(dir)
  let st: fs.Stats
  try {
    st = fs.statSync(mp)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOTCONN') throw new CoopError('ESTALE', `${mp} is a stale mount left by a daemon that died: run 'coopfs unmount ${dir}' first`)
    throw new CoopError('ENOENT', `mount point ${mp} does not exist: create the folder first`)
  }
  if (!st.isDirectory()) throw new CoopError('ENOTDIR', `mount point ${mp} is not a folder`)
  if (mountedAt(mp)) throw new CoopError('EBUSY', `${mp} is already a mount point`)
  if (fs.readdirSync(mp).length > 0) throw new CoopError('ENOTEMPTY', `mount point ${mp} is not empty: coopfs mounts only on an empty folder`)
  return mp
}

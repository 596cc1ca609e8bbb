// A tree of mixed files (nested folders, random data, an empty file, a sparse file, a symlink, a hard link,
// modes, times, an extended attribute) and a snapshot of everything a restore must bring back.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { sh } from './helpers.js'

export interface Entry { type: string, mode: number, size: number, mtimeMs: number, nlink: number, ino: number, hash?: string, target?: string, xattr?: string }

export function snapshot (root: string): Map<string, Entry> {
  const out = new Map<string, Entry>()
  const walk = (dir: string): void => {
    for (const name of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, name)
      const st = fs.lstatSync(p)
      const rel = path.relative(root, p)
      const e: Entry = { type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'link' : 'file', mode: st.mode, size: st.size, mtimeMs: Math.floor(st.mtimeMs), nlink: st.nlink, ino: st.ino }
      if (st.isFile()) e.hash = crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex')
      if (st.isSymbolicLink()) e.target = fs.readlinkSync(p)
      out.set(rel, e)
      if (st.isDirectory()) walk(p)
    }
  }
  walk(root)
  return out
}

export async function writeTree (mnt: string): Promise<void> {
  fs.mkdirSync(path.join(mnt, 'docs/deep/er'), { recursive: true })
  fs.writeFileSync(path.join(mnt, 'docs/small.txt'), 'a small file\n')
  fs.writeFileSync(path.join(mnt, 'docs/deep/er/random.bin'), crypto.randomBytes(3 * 1024 * 1024 + 17))
  fs.writeFileSync(path.join(mnt, 'empty'), '')
  const sparse = fs.openSync(path.join(mnt, 'sparse'), 'w')
  fs.writeSync(sparse, Buffer.from('tail'), 0, 4, 10 * 1024 * 1024)
  fs.closeSync(sparse)
  fs.symlinkSync('docs/small.txt', path.join(mnt, 'link'))
  fs.chmodSync(path.join(mnt, 'docs/deep'), 0o700)
  fs.chmodSync(path.join(mnt, 'empty'), 0o640)
  fs.utimesSync(path.join(mnt, 'docs/small.txt'), new Date('2001-02-03T04:05:06Z'), new Date('2002-03-04T05:06:07Z'))
  // Linked after the time change: the kernel caches attributes per path for a second, hard links included.
  fs.linkSync(path.join(mnt, 'docs/small.txt'), path.join(mnt, 'hardlink'))
  const r = await sh(`python3 -c "import os; os.setxattr('${path.join(mnt, 'docs/small.txt')}', 'user.color', b'blue')"`)
  if (r.code !== 0) throw new Error(r.stderr)
}

export async function xattrOf (file: string): Promise<string> {
  return (await sh(`python3 -c "import os; print(os.getxattr('${file}', 'user.color').decode())"`)).stdout.trim()
}

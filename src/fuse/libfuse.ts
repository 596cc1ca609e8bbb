// Loads fuse-native. fuse-native's prebuilt addon needs libfuse.so.2 and fusermount, which a fresh machine
// lacks; its own dependency fuse-shared-library ships both. When the system has no libfuse.so.2, that
// library is loaded globally first by the project's own small addon (native/preload.c), so the addon's
// dependency resolves to it, and its bin folder, holding fusermount, goes on PATH.
import path from 'node:path'
import { createRequire } from 'node:module'
import type FuseClass from 'fuse-native'
import { CoopError } from '../errors.js'

const require = createRequire(import.meta.url)
let loaded: typeof FuseClass | null = null
let interposed = false

interface Preload extends Partial<KernelIo> {
  loadGlobal: (file: string) => void
  interpose?: () => boolean
  tookOver?: () => boolean
  inForce?: () => boolean
  requestBytes?: () => number
  setNoCapabilities?: (absent: boolean) => void
  noteCreated?: (fh: number, ints: Uint32Array) => void
  answered?: () => AnsweredInAddon
  siblingsDropped?: () => number
  trimMalloc?: () => boolean
  deferReleases?: (on: boolean) => void
  takeReleased?: () => number[] | null
}

// Requests the addon answered without the daemon since the mount (see native/preload.c).
export interface AnsweredInAddon {
  capability: number
  readOnlyFlush: number
  createAttrs: number
  release: number
}

// What noteCreated needs of a file's attributes; times in milliseconds.
export interface StatFields {
  mode: number
  uid: number
  gid: number
  size: number
  dev?: number
  nlink: number
  ino: number
  rdev: number
  blksize: number
  blocks: number
  atime: number
  mtime: number
  ctime: number
}

let preloaded: Preload | null = null
let preloadTried = false

// The preload addon, loaded on first use (not tried again after a failure); null when it is not built.
function loadPreload (): Preload | null {
  if (preloadTried) return preloaded
  preloadTried = true
  try {
    preloaded = require('../../native/build/Release/coopfs_preload.node') as Preload
  } catch {
    preloaded = null
  }
  return preloaded
}

// Whether the preload addon stands between fuse-native and libfuse (native/preload.c). Without it new
// files belong to the daemon's user, libfuse 2 drops a change of one timestamp alone (touch -a, touch -m),
// and the mount must do without the kernel's attribute cache.
export function preloadActive (): boolean {
  return interposed
}

// The largest read or write request libfuse 2 lets the kernel send: 32 pages.
const LIBFUSE_REQUEST_BYTES = 128 * 1024

// For status: whether the preload addon stands between fuse-native and libfuse, and if not, what that
// costs; and the largest request the kernel may send. Meaningful once a mount was made.
export function fuseStatus (): { addon: boolean, note?: string, requestBytes: number, answered?: AnsweredInAddon, siblingCachesDropped?: number } {
  const requestBytes = (interposed ? preloaded?.requestBytes?.() : 0) || LIBFUSE_REQUEST_BYTES
  if (!interposed) return { addon: false, note: 'coopfs_preload addon not in use (run npm install again to build it): new files belong to the daemon\'s user, touch -a and touch -m are ignored, no attribute caching in the kernel', requestBytes }
  if (!preloadTookOver()) return { addon: false, note: 'fuse-native did not call fuse_new through the coopfs_preload addon: new files belong to the daemon\'s user, touch -a and touch -m are ignored', requestBytes }
  return { addon: true, requestBytes, answered: preloaded?.answered?.(), siblingCachesDropped: preloaded?.siblingsDropped?.() }
}

// Tells the preload addon whether no file has a security.capability attribute, so that it may answer the
// kernel's question for it before every write without asking the filesystem (native/preload.c). Call with
// false before such an attribute is stored.
export function setNoCapabilities (absent: boolean): void {
  if (interposed) preloaded?.setNoCapabilities?.(absent)
}

// Hands the preload addon the attributes of a file just created with handle fh, so that libfuse's own
// request for them right after the create is answered there (native/preload.c, fgetattr_quick). Call
// before answering the create.
export function noteCreated (fh: number, st: StatFields): void {
  if (!interposed || !preloaded?.noteCreated) return
  const ints = new Uint32Array(18)
  ints[0] = st.mode
  ints[1] = st.uid
  ints[2] = st.gid
  putUint64(ints, 3, st.size)
  ints[5] = st.dev ?? 0
  ints[6] = st.nlink
  ints[7] = st.ino
  ints[8] = st.rdev
  ints[9] = st.blksize
  putUint64(ints, 10, st.blocks)
  putUint64(ints, 12, st.atime)
  putUint64(ints, 14, st.mtime)
  putUint64(ints, 16, st.ctime)
  preloaded.noteCreated(fh, ints)
}

function putUint64 (ints: Uint32Array, i: number, n: number): void {
  ints[i] = n % 0x100000000
  ints[i + 1] = Math.floor(n / 0x100000000)
}

// Has the preload addon answer releases itself and list their handles for takeReleased (native/preload.c,
// release_noted). Returns whether it will: false without the addon, and releases then come as requests.
export function deferReleases (on: boolean): boolean {
  if (!interposed || !preloaded?.deferReleases || !preloaded.takeReleased) return false
  preloaded.deferReleases(on)
  return true
}

// The handles whose release the addon answered since the last call, in the order of their releases; null
// when there are none.
export function takeReleased (): number[] | null {
  return interposed ? preloaded?.takeReleased?.() ?? null : null
}

// Gives the pages of freed memory in malloc's heaps back to the system (native/preload.c, trimMalloc);
// false when there was nothing to give back or the addon is not built.
export function trimMalloc (): boolean {
  return loadPreload()?.trimMalloc?.() === true
}

// After a mount: whether fuse-native's fuse_new really went through the preload addon.
function preloadTookOver (): boolean {
  return preloaded?.tookOver?.() === true
}

export function loadFuse (): typeof FuseClass {
  if (loaded) return loaded
  const preload = loadPreload()
  // Before fuse-native is loaded, so that its calls to fuse_new come to the addon.
  try {
    interposed = preload?.interpose?.() === true
  } catch {
    interposed = false
  }
  try {
    loaded = require('fuse-native') as typeof FuseClass
    // The system's libfuse2 may come without fusermount (Debian's libfuse2 does not need the fuse package):
    // the bundled one stands behind whatever PATH has.
    process.env.PATH = joinPath(process.env.PATH, bundledFusermountDir())
    checkInForce(preload)
    return loaded
  } catch (err) {
    if (!/libfuse/.test(String((err as Error).message))) throw err
  }
  const shared = require('fuse-shared-library-linux') as { lib: string }
  if (!preload) {
    throw new CoopError('ENOFUSE', 'this system has no libfuse.so.2 and the coopfs_preload addon was not built: run npm install again (it needs make and a C compiler), or install libfuse2')
  }
  preload.loadGlobal(shared.lib)
  const bin = path.join(path.dirname(shared.lib), '..', 'bin')
  process.env.PATH = joinPath(bin, process.env.PATH)
  loaded = require('fuse-native') as typeof FuseClass
  checkInForce(preload)
  return loaded
}

// With libfuse loaded: whether its calls and fuse-native's really reach the addon's functions.
function checkInForce (preload: Preload | null): void {
  if (interposed && preload?.inForce?.() !== true) interposed = false
}

// PATH entries in order, empty ones dropped (an empty entry would mean the current folder).
function joinPath (...parts: Array<string | undefined>): string {
  return parts.flatMap(p => (p ?? '').split(path.delimiter)).filter(Boolean).join(path.delimiter)
}

// The folder of the bundled fusermount, for commands that unmount without loading fuse-native.
export function bundledFusermountDir (): string {
  const shared = require('fuse-shared-library-linux') as { lib: string }
  return path.join(path.dirname(shared.lib), '..', 'bin')
}

// What a session answering the kernel on the main thread needs of the preload addon (src/fuse/kernel.ts):
// mounting through libfuse's fuse_mount, which gives the /dev/fuse descriptor, and reading, answering and
// watching it. null when the addon is not built (or predates these functions).
export interface KernelIo {
  kernelMount: (mountpoint: string, options: string) => number
  watchFuse: (fd: number, onReadable: () => void) => void
  unwatchFuse: () => void
  fuseRead: (fd: number, buf: Buffer) => number
  fuseWrite: (fd: number, buf: Buffer, len: number) => number
  pageSize?: () => number
}

export function kernelIo (): KernelIo | null {
  loadFuse() // libfuse.so.2 loaded (the bundled one when the system has none) and fusermount on PATH
  const p = preloaded
  if (!p?.kernelMount || !p.watchFuse || !p.unwatchFuse || !p.fuseRead || !p.fuseWrite) return null
  return { kernelMount: p.kernelMount, watchFuse: p.watchFuse, unwatchFuse: p.unwatchFuse, fuseRead: p.fuseRead, fuseWrite: p.fuseWrite, pageSize: p.pageSize }
}

// The parts of fuse-native coopfs uses (the package ships no types).
declare module 'fuse-native' {
  type Cb = (...args: any[]) => void
  interface FuseOptions {
    force?: boolean
    mkdir?: boolean
    debug?: boolean
    allowOther?: boolean
    autoUnmount?: boolean
    defaultPermissions?: boolean
    fsname?: string
    subtype?: string
    autoCache?: boolean
    attrTimeout?: number
    entryTimeout?: number
    timeout?: number | false
    maxRead?: number
  }
  class Fuse {
    constructor (mnt: string, ops: Record<string, Cb>, opts?: FuseOptions)
    opts: FuseOptions
    ops: Record<string, Cb>
    mnt: string
    mount (cb: (err: Error | null) => void): void
    unmount (cb: (err: Error | null) => void): void
    protected _fuseOptions (): string
    static unmount (mnt: string, cb: (err: Error | null) => void): void
    static [errno: string]: unknown
  }
  export = Fuse
}

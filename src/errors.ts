// Errors carry a code a program can test and a sentence a user can act on.

export class CoopError extends Error {
  readonly code: string
  constructor (code: string, message: string) {
    super(message)
    this.code = code
    this.name = 'CoopError'
  }
}

// A filesystem error: code is the Linux errno name the FUSE layer maps to a number.
export class FsError extends Error {
  readonly code: string
  constructor (code: string, message?: string) {
    super(message ?? code)
    this.code = code
    this.name = 'FsError'
  }
}

// Lookups that miss (ENOENT, ENODATA) are a normal part of filesystem traffic: the common case reuses one
// error per code instead of capturing a stack trace each time.
const shared = new Map<string, FsError>()

export function fsErr (code: string, message?: string): FsError {
  if (message !== undefined) return new FsError(code, message)
  let err = shared.get(code)
  if (!err) {
    err = new FsError(code)
    shared.set(code, err)
  }
  return err
}

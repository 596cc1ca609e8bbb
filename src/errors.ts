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

export function fsErr (code: string, message?: string): FsError {
  return new FsError(code, message)
}

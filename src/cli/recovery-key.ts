// Where the recovery key comes from: a file, the environment, or a prompt on the terminal.
import fs from 'node:fs'
import readline from 'node:readline'
import { CoopError } from '../errors.js'

export async function readRecoveryKey (file: string | undefined): Promise<string> {
  if (file) {
    try {
      return fs.readFileSync(file, 'utf8').trim()
    } catch {
      throw new CoopError('ENOENT', `cannot read the recovery key file ${file}`)
    }
  }
  if (process.env.COOPFS_RECOVERY_KEY) return process.env.COOPFS_RECOVERY_KEY.trim()
  if (!process.stdin.isTTY) {
    throw new CoopError('EBADKEY', 'no recovery key: pass --recovery-key-file FILE or set COOPFS_RECOVERY_KEY')
  }
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr })
  try {
    return await new Promise<string>(resolve => rl.question('Recovery key: ', answer => resolve(answer.trim())))
  } finally {
    rl.close()
  }
}

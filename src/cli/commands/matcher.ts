// coopfs matcher: the HyperDHT bootstrap node every coopfs node is pointed at (--bootstrap HOST:PORT). The
// matching service joins it later. Runs in the foreground; its key pair is kept in the home when one is
// given, so its public key stays the same across restarts.
import fs from 'node:fs'
import path from 'node:path'
import HyperDHT from 'hyperdht'
import { CoopError } from '../../errors.js'
import { writeFileAtomic } from '../../home.js'
import { randomBytes } from '../../crypto/seal.js'
import { bool, int, onlyFlags, str, type Args } from '../args.js'

export async function matcherCommand (args: Args): Promise<void> {
  onlyFlags(args, ['port', 'host', 'home', 'json'])
  const port = int(args, 'port', 49737, 1, 65535)
  const host = str(args, 'host', 'COOPFS_HOST') ?? '127.0.0.1'
  if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host === '0.0.0.0') throw new CoopError('EUSAGE', `--host must be the IPv4 address others reach this node at (not ${host})`)
  const homeDir = str(args, 'home')
  let seed: Buffer | undefined
  if (homeDir) {
    const file = path.join(path.resolve(homeDir), 'matcher.json')
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
    try {
      seed = Buffer.from((JSON.parse(fs.readFileSync(file, 'utf8')) as { seed: string }).seed, 'hex')
    } catch {
      seed = randomBytes(32)
      writeFileAtomic(file, JSON.stringify({ format: 1, seed: seed.toString('hex') }) + '\n', 0o600)
    }
  }
  const node = HyperDHT.bootstrapper(port, host, { host, ...(seed ? { keyPair: HyperDHT.keyPair(seed) } : {}) })
  try {
    await node.ready()
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new CoopError('EADDR', code === 'EADDRINUSE' ? `port ${port} on ${host} is in use` : `cannot listen on ${host}:${port}: ${(err as Error).message}`)
  }
  const info = { host, port: node.address().port, publicKey: node.defaultKeyPair.publicKey.toString('hex') }
  if (bool(args, 'json')) process.stdout.write(JSON.stringify(info) + '\n')
  else process.stdout.write(`bootstrap node on ${info.host}:${info.port} (public key ${info.publicKey}); point nodes at it with --bootstrap ${info.host}:${info.port}. Ctrl-C stops.\n`)
  await new Promise<void>(resolve => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve())
  })
  await node.destroy()
}

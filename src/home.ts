// The home folder: identity, configuration, metadata store, write-back store, daemon files.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { CoopError } from './errors.js'
import { FORMAT_VERSION } from './config.js'

// One column of the stripe: a local directory (local mode) or a network partner named by its public key.
export interface PartnerEntry {
  id: string // hex, 32 bytes: the partner's identity, bound into every block's keyed hash
  kind: 'local' | 'net'
  path?: string // local partners only
}

// The shape of the backup: erasure code, sizes and partners. The home's configuration and the master block
// on the partners both carry it.
export interface Layout {
  k: number
  m: number
  blockSize: number
  chunkSize: number
  slots: number
  partners: PartnerEntry[]
}

export interface HomeConfig extends Layout {
  format: number
  publicKey: string
  // Network homes: where to find the DHT and which address to bind (saved from the last mount or serve).
  network?: { bootstrap?: string[], host?: string }
}

// A home whose columns are local directories never touches the network.
export function isLocal (cfg: Layout): boolean {
  return cfg.partners.some(p => p.kind === 'local')
}

export function layoutOf (l: Layout): Layout {
  return { k: l.k, m: l.m, blockSize: l.blockSize, chunkSize: l.chunkSize, slots: l.slots, partners: l.partners }
}

// Gives a new network partner the first stripe column that has none yet; returns the column, or -1 when
// every column is taken (the agreement is then a spare).
export function assignColumn (cfg: HomeConfig, hex: string, slots: number): number {
  if (isLocal(cfg)) throw new CoopError('EUSAGE', 'this home keeps its stripes in local directories; network partners cannot join it')
  const have = cfg.partners.findIndex(p => p.id === hex)
  if (have >= 0) return have
  if (cfg.partners.length >= cfg.k + cfg.m) return -1
  if (slots < cfg.slots) throw new CoopError('EUSAGE', `this home stores ${cfg.slots} slots on each partner: an agreement needs at least that many (--slots ${cfg.slots})`)
  cfg.partners.push({ id: hex, kind: 'net' })
  return cfg.partners.length - 1
}

export function resolveHome (flag?: string): string {
  if (flag) return path.resolve(flag)
  if (process.env.COOPFS_HOME) return path.resolve(process.env.COOPFS_HOME)
  const data = process.env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share')
  return path.join(data, 'coopfs')
}

export class Home {
  readonly dir: string
  constructor (dir: string) {
    this.dir = dir
  }

  get configFile (): string { return path.join(this.dir, 'config.json') }
  get keyFile (): string { return path.join(this.dir, 'key.json') }
  get metaFile (): string { return path.join(this.dir, 'meta.db') }
  get writebackDir (): string { return path.join(this.dir, 'writeback') }
  get socketFile (): string { return path.join(this.dir, 'daemon.sock') }
  get pidFile (): string { return path.join(this.dir, 'daemon.pid') }
  get logFile (): string { return path.join(this.dir, 'daemon.log') }
  get partnersDir (): string { return path.join(this.dir, 'partners') }
  get demoFile (): string { return path.join(this.dir, 'demo.json') }
  get cacheDir (): string { return path.join(this.dir, 'cache') }

  exists (): boolean {
    return fs.existsSync(this.configFile) && fs.existsSync(this.keyFile)
  }

  readConfig (): HomeConfig {
    let text: string
    try {
      text = fs.readFileSync(this.configFile, 'utf8')
    } catch {
      throw new CoopError('ENOIDENTITY', `no coopfs identity in ${this.dir}: run 'coopfs init' first (or pass --home)`)
    }
    const cfg = JSON.parse(text) as HomeConfig
    if (cfg.format !== FORMAT_VERSION) throw new CoopError('EFORMAT', `${this.configFile} has format ${cfg.format}; this coopfs reads format ${FORMAT_VERSION}`)
    return cfg
  }

  writeConfig (cfg: HomeConfig): void {
    writeFileAtomic(this.configFile, JSON.stringify(cfg, null, 2) + '\n', 0o600)
  }

  readSecret (): Buffer {
    let text: string
    try {
      text = fs.readFileSync(this.keyFile, 'utf8')
    } catch {
      throw new CoopError('ENOIDENTITY', `no key file in ${this.dir}: run 'coopfs init' first (or pass --home)`)
    }
    const parsed = JSON.parse(text) as { format: number, secret: string }
    return Buffer.from(parsed.secret, 'hex')
  }

  writeSecret (secret: Buffer): void {
    writeFileAtomic(this.keyFile, JSON.stringify({ format: FORMAT_VERSION, secret: secret.toString('hex') }) + '\n', 0o600)
  }

  // The pid of a live daemon using this home, or 0.
  daemonPid (): number {
    let pid: number
    try {
      pid = Number(fs.readFileSync(this.pidFile, 'utf8').trim())
    } catch {
      return 0
    }
    return pid && isLiveDaemon(pid) ? pid : 0
  }
}

// A pid names our daemon only while that process runs (a killed daemon may linger as a zombie, and its
// pid may be reused by an unrelated process).
function isLiveDaemon (pid: number): boolean {
  try {
    if (!isRunning(pid)) return false
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8')
    return cmd.includes('mount') || cmd.includes('serve')
  } catch {
    return false
  }
}

// Whether pid is a process that still runs (a zombie does not).
export function isRunning (pid: number): boolean {
  try {
    return !/^\d+ \(.*\) [ZX]/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

// Waits up to ms for pid to stop running; false when it still runs.
export async function waitForExit (pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (isRunning(pid)) {
    if (Date.now() > deadline) return false
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  return true
}

export function writeFileAtomic (file: string, data: string | Buffer, mode = 0o644): void {
  const tmp = file + '.tmp-' + process.pid
  const fd = fs.openSync(tmp, 'w', mode)
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  fs.renameSync(tmp, file)
  fsyncDir(path.dirname(file))
}

export function fsyncDir (dir: string): void {
  const fd = fs.openSync(dir, 'r')
  try {
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

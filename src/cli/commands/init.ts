// coopfs init: a new identity, its partner areas, and the recovery key shown once.
import fs from 'node:fs'
import path from 'node:path'
import { CoopError } from '../../errors.js'
import { BLOCK_SIZE_BYTES, CHUNK_SIZE_BYTES, DEFAULT_K, DEFAULT_M, DEFAULT_SLOTS, FORMAT_VERSION } from '../../config.js'
import { newSecret, deriveKeys, encodeRecoveryKey } from '../../crypto/keys.js'
import { Home, resolveHome, type HomeConfig, type PartnerEntry } from '../../home.js'
import { LocalDirPartner } from '../../partners/local-dir.js'
import { BLOCK_HEADER_BYTES } from '../../stripe/block.js'
import { bool, int, onlyFlags, str, type Args } from '../args.js'
import { parseBootstrap } from '../../net/node.js'

export interface InitResult {
  publicKey: string
  recoveryKey: string
  home: string
}

export interface InitOptions {
  k: number
  m: number
  slots: number
  // Local mode: the stripes go to these directories (or, with local set, to k + m under the home).
  partnerDirs?: string[]
  local?: boolean
  network?: HomeConfig['network']
}

export function initHome (homeDir: string, opts: InitOptions): InitResult {
  const home = new Home(homeDir)
  if (home.exists()) throw new CoopError('EEXIST', `${home.dir} already holds a coopfs identity`)
  const n = opts.k + opts.m
  if (n > 255) throw new CoopError('EUSAGE', 'k + m must be at most 255')
  const dirs = opts.partnerDirs ?? (opts.local ? Array.from({ length: n }, (_, i) => path.join(home.partnersDir, `p${i}`)) : [])
  if (dirs.length && dirs.length !== n) throw new CoopError('EUSAGE', `--local-partners must name ${n} directories (k + m); it names ${dirs.length}`)
  fs.mkdirSync(home.dir, { recursive: true, mode: 0o700 })
  const secret = newSecret()
  const keys = deriveKeys(secret)
  const partners: PartnerEntry[] = dirs.map(d => {
    const p = LocalDirPartner.create(path.resolve(d), opts.slots, BLOCK_HEADER_BYTES + BLOCK_SIZE_BYTES)
    return { id: p.id.toString('hex'), kind: 'local', path: path.resolve(d) }
  })
  home.writeSecret(secret)
  home.writeConfig({
    format: FORMAT_VERSION,
    publicKey: keys.publicKey.toString('hex'),
    k: opts.k,
    m: opts.m,
    blockSize: BLOCK_SIZE_BYTES,
    chunkSize: CHUNK_SIZE_BYTES,
    slots: opts.slots,
    partners,
    ...(opts.network ? { network: opts.network } : {})
  })
  return { publicKey: keys.publicKey.toString('hex'), recoveryKey: encodeRecoveryKey(secret), home: home.dir }
}

// --bootstrap HOST:PORT[,...] and --host IP (or COOPFS_BOOTSTRAP, COOPFS_HOST); undefined when neither is set.
export function networkFlags (args: Args): HomeConfig['network'] {
  const bootstrap = parseBootstrap(str(args, 'bootstrap', 'COOPFS_BOOTSTRAP'))
  const host = str(args, 'host', 'COOPFS_HOST')
  if (!bootstrap && !host) return undefined
  return { ...(bootstrap ? { bootstrap } : {}), ...(host ? { host } : {}) }
}

// Flags given now replace what the home remembered.
export function saveNetworkFlags (home: Home, args: Args): void {
  const net = networkFlags(args)
  if (!net) return
  const cfg = home.readConfig()
  cfg.network = { ...cfg.network, ...net }
  home.writeConfig(cfg)
}

export function splitList (v: string | undefined): string[] | undefined {
  return v === undefined ? undefined : v.split(',').map(s => s.trim()).filter(Boolean)
}

export async function initCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home', 'k', 'm', 'slots', 'local-partners', 'local', 'json', 'bootstrap', 'host'])
  const res = initHome(resolveHome(str(args, 'home')), {
    k: int(args, 'k', DEFAULT_K, 1, 254),
    m: int(args, 'm', DEFAULT_M, 0, 254),
    slots: int(args, 'slots', DEFAULT_SLOTS, 16, 1 << 24),
    partnerDirs: splitList(str(args, 'local-partners')),
    local: bool(args, 'local'),
    network: networkFlags(args)
  })
  if (bool(args, 'json')) {
    process.stdout.write(JSON.stringify(res) + '\n')
    return
  }
  process.stdout.write([
    `coopfs identity created in ${res.home}`,
    `public key: ${res.publicKey}  (give it to partners: coopfs partners add KEY)`,
    '',
    'Recovery key (shown only this once; write it down and keep it away from this machine):',
    '',
    `    ${res.recoveryKey}`,
    '',
    'With it, `coopfs mount DIR --recover` rebuilds the whole tree on a new machine.',
    ''
  ].join('\n'))
}

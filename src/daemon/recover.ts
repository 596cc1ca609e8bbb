// Recovery on a new machine: from the recovery key and the partners alone, rebuild the home (key,
// configuration, metadata store, agreements) as of the newest checkpoint the partners hold.
import fs from 'node:fs'
import path from 'node:path'
import { CoopError } from '../errors.js'
import { FORMAT_VERSION, RECOVERY_DISCOVERY_MS, RECOVERY_SETTLE_MS, REQUEST_TIMEOUT_MS } from '../config.js'
import { decodeRecoveryKey, deriveKeys, type Keys } from '../crypto/keys.js'
import { Home, layoutOf, type HomeConfig, type PartnerEntry } from '../home.js'
import { decodeMaster, newestMaster, type MasterBody } from '../log/master-block.js'
import { restoreCheckpoint } from '../log/checkpoint.js'
import { LocalDirPartner } from '../partners/local-dir.js'
import { AbsentPartner, NetPartner } from '../partners/net-partner.js'
import { PartnerSet } from '../partners/partner-set.js'
import type { Partner } from '../partners/partner.js'
import { ReedSolomon } from '../stripe/reed-solomon.js'
import { InlineSealer } from '../crypto/seal-pool.js'
import { BLOCK_HEADER_BYTES } from '../stripe/block.js'
import { NetNode } from '../net/node.js'
import type { Handlers, Peer } from '../net/peer.js'
import { HeldArea } from '../serve/held.js'
import { writeAgreements, type Agreement } from '../serve/agreements.js'
import { SLOT_BYTES, recoveryTopic } from '../serve/service.js'

function freshHome (homeDir: string): Home {
  const home = new Home(homeDir)
  if (home.exists()) throw new CoopError('EEXIST', `${home.dir} already holds a coopfs identity: recover into a new, empty home`)
  return home
}

// Restores the metadata store from partners (any k of them), then writes key and configuration: the home
// only counts as a coopfs home once everything before succeeded.
async function restoreInto (home: Home, keys: Keys, members: Partner[], body: MasterBody, cfg: HomeConfig): Promise<void> {
  // Columns no partner had filled yet stay empty.
  for (let i = members.length; i < body.k + body.m; i++) members.push(new AbsentPartner(i, body.slots))
  const partners = new PartnerSet({
    partners: members,
    k: body.k,
    m: body.m,
    blockSize: body.blockSize,
    rs: new ReedSolomon({ k: body.k, m: body.m }),
    sealer: new InlineSealer(keys)
  })
  fs.mkdirSync(home.dir, { recursive: true, mode: 0o700 })
  try {
    await restoreCheckpoint(keys, partners, home.metaFile)
  } catch (err) {
    fs.rmSync(home.metaFile, { force: true })
    throw err
  } finally {
    await partners.close()
  }
  home.writeSecret(keys.secret)
  home.writeConfig(cfg)
}

export async function recoverHome (homeDir: string, recoveryKey: string, partnerDirs: string[]): Promise<void> {
  const home = freshHome(homeDir)
  const keys = deriveKeys(decodeRecoveryKey(recoveryKey))
  const found = partnerDirs.map(d => LocalDirPartner.open(path.resolve(d)))
  const masters: Buffer[] = []
  for (const p of found) {
    const m = await p.getMaster()
    if (m) masters.push(m)
  }
  const { body } = newestMaster(keys, masters)
  const slotBytes = BLOCK_HEADER_BYTES + body.blockSize
  // Partners the new machine was pointed at take the place of the ones named in the master block.
  const byId = new Map(found.map(p => [p.id.toString('hex'), p]))
  const entries: PartnerEntry[] = body.partners.map(e => {
    const p = byId.get(e.id)
    return { id: e.id, kind: 'local', path: p ? p.label : e.path }
  })
  for (const p of found) await p.close()
  const members = entries.map(e => LocalDirPartner.attach(e.path!, e.id, body.slots, slotBytes))
  await restoreInto(home, keys, members, body, {
    format: FORMAT_VERSION,
    publicKey: keys.publicKey.toString('hex'),
    ...layoutOf(body),
    partners: entries
  })
}

// A recovering node asks; it answers nothing until it has its agreements back.
const REFUSE: Handlers = {
  propose: async () => ({ reason: 'this node is recovering' }),
  writeBlock: async () => { throw new CoopError('ENOAGREEMENT', 'recovering') },
  readBlock: async () => { throw new CoopError('ENOAGREEMENT', 'recovering') },
  getMaster: async () => { throw new CoopError('ENOAGREEMENT', 'recovering') },
  putMaster: async () => { throw new CoopError('ENOAGREEMENT', 'recovering') },
  ping: async () => {},
  restored: async () => {}
}

// Finds the partners on the recovery topic they announce, takes the newest master block whose signature
// and version check out, and rebuilds the home from it.
export async function recoverFromNetwork (homeDir: string, recoveryKey: string, network: NonNullable<HomeConfig['network']>, sayLine: (line: string) => void): Promise<void> {
  const t0 = Date.now()
  const say = (line: string): void => sayLine(process.env.COOPFS_DEBUG ? `${((Date.now() - t0) / 1000).toFixed(1)}s ${line}` : line)
  const home = freshHome(homeDir)
  const keys = deriveKeys(decodeRecoveryKey(recoveryKey))
  const node = new NetNode({
    keyPair: { publicKey: keys.publicKey, secretKey: keys.secretKey },
    bootstrap: network.bootstrap,
    host: network.host,
    handlers: REFUSE,
    allow: () => true
  })
  try {
    await node.start()
    say('looking for partners on the recovery topic...')
    const masters = new Map<string, Buffer>()
    const asked = new Set<string>()
    let newest: MasterBody | null = null
    let newestVersion = -1
    const ask = (peer: Peer): void => {
      if (asked.has(peer.hex)) return
      asked.add(peer.hex)
      peer.getMaster(REQUEST_TIMEOUT_MS).then(m => {
        if (!m) return
        masters.set(peer.hex, m)
        const d = decodeMaster(keys, m)
        if (d && d.version > newestVersion) {
          newestVersion = d.version
          newest = d.body
          for (const e of d.body.partners) if (e.kind === 'net') node.connectTo(Buffer.from(e.id, 'hex'))
        }
      }, () => { asked.delete(peer.hex) })
    }
    node.on('peer', ask)
    const topic = recoveryTopic(keys)
    const discoveryEnds = Date.now() + RECOVERY_DISCOVERY_MS
    let settleEnds = Infinity
    while (Date.now() < Math.min(discoveryEnds, settleEnds)) {
      for (const key of await node.lookup(topic)) node.connectTo(key)
      for (const p of node.connected()) ask(p)
      const body = newest as MasterBody | null
      if (masters.size && settleEnds === Infinity) settleEnds = Date.now() + RECOVERY_SETTLE_MS
      if (body && body.partners.every(e => masters.has(e.id))) break
      await new Promise(resolve => setTimeout(resolve, 250))
    }
    const { version, body } = newestMaster(keys, [...masters.values()])
    say(`found ${masters.size} partner(s); newest checkpoint #${version}; reading the metadata`)

    const online = { node, online: (hex: string) => node.peer(hex) !== undefined }
    const members = body.partners.map(e => new NetPartner(online, Buffer.from(e.id, 'hex'), body.slots))
    await restoreInto(home, keys, members, body, {
      format: FORMAT_VERSION,
      publicKey: keys.publicKey.toString('hex'),
      ...layoutOf(body),
      network: { ...body.network, ...network }
    })
    say('metadata restored')
    // Take up this node's side of every agreement again (empty areas: the partners reload them).
    const agreements: Agreement[] = []
    for (const a of body.agreements ?? []) {
      const area = await HeldArea.open(path.join(home.dir, 'held', a.key), Buffer.from(a.key, 'hex'), a.slots, SLOT_BYTES, true)
      await area.close()
      agreements.push({ key: a.key, slots: a.slots, state: a.state ?? 'active', ...(a.topic ? { topic: a.topic } : {}), createdAt: new Date().toISOString() })
    }
    writeAgreements(home.dir, agreements)
    fs.writeFileSync(path.join(home.dir, 'restored-pending.json'), JSON.stringify(agreements.filter(a => a.state === 'active').map(a => a.key)), { mode: 0o600 })
  } finally {
    await node.destroy()
  }
}

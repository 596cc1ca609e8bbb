// Recovery on a new machine: from the recovery key and the partners alone, rebuild the home (key,
// configuration, metadata store) as of the newest checkpoint the partners hold.
import fs from 'node:fs'
import path from 'node:path'
import { CoopError } from '../errors.js'
import { FORMAT_VERSION } from '../config.js'
import { decodeRecoveryKey, deriveKeys } from '../crypto/keys.js'
import { Home, layoutOf, type PartnerEntry } from '../home.js'
import { newestMaster } from '../log/master-block.js'
import { restoreCheckpoint } from '../log/checkpoint.js'
import { LocalDirPartner } from '../partners/local-dir.js'
import { PartnerSet } from '../partners/partner-set.js'
import { ReedSolomon } from '../stripe/reed-solomon.js'
import { InlineSealer } from '../crypto/seal-pool.js'
import { BLOCK_HEADER_BYTES } from '../stripe/block.js'

export async function recoverHome (homeDir: string, recoveryKey: string, partnerDirs: string[]): Promise<void> {
  const home = new Home(homeDir)
  if (home.exists()) throw new CoopError('EEXIST', `${home.dir} already holds a coopfs identity: recover into a new, empty home`)
  const secret = decodeRecoveryKey(recoveryKey)
  const keys = deriveKeys(secret)
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
  const members = entries.map(e => LocalDirPartner.attach(e.path, e.id, body.slots, slotBytes))
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
  home.writeSecret(secret)
  home.writeConfig({
    format: FORMAT_VERSION,
    publicKey: keys.publicKey.toString('hex'),
    ...layoutOf(body),
    partners: entries
  })
}

// Agreements of this node, kept in agreements.json in the home. An agreement with a partner is symmetric:
// each side reserves the same number of slots for the other. In friend mode both users add each other's
// key; the first connection then confirms the agreement (propose / accept).
import fs from 'node:fs'
import path from 'node:path'
import { CoopError } from '../errors.js'
import { writeFileAtomic } from '../home.js'

export type AgreementState = 'proposed' | 'active' | 'rejected'

export interface Agreement {
  key: string // the partner's public key, hex
  slots: number // slots each side reserves for the other
  state: AgreementState
  reason?: string // why the partner rejected it
  topic?: string // hex: the partner's recovery topic, announced by this node
  createdAt: string
  lastSeen?: string
}

const FILE = 'agreements.json'

export function agreementsFile (homeDir: string): string {
  return path.join(homeDir, FILE)
}

export function readAgreements (homeDir: string): Agreement[] {
  let text: string
  try {
    text = fs.readFileSync(agreementsFile(homeDir), 'utf8')
  } catch {
    return []
  }
  const parsed = JSON.parse(text) as { format: number, agreements: Agreement[] }
  return parsed.agreements
}

export function writeAgreements (homeDir: string, list: Agreement[]): void {
  writeFileAtomic(agreementsFile(homeDir), JSON.stringify({ format: 1, agreements: list }, null, 2) + '\n', 0o600)
}

export function parseKey (text: string): Buffer {
  const t = text.trim().toLowerCase()
  if (!/^[0-9a-f]{64}$/.test(t)) throw new CoopError('EUSAGE', `'${text}' is not a coopfs public key (64 hex digits, as 'coopfs status' shows)`)
  return Buffer.from(t, 'hex')
}

// coopfs demo: a whole cooperative backup on this machine in one command - a bootstrap node and N partner
// nodes on 127.0.0.1, each with its own home under a temporary folder, partnerships made both ways, and
// DIR (default ./coopfs-demo) mounted. `coopfs unmount DIR` stops all of it.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { CoopError } from '../../errors.js'
import { CONTROL_TIMEOUT_MS } from '../../config.js'
import { Home, isRunning, waitForExit, writeFileAtomic } from '../../home.js'
import { request } from '../../daemon/control.js'
import { addAgreementOffline } from './control.js'
import { int, onlyFlags, type Args } from '../args.js'
import { initHome } from './init.js'
import { mountCommand, startDaemon } from './mount.js'
import { checkMountpoint } from '../mountpoint.js'
import { freeUdpPort } from '../../net/node.js'

const MAIN = fileURLToPath(new URL('../main.js', import.meta.url))
const HOST = '127.0.0.1'
const DEMO_SLOTS = 2048
const READY_WAIT_MS = 60_000

interface DemoInfo {
  dir: string
  matcherPid: number
  partnerHomes: string[]
}

export async function demoCommand (args: Args): Promise<void> {
  onlyFlags(args, ['partners'])
  const n = int(args, 'partners', 6, 2, 32)
  const m = Math.min(2, n - 1)
  const k = n - m
  const mnt = path.resolve(args.positionals[0] ?? 'coopfs-demo')
  fs.mkdirSync(mnt, { recursive: true })
  checkMountpoint(mnt)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'coopfs-demo-'))
  const info: DemoInfo = { dir, matcherPid: 0, partnerHomes: [] }
  const say = (line: string): void => { process.stdout.write(line + '\n') }
  try {
    const port = await freeUdpPort(HOST)
    info.matcherPid = await startMatcher(path.join(dir, 'matcher'), port)
    const bootstrap = [`${HOST}:${port}`]
    say(`bootstrap node on ${HOST}:${port} (pid ${info.matcherPid})`)

    const ownerHome = new Home(path.join(dir, 'owner'))
    const owner = initHome(ownerHome.dir, { k, m, slots: DEMO_SLOTS, network: { bootstrap, host: HOST } })
    fs.writeFileSync(path.join(ownerHome.dir, 'RECOVERY-KEY.txt'), owner.recoveryKey + '\n', { mode: 0o600 })
    writeFileAtomic(ownerHome.demoFile, JSON.stringify(info) + '\n', 0o600)

    const partnerKeys: string[] = []
    for (let i = 0; i < n; i++) {
      const home = new Home(path.join(dir, `partner${i}`))
      const p = initHome(home.dir, { k, m, slots: DEMO_SLOTS, network: { bootstrap, host: HOST } })
      await addAgreementOffline(home, owner.publicKey, DEMO_SLOTS)
      const pid = await startDaemon(home, ['serve'], 'serve')
      info.partnerHomes.push(home.dir)
      writeFileAtomic(ownerHome.demoFile, JSON.stringify(info) + '\n', 0o600)
      partnerKeys.push(p.publicKey)
      say(`partner ${i}: ${p.publicKey.slice(0, 16)}... serving (pid ${pid}, home ${home.dir})`)
    }
    for (const key of partnerKeys) await addAgreementOffline(ownerHome, key, DEMO_SLOTS)

    await mountCommand({ positionals: [mnt], flags: new Map([['home', ownerHome.dir]]) })
    await waitOnline(ownerHome, n)
    say([
      `coopfs is mounted at ${mnt}, backed by ${n} partners (k=${k}, m=${m}) on ${HOST}.`,
      `  status:        npx coopfs status --home ${ownerHome.dir}`,
      `  sync:          npx coopfs sync --home ${ownerHome.dir}`,
      `  recovery key:  ${path.join(ownerHome.dir, 'RECOVERY-KEY.txt')}`,
      `  stop it all:   npx coopfs unmount ${mnt}`
    ].join('\n'))
  } catch (err) {
    const owner = new Home(path.join(dir, 'owner'))
    if (owner.daemonPid()) await request(owner.socketFile, { op: 'unmount' }, 30_000).catch(() => {})
    await stopDemo(info)
    throw err
  }
}

async function waitOnline (home: Home, n: number): Promise<void> {
  const deadline = Date.now() + READY_WAIT_MS
  for (;;) {
    const st = await request(home.socketFile, { op: 'status' }, CONTROL_TIMEOUT_MS) as { partnersOnline: number }
    if (st.partnersOnline >= n) return
    if (Date.now() > deadline) throw new CoopError('ETIMEDOUT', `only ${st.partnersOnline} of ${n} partners came online in time`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

function startMatcher (dir: string, port: number): Promise<number> {
  fs.mkdirSync(dir, { recursive: true })
  const out = path.join(dir, 'matcher.log')
  const fd = fs.openSync(out, 'a', 0o600)
  const child = spawn(process.execPath, [MAIN, 'matcher', '--port', String(port), '--host', HOST, '--home', dir, '--json'], {
    detached: true,
    stdio: ['ignore', fd, fd]
  })
  fs.closeSync(fd)
  child.unref()
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 15_000
    const poll = (): void => {
      const text = fs.readFileSync(out, 'utf8')
      if (text.includes('"publicKey"')) return resolve(child.pid!)
      if (child.exitCode !== null || Date.now() > deadline) return reject(new CoopError('EMATCHER', `the bootstrap node did not start: ${text.trim() || 'no output'}`))
      setTimeout(poll, 50)
    }
    poll()
  })
}

// Stops the partners and the bootstrap node of a demo and removes its folder.
export async function stopDemo (info: DemoInfo): Promise<void> {
  for (const h of info.partnerHomes) {
    const home = new Home(h)
    const pid = home.daemonPid()
    if (!pid) continue
    await request(home.socketFile, { op: 'unmount' }, 30_000).catch(() => {})
    if (!(await waitForExit(pid, 30_000))) {
      try { process.kill(pid, 'SIGKILL') } catch {}
    }
  }
  if (info.matcherPid && isRunning(info.matcherPid)) {
    try { process.kill(info.matcherPid, 'SIGTERM') } catch {}
    await waitForExit(info.matcherPid, 10_000)
  }
  if (!process.env.COOPFS_DEMO_KEEP) fs.rmSync(info.dir, { recursive: true, force: true })
}

export function readDemo (home: Home): DemoInfo | null {
  try {
    return JSON.parse(fs.readFileSync(home.demoFile, 'utf8')) as DemoInfo
  } catch {
    return null
  }
}

// Real networks on loopback for tests: a bootstrap node (coopfs matcher) and partner nodes (coopfs serve),
// each its own process with its own home, every DHT node bound to 127.0.0.1.
import { spawn, type ChildProcess } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { ROOT, cli, status, tmpdir, unmountQuietly } from './helpers.js'
import { freeUdpPort } from '../src/net/node.js'
import type { Handlers } from '../src/net/peer.js'

const BIN = path.join(ROOT, 'bin', 'coopfs.js')
export const HOST = '127.0.0.1'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface Node {
  home: string
  publicKey: string
  recoveryKey: string
}

export interface Net {
  dir: string
  bootstrap: string
  // The flags every command that touches the network gets.
  flags: string[]
  matcher: ChildProcess
}

// A matcher on port, once it printed its key; or why it did not start.
function startMatcher (port: number): Promise<ChildProcess | string> {
  const child = spawn(process.execPath, [BIN, 'matcher', '--port', String(port), '--host', HOST, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] })
  return new Promise(resolve => {
    let out = ''
    let err = ''
    const timer = setTimeout(() => { child.kill('SIGKILL'); resolve('did not start within 60 s') }, 60_000)
    child.stdout!.on('data', d => {
      out += d
      if (out.includes('"publicKey"')) { clearTimeout(timer); resolve(child) }
    })
    child.stderr!.on('data', d => { err += d })
    child.once('exit', code => { clearTimeout(timer); resolve(`exited with ${code}: ${err.trim()}`) })
  })
}

// A bootstrap node in its own process, stopped (with every daemon under dir) at teardown. The port is
// found free first and bound by the matcher a moment later; another test's node may take it meanwhile, so
// a matcher that fails to start is tried again on another port.
export async function startNet (t: Teardown): Promise<Net> {
  let port = await freeUdpPort(HOST)
  let started = await startMatcher(port)
  for (let attempt = 2; typeof started === 'string' && attempt <= 3; attempt++) {
    port = await freeUdpPort(HOST)
    started = await startMatcher(port)
  }
  if (typeof started === 'string') throw new Error(`matcher on port ${port} ${started}`)
  const matcher = started
  const dir = tmpdir('coopfs-net-')
  const bootstrap = `${HOST}:${port}`
  const net: Net = { dir, bootstrap, flags: ['--bootstrap', bootstrap, '--host', HOST], matcher }
  // A test process that dies before its teardown still takes its daemons and bootstrap node with it.
  process.once('exit', () => {
    matcher.kill('SIGKILL')
    if (!fs.existsSync(dir)) return
    for (const name of fs.readdirSync(dir)) {
      try { process.kill(Number(fs.readFileSync(path.join(dir, name, 'daemon.pid'), 'utf8')), 'SIGKILL') } catch {}
    }
  })
  t.teardown(async () => {
    for (const name of fs.readdirSync(dir)) {
      const mnt = path.join(dir, name)
      if (name.startsWith('mnt')) await unmountQuietly(mnt)
    }
    for (const name of fs.readdirSync(dir)) await stopQuietly(path.join(dir, name))
    matcher.kill('SIGKILL')
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return net
}

async function stopQuietly (home: string): Promise<void> {
  const pidFile = path.join(home, 'daemon.pid')
  if (!fs.existsSync(pidFile)) return
  const pid = Number(fs.readFileSync(pidFile, 'utf8'))
  try { process.kill(pid, 'SIGKILL') } catch {}
}

export async function initNode (net: Net, name: string, extra: string[] = []): Promise<Node> {
  const home = path.join(net.dir, name)
  const r = await cli(['init', '--home', home, '--json', ...net.flags, ...extra])
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`)
  const info = JSON.parse(r.stdout) as { publicKey: string, recoveryKey: string }
  return { home, publicKey: info.publicKey, recoveryKey: info.recoveryKey }
}

export async function serve (node: Node): Promise<void> {
  const r = await cli(['serve', '--home', node.home])
  if (r.code !== 0) throw new Error(`serve failed: ${r.stderr}`)
}

export async function addPartner (node: Node, other: Node, slots: number): Promise<void> {
  const r = await cli(['partners', 'add', other.publicKey, '--home', node.home, '--slots', String(slots)])
  if (r.code !== 0) throw new Error(`partners add failed: ${r.stderr}`)
}

// A partner node of owner: its identity, its side of the agreement, and (unless told not to) its daemon.
export async function partnerOf (net: Net, name: string, owner: Node, slots: number, start = true): Promise<Node> {
  const node = await initNode(net, name, ['--slots', String(slots)])
  await addPartner(node, owner, slots)
  if (start) await serve(node)
  return node
}

export function daemonPid (node: Node): number {
  return Number(fs.readFileSync(path.join(node.home, 'daemon.pid'), 'utf8'))
}

// Kills a node's daemon outright (a machine that dies), leaving its home as it was.
export function killNode (node: Node): void {
  process.kill(daemonPid(node), 'SIGKILL')
  fs.rmSync(path.join(node.home, 'daemon.pid'), { force: true })
}

export async function waitFor (what: string, fn: () => Promise<boolean>, ms = 90_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

export async function waitOnline (owner: Node, n: number): Promise<void> {
  await waitFor(`${n} partners online`, async () => (await status(owner.home)).partnersOnline >= n)
}

// Every file under dir, recursively, that contains needle.
export function grepTree (dir: string, needle: Buffer): string[] {
  const hits: string[] = []
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else if (e.isFile() && fs.readFileSync(p).includes(needle)) hits.push(p)
    }
  }
  walk(dir)
  return hits
}

// Protocol handlers that serve nothing (every request answered as if empty, every proposal rejected), with
// the ones a test needs put over them.
export function handlers (over: Partial<Handlers> = {}): Handlers {
  return {
    propose: async () => ({ reason: 'not in this test' }),
    writeBlock: async () => {},
    readBlock: async () => null,
    getMaster: async () => null,
    putMaster: async () => {},
    ping: async () => {},
    restored: async () => {},
    ...over
  }
}

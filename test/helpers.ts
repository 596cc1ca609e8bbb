// Shared test helpers: temporary homes, the real CLI run as another process, real mounts.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { configure } from 'brittle'
import { CoopError } from '../src/errors.js'

// Every test of a file that mounts or starts daemons gets two minutes unless it says otherwise (brittle's
// own default is 30 s): on a loaded machine a few mounts, unmounts and syncs can take that long.
configure({ timeout: 120_000 })

export const ROOT = fileURLToPath(new URL('..', import.meta.url))
const BIN = path.join(ROOT, 'bin', 'coopfs.js')

export interface Run {
  code: number
  stdout: string
  stderr: string
}

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export function tmpdir (prefix = 'coopfs-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix))
}

// Runs a program to completion in another process.
export function run (cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv, input?: string, cwd?: string } = {}): Promise<Run> {
  return new Promise(resolve => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', d => { stdout += d })
    child.stderr.on('data', d => { stderr += d })
    // A program that exits without reading its input closes the pipe first: that EPIPE is not the test's
    // business (the exit code and output are), and unhandled it would end the whole test file.
    child.stdin.on('error', () => {})
    child.stdin.end(opts.input ?? '')
    child.on('close', code => resolve({ code: code ?? 1, stdout, stderr }))
  })
}

export function cli (args: string[], env?: NodeJS.ProcessEnv): Promise<Run> {
  return run(process.execPath, [BIN, ...args], { env })
}

export function sh (script: string, env?: NodeJS.ProcessEnv): Promise<Run> {
  return run('bash', ['-c', script], { env })
}

export interface Setup {
  dir: string
  home: string
  mnt: string
  recoveryKey: string
  publicKey: string
}

// A new identity with local partners (directories) under a fresh temporary folder.
// With partnersOutside, the partner areas live beside the home rather than in it, so the home can be
// lost on its own.
export async function init (t: Teardown, opts: { slots?: number, k?: number, m?: number, partnersOutside?: boolean } = {}): Promise<Setup> {
  const dir = tmpdir()
  const home = path.join(dir, 'home')
  const args = ['init', '--home', home, '--json', '--slots', String(opts.slots ?? 512)]
  if (opts.k) args.push('--k', String(opts.k))
  if (opts.m !== undefined) args.push('--m', String(opts.m))
  if (opts.partnersOutside) {
    const n = (opts.k ?? 4) + (opts.m ?? 2)
    args.push('--local-partners', Array.from({ length: n }, (_, i) => path.join(dir, 'partners', `p${i}`)).join(','))
  } else {
    args.push('--local')
  }
  const r = await cli(args)
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`)
  const info = JSON.parse(r.stdout) as { recoveryKey: string, publicKey: string }
  const mnt = path.join(dir, 'mnt')
  fs.mkdirSync(mnt)
  t.teardown(async () => {
    await unmountQuietly(mnt)
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { dir, home, mnt, recoveryKey: info.recoveryKey, publicKey: info.publicKey }
}

export async function mount (s: { home: string, mnt: string }, extra: string[] = [], env?: NodeJS.ProcessEnv): Promise<void> {
  const r = await cli(['mount', s.mnt, '--home', s.home, ...extra], env)
  if (r.code !== 0) throw new Error(`mount failed: ${r.stderr}`)
}

export async function unmount (mnt: string): Promise<void> {
  const r = await cli(['unmount', mnt])
  if (r.code !== 0) throw new Error(`unmount failed: ${r.stderr}`)
}

export async function unmountQuietly (mnt: string): Promise<void> {
  if (!isMounted(mnt)) return
  const r = await cli(['unmount', mnt])
  if (r.code !== 0) await run('fusermount', ['-uz', mnt], { env: { PATH: fusermountPath() } })
}

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}

// Polls cond every stepMs until it holds (true) or ms have passed (false).
export async function until (cond: () => boolean, ms: number, stepMs = 20): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) return false
    await sleep(stepMs)
  }
  return true
}

// Whether pid still runs: gone or a zombie (exited, not yet reaped) counts as stopped.
export { isRunning as running } from '../src/home.js'

// The per-inode files of a home's write-back store (not the removed ones still being unlinked).
export function writebackFiles (home: string): string[] {
  return fs.readdirSync(path.join(home, 'writeback')).filter(n => /^\d+$/.test(n))
}

// kill -9 of the home's daemon; waits up to ms for the kernel to drop its mount (auto_unmount: a helper
// process of its own has to run for that) and throws if it did not.
export async function killDaemon (s: { home: string, mnt: string }, ms = 30_000): Promise<void> {
  const { pid } = await status(s.home)
  process.kill(pid, 'SIGKILL')
  if (!await until(() => !isMounted(s.mnt), ms, 50)) throw new Error(`${s.mnt} still mounted ${ms / 1000} s after kill -9 of its daemon`)
}

export function isMounted (mnt: string): boolean {
  const text = fs.readFileSync('/proc/self/mountinfo', 'utf8')
  return text.split('\n').some(l => l.split(' ')[4] === mnt)
}

function fusermountPath (): string {
  return path.join(ROOT, 'node_modules', 'fuse-shared-library-linux', 'libfuse', 'bin') + ':' + (process.env.PATH ?? '')
}

export async function status (home: string): Promise<Record<string, any>> {
  const r = await cli(['status', '--home', home, '--json'])
  if (r.code !== 0) throw new Error(`status failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as Record<string, any>
}

export async function sync (home: string): Promise<void> {
  const r = await cli(['sync', '--home', home])
  if (r.code !== 0) throw new Error(`sync failed: ${r.stderr}`)
}

export function partnerDirs (home: string): string[] {
  const cfg = JSON.parse(fs.readFileSync(path.join(home, 'config.json'), 'utf8')) as { partners: Array<{ path: string }> }
  return cfg.partners.map(p => p.path)
}

// A fresh home, mounted.
export async function mounted (t: Teardown): Promise<Setup> {
  const s = await init(t, { slots: 512 })
  await mount(s)
  return s
}

// The errno name a call fails with, or 'ok'.
export function errCode (fn: () => unknown): string {
  try {
    fn()
    return 'ok'
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err)
  }
}

// Writes buf at pos, creating the file when it does not exist yet.
export function pwrite (file: string, buf: Buffer, pos: number, flags = fs.existsSync(file) ? 'r+' : 'w+'): void {
  const fd = fs.openSync(file, flags)
  try {
    fs.writeSync(fd, buf, 0, buf.length, pos)
  } finally {
    fs.closeSync(fd)
  }
}

// Up to len bytes at pos (fewer at the end of the file).
export function pread (file: string, len: number, pos: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const buf = Buffer.alloc(len)
    return buf.subarray(0, fs.readSync(fd, buf, 0, len, pos))
  } finally {
    fs.closeSync(fd)
  }
}

// 'ok', or the code of the error p rejected with.
export async function outcome (p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'ok'
  } catch (err) {
    return err instanceof CoopError ? err.code : `not a CoopError: ${String(err)}`
  }
}

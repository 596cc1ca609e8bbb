#!/usr/bin/env node
// Runs every test file in its own process (brittle over tsx), two at a time, and ends with the line
// CI reads: "N passed, N failed, N skipped". Exits non-zero when anything failed.
import { spawn, spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const ROOT = path.join(path.dirname(fileURLToPath(import.meta.url)), '..')
const FILE_TIMEOUT_MS = Number(process.env.COOPFS_TEST_FILE_TIMEOUT_MS || 480_000)

const only = process.argv.slice(2)
const files = fs.readdirSync(path.join(ROOT, 'test'))
  .filter(f => f.endsWith('.test.ts'))
  .filter(f => only.length === 0 || only.some(o => f.includes(o)))
  .sort()

// Files run JOBS at a time (default 2: most of a network or mount test is waiting on timers, other
// processes and the kernel), the slowest known ones first so the two lanes end together.
const JOBS = Math.max(1, Number(process.env.COOPFS_TEST_JOBS || 2))
const SLOW_FIRST = ['fs-scale', 'network-recovery', 'network', 'fs-semantics', 'fs-xattr']
const rank = f => { const i = SLOW_FIRST.findIndex(s => f === s + '.test.ts'); return i < 0 ? SLOW_FIRST.length : i }
const queue = [...files].sort((a, b) => rank(a) - rank(b))

let passed = 0
let failed = 0
let skipped = 0

async function lane () {
  while (queue.length) {
    const file = queue.shift()
    const started = Date.now()
    const res = await runFile(path.join('test', file))
    const secs = ((Date.now() - started) / 1000).toFixed(1)
    passed += res.passed
    failed += res.failed
    skipped += res.skipped
    const crashed = res.code !== 0 && res.failed === 0
    if (crashed) failed++
    const mark = res.failed || crashed ? 'FAIL' : 'ok  '
    console.log(`${mark} ${file}: ${res.passed} passed, ${res.failed} failed, ${res.skipped} skipped (${secs}s)${crashed ? ` - exited with ${res.code}${res.timedOut ? ' after the time limit' : ''}` : ''}`)
    if (res.failed || crashed) process.stdout.write(indent(res.output.slice(-8000)))
  }
}

await Promise.all(Array.from({ length: Math.min(JOBS, files.length) }, lane))

// A test that throws ends without its teardowns, and a file stopped at the time limit runs none: their
// mounts and daemons would outlive the run. They are named and stopped here.
const left = leftBehind()
if (left.mounts.length || left.daemons.length) {
  console.log(`note: test files left ${left.mounts.length} mount(s) and ${left.daemons.length} daemon(s) behind; stopping them: ${[...left.mounts, ...left.daemons.map(d => `pid ${d}`)].join(', ')}`)
  for (const mnt of left.mounts) spawnSync(process.execPath, [path.join(ROOT, 'bin', 'coopfs.js'), 'unmount', mnt], { cwd: os.tmpdir(), stdio: 'ignore', timeout: 60_000 })
  for (const pid of leftBehind().daemons) {
    try { process.kill(pid, 'SIGKILL') } catch {}
  }
}

console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`)
process.exitCode = failed ? 1 : 0

function runFile (file) {
  return new Promise(resolve => {
    const child = spawn(process.execPath, ['--import', 'tsx', file], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: process.env })
    let output = ''
    child.stdout.on('data', d => { output += d })
    child.stderr.on('data', d => { output += d })
    let timedOut = false
    const timer = setTimeout(() => { timedOut = true; child.kill('SIGKILL') }, FILE_TIMEOUT_MS)
    child.on('close', code => {
      clearTimeout(timer)
      let p = 0; let f = 0; let s = 0
      for (const line of output.split('\n')) {
        // Top-level results only: brittle indents subtests.
        const m = /^(not ok|ok) \d+ /.exec(line)
        if (!m) continue
        if (/# (SKIP|TODO)\b/i.test(line)) s++
        else if (m[1] === 'ok') p++
        else f++
      }
      resolve({ passed: p, failed: f, skipped: s, code: code ?? 1, output, timedOut })
    })
  })
}

function indent (text) {
  return text.split('\n').map(l => '    ' + l).join('\n') + '\n'
}

// coopfs mounts under the tests' temporary folders, and daemons whose home is in one.
function leftBehind () {
  const prefix = path.join(os.tmpdir(), 'coopfs-test-')
  let mounts = []
  try {
    mounts = fs.readFileSync('/proc/mounts', 'utf8').split('\n').map(l => l.split(' '))
      .filter(f => f[2] === 'fuse.coopfs' && f[1]?.startsWith(prefix)).map(f => f[1])
  } catch {}
  const daemons = []
  for (const pid of fs.readdirSync('/proc').filter(n => /^\d+$/.test(n))) {
    try {
      const args = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
      const home = args[args.indexOf('--home') + 1]
      if (args.includes('--daemon-child') && args.includes('--home') && home?.startsWith(prefix)) daemons.push(Number(pid))
    } catch {}
  }
  return { mounts, daemons }
}

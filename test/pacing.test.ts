// Pacing of the packer against a writer: a burst of writes to a file is not packed behind the writer while
// the write-back store is less than half full; past half, packing starts while the writer goes on; once the
// writer stops, everything is packed. The writer is another process that keeps its file open and writes
// every 100 ms, so it never pauses long enough (COOPFS_PACK_IDLE_MS, 2 s here) to count as idle.
import test from 'brittle'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { init, unmount, cli, status, until, sleep } from './helpers.js'

const MiB = 1024 * 1024

const WRITER = `
const fs = require('node:fs')
const fd = fs.openSync(process.argv[1], 'w')
let pos = 0
const put = n => { const b = Buffer.alloc(n); for (let i = 0; i < n; i += 4096) b.writeUInt32LE(pos + i + 1, i); fs.writeSync(fd, b, 0, n, pos); pos += n }
const burst = mib => { for (let i = 0; i < mib; i++) put(1 << 20) }
const tick = setInterval(() => put(4096), 100)
process.stdin.setEncoding('utf8')
process.stdin.on('data', d => {
  for (const cmd of d.split('\\n').filter(Boolean)) {
    if (cmd === 'stop') { clearInterval(tick); fs.closeSync(fd); console.log('stopped'); process.exit(0) }
    burst(Number(cmd))
    console.log('wrote ' + cmd)
  }
})
`

test('a burst of writes is packed after the writer, or behind it once the write-back store is half full', async t => {
  const s = await init(t)
  const m = await cli(['mount', s.mnt, '--home', s.home], {
    COOPFS_WRITEBACK_BYTES: String(32 * MiB),
    COOPFS_WRITE_BURST_MS: '600000',
    COOPFS_PACK_IDLE_MS: '2000'
  })
  t.is(m.code, 0, m.stderr)

  const child = spawn(process.execPath, ['-e', WRITER, path.join(s.mnt, 'growing')], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let out = ''
  child.stdout.setEncoding('utf8').on('data', d => { out += d })
  const said = (line: string): Promise<boolean> => until(() => out.includes(line), 30_000)

  child.stdin.write('8\n')
  t.ok(await said('wrote 8'), 'the writer wrote 8 MiB')
  // Long enough for two background rounds: with dirty blocks waiting, the loop comes round every
  // COOPFS_PACK_IDLE_MS.
  await sleep(5000)
  const during = await status(s.home)
  t.ok(during.bytesPending >= 8 * MiB, `nothing packed behind the writer during the burst (${during.bytesPending} bytes pending)`)

  child.stdin.write('12\n')
  t.ok(await said('wrote 12'), 'the writer went past half the bound')
  let pending = Infinity
  const packedBehind = await until(() => {
    status(s.home).then(st => { pending = st.bytesPending }, () => {})
    return pending < 16 * MiB
  }, 30_000, 250)
  t.ok(packedBehind, `past half the bound, blocks are packed while the writer goes on (${pending} bytes pending)`)
  t.is(child.exitCode, null, 'the writer was still writing')

  child.stdin.write('stop\n')
  t.ok(await said('stopped'))
  const r = await cli(['sync', '--home', s.home])
  t.is(r.code, 0, r.stderr)
  t.is((await status(s.home)).bytesPending, 0, 'everything is packed once the writer stopped')
  await unmount(s.mnt)
})

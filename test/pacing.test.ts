// Pacing of the packer against a writer: a burst of writes to a file is not packed behind the writer while
// the write-back store is less than half full; past half, packing starts while the writer goes on; once the
// writer stops, everything is packed. The writer is another process that keeps its file open and writes
// every 20 ms, so it never pauses long enough (COOPFS_PACK_IDLE_MS, 3-4 s here, so that a loaded machine
// stalling the writer for a second or two does not end its run) to count as idle.
import test from 'brittle'
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { init, unmount, cli, status, until, sleep, writebackFiles } from './helpers.js'
import { Engine } from '../src/daemon/engine.js'
import { Home } from '../src/home.js'
import { PACK_IDLE_MS, WRITE_BURST_MS } from '../src/config.js'

const MiB = 1024 * 1024
// Each test waits up to a minute for a condition a few times over.
const LONG = { timeout: 300_000 }

const WRITER = `
const fs = require('node:fs')
const fd = fs.openSync(process.argv[1], 'w')
let pos = 0
const put = n => { const b = Buffer.alloc(n); for (let i = 0; i < n; i += 4096) b.writeUInt32LE(pos + i + 1, i); fs.writeSync(fd, b, 0, n, pos); pos += n }
const burst = mib => { for (let i = 0; i < mib; i++) put(1 << 20) }
const tick = setInterval(() => put(4096), 20)
// Bounded: it stops when the test goes away (its stdin closes) and after five minutes in any case.
setTimeout(() => process.exit(2), 300000).unref()
process.stdin.on('end', () => process.exit(3))
process.stdin.setEncoding('utf8')
process.stdin.on('data', d => {
  for (const cmd of d.split('\\n').filter(Boolean)) {
    if (cmd === 'stop') { clearInterval(tick); fs.closeSync(fd); console.log('stopped'); process.exit(0) }
    burst(Number(cmd))
    console.log('wrote ' + cmd)
  }
})
`

function startWriter (t: { teardown: (fn: () => unknown) => void }, file: string): { send: (cmd: string) => void, said: (line: string) => Promise<boolean>, running: () => boolean } {
  const child = spawn(process.execPath, ['-e', WRITER, file], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  // A writer that exited (its own time limit) fails the test through running() and said(), not here.
  child.stdin!.on('error', () => {})
  let out = ''
  child.stdout!.setEncoding('utf8').on('data', d => { out += d })
  return {
    send: cmd => { child.stdin!.write(cmd + '\n') },
    said: line => until(() => out.includes(line), 30_000),
    running: () => child.exitCode === null
  }
}

test('a burst of writes is packed after the writer, or behind it once the write-back store is half full', LONG, async t => {
  const s = await init(t)
  const m = await cli(['mount', s.mnt, '--home', s.home], {
    COOPFS_WRITEBACK_BYTES: String(32 * MiB),
    COOPFS_WRITE_BURST_MS: '600000',
    COOPFS_PACK_IDLE_MS: '4000'
  })
  t.is(m.code, 0, m.stderr)

  const w = startWriter(t, path.join(s.mnt, 'growing'))
  const said = w.said

  w.send('8')
  t.ok(await said('wrote 8'), 'the writer wrote 8 MiB')
  // Long enough for two background rounds: with dirty blocks waiting, the loop comes round every
  // COOPFS_PACK_IDLE_MS.
  await sleep(9000)
  const during = await status(s.home)
  t.ok(during.bytesPending >= 8 * MiB, `nothing packed behind the writer during the burst (${during.bytesPending} bytes pending)`)

  w.send('12')
  t.ok(await said('wrote 12'), 'the writer went past half the bound')
  let pending = Infinity
  const deadline = Date.now() + 60_000
  while (pending >= 16 * MiB && Date.now() < deadline) {
    pending = (await status(s.home)).bytesPending
    if (pending >= 16 * MiB) await sleep(250)
  }
  const packedBehind = pending < 16 * MiB
  t.ok(packedBehind, `past half the bound, blocks are packed while the writer goes on (${pending} bytes pending)`)
  t.ok(w.running(), 'the writer was still writing')

  w.send('stop')
  t.ok(await said('stopped'))
  const r = await cli(['sync', '--home', s.home, '--timeout', '60'])
  t.is(r.code, 0, r.stderr)
  t.is((await status(s.home)).bytesPending, 0, 'everything is packed once the writer stopped')
  await unmount(s.mnt)
})

test('files written during a long burst are packed without waiting for it', LONG, async t => {
  const s = await init(t)
  // Pages of 16 dirty blocks: the burst's 64 blocks fill several pages ahead of the later file.
  const m = await cli(['mount', s.mnt, '--home', s.home], {
    COOPFS_WRITEBACK_BYTES: String(64 * MiB),
    COOPFS_WRITE_BURST_MS: '600000',
    COOPFS_PACK_IDLE_MS: '3000',
    COOPFS_PACK_SCAN_BLOCKS: '16'
  })
  t.is(m.code, 0, m.stderr)
  const w = startWriter(t, path.join(s.mnt, 'growing'))
  w.send('8')
  t.ok(await w.said('wrote 8'))
  // Written and closed after the burst's file, so its inode comes after it in the dirty list.
  fs.writeFileSync(path.join(s.mnt, 'later'), Buffer.alloc(200_000, 7))
  const files = (): string[] => writebackFiles(s.home)
  t.is(files().length, 2, 'both files wait in the write-back store')
  t.ok(await until(() => files().length === 1, 60_000, 100), `the later file was packed while the burst waits (${files().length} files)`)
  const st = await status(s.home)
  t.ok(st.bytesPending >= 8 * MiB, `the burst still waits (${st.bytesPending} bytes pending)`)
  t.ok(w.running())
  w.send('stop')
  t.ok(await w.said('stopped'))
  const r = await cli(['sync', '--home', s.home, '--timeout', '60'])
  t.is(r.code, 0, r.stderr)
  t.alike(fs.readFileSync(path.join(s.mnt, 'later')), Buffer.alloc(200_000, 7))
  await unmount(s.mnt)
})

// A run of new files is a burst too: while files keep being created, the packer leaves alone even the files
// whose own writes ended, until creation pauses or the run reaches WRITE_BURST_MS; a pause does not start a
// new run within 2 x WRITE_BURST_MS of the last one's start. Runs the engine in this process (defaults:
// PACK_IDLE_MS 300 ms, WRITE_BURST_MS 10 s) and holds the disk lock throughout, so the background loop takes
// no round: the test calls them, and each returns how many blocks it packed.
test('files are not packed while new files are being created, and are once creation pauses or runs long', LONG, async t => {
  const s = await init(t)
  const engine = new Engine(new Home(s.home))
  await engine.start()
  // Before the home goes (init's teardown): closing syncs files in it.
  t.teardown(() => engine.close(false), { order: -1 })
  const fsys = engine.fs
  const data = Buffer.alloc(10_000, 5)
  let made = 0
  const make = async (bytes: number): Promise<void> => {
    const fh = fsys.create(`/f${made++}`, 0o644)
    if (bytes > 0) await fsys.write(fh, data, bytes, 0)
    fsys.flush(fh)
    await fsys.release(fh)
  }
  const round = async (): Promise<number> => await engine.packer.round(false)

  await engine.disk.lock.run(async () => {
    // A written file whose own run of writes ended, then an empty file created.
    const runStart = performance.now()
    await make(data.length)
    await sleep(PACK_IDLE_MS + 100)
    await make(0)
    t.is(await round(), 0, 'nothing is packed right after a file was created')
    await sleep(PACK_IDLE_MS + 100)
    t.is(await round(), 1, 'once creation paused, the written file is packed')

    // Creation goes on after that pause, within the same run: held until the run is WRITE_BURST_MS old,
    // then packed behind it.
    await make(data.length)
    await sleep(PACK_IDLE_MS + 100)
    let heldRounds = 0
    let packedAt = 0
    while (performance.now() - runStart < WRITE_BURST_MS + 5000) {
      await make(0)
      if (await round() > 0) {
        packedAt = performance.now()
        break
      }
      heldRounds++
      await sleep(50)
    }
    t.ok(heldRounds > 10, `rounds during the run packed nothing (${heldRounds})`)
    t.ok(packedAt > 0, 'the written file was packed while files were still being created')
    t.ok(packedAt - runStart >= WRITE_BURST_MS, `once the run was ${WRITE_BURST_MS} ms old (${Math.round(packedAt - runStart)} ms)`)
  })
})

// Tamper evidence: partners see only ciphertext, and a block that was altered, moved to another slot or
// rolled back to an older version is detected; reads are served by decoding from the other blocks.
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, sync, status, partnerDirs, sh } from './helpers.js'

const HEADER = 64

function slotBytes (dir: string): number {
  return (JSON.parse(fs.readFileSync(path.join(dir, 'partner.json'), 'utf8')) as { slotBytes: number }).slotBytes
}

function slotFile (dir: string): string {
  return path.join(dir, 'slots.dat')
}

function readSlot (dir: string, slot: number): Buffer {
  const size = slotBytes(dir)
  const fd = fs.openSync(slotFile(dir), 'r')
  const buf = Buffer.alloc(size)
  fs.readSync(fd, buf, 0, size, slot * size)
  fs.closeSync(fd)
  return buf
}

function writeSlot (dir: string, slot: number, buf: Buffer): void {
  const fd = fs.openSync(slotFile(dir), 'r+')
  fs.writeSync(fd, buf, 0, buf.length, slot * slotBytes(dir))
  fs.closeSync(fd)
}

function flipByte (dir: string, slot: number, at: number): void {
  const b = readSlot(dir, slot)
  b[HEADER + at] ^= 0xff
  writeSlot(dir, slot, b)
}

async function storeFile (t: { teardown: (fn: () => unknown) => void }, bytes: Buffer): Promise<{ s: Awaited<ReturnType<typeof init>>, file: string }> {
  const s = await init(t)
  await mount(s)
  const file = path.join(s.mnt, 'data.bin')
  fs.writeFileSync(file, bytes)
  await sync(s.home)
  await unmount(s.mnt)
  return { s, file }
}

test('partner directories never contain plaintext', async t => {
  const marker = 'coopfs-plaintext-marker-'
  const s = await init(t)
  await mount(s)
  fs.writeFileSync(path.join(s.mnt, 'secret.txt'), marker.repeat(20000))
  fs.writeFileSync(path.join(s.mnt, marker + 'name'), 'x')
  await sync(s.home)
  await unmount(s.mnt)
  for (const dir of partnerDirs(s.home)) {
    const r = await sh(`grep -r -a -c -F '${marker}' '${dir}' || true`)
    t.ok(r.stdout.split('\n').filter(Boolean).every(l => l.endsWith(':0') || l === '0'), `no plaintext in ${path.basename(dir)}`)
  }
})

test('a flipped byte in a stored block is detected, the read is served by decoding, and status reports it', async t => {
  const bytes = crypto.randomBytes(600 * 1024)
  const { s, file } = await storeFile(t, bytes)
  // Slot 0 holds the file's first segment; flip a byte in each partner's block there, one partner only.
  flipByte(partnerDirs(s.home)[0], 0, 1000)
  await mount(s)
  t.ok(fs.readFileSync(file).equals(bytes), 'file reads back intact')
  const st = await status(s.home)
  t.ok(st.damage.count >= 1, 'damage counted')
  t.ok(st.damage.recent.some((d: { problem: string }) => d.problem === 'corrupt'), 'reported as corrupt')
  await unmount(s.mnt)
})

test('with more blocks damaged than there is parity, the read fails with EIO and the mount stays up', async t => {
  const bytes = crypto.randomBytes(600 * 1024)
  const { s, file } = await storeFile(t, bytes)
  for (const dir of partnerDirs(s.home).slice(0, 3)) flipByte(dir, 0, 5)
  await mount(s)
  let code = ''
  try {
    fs.readFileSync(file)
  } catch (err) {
    code = (err as NodeJS.ErrnoException).code ?? ''
  }
  t.is(code, 'EIO')
  t.ok(fs.readdirSync(s.mnt).includes('data.bin'), 'mount still answers')
  await unmount(s.mnt)
})

test('a block copied into another slot is rejected', async t => {
  const bytes = crypto.randomBytes(3 * 1024 * 1024)
  const { s, file } = await storeFile(t, bytes)
  const dir = partnerDirs(s.home)[1]
  writeSlot(dir, 0, readSlot(dir, 1))
  await mount(s)
  t.ok(fs.readFileSync(file).equals(bytes), 'file reads back intact')
  const st = await status(s.home)
  t.ok(st.damage.recent.some((d: { problem: string, slot: number }) => d.problem === 'wrong-slot' && d.slot === 0), 'moved block named')
  await unmount(s.mnt)
})

test('a block rolled back to an older version of itself is rejected', async t => {
  const s = await init(t)
  await mount(s)
  fs.writeFileSync(path.join(s.mnt, 'old.bin'), crypto.randomBytes(600 * 1024))
  await sync(s.home)
  const dir = partnerDirs(s.home)[2]
  const old = readSlot(dir, 0)
  const oldVersion = old.readBigUInt64LE(12)
  // Free slot 0 (delete, then a checkpoint) and let new data take it, the lowest free slot, next.
  fs.unlinkSync(path.join(s.mnt, 'old.bin'))
  await sync(s.home)
  const bytes = crypto.randomBytes(600 * 1024)
  fs.writeFileSync(path.join(s.mnt, 'new.bin'), bytes)
  await sync(s.home)
  await unmount(s.mnt)
  const current = readSlot(dir, 0)
  t.ok(current.readBigUInt64LE(12) > oldVersion, 'slot 0 was rewritten with a newer version')
  writeSlot(dir, 0, old)
  await mount(s)
  t.ok(fs.readFileSync(path.join(s.mnt, 'new.bin')).equals(bytes), 'file reads back intact')
  const st = await status(s.home)
  t.ok(st.damage.recent.some((d: { problem: string }) => d.problem === 'stale'), 'old version named as stale')
  await unmount(s.mnt)
})

// Partners that are gone: with up to m partner areas missing, the mount still starts and every file reads
// back by decoding; with more missing, reads fail with EIO instead of hanging.
import test from 'brittle'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { init, mount, unmount, sync, status, partnerDirs } from './helpers.js'

test('files read back by decoding with m partners gone, and EIO with more gone', async t => {
  const s = await init(t, { partnersOutside: true })
  await mount(s)
  const files = new Map<string, Buffer>()
  for (let i = 0; i < 6; i++) {
    const data = crypto.randomBytes(200 * 1024 * (i + 1))
    files.set(`f${i}`, data)
    fs.writeFileSync(path.join(s.mnt, `f${i}`), data)
  }
  await sync(s.home)
  await unmount(s.mnt)
  const dirs = partnerDirs(s.home)
  fs.renameSync(dirs[1], dirs[1] + '.away')
  fs.renameSync(dirs[4], dirs[4] + '.away')

  await mount(s)
  const st = await status(s.home)
  t.is(st.partners.filter((p: { state: string }) => p.state === 'offline').length, 2, 'status shows two partners offline')
  for (const [name, data] of files) t.ok(fs.readFileSync(path.join(s.mnt, name)).equals(data), `${name} intact`)
  await unmount(s.mnt)

  fs.renameSync(dirs[2], dirs[2] + '.away')
  await mount(s)
  let code = ''
  try {
    fs.readFileSync(path.join(s.mnt, 'f5'))
  } catch (err) {
    code = (err as NodeJS.ErrnoException).code ?? ''
  }
  t.is(code, 'EIO', 'three of six partners gone: EIO')
  await unmount(s.mnt)

  for (const d of [dirs[1], dirs[2], dirs[4]]) fs.renameSync(d + '.away', d)
  await mount(s)
  t.ok(fs.readFileSync(path.join(s.mnt, 'f5')).equals(files.get('f5')!), 'reads work again once partners return')
  await unmount(s.mnt)
})

// coopfs demo: a ready-to-use coopfs in one command - an identity with local partner areas under a demo
// home, mounted at DIR (default ./coopfs-demo).
import fs from 'node:fs'
import path from 'node:path'
import { Home } from '../../home.js'
import { DEFAULT_K, DEFAULT_M, DEFAULT_SLOTS } from '../../config.js'
import { onlyFlags, str, type Args } from '../args.js'
import { initHome } from './init.js'
import { mountCommand } from './mount.js'

export async function demoCommand (args: Args): Promise<void> {
  onlyFlags(args, ['home'])
  const dir = path.resolve(args.positionals[0] ?? 'coopfs-demo')
  const homeDir = path.resolve(str(args, 'home') ?? dir + '.home')
  const home = new Home(homeDir)
  if (!home.exists()) {
    const res = initHome(homeDir, { k: DEFAULT_K, m: DEFAULT_M, slots: DEFAULT_SLOTS })
    fs.writeFileSync(path.join(homeDir, 'RECOVERY-KEY.txt'), res.recoveryKey + '\n', { mode: 0o600 })
    process.stdout.write(`created a demo identity in ${homeDir} (recovery key in ${path.join(homeDir, 'RECOVERY-KEY.txt')})\n`)
  }
  fs.mkdirSync(dir, { recursive: true })
  await mountCommand({ positionals: [dir], flags: new Map([['home', homeDir]]) })
  process.stdout.write([
    `coopfs is mounted at ${dir}: copy files in, browse them, unmount and mount again.`,
    `  status:   npx coopfs status --home ${homeDir}`,
    `  stop:     npx coopfs unmount ${dir}`,
    ''
  ].join('\n'))
}

// coopfs command line: one clear line on stderr and a non-zero exit for every error.
import { CoopError } from '../errors.js'
import { parseArgs } from './args.js'
import { initCommand } from './commands/init.js'
import { mountCommand, serveCommand } from './commands/mount.js'
import { unmountCommand, statusCommand, syncCommand, partnersCommand, stopCommand } from './commands/control.js'
import { matcherCommand } from './commands/matcher.js'
import { prefetchCommand } from './commands/prefetch.js'
import { demoCommand } from './commands/demo.js'

const USAGE = `usage: coopfs COMMAND [options]

  init     [--home DIR] [--k K --m M] [--slots S] [--local | --local-partners DIR,...] [--json]
  mount    MOUNTPOINT [--home DIR] [--bootstrap HOST:PORT] [--host IP] [--foreground]
           [--recover [--recovery-key-file F] [--local-partners DIR,...]]
  unmount  MOUNTPOINT
  status   [--home DIR] [--json]
  sync     [--home DIR] [--timeout S]
  partners [list | add KEY [--slots S]] [--home DIR] [--json]
  serve    [--home DIR] [--bootstrap HOST:PORT] [--host IP] [--foreground]
  stop     [--home DIR]                        stop the daemon of a home (serve or mount)
  matcher  [--port P] [--host IP] [--home DIR] [--json]
  prefetch [PATH] [--home DIR]
  demo     [DIR] [--partners N]

--home defaults to $COOPFS_HOME, then $XDG_DATA_HOME/coopfs (~/.local/share/coopfs).
--bootstrap and --host default to $COOPFS_BOOTSTRAP and $COOPFS_HOST; a home remembers the last ones given.`

const BOOLEANS = ['json', 'foreground', 'recover', 'daemon-child', 'help', 'local']

const COMMANDS: Record<string, (args: ReturnType<typeof parseArgs>) => Promise<void>> = {
  init: initCommand,
  mount: mountCommand,
  unmount: unmountCommand,
  umount: unmountCommand,
  status: statusCommand,
  sync: syncCommand,
  partners: partnersCommand,
  serve: serveCommand,
  stop: stopCommand,
  matcher: matcherCommand,
  prefetch: prefetchCommand,
  demo: demoCommand
}

async function main (argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv
  if (!cmd || cmd === '--help' || cmd === 'help' || cmd === '-h') {
    process.stdout.write(USAGE + '\n')
    return cmd ? 0 : 2
  }
  const run = COMMANDS[cmd]
  if (!run) {
    process.stderr.write(`coopfs: unknown command '${cmd}'\n${USAGE}\n`)
    return 2
  }
  await run(parseArgs(rest, BOOLEANS))
  return 0
}

main(process.argv.slice(2)).then(code => {
  if (code) process.exitCode = code
}, (err: unknown) => {
  const e = err as CoopError
  process.stderr.write(`coopfs: ${e?.message ?? String(err)}\n`)
  if (process.env.COOPFS_DEBUG) process.stderr.write(String(e?.stack) + '\n')
  process.exitCode = e?.code === 'EUSAGE' ? 2 : 1
})

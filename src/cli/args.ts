// A small argument parser: positionals, --flag value, --flag=value and boolean switches.
import { CoopError } from '../errors.js'

export interface Args {
  positionals: string[]
  flags: Map<string, string | true>
}

export function parseArgs (argv: string[], booleans: string[]): Args {
  const positionals: string[] = []
  const flags = new Map<string, string | true>()
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      positionals.push(a)
      continue
    }
    const eq = a.indexOf('=')
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2)
    if (eq > 0) flags.set(name, a.slice(eq + 1))
    else if (booleans.includes(name)) flags.set(name, true)
    else if (i + 1 < argv.length) flags.set(name, argv[++i])
    else throw new CoopError('EUSAGE', `--${name} needs a value`)
  }
  return { positionals, flags }
}

export function str (args: Args, name: string, env?: string): string | undefined {
  const v = args.flags.get(name)
  if (typeof v === 'string') return v
  if (env && process.env[env]) return process.env[env]
  return undefined
}

export function bool (args: Args, name: string): boolean {
  return args.flags.get(name) === true
}

export function int (args: Args, name: string, fallback: number, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  const v = str(args, name)
  if (v === undefined) return fallback
  const n = Number(v)
  if (!Number.isInteger(n) || n < min || n > max) throw new CoopError('EUSAGE', `--${name} must be a whole number from ${min} to ${max}`)
  return n
}

export function onlyFlags (args: Args, allowed: string[]): void {
  for (const name of args.flags.keys()) {
    if (!allowed.includes(name)) throw new CoopError('EUSAGE', `unknown option --${name}`)
  }
}

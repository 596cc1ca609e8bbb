// The control socket in the home (mode 0600): newline-delimited JSON requests from the CLI to the daemon.
import net from 'node:net'
import fs from 'node:fs'
import { CoopError } from '../errors.js'

export interface Request {
  op: 'status' | 'sync' | 'unmount' | 'ping' | 'partnerAdd' | 'partners' | 'prefetch' | 'prefetchProgress'
  timeoutMs?: number
  path?: string
  key?: string
  slots?: number
}

export interface Response {
  ok: boolean
  result?: unknown
  error?: string
  code?: string
}

export type Handler = (req: Request) => Promise<unknown>

export function serveControl (file: string, handler: Handler): Promise<net.Server> {
  fs.rmSync(file, { force: true })
  const server = net.createServer(sock => {
    let buf = ''
    sock.setEncoding('utf8')
    sock.on('error', () => {})
    sock.on('data', chunk => {
      buf += chunk
      let nl: number
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        let req: Request
        try {
          req = JSON.parse(line) as Request
        } catch {
          sock.end(JSON.stringify({ ok: false, error: 'malformed request', code: 'EINVAL' }) + '\n')
          return
        }
        handler(req).then(
          result => reply(sock, { ok: true, result }),
          (err: CoopError) => reply(sock, { ok: false, error: err.message, code: err.code ?? 'EIO' })
        )
      }
    })
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    // The umask makes the socket private from the moment it exists.
    const old = process.umask(0o177)
    server.listen(file, () => {
      process.umask(old)
      fs.chmodSync(file, 0o600)
      resolve(server)
    })
  })
}

function reply (sock: net.Socket, res: Response): void {
  if (!sock.destroyed) sock.write(JSON.stringify(res) + '\n')
}

export function request (file: string, req: Request, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(file)
    let buf = ''
    // timeoutMs <= 0: wait as long as the daemon works (sync without --timeout).
    const timer = timeoutMs > 0
      ? setTimeout(() => {
        sock.destroy()
        reject(new CoopError('ETIMEDOUT', 'the daemon did not answer in time'))
      }, timeoutMs)
      : undefined
    sock.setEncoding('utf8')
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'))
    sock.on('data', chunk => {
      buf += chunk
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      clearTimeout(timer)
      sock.end()
      const res = JSON.parse(buf.slice(0, nl)) as Response
      if (res.ok) resolve(res.result)
      else reject(new CoopError(res.code ?? 'EIO', res.error ?? 'the daemon reported an error'))
    })
    sock.on('error', err => {
      clearTimeout(timer)
      reject(new CoopError('ENODAEMON', `no daemon answers on ${file} (${(err as NodeJS.ErrnoException).code})`))
    })
    sock.on('close', () => {
      clearTimeout(timer)
      reject(new CoopError('ENODAEMON', 'the daemon closed the connection without answering'))
    })
  })
}

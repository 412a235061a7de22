#!/usr/bin/env node
// cload.mjs — ../shared/bench/yload.mjs's room scenarios (S1 fan-out, S2 many docs) against
// SEVERAL server nodes: `--url` is given once per node and the clients of each document are spread
// over the nodes round-robin (client i on node i mod N), so a delivery usually crosses nodes.
// Copied from yload.mjs (same raw client, same delivery detection, same JSON line) with:
//   - several --url (node URLs) and several --server-pid (the nodes: CPU and RSS summed over all of
//     them and their descendants; per node in `server.nodes`);
//   - --aux-pid NAME=PID (repeatable): the CPU of shared services (Redis, PostgreSQL) over the same
//     phases, reported apart in `aux`;
//   - the fresh-client check connects one fresh client to EVERY node;
//   - no S3 scenario and no official-provider client (see yload.mjs for those).
//
// Every phase is bounded in count and time; the process exits by itself.

import WebSocket from 'ws'
import * as Y from 'yjs'
import * as syncProtocol from 'y-protocols/sync'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { performance, monitorEventLoopDelay } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import fs from 'node:fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

// ---------------------------------------------------------------- options ---

const OPTIONS = {
  'server-kind': { type: 'string', default: 'ywebsocket' },
  url: { type: 'string', multiple: true },
  token: { type: 'string' },
  'token-param': { type: 'string', default: 'token' },
  label: { type: 'string' },
  scenario: { type: 'string', default: 's1' },
  docs: { type: 'string' },
  'clients-per-doc': { type: 'string' },
  'edits-per-client': { type: 'string' },
  rate: { type: 'string' },
  duration: { type: 'string' },
  'edit-chars': { type: 'string' },
  'connect-concurrency': { type: 'string' },
  'verify-docs': { type: 'string' },
  // per-scenario overrides (win over the generic ones above)
  's1-docs': { type: 'string' },
  's1-clients-per-doc': { type: 'string' },
  's1-edits-per-client': { type: 'string' },
  's1-rate': { type: 'string' },
  's1-duration': { type: 'string' },
  's2-docs': { type: 'string' },
  's2-clients-per-doc': { type: 'string' },
  's2-edits-per-client': { type: 'string' },
  's2-rate': { type: 'string' },
  's2-duration': { type: 'string' },
  'connect-timeout': { type: 'string', default: '30' },
  'settle-timeout': { type: 'string', default: '20' },
  awareness: { type: 'string', default: '1' },
  deflate: { type: 'string', default: '0' },
  'zlib-concurrency': { type: 'string', default: '100' },
  'doc-prefix': { type: 'string' },
  'docs-file': { type: 'string' },
  'print-docs-needed': { type: 'boolean', default: false },
  'server-pid': { type: 'string', multiple: true },
  'aux-pid': { type: 'string', multiple: true },
  out: { type: 'string' },
  quiet: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false }
}

const HELP = `usage: node cload.mjs --url URL [--url URL ...] [options]

  --server-kind ywebsocket|hocuspocus   wire protocol (default ywebsocket)
  --url URL            one node's URL, repeated once per node; clients are spread over them
                       round-robin. May contain {doc}; without it, ywebsocket appends /<doc>,
                       hocuspocus uses the URL as is.
  --token T            appended as ?<token-param>=T (and sent in the hocuspocus auth message)
  --token-param NAME   query parameter name for --token (default token)
  --label NAME         server name used in the output (default: server-kind)
  --scenario LIST      comma list of s1,s2 (default s1)
  --docs N --clients-per-doc M --edits-per-client K --rate R(edits/s/client) --duration S(cap)
                       generic knobs, applied to s1 and s2 (use --s1-* / --s2-* to target one)
  --edit-chars N       pad each edit to N characters (default: marker only, ~6-10 chars)
  --connect-concurrency C   max simultaneous connection handshakes (default 50)
  --verify-docs N      docs re-read by a fresh client on every node at the end (default 20)
  --connect-timeout S --settle-timeout S   per-client connect and post-edit settle limits
  --awareness 0|1      send one awareness state per client on connect (default 1)
  --deflate 0|1        offer permessage-deflate (default 0)
  --doc-prefix P       doc name prefix (default: unique per run)
  --docs-file FILE     doc names/ids to use, as yload.mjs reads them ({"s1": [id], "s2": [...]})
  --print-docs-needed  print {"s1": N, ...} and exit
  --server-pid PID     a node's process (repeat per node; descendants summed) for RSS and CPU
  --aux-pid NAME=PID   a shared service's process tree (redis=PID, postgresql=PID): CPU per phase
  --out FILE           append one JSON line per scenario to FILE
  --quiet              no progress on stderr
`

const { values: argv } = parseArgs({ options: OPTIONS, allowPositionals: false })
if (argv.help || (!argv.url && !argv['print-docs-needed'])) {
  process.stdout.write(HELP)
  process.exit(argv.help ? 0 : 2)
}
const KIND = argv['server-kind']
if (!['ywebsocket', 'hocuspocus'].includes(KIND)) die(`bad --server-kind ${KIND}`)
const CLIENT_IMPL = 'raw'
const URLS = argv.url || []
const LABEL = argv.label || KIND
const TOKEN = argv.token
const SERVER_PIDS = (argv['server-pid'] || []).map(Number)
const SERVER_PID = SERVER_PIDS.length ? SERVER_PIDS[0] : null
const AUX_PIDS = Object.fromEntries((argv['aux-pid'] || []).map(a => {
  const [name, pid] = a.split('=')
  if (!name || !Number(pid)) die(`bad --aux-pid ${a} (NAME=PID)`)
  return [name, Number(pid)]
}))
const CONNECT_TIMEOUT_MS = Number(argv['connect-timeout']) * 1000
const SETTLE_TIMEOUT_MS = Number(argv['settle-timeout']) * 1000
const AWARENESS = argv.awareness !== '0'
const DEFLATE = argv.deflate === '1'
// ws shares one zlib concurrency limiter (default 10) across all sockets of this process;
// with 50 simulated clients in one process that queue, not the server, dominates latency.
const DEFLATE_OPT = DEFLATE ? { concurrencyLimit: Number(argv['zlib-concurrency']) } : false
const DOC_PREFIX = argv['doc-prefix'] || `b${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`
const CONNECT_CONCURRENCY = Number(argv['connect-concurrency'] || 50)
const VERIFY_DOCS = Number(argv['verify-docs'] || 20)
const EDIT_CHARS = Number(argv['edit-chars'] || 0)
const QUIET = argv.quiet

const SCENARIO_DEFAULTS = {
  s1: { docs: 1, clientsPerDoc: 50, editsPerClient: 40, rate: 2, duration: 60 },
  s2: { docs: 500, clientsPerDoc: 2, editsPerClient: 3, rate: 1, duration: 60 }
}

function scenarioParams (s) {
  const p = { ...SCENARIO_DEFAULTS[s] }
  const map = { docs: 'docs', 'clients-per-doc': 'clientsPerDoc', 'edits-per-client': 'editsPerClient', rate: 'rate', duration: 'duration' }
  for (const [opt, key] of Object.entries(map)) {
    if (argv[opt] !== undefined) p[key] = Number(argv[opt])
    if (argv[`${s}-${opt}`] !== undefined) p[key] = Number(argv[`${s}-${opt}`])
  }
  return p
}

function die (msg) { process.stderr.write(`yload: ${msg}\n`); process.exit(2) }
function log (...a) { if (!QUIET) process.stderr.write(`[yload ${LABEL}] ${a.join(' ')}\n`) }
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))
const now = () => performance.now()

// -------------------------------------------------------------- URL / wire ---

function buildUrl (docName, node = 0) {
  let url = URLS[node % URLS.length]
  if (url.includes('{doc}')) url = url.split('{doc}').join(encodeURIComponent(docName))
  else if (KIND === 'ywebsocket') {
    const [base, query] = splitQuery(url)
    url = base.replace(/\/+$/, '') + '/' + encodeURIComponent(docName) + (query ? '?' + query : '')
  }
  if (TOKEN !== undefined) url += (url.includes('?') ? '&' : '?') + encodeURIComponent(argv['token-param']) + '=' + encodeURIComponent(TOKEN)
  return url
}
function splitQuery (url) {
  const i = url.indexOf('?')
  return i < 0 ? [url, ''] : [url.slice(0, i), url.slice(i + 1)]
}

// y-websocket message types
const MSG_SYNC = 0
const MSG_AWARENESS = 1
const MSG_AUTH = 2
const MSG_QUERY_AWARENESS = 3
// hocuspocus extra message types
const HP_SYNC_REPLY = 4
const HP_STATELESS = 5
const HP_CLOSE = 7
const HP_SYNC_STATUS = 8
const HP_PING = 9
const HP_PONG = 10
// the provider version yload.mjs sends from ../shared/bench's lock (the provider is not installed here)
const HP_PROVIDER_VERSION = (() => { try { return require('@hocuspocus/provider/package.json').version } catch { return '4.8.0' } })()

// global wire / error statistics, reset per scenario
let W = newWireStats()
function newWireStats () {
  return { t0: now(), msgsIn: 0, bytesIn: 0, msgsOut: 0, bytesOut: 0, awarenessIn: 0, syncStatusIn: 0, errors: 0, errorSamples: [], unexpectedCloses: 0, deflate: 0, sockets: 0 }
}
function recordError (what) {
  W.errors++
  if (W.errorSamples.length < 10) W.errorSamples.push(`t+${((now() - W.t0) / 1000).toFixed(2)}s ${String(what).slice(0, 300)}`)
}

function encodeAwarenessState (clientID, clock, state) {
  // y-protocols awareness update with a single entry
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, 1)
  encoding.writeVarUint(enc, clientID)
  encoding.writeVarUint(enc, clock)
  encoding.writeVarString(enc, JSON.stringify(state))
  return encoding.toUint8Array(enc)
}

// ---------------------------------------------------------------- clients ---

/**
 * Raw protocol client: one Y.Doc, one WebSocket.
 * connect() resolves once the server's SyncStep2 (reply to our SyncStep1) is applied.
 */
class RawClient {
  constructor (docName, name, node = 0) {
    this.docName = docName
    this.name = name
    this.node = node // index into URLS
    this.doc = new Y.Doc()
    this.text = this.doc.getText('markdown')
    this.ws = null
    this.synced = false
    this.closed = false
    this.closing = false
    this.tStart = 0
    this.tOpen = 0
    this.tSynced = 0
    this.lastStep2Bytes = 0
    this.awarenessClock = 0
    this.keepalive = null
    this._onUpdate = (update, origin) => {
      if (origin !== this) this.sendSync(enc => syncProtocol.writeUpdate(enc, update))
    }
    this.doc.on('update', this._onUpdate)
  }

  prefix (enc) {
    if (KIND === 'hocuspocus') encoding.writeVarString(enc, this.docName)
  }

  send (buf) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return
    this.ws.send(buf)
    W.msgsOut++
    W.bytesOut += buf.byteLength
  }

  sendSync (writeFn) {
    const enc = encoding.createEncoder()
    this.prefix(enc)
    encoding.writeVarUint(enc, MSG_SYNC)
    writeFn(enc)
    this.send(encoding.toUint8Array(enc))
  }

  sendAwareness () {
    const enc = encoding.createEncoder()
    this.prefix(enc)
    encoding.writeVarUint(enc, MSG_AWARENESS)
    encoding.writeVarUint8Array(enc, encodeAwarenessState(this.doc.clientID, ++this.awarenessClock,
      { user: { name: this.name }, cursor: null }))
    this.send(encoding.toUint8Array(enc))
  }

  connect () {
    return new Promise((resolve, reject) => {
      this.tStart = now()
      const url = buildUrl(this.docName, this.node)
      let settled = false
      const done = (err) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        if (err) { this.close(true); reject(err) } else resolve(this)
      }
      const timer = setTimeout(() => done(new Error(`connect timeout ${this.docName}`)), CONNECT_TIMEOUT_MS)
      this._syncedCb = () => done()
      let ws
      try {
        ws = new WebSocket(url, { perMessageDeflate: DEFLATE_OPT, handshakeTimeout: CONNECT_TIMEOUT_MS })
      } catch (e) { done(e); return }
      this.ws = ws
      W.sockets++
      ws.binaryType = 'nodebuffer'
      ws.on('open', () => {
        this.tOpen = now()
        if (ws.extensions && ws.extensions.includes && ws.extensions.includes('permessage-deflate')) W.deflate++
        if (KIND === 'hocuspocus') {
          const enc = encoding.createEncoder()
          this.prefix(enc)
          encoding.writeVarUint(enc, MSG_AUTH)
          encoding.writeVarUint(enc, 0) // AuthMessageType.Token
          encoding.writeVarString(enc, TOKEN ?? '')
          encoding.writeVarString(enc, HP_PROVIDER_VERSION)
          this.send(encoding.toUint8Array(enc))
          // hocuspocus closes sockets silent for 60 s: keep alive with awareness renewals
          this.keepalive = setInterval(() => this.sendAwareness(), 15000)
          this.keepalive.unref()
        }
        this.sendSync(enc => syncProtocol.writeSyncStep1(enc, this.doc))
        if (AWARENESS) this.sendAwareness()
      })
      ws.on('message', (data) => {
        try { this.onMessage(data) } catch (e) { recordError(`message handling: ${e && e.stack ? e.stack.split('\n').slice(0, 2).join(' ') : e}`) }
      })
      ws.on('error', (e) => { recordError(`ws error ${this.docName}: ${e.message}`); done(e) })
      ws.on('unexpected-response', (_req, res) => { done(new Error(`HTTP ${res.statusCode} on upgrade`)) })
      ws.on('close', (code, reason) => {
        if (!this.closing) {
          W.unexpectedCloses++
          recordError(`unexpected close ${this.docName} code=${code} ${reason}`)
        }
        this.closed = true
        if (this.keepalive) clearInterval(this.keepalive)
        done(new Error(`closed before sync code=${code}`))
      })
    })
  }

  onMessage (data) {
    const buf = data instanceof Buffer ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data)
    W.msgsIn++
    W.bytesIn += buf.byteLength
    const dec = decoding.createDecoder(buf)
    if (KIND === 'hocuspocus') {
      const addr = decoding.readVarString(dec)
      if (addr !== this.docName) return
    }
    const type = decoding.readVarUint(dec)
    switch (type) {
      case MSG_SYNC:
      case HP_SYNC_REPLY: {
        const enc = encoding.createEncoder()
        this.prefix(enc)
        encoding.writeVarUint(enc, MSG_SYNC)
        const emptyLen = encoding.length(enc)
        const st = syncProtocol.readSyncMessage(dec, enc, this.doc, this)
        if (encoding.length(enc) > emptyLen) this.send(encoding.toUint8Array(enc))
        if (st === syncProtocol.messageYjsSyncStep2) {
          this.lastStep2Bytes = buf.byteLength
          if (!this.synced) {
            this.synced = true
            this.tSynced = now()
            if (this._syncedCb) this._syncedCb()
          }
        }
        break
      }
      case MSG_AWARENESS:
        W.awarenessIn++
        break
      case MSG_AUTH: {
        const sub = decoding.readVarUint(dec)
        if (KIND === 'hocuspocus') {
          if (sub === 1) recordError(`hocuspocus permission denied: ${decoding.readVarString(dec)}`)
          // sub === 2: authenticated (scope string) — nothing to do, sync already requested
        } else if (sub === 0) {
          recordError(`auth permission denied: ${decoding.readVarString(dec)}`)
        }
        break
      }
      case MSG_QUERY_AWARENESS:
        if (AWARENESS) this.sendAwareness()
        break
      case HP_SYNC_STATUS:
        W.syncStatusIn++
        break
      case HP_PING: {
        const enc = encoding.createEncoder()
        this.prefix(enc)
        encoding.writeVarUint(enc, HP_PONG)
        this.send(encoding.toUint8Array(enc))
        break
      }
      case HP_STATELESS:
      case HP_PONG:
        break
      case HP_CLOSE:
        recordError(`server sent CLOSE for ${this.docName}`)
        break
      default:
        recordError(`unknown message type ${type}`)
    }
  }

  close (force = false) {
    this.closing = true
    if (this.keepalive) clearInterval(this.keepalive)
    if (this.ws && !this.closed) {
      try { force ? this.ws.terminate() : this.ws.close(1000) } catch {}
    }
    this.doc.off('update', this._onUpdate)
  }

  destroy () {
    if (this.ws && !this.closed) { try { this.ws.terminate() } catch {} }
    this.doc.destroy()
  }
}

const makeClient = (docName, name, node) => new RawClient(docName, name, node)

// ------------------------------------------------------------- measurement ---

function pct (arr, p) {
  if (!arr.length) return null
  const a = Float64Array.from(arr).sort()
  const i = Math.min(a.length - 1, Math.max(0, Math.ceil((p / 100) * a.length) - 1))
  return round(a[i])
}
function summary (arr) {
  if (!arr.length) return { n: 0 }
  let sum = 0; let max = -Infinity
  for (const v of arr) { sum += v; if (v > max) max = v }
  return { n: arr.length, p50: pct(arr, 50), p95: pct(arr, 95), p99: pct(arr, 99), max: round(max), mean: round(sum / arr.length) }
}
function round (x, d = 2) { return x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d }

let CLK_TCK = 100
try { CLK_TCK = Number(require('node:child_process').execSync('getconf CLK_TCK').toString().trim()) || 100 } catch {}

/** ppid -> child pids, from /proc (one scan per measurement). */
function childrenMap () {
  const children = new Map()
  try {
    for (const d of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(d)) continue
      try {
        const st = fs.readFileSync(`/proc/${d}/stat`, 'utf8')
        const ppid = Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[1])
        if (!children.has(ppid)) children.set(ppid, [])
        children.get(ppid).push(Number(d))
      } catch {}
    }
  } catch {}
  return children
}

/** RSS (MB) and CPU seconds of one pid plus all its descendants. */
function treeStats (root, children) {
  const pids = [root]
  for (let i = 0; i < pids.length; i++) for (const c of children.get(pids[i]) || []) pids.push(c)
  let rssKB = 0; let cpuTicks = 0; let alive = false
  for (const pid of pids) {
    try {
      const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
      const m = status.match(/VmRSS:\s+(\d+)\s+kB/)
      if (m) rssKB += Number(m[1])
      const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ')
      cpuTicks += Number(f[11]) + Number(f[12]) // utime, stime
      alive = true
    } catch {}
  }
  return alive ? { alive: true, rssMB: rssKB / 1024, cpuS: cpuTicks / CLK_TCK, pids: pids.length } : { alive: false }
}

/** The nodes summed (alive only if every node is), each node, and each --aux-pid tree. */
function serverStats () {
  if (!SERVER_PIDS.length) return null
  const children = childrenMap()
  const nodes = SERVER_PIDS.map(pid => treeStats(pid, children))
  const aux = Object.fromEntries(Object.entries(AUX_PIDS).map(([name, pid]) => [name, treeStats(pid, children)]))
  if (!nodes.every(n => n.alive)) return { alive: false, nodes, aux }
  return {
    alive: true,
    rssMB: round(nodes.reduce((t, n) => t + n.rssMB, 0), 1),
    cpuS: nodes.reduce((t, n) => t + n.cpuS, 0),
    pids: nodes.reduce((t, n) => t + n.pids, 0),
    nodes,
    aux
  }
}

class Probe {
  // CPU of this client process, of the nodes (summed and each) and of the aux services between start() and stop()
  start () {
    this.t0 = now()
    this.c0 = process.cpuUsage()
    this.s0 = serverStats()
    this.loop = monitorEventLoopDelay({ resolution: 10 })
    this.loop.enable()
    return this
  }

  stop () {
    const wall = (now() - this.t0) / 1000
    const c = process.cpuUsage(this.c0)
    const cpuS = (c.user + c.system) / 1e6
    this.loop.disable()
    const s1 = serverStats()
    const res = {
      wall_s: round(wall, 3),
      client_cpu_s: round(cpuS, 3),
      client_cpu_pct: round(100 * cpuS / wall, 1),
      client_loop_delay_p99_ms: round(this.loop.percentile(99) / 1e6, 1)
    }
    if (this.s0 && this.s0.alive && s1 && s1.alive) {
      res.server_cpu_s = round(s1.cpuS - this.s0.cpuS, 3)
      res.server_cpu_pct = round(100 * (s1.cpuS - this.s0.cpuS) / wall, 1)
      res.node_cpu_s = s1.nodes.map((n, i) => round(n.cpuS - this.s0.nodes[i].cpuS, 3))
    }
    if (this.s0 && s1) {
      res.aux_cpu_s = {}
      for (const name of Object.keys(AUX_PIDS)) {
        const a0 = this.s0.aux[name]; const a1 = s1.aux[name]
        res.aux_cpu_s[name] = a0 && a1 && a0.alive && a1.alive ? round(a1.cpuS - a0.cpuS, 3) : null
      }
    }
    return res
  }
}

/** Connect clients with bounded concurrency; returns latencies and failures. */
async function connectAll (clients, concurrency, deadlineMs) {
  const connectMs = []; const openMs = []
  let failed = 0; let next = 0
  const worker = async () => {
    while (next < clients.length) {
      const c = clients[next++]
      if (now() > deadlineMs) { failed++; c.failed = true; continue }
      try {
        await c.connect()
        connectMs.push(c.tSynced - c.tStart)
        if (c.tOpen) openMs.push(c.tOpen - c.tStart)
      } catch (e) {
        failed++
        c.failed = true
        recordError(`connect failed ${c.docName}: ${e.message}`)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, clients.length) }, worker))
  return { connectMs, openMs, failed }
}

async function closeAll (clients) {
  for (const c of clients) c.close()
  await sleep(300)
  for (const c of clients) c.destroy()
}

// ------------------------------------------------------ s1 / s2: rooms run ---

async function runRooms (scenario, p) {
  W = newWireStats()
  const hardDeadline = now() + (p.duration + CONNECT_TIMEOUT_MS / 1000 + SETTLE_TIMEOUT_MS / 1000 + 60) * 1000
  const docNames = DOC_IDS ? DOC_IDS[scenario] : Array.from({ length: p.docs }, (_, i) => `${DOC_PREFIX}-${scenario}-d${i}`)
  const rooms = docNames.map(name => ({ name, clients: [], markerChars: 0, edits: 0 }))
  const clients = []
  let wid = 0
  for (const room of rooms) {
    for (let j = 0; j < p.clientsPerDoc; j++) {
      const c = makeClient(room.name, `c${wid}`, j % URLS.length) // round-robin over the nodes
      c.wid = wid++
      c.room = room
      room.clients.push(c)
      clients.push(c)
    }
  }
  // Delivery detection without O(doc) work per event: every edit is one transaction on the
  // writer; we log (clientID, clock after the edit, send time). A receiver's remote
  // transaction advances the writer's clock in its state vector; every logged edit whose
  // end clock falls in (before, after] has just been integrated there.
  const editLog = new Map() // writer clientID -> { ends: number[], times: number[] }
  const latencies = []
  const latenciesCross = [] // writer and receiver on different nodes
  let delivered = 0; let expected = 0; let editsSent = 0
  for (const c of clients) {
    const cursors = new Map()
    const node = c.node
    c.doc.on('afterTransaction', (tr) => {
      if (tr.local) return
      const t = now()
      tr.afterState.forEach((after, client) => {
        const before = tr.beforeState.get(client) || 0
        if (after === before) return
        const L = editLog.get(client)
        if (!L) return
        let i = cursors.get(client) || 0
        while (i < L.ends.length && L.ends[i] <= after) {
          if (L.ends[i] > before) {
            latencies.push(t - L.times[i])
            if (L.node !== node) latenciesCross.push(t - L.times[i])
            delivered++
          }
          i++
        }
        cursors.set(client, i)
      })
    })
  }

  const srvBefore = serverStats()
  const probeAll = new Probe().start()

  // --- connect phase
  log(`${scenario}: connecting ${clients.length} clients to ${p.docs} doc(s) (concurrency ${CONNECT_CONCURRENCY})`)
  const probeConnect = new Probe().start()
  const conn = await connectAll(clients, CONNECT_CONCURRENCY, now() + Math.max(CONNECT_TIMEOUT_MS, 120000))
  const connectStats = probeConnect.stop()
  await sleep(500)
  const srvConnected = serverStats()
  log(`${scenario}: connected ${conn.connectMs.length}/${clients.length} in ${connectStats.wall_s}s`)

  // --- edit phase: each connected client makes K edits at `rate` edits/s
  const live = clients.filter(c => c.synced && !c.failed)
  const intervalMs = 1000 / p.rate
  const editDeadline = now() + p.duration * 1000
  const probeEdit = new Probe().start()
  const pad = EDIT_CHARS > 0 ? 'x'.repeat(EDIT_CHARS) : ''
  await new Promise(resolve => {
    let active = live.length
    if (!active) return resolve()
    for (const c of live) {
      let seq = 0
      const peers = c.room.clients.filter(o => o !== c && o.synced && !o.failed).length
      const tick = () => {
        if (seq >= p.editsPerClient || now() > editDeadline || now() > hardDeadline) {
          if (--active === 0) resolve()
          return
        }
        seq++
        const marker = `~${c.wid}.${seq};`
        const content = pad ? marker + pad.slice(marker.length) : marker
        const pos = Math.floor(Math.random() * (c.text.length + 1))
        let L = editLog.get(c.doc.clientID)
        if (!L) editLog.set(c.doc.clientID, (L = { ends: [], times: [], node: c.node }))
        const t0 = now()
        c.text.insert(pos, content)
        L.ends.push(Y.getState(c.doc.store, c.doc.clientID))
        L.times.push(t0)
        c.room.markerChars += content.length
        c.room.edits++
        editsSent++
        expected += peers
        setTimeout(tick, intervalMs)
      }
      setTimeout(tick, Math.random() * intervalMs)
    }
  })
  const editSendS = (now() - probeEdit.t0) / 1000
  // --- settle: wait until every expected delivery has been observed
  const settleDeadline = Math.min(now() + SETTLE_TIMEOUT_MS, hardDeadline)
  while (delivered < expected && now() < settleDeadline) await sleep(20)
  const editStats = probeEdit.stop()
  const srvAfter = serverStats()
  log(`${scenario}: ${editsSent} edits, ${delivered}/${expected} deliveries in ${editStats.wall_s}s`)

  // --- verify convergence: all clients of a doc hold the same text of the expected length,
  //     and a fresh client syncing from each node gets that same text
  let docsConverged = 0; let lengthOk = 0
  const divergent = []
  for (const room of rooms) {
    const live = room.clients.filter(c => c.synced && !c.failed)
    if (!live.length) { divergent.push(room.name); continue }
    const ref = live[0].text.toString()
    const same = live.every(c => c.text.toString() === ref)
    if (same) docsConverged++
    else divergent.push(room.name)
    if (ref.length === room.markerChars) lengthOk++
  }
  const verifyRooms = rooms.filter(r => r.clients.some(c => c.synced)).slice(0, VERIFY_DOCS)
  let freshOk = 0; let freshTried = 0
  const freshClients = []
  for (const room of verifyRooms) {
    for (let node = 0; node < URLS.length; node++) {
      const f = makeClient(room.name, `fresh-${room.name}-n${node}`, node)
      freshClients.push(f)
      freshTried++
      try {
        await f.connect()
        const ref = room.clients.find(c => c.synced).text.toString()
        if (f.text.toString() === ref) freshOk++
        else recordError(`fresh client on node ${node} differs in ${room.name}: ${f.text.length} vs ${ref.length} chars`)
      } catch (e) { recordError(`fresh client connect failed on node ${node} ${room.name}: ${e.message}`) }
    }
  }
  await closeAll(freshClients)

  // --- disconnect
  const probeClose = new Probe().start()
  await closeAll(clients)
  await sleep(1000)
  const closeStats = probeClose.stop()
  const srvClosed = serverStats()
  const all = probeAll.stop()

  const converged = docsConverged === rooms.length && lengthOk === rooms.length && freshOk === freshTried && delivered === expected
  const res = {
    scenario,
    label: LABEL,
    server_kind: KIND,
    client_impl: CLIENT_IMPL,
    urls: URLS,
    nodes: URLS.length,
    params: { docs: p.docs, clients_per_doc: p.clientsPerDoc, edits_per_client: p.editsPerClient, rate_per_client: p.rate, duration_cap_s: p.duration, connect_concurrency: CONNECT_CONCURRENCY, edit_chars: EDIT_CHARS || 'marker', awareness: AWARENESS, deflate_offered: DEFLATE },
    clients_total: clients.length,
    connect: {
      ok: conn.connectMs.length,
      failed: conn.failed,
      total_s: connectStats.wall_s,
      sync_ms: summary(conn.connectMs),
      ws_open_ms: summary(conn.openMs),
      per_s: round(conn.connectMs.length / connectStats.wall_s, 1)
    },
    edits_sent: editsSent,
    deliveries_expected: expected,
    deliveries_observed: delivered,
    edit_phase_s: round(editStats.wall_s, 3),
    edit_send_s: round(editSendS, 3),
    edits_per_s: round(editsSent / editSendS, 1),
    delivered_per_s: round(delivered / editStats.wall_s, 1),
    latency_ms: summary(latencies),
    latency_cross_node_ms: summary(latenciesCross),
    converged,
    docs_converged: `${docsConverged}/${rooms.length}`,
    docs_length_ok: `${lengthOk}/${rooms.length}`,
    fresh_client_verified: `${freshOk}/${freshTried}`,
    divergent_docs: divergent.slice(0, 5),
    server: SERVER_PID
      ? {
          pids: SERVER_PIDS,
          node_cpu_edit_s: editStats.node_cpu_s ?? null,
          rss_before_mb: srvBefore?.rssMB ?? null,
          rss_connected_mb: srvConnected?.rssMB ?? null,
          rss_after_edits_mb: srvAfter?.rssMB ?? null,
          rss_after_close_mb: srvClosed?.rssMB ?? null,
          rss_per_client_kb: srvBefore?.alive && srvConnected?.alive ? round((srvConnected.rssMB - srvBefore.rssMB) * 1024 / Math.max(1, conn.connectMs.length), 1) : null,
          cpu_connect_s: connectStats.server_cpu_s ?? null,
          cpu_edit_s: editStats.server_cpu_s ?? null,
          cpu_edit_pct: editStats.server_cpu_pct ?? null,
          cpu_total_s: all.server_cpu_s ?? null,
          alive_at_end: !!srvClosed?.alive
        }
      : null,
    aux: Object.keys(AUX_PIDS).length ? { pids: AUX_PIDS, cpu_connect_s: connectStats.aux_cpu_s, cpu_edit_s: editStats.aux_cpu_s, cpu_total_s: all.aux_cpu_s } : null,
    client: {
      cpu_connect_s: connectStats.client_cpu_s,
      cpu_edit_s: editStats.client_cpu_s,
      cpu_edit_pct: editStats.client_cpu_pct,
      loop_delay_p99_edit_ms: editStats.client_loop_delay_p99_ms,
      cpu_total_s: all.client_cpu_s
    },
    wire: { ...W, errorSamples: undefined, errors: undefined, t0: undefined },
    close_s: closeStats.wall_s,
    total_s: all.wall_s,
    error_count: W.errors,
    errors: W.errorSamples
  }
  res.ok = converged && W.errors === 0 && conn.failed === 0
  return res
}

// ------------------------------------------------------------------- main ---

function versions () {
  const v = {}
  for (const pkg of ['yjs', 'y-protocols', 'lib0', 'ws', '@hocuspocus/server', '@hocuspocus/extension-redis']) {
    try { v[pkg] = require(`${pkg}/package.json`).version } catch {}
  }
  v.node = process.version
  return v
}

// ------------------------------------------------- doc ids from --docs-file ---

let DOC_IDS = null // scenario -> doc names to use instead of generated ones

/** Doc ids one scenario needs: its docs count. */
function docsNeeded (s) { return scenarioParams(s).docs }

function docsHint (s) { return `${s} runs ${docsNeeded(s)} doc(s): --${s}-docs or --docs` }

/** Read --docs-file and give each selected scenario exactly the ids it needs (exit 2 if too few). */
function loadDocIds (file, scenarios) {
  const bad = (msg) => die(`--docs-file ${file}: ${msg}`)
  let raw
  try { raw = JSON.parse(fs.readFileSync(file, 'utf8')) } catch (e) { bad(e.code === 'ENOENT' ? 'no such file' : e.message) }
  const asIds = (v, where) => {
    if (!Array.isArray(v)) bad(`${where} is not a list of doc ids`)
    return v.map((x, i) => {
      if (!(typeof x === 'string' && x.length) && !(typeof x === 'number' && Number.isFinite(x))) bad(`${where}[${i}] is not a doc id: ${JSON.stringify(x)}`)
      return String(x)
    })
  }
  const ids = {}
  if (Array.isArray(raw)) {
    const flat = asIds(raw, 'the list')
    const total = scenarios.reduce((n, s) => n + docsNeeded(s), 0)
    if (flat.length < total) {
      bad(`too few doc ids: ${flat.length} in the list, ${total} needed (${scenarios.map(s => `${s}: ${docsNeeded(s)}`).join(', ')}; ` +
        'a flat list is split across the selected scenarios in the order they run)')
    }
    let k = 0
    for (const s of scenarios) { ids[s] = flat.slice(k, k + docsNeeded(s)); k += docsNeeded(s) }
  } else if (raw !== null && typeof raw === 'object') {
    for (const s of scenarios) {
      if (raw[s] === undefined) bad(`too few doc ids for ${s}: no "${s}" list, ${docsNeeded(s)} needed (${docsHint(s)})`)
      const have = asIds(raw[s], `"${s}"`)
      if (have.length < docsNeeded(s)) bad(`too few doc ids for ${s}: "${s}" has ${have.length}, ${docsNeeded(s)} needed (${docsHint(s)})`)
      ids[s] = have.slice(0, docsNeeded(s))
    }
  } else {
    bad('expected {"s1": [ids], "s2": [ids]} or a flat list of ids')
  }
  for (const s of scenarios) {
    const seen = new Set()
    for (const id of ids[s]) {
      if (seen.has(id)) bad(`doc id ${JSON.stringify(id)} appears twice among the ids used for ${s}`)
      seen.add(id)
    }
  }
  log(`doc ids from ${file}: ${scenarios.map(s => `${s} ${ids[s].length}`).join(', ')}`)
  return ids
}

async function main () {
  const scenarios = argv.scenario.split(',').map(s => s.trim().toLowerCase()).filter(Boolean)
  for (const s of scenarios) if (!['s1', 's2'].includes(s)) die(`unknown scenario ${s}`)
  if (argv['print-docs-needed']) {
    process.stdout.write(JSON.stringify(Object.fromEntries(scenarios.map(s => [s, docsNeeded(s)]))) + '\n')
    process.exit(0)
  }
  if (argv['docs-file'] !== undefined) DOC_IDS = loadDocIds(argv['docs-file'], scenarios)
  // absolute safety net: the whole run can never exceed the sum of its caps (+ margin)
  let capS = 0
  for (const s of scenarios) capS += scenarioParams(s).duration + 3 * CONNECT_TIMEOUT_MS / 1000 + SETTLE_TIMEOUT_MS / 1000 + 120
  const guard = setTimeout(() => { process.stderr.write(`yload: global time cap ${capS}s hit, exiting\n`); process.exit(3) }, capS * 1000)
  guard.unref()

  let allOk = true
  for (const s of scenarios) {
    const p = scenarioParams(s)
    const res = await runRooms(s, p)
    if (DOC_IDS) res.docs_file = argv['docs-file']
    res.time = new Date().toISOString()
    res.versions = versions()
    const line = JSON.stringify(res)
    process.stdout.write(line + '\n')
    if (argv.out) fs.appendFileSync(argv.out, line + '\n')
    if (!res.ok) allOk = false
    await sleep(1000)
  }
  process.exit(allOk ? 0 : 1)
}

main().catch(e => { process.stderr.write(`yload: fatal ${e.stack || e}\n`); process.exit(2) })

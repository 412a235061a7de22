// What every interop script shares. A script is run by pytest (tests/nodeclients.py run_node) as
//   node <script>.mjs <scenario> '<json config>'
// and prints one JSON object on stdout: the scenario's result (exit 0), `{error}` when it threw or
// is unknown (exit 1), `{error: 'timeout'}` once config.timeoutMs has passed (exit 2). Every wait
// is bounded. Importing this module parses the command line and arms the time limit.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

export const scenario = process.argv[2]
export const cfg = JSON.parse(process.argv[3] || '{}')
// what a script pushes here (events of its clients) goes out with a timeout or an error
export const trace = []
const withTrace = (result) => trace.length ? { ...result, trace } : result
const LIMIT_MS = cfg.timeoutMs || 60000
setTimeout(() => { console.log(JSON.stringify(withTrace({ error: 'timeout', scenario }))); process.exit(2) }, LIMIT_MS).unref()

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// `check` may be async (a REST read); waits until it holds, at most `ms`
export async function until (check, ms = 20000, what = 'condition') {
  const end = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > end) {
      throw new Error('timed out waiting for ' + what + (trace.length ? ' ' + JSON.stringify(trace.slice(-20)) : ''))
    }
    await sleep(10)
  }
}

// a random generator with a seed, so a failing run can be replayed
export function rng (seed) {
  let s = seed >>> 0
  return () => { s = (s * 1664525 + 1013904223) >>> 0; return s / 4294967296 }
}

// a y-websocket WebsocketProvider on `url` / `room` (cfg.url / cfg.doc) with `token`; `closed` is the
// close code of a refusal (44xx), `synced` turns true on sync
export function client (token, { url = cfg.url, room = cfg.doc, connect = true, WebSocketPolyfill = WebSocket } = {}) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill, params: { token }, disableBc: true, connect, maxBackoffTime: 300
  })
  const c = { doc, provider, text: doc.getText('markdown'), closed: null, synced: false }
  provider.on('sync', (s) => { if (s) c.synced = true })
  provider.on('closed', (ev) => { c.closed = ev.code })
  provider.on('connection-close', (ev) => { if (ev && ev.code >= 4400 && ev.code < 4500) c.closed = ev.code })
  return c
}

export function done (result) {
  console.log(JSON.stringify(result))
  process.exit(0)
}

function fail (error) {
  console.log(JSON.stringify(withTrace({ error })))
  process.exit(1)
}

// runs the scenario named on the command line: `run({ converge, offline })`
export function run (scenarios) {
  if (!scenarios[scenario]) fail('unknown scenario ' + scenario)
  scenarios[scenario]().catch((err) => fail(String(err && err.stack ? err.stack : err)))
}

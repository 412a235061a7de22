// Interop scenarios with the real @hocuspocus/provider 4 (HocuspocusProvider on a shared
// HocuspocusProviderWebsocket, i.e. many documents per socket) against mdsync's /ws/hocuspocus,
// run by pytest (tests/test_collab_hocuspocus.py):  node hocuspocus_scenario.mjs <scenario> '<json>'
// pytest asserts on the JSON it prints; command line, time limit, output (with the trace of the
// providers' events on a timeout or an error) and exit codes: harness.mjs.
import * as Y from 'yjs'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import { cfg, client, done, rng, run, sleep, trace, until } from './harness.mjs'

// counts the sockets the providers open
let socketsOpened = 0
class CountingWebSocket extends WebSocket {
  constructor (url, protocols) { super(url, protocols); socketsOpened++ }
}

function socket () {
  return new HocuspocusProviderWebsocket({
    url: cfg.url, WebSocketPolyfill: CountingWebSocket, delay: 100, minDelay: 100, maxDelay: 500,
    onStatus: ({ status }) => trace.push(['socket', status]),
    onClose: ({ event }) => trace.push(['socket close', event && event.code])
  })
}

// one document on a shared socket
function hp (websocketProvider, name, token, label, options = {}) {
  const doc = new Y.Doc()
  const c = { doc, text: doc.getText('markdown'), synced: false, scope: null, denied: null, closed: null, label }
  c.provider = new HocuspocusProvider({
    websocketProvider,
    name,
    document: doc,
    token,
    onSynced: () => { c.synced = true },
    onAuthenticated: ({ scope }) => { c.scope = scope; trace.push([label, 'authenticated', scope]) },
    onAuthenticationFailed: ({ reason }) => { c.denied = reason; trace.push([label, 'denied', reason]) },
    onClose: ({ event }) => { c.closed = event.code; trace.push([label, 'close', event.code, event.reason]) },
    onUnsyncedChanges: ({ number }) => trace.push([label, 'unsynced', number]),
    ...options
  })
  c.provider.attach()
  return c
}

// a y-websocket provider on the same document, through /ws/docs
const yws = (name, token) => client(token, { url: cfg.yurl, room: name })

function randomEdits (text, n, rand, tag) {
  for (let i = 0; i < n; i++) {
    const len = text.length
    if (len > 20 && rand() < 0.3) {
      text.delete(Math.floor(rand() * (len - 3)), 1 + Math.floor(rand() * 3))
    } else {
      text.insert(Math.floor(rand() * (len + 1)), `${tag}${i};`)
    }
  }
}

const names = (c) => [...c.provider.awareness.getStates().values()].map((s) => s.user && s.user.name).filter(Boolean).sort()

async function converge () {
  // client A and client B: one socket each, carrying two documents; plus a y-websocket provider
  // on the first document. Everyone edits at the same time.
  const [d1, d2] = cfg.docs
  const sa = socket()
  const sb = socket()
  const a1 = hp(sa, d1, cfg.tokenA, 'a1')
  const a2 = hp(sa, d2, cfg.tokenA, 'a2')
  const b1 = hp(sb, d1, cfg.tokenB, 'b1')
  const b2 = hp(sb, d2, cfg.tokenB, 'b2')
  // a second provider of the first document on A's socket: the provider's session multiplexing
  const a1s = hp(sa, d1, cfg.tokenA, 'a1s', { sessionAwareness: true })
  const y1 = yws(d1, cfg.tokenY)
  const hps = [a1, a2, b1, b2, a1s]
  a1.provider.setAwarenessField('user', { name: 'A' })
  b1.provider.setAwarenessField('user', { name: 'B' })
  y1.provider.awareness.setLocalStateField('user', { name: 'Y' })
  await until(() => hps.every((c) => c.synced) && y1.synced, 20000, 'initial sync')
  const seeded = a1.text.toString()
  const rand = rng(cfg.seed || 7)
  for (let burst = 0; burst < 10; burst++) {
    randomEdits(a1.text, cfg.edits / 10, rand, `a${burst}.`)
    randomEdits(b1.text, cfg.edits / 10, rand, `b${burst}.`)
    randomEdits(y1.text, cfg.edits / 10, rand, `y${burst}.`)
    randomEdits(a2.text, cfg.edits / 20, rand, `A${burst}.`)
    randomEdits(b2.text, cfg.edits / 20, rand, `B${burst}.`)
    randomEdits(a1s.text, cfg.edits / 20, rand, `s${burst}.`)
    await sleep(5)
  }
  await until(() => a1.text.toString() === b1.text.toString() && b1.text.toString() === y1.text.toString() &&
    a1s.text.toString() === a1.text.toString() && a2.text.toString() === b2.text.toString(), 30000, 'convergence')
  // every change acknowledged (SyncStatus): the providers' unsynced-changes counts are back to 0
  await until(() => hps.every((c) => c.provider.unsyncedChanges === 0), 10000, 'SyncStatus acks')
  await until(() => names(a1).join() === 'A,B,Y' && names(b1).join() === 'A,B,Y' &&
    [...y1.provider.awareness.getStates().values()].filter((s) => s.user).length === 3, 10000, 'awareness')
  const result = {
    seeded,
    d1: { a: a1.text.toString(), b: b1.text.toString(), y: y1.text.toString(), s: a1s.text.toString() },
    d2: { a: a2.text.toString(), b: b2.text.toString() },
    scopes: hps.map((c) => c.scope),
    unsynced: hps.map((c) => c.provider.unsyncedChanges),
    awarenessA: names(a1),
    sockets: socketsOpened
  }
  // a late provider on a fresh socket gets the same state
  const sl = socket()
  const late = hp(sl, d1, cfg.tokenA, 'late')
  await until(() => late.synced && late.text.toString() === result.d1.a, 10000, 'late join')
  result.late = late.text.toString()
  for (const c of [...hps, late]) c.provider.destroy()
  y1.provider.destroy()
  for (const s of [sa, sb, sl]) s.destroy()
  done(result)
}

async function mixed () {
  // one socket, four documents with one token: mine (editor), another workspace's (not-found),
  // one where the token's user is a viewer (readonly), and a nonexistent id
  const s = socket()
  const mine = hp(s, cfg.mine, cfg.token, 'mine')
  const foreign = hp(s, cfg.foreign, cfg.token, 'foreign')
  const viewer = hp(s, cfg.viewerDoc, cfg.token, 'viewer')
  const missing = hp(s, cfg.missing, cfg.token, 'missing')
  await until(() => foreign.denied && missing.denied && mine.synced && viewer.synced, 20000, 'answers')
  // the refusals did not disturb the others: edit now
  mine.text.insert(0, 'MINE-EDIT ')
  viewer.text.insert(0, 'VIEWER-EDIT ')
  await until(() => mine.provider.unsyncedChanges === 0, 10000, 'ack of the edit')
  // the viewer's edit is not applied: its SyncStatus says so, the count stays above 0
  await sleep(300)
  const result = {
    scopes: { mine: mine.scope, viewer: viewer.scope, foreign: foreign.scope, missing: missing.scope },
    denied: { mine: mine.denied, viewer: viewer.denied, foreign: foreign.denied, missing: missing.denied },
    unsynced: { mine: mine.provider.unsyncedChanges, viewer: viewer.provider.unsyncedChanges },
    texts: { mine: mine.text.toString(), viewer: viewer.text.toString(), foreign: foreign.text.toString() },
    sockets: socketsOpened,
    trace: trace.slice()
  }
  // a second provider for "mine" on another socket sees the edit; a fresh viewer provider does not
  // see the viewer's edit
  const s2 = socket()
  const check = hp(s2, cfg.mine, cfg.token, 'check')
  const check2 = hp(s2, cfg.viewerDoc, cfg.token, 'check2')
  await until(() => check.synced && check2.synced && check.text.toString().includes('MINE-EDIT'), 10000, 'second socket')
  result.fresh = { mine: check.text.toString(), viewer: check2.text.toString() }
  for (const c of [mine, foreign, viewer, missing, check, check2]) c.provider.destroy()
  s.destroy(); s2.destroy()
  done(result)
}

async function denied () {
  // tokens that are not valid: each refused with PermissionDenied
  const results = []
  for (let i = 0; i < cfg.tokens.length; i++) {
    const si = socket()
    const c = hp(si, cfg.doc, cfg.tokens[i], 't' + i)
    await until(() => c.denied || c.synced, 10000, 'answer ' + i)
    results.push({ denied: c.denied, scope: c.scope, text: c.text.toString() })
    c.provider.destroy(); si.destroy()
  }
  done({ results })
}

async function killAtSaved () {
  // one provider types in bursts; the first time after `cfg.killAfter` bursts that its unsynced
  // changes reach 0 (the editor would show "saved"), the server is SIGKILLed inside that very
  // callback, and what the provider held at that moment is reported: all of it must survive
  const s = socket()
  const c = hp(s, cfg.doc, cfg.token, 'typist')
  await until(() => c.synced && c.provider.unsyncedChanges === 0, 20000, 'initial sync')
  let armed = false
  let saved = null
  c.provider.on('unsyncedChanges', ({ number }) => {
    if (armed && number === 0 && saved === null) {
      process.kill(cfg.serverPid, 'SIGKILL')
      saved = c.text.toString()
    }
  })
  const rand = rng(cfg.seed || 5)
  let typed = 0
  for (let burst = 0; burst <= cfg.killAfter; burst++) {
    armed = burst === cfg.killAfter
    const n = 1 + Math.floor(rand() * cfg.burst)
    for (let i = 0; i < n; i++) c.text.insert(c.text.length, `b${burst}.${i};`)   // one update each
    typed += n
    await until(() => saved !== null || c.provider.unsyncedChanges === 0, 20000, `acks of burst ${burst}`)
    await sleep(Math.floor(rand() * 30))
  }
  done({ saved, typed })
}

run({ converge, mixed, denied, killAtSaved })

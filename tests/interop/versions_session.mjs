// Version-history scenarios with the real npm clients (yjs + y-websocket's WebsocketProvider),
// run by pytest (tests/test_versions_interop.py):  node versions_session.mjs <scenario> '<json config>'
// pytest asserts on the JSON it prints; command line, time limit, output and exit codes: harness.mjs.
import WebSocket from 'ws'
import { cfg, client, done, run, sleep, until } from './harness.mjs'

// A client on a slow network: everything it sends reaches the server `latencyMs` later (in order).
// Its edits made just before a server-side change are then genuinely concurrent with it.
function slowSocket (latencyMs) {
  if (!latencyMs) return WebSocket
  return class SlowWebSocket extends WebSocket {
    send (data, ...rest) {
      const copy = Buffer.from(data)
      setTimeout(() => { if (this.readyState === WebSocket.OPEN) super.send(copy, ...rest) }, latencyMs)
    }
  }
}

async function type (c, pieces, gapMs) {
  for (const piece of pieces) {
    c.text.insert(c.text.length, piece)
    await sleep(gapMs)
  }
}

async function session () {
  // Three editing bursts separated by idle gaps: A alone, B alone, then A and B together.
  // After each burst both clients converge; then we stay idle for three gaps.
  const a = client(cfg.writerA)
  const b = client(cfg.writerB)
  await until(() => a.synced && b.synced, 20000, 'sync')
  const idle = cfg.idleMs
  const n = cfg.keystrokes || 30
  const bursts = []
  const settle = async (label) => {
    await until(() => a.text.toString() === b.text.toString(), 10000, 'convergence ' + label)
    bursts.push({ label, endedAt: Date.now(), text: a.text.toString() })
    await sleep(idle * 3)
  }
  await type(a, Array.from({ length: n }, (_, i) => `a${i};`), 10)
  await settle('A')
  await type(b, Array.from({ length: n }, (_, i) => `b${i};`), 10)
  await settle('B')
  for (let i = 0; i < n; i++) {
    a.text.insert(0, `A${i};`)
    b.text.insert(b.text.length, `B${i};`)
    await sleep(10)
  }
  await settle('AB')
  a.provider.destroy(); b.provider.destroy()
  done({ bursts })
}

async function restoreWhileTyping () {
  // The typist types into paragraph 3 (over a slow link with latencyMs); an observer watches.
  // After `before` keystrokes the restore is requested over HTTP (with the If-Match of the content
  // the restorer read before the typing began, when contentUrl is given); typing goes on for
  // `after` more.
  const typist = client(cfg.typist, { WebSocketPolyfill: slowSocket(cfg.latencyMs || 0) })
  const observer = client(cfg.observer)
  await until(() => typist.synced && observer.synced, 20000, 'sync')
  const typed = []
  let restoreStatus = null
  let sawRestoreAt = null
  observer.text.observe(() => {
    if (sawRestoreAt === null && observer.text.toString().startsWith(cfg.p1)) sawRestoreAt = typed.length
  })
  const keystroke = () => {
    const t = typist.text.toString()
    const at = t.indexOf(cfg.p3End)  // the end of paragraph 3, wherever it is now
    if (at < 0) throw new Error('paragraph 3 is gone: ' + JSON.stringify(t))
    const piece = `<${typed.length}>`
    typist.text.insert(at, piece)  // Y.Text indexes UTF-16 units: the text is ASCII here
    typed.push(piece)
  }
  const total = (cfg.before || 20) + (cfg.after || 60)
  const headers = { Authorization: 'Bearer ' + cfg.restorer }
  if (cfg.contentUrl) {
    // the restorer looks at the document first; the restore names what it saw (If-Match)
    const seen = await fetch(cfg.contentUrl, { headers })
    headers['If-Match'] = seen.headers.get('etag')
    await seen.text()
  }
  let restoring = null
  for (let i = 0; i < total; i++) {
    keystroke()
    if (i === (cfg.before || 20) - 1) {
      if (cfg.waitBeforeRestore) {
        // every keystroke so far has reached the server: the observer has them all
        await until(() => observer.text.toString() === typist.text.toString(), 10000, 'observer caught up')
      }
      restoring = fetch(cfg.restoreUrl, { method: 'POST', headers })
        .then((r) => { restoreStatus = r.status })
    }
    await sleep(cfg.gapMs || 5)
  }
  await restoring
  await sleep((cfg.latencyMs || 0) * 2 + 200)  // the typist's last frames are still on the wire
  const fresh = client(cfg.observer)
  await until(() => fresh.synced, 20000, 'fresh sync')
  await until(() => typist.text.toString() === observer.text.toString() &&
    observer.text.toString() === fresh.text.toString(), 20000, 'convergence')
  const result = {
    restoreStatus, typed, sawRestoreAt,
    typist: typist.text.toString(), observer: observer.text.toString(), fresh: fresh.text.toString()
  }
  for (const c of [typist, observer, fresh]) c.provider.destroy()
  done(result)
}

run({ session, restoreWhileTyping })

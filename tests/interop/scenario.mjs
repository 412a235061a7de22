// Interop scenarios with the real npm clients (yjs + y-websocket's WebsocketProvider), run by
// pytest (tests/test_collab_interop.py):  node scenario.mjs <scenario> '<json config>'
// pytest asserts on the JSON it prints; command line, time limit, output and exit codes: harness.mjs.
import { cfg, client, done, rng, run, sleep, until } from './harness.mjs'

function randomEdits (c, n, rand, tag) {
  for (let i = 0; i < n; i++) {
    const len = c.text.length
    if (len > 20 && rand() < 0.3) {
      const at = Math.floor(rand() * (len - 3))
      c.text.delete(at, 1 + Math.floor(rand() * 3))
    } else {
      c.text.insert(Math.floor(rand() * (len + 1)), `${tag}${i};`)
    }
  }
}

async function converge () {
  // two writers, 1000 random edits each in bursts at the same time, plus a viewer who also edits
  const a = client(cfg.writerA)
  const b = client(cfg.writerB)
  const v = client(cfg.viewer)
  await until(() => a.synced && b.synced && v.synced, 20000, 'sync')
  a.provider.awareness.setLocalStateField('user', { name: 'A' })
  b.provider.awareness.setLocalStateField('user', { name: 'B' })
  const ra = rng(cfg.seed || 1)
  const rb = rng((cfg.seed || 1) + 7)
  const edits = cfg.edits || 1000
  const burst = 25
  for (let done = 0; done < edits; done += burst) {
    randomEdits(a, burst, ra, 'a')
    randomEdits(b, burst, rb, 'b')
    await sleep(1)
  }
  // the viewer types too: it must never reach anyone
  v.text.insert(0, 'VIEWER-EDIT')
  await until(() => a.text.toString() === b.text.toString() &&
    b.text.toString() === v.text.toString().replace('VIEWER-EDIT', ''), 30000, 'convergence')
  await sleep(300) // anything the viewer's edit could cause would have arrived by now
  const awarenessSeen = (c, other) => {
    const st = c.provider.awareness.getStates().get(other.doc.clientID)
    return st && st.user ? st.user.name : null
  }
  await until(() => awarenessSeen(a, b) === 'B' && awarenessSeen(b, a) === 'A' && awarenessSeen(v, a) === 'A', 10000, 'awareness')
  const result = {
    a: a.text.toString(), b: b.text.toString(), viewer: v.text.toString(),
    aSeesB: awarenessSeen(a, b), bSeesA: awarenessSeen(b, a), viewerSeesA: awarenessSeen(v, a)
  }
  // a late joiner sees current awareness at once (not after the 15 s renewal)
  const late = client(cfg.writerA)
  const t0 = Date.now()
  await until(() => late.synced && awarenessSeen(late, a) === 'A' && awarenessSeen(late, b) === 'B', 5000, 'late awareness')
  result.lateAwarenessMs = Date.now() - t0
  result.late = late.text.toString()
  // a leaver's awareness is removed from the others
  const bId = b.doc.clientID
  b.provider.destroy()
  await until(() => !a.provider.awareness.getStates().has(bId), 5000, 'awareness removal')
  result.removedOnLeave = true
  for (const c of [a, v, late]) c.provider.destroy()
  done(result)
}

async function offline () {
  // a client edits while disconnected, the other goes on; after reconnecting both merge
  const a = client(cfg.writerA)
  const b = client(cfg.writerB)
  await until(() => a.synced && b.synced, 20000, 'sync')
  a.text.insert(0, 'base;')
  await until(() => b.text.toString() === 'base;', 10000, 'base')
  a.provider.disconnect()
  await sleep(50)
  const ra = rng(3)
  const rb = rng(4)
  for (let i = 0; i < 10; i++) {
    randomEdits(a, 20, ra, 'off')
    randomEdits(b, 20, rb, 'on')
    await sleep(2)
  }
  const offlineText = a.text.toString()
  a.synced = false
  a.provider.connect()
  await until(() => a.synced && a.text.toString() === b.text.toString(), 20000, 'merge')
  const fresh = client(cfg.writerB)
  await until(() => fresh.synced && fresh.text.toString() === a.text.toString(), 10000, 'fresh')
  const result = { a: a.text.toString(), b: b.text.toString(), fresh: fresh.text.toString(), offlineText }
  for (const c of [a, b, fresh]) c.provider.destroy()
  done(result)
}

async function closeCode () {
  // what close code does a provider get, and does it stop reconnecting (44xx)
  const c = client(cfg.token)
  await until(() => c.closed !== null || c.synced, 10000, 'close or sync')
  const result = { closed: c.closed, synced: c.synced, shouldConnect: c.provider.shouldConnect }
  c.provider.destroy()
  done(result)
}

async function durability () {
  // type steadily while the server dies (pytest kills or stops it) and comes back on the same
  // port; a watcher records what the server relayed before it went away. Then wait until a fresh
  // client gets exactly what the writer typed.
  const a = client(cfg.writerA)
  const watch = client(cfg.writerB)
  await until(() => a.synced && watch.synced, 20000, 'sync')
  let watcherAtClose = null
  watch.provider.on('connection-close', (ev) => {
    if (watcherAtClose === null) watcherAtClose = { at: Date.now(), text: watch.text.toString(), code: ev ? ev.code : null }
  })
  const samples = []
  const sampler = setInterval(() => samples.push([Date.now(), watch.text.toString().length]), 50)
  console.error('typing')
  let i = 0
  const stopAt = Date.now() + (cfg.typeMs || 3000)
  while (Date.now() < stopAt) {
    a.text.insert(a.text.length, `k${i++};`)
    await sleep(cfg.intervalMs || 5)
  }
  clearInterval(sampler)
  const typed = a.text.toString()
  const fresh = { text: null }
  const end = Date.now() + 30000
  while (Date.now() < end) {
    const f = client(cfg.writerB)
    try {
      await until(() => f.synced, 3000, 'fresh sync')
      await until(() => f.text.toString() === typed, 3000, 'fresh has everything')
      fresh.text = f.text.toString()
      f.provider.destroy()
      break
    } catch (e) {
      fresh.text = f.text.toString()
      f.provider.destroy()
    }
  }
  await until(() => watch.text.toString() === typed, 10000, 'watcher converges')
  const result = { typed: i, text: typed, fresh: fresh.text, watcher: watch.text.toString(), watcherAtClose, samples }
  a.provider.destroy(); watch.provider.destroy()
  done(result)
}

run({ converge, offline, closeCode, durability })

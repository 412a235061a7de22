// Awareness across two mdsync nodes with the real npm clients, run by pytest
// (tests/test_cluster_presence.py):  node cluster_awareness.mjs spread '<json>'
// config: yurlA, yurlB (ws://…/ws/docs of nodes A and B), hurlB (ws://…/ws/hocuspocus of B), doc, token.
// pytest asserts on the JSON it prints; command line, time limit, output and exit codes: harness.mjs.
import * as Y from 'yjs'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import { cfg, client, done, run, until } from './harness.mjs'

const names = (provider) => [...provider.awareness.getStates().values()]
  .map((s) => s.user && s.user.name).filter(Boolean).sort().join(',')

async function spread () {
  // y-websocket on A, y-websocket and Hocuspocus on B
  const a = client(cfg.token, { url: cfg.yurlA, room: cfg.doc })
  const b = client(cfg.token, { url: cfg.yurlB, room: cfg.doc })
  const socket = new HocuspocusProviderWebsocket({ url: cfg.hurlB, WebSocketPolyfill: WebSocket, delay: 100, minDelay: 100, maxDelay: 500 })
  const hdoc = new Y.Doc()
  const h = { synced: false }
  h.provider = new HocuspocusProvider({ websocketProvider: socket, name: cfg.doc, document: hdoc, token: cfg.token, onSynced: () => { h.synced = true } })
  h.provider.attach()
  await until(() => a.synced && b.synced && h.synced, 20000, 'sync')
  a.provider.awareness.setLocalStateField('user', { name: 'A' })
  b.provider.awareness.setLocalStateField('user', { name: 'B' })
  h.provider.setAwarenessField('user', { name: 'H' })
  try {
    await until(() => names(a.provider) === 'A,B,H' && names(b.provider) === 'A,B,H' && names(h.provider) === 'A,B,H',
      10000, 'awareness across nodes')
  } catch (err) {
    throw new Error(`${err} (A sees ${names(a.provider)}, B sees ${names(b.provider)}, H sees ${names(h.provider)})`)
  }
  const result = { a: names(a.provider), b: names(b.provider), h: names(h.provider) }
  // a late joiner on B is sent A's state by B at once
  const late = client(cfg.token, { url: cfg.yurlB, room: cfg.doc })
  const t0 = Date.now()
  await until(() => late.synced && names(late.provider) === 'A,B,H', 5000, 'late joiner')
  result.lateMs = Date.now() - t0
  // A leaves: its state goes on B's clients
  const aId = a.doc.clientID
  a.provider.destroy()
  await until(() => !b.provider.awareness.getStates().has(aId) && !h.provider.awareness.getStates().has(aId) &&
    !late.provider.awareness.getStates().has(aId), 5000, 'removal across nodes')
  result.removed = true
  b.provider.destroy()
  late.provider.destroy()
  h.provider.destroy()
  socket.destroy()
  done(result)
}

run({ spread })

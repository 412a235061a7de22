// A fleet of real npm clients spread over several mdsync nodes, driven line by line by pytest
// (tests/nodeclients.py Fleet, tests/test_cluster_drill.py):
//   node fleet.mjs fleet '{"nodes": ["http://127.0.0.1:P1", ...]}'
// reads one JSON command per line on stdin and answers each with one JSON line on stdout
// ({re: <the command's id>, ...}, or {re, error}):
//   open   {clients: [{id, kind: "hp"|"yws", node: <index>, doc, token}]}  connects them; answers
//          once all are synced
//   type   {interval}   every client inserts a marker ⟦id.n⟧ every `interval` ms (at a marker
//          boundary: markers never split, so "the text holds marker m" is exact)
//   stop   {}           stops typing
//   move   {id, node}   the client's next socket goes to that node; its current one is closed
//   kill   {pid, node, abandon: [ids]}  SIGKILLs the node's server from here and, in that same
//          tick, destroys the clients `abandon` (a closed browser tab): what each had seen
//          acknowledged is reported and must survive
//   state  {}           per client: node, synced, what it typed, what was acknowledged (Hocuspocus:
//          the markers typed before `unsyncedChanges` last reached 0, i.e. committed) or sent
//          (y-websocket: typed while its socket was open); the distinct texts
//   close  {}           destroys every client and ends
// A client's socket goes to its current node (a WebSocket class that rewrites the URL's host, the
// part a load balancer plays); a socket that could not even open (the node is down) sends the
// next attempt to the next node: the clients of a killed node reconnect elsewhere by themselves.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import WebSocket from 'ws'
import readline from 'node:readline'
import { cfg, sleep, until } from './harness.mjs'

const nodes = cfg.nodes.map((base) => new URL(base))
const clients = new Map()
let typing = null

function socketClass (c) {
  return class NodeSocket extends WebSocket {
    constructor (url, protocols) {
      const target = new URL(url)
      target.host = nodes[c.node].host
      super(target.toString(), protocols)
      c.socket = this
      let opened = false
      this.on('open', () => { opened = true; c.opens++ })
      this.on('close', () => {
        if (!opened && c.socket === this) c.node = (c.node + 1) % nodes.length
      })
      this.on('error', () => {})
    }
  }
}

function wsUrl (path) {
  const u = new URL(nodes[0].href)
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:'
  u.pathname = path
  return u.toString().replace(/\/$/, '')
}

function connect ({ id, kind, node, doc, token }) {
  const ydoc = new Y.Doc()
  const c = {
    id, kind, node, doc: ydoc, text: ydoc.getText('markdown'), typed: [], acked: 0, sent: 0,
    opens: 0, socket: null, synced: false, gone: false, n: 0
  }
  const WS = socketClass(c)
  if (kind === 'hp') {
    c.ws = new HocuspocusProviderWebsocket({ url: wsUrl('/ws/hocuspocus'), WebSocketPolyfill: WS, delay: 100, minDelay: 100, maxDelay: 500 })
    c.provider = new HocuspocusProvider({
      websocketProvider: c.ws, name: doc, document: ydoc, token, onSynced: () => { c.synced = true }
    })
    c.provider.on('unsyncedChanges', ({ number }) => { if (number === 0) c.acked = c.typed.length })
    c.provider.attach()
    c.isSynced = () => c.synced && c.provider.unsyncedChanges === 0
  } else {
    c.provider = new WebsocketProvider(wsUrl('/ws/docs'), doc, ydoc, {
      WebSocketPolyfill: WS, params: { token }, disableBc: true, maxBackoffTime: 300
    })
    c.provider.on('sync', (s) => { c.synced = s })
    c.isSynced = () => c.synced && c.provider.wsconnected
  }
  c.provider.awareness.setLocalStateField('user', { name: id })
  clients.set(id, c)
  return c
}

function typeOne (c) {
  const marker = `⟦${c.id}.${c.n++}⟧`
  const s = c.text.toString()
  // after a random marker's end (or at the start): markers stay whole whoever types where
  const ends = [0]
  for (let i = s.indexOf('⟧'); i >= 0; i = s.indexOf('⟧', i + 1)) ends.push(i + 1)
  c.text.insert(ends[Math.floor(Math.random() * ends.length)], marker)
  c.typed.push(marker)
  if (c.kind === 'yws' && c.provider.wsconnected) c.sent = c.typed.length
}

function destroy (c) {
  c.gone = true
  c.provider.destroy()
  if (c.ws) c.ws.destroy()
}

function live () {
  return [...clients.values()].filter((c) => !c.gone)
}

const commands = {
  async open ({ clients: wanted }) {
    const made = wanted.map(connect)
    await until(() => made.every((c) => c.isSynced()), 30000, 'the clients\' first sync')
    return { opened: made.length }
  },
  async type ({ interval }) {
    if (typing) clearInterval(typing)
    // one timer; each tick a share of the clients types, so the fleet types evenly
    let turn = 0
    typing = setInterval(() => {
      const all = live()
      const per = Math.max(1, Math.round(all.length * 10 / interval))
      for (let k = 0; k < per && all.length; k++) typeOne(all[(turn++) % all.length])
    }, 10)
    return { typing: true }
  },
  async stop () {
    if (typing) clearInterval(typing)
    typing = null
    return { typing: false }
  },
  async move ({ id, node }) {
    const c = clients.get(id)
    c.node = node
    // an open socket is closed (the provider reconnects, to `node`); one still connecting finishes
    // where it goes, and the next one goes to `node`
    if (c.socket && c.socket.readyState === WebSocket.OPEN) c.socket.close()
    return { moved: id }
  },
  async kill ({ pid, node, abandon }) {
    process.kill(pid, 'SIGKILL')
    const abandoned = {}
    for (const id of abandon || []) {
      const c = clients.get(id)
      abandoned[id] = { node: c.node, acked: c.typed.slice(0, c.acked), typed: c.typed.length }
      destroy(c)
    }
    return { killed: node, abandoned }
  },
  async state () {
    const texts = {}
    const per = {}
    for (const c of live()) {
      const t = c.text.toString()
      ;(texts[t] = texts[t] || []).push(c.id)
      per[c.id] = {
        kind: c.kind,
        node: c.node,
        synced: c.isSynced(),
        opens: c.opens,
        socket: c.socket ? c.socket.readyState : null,
        pending: c.kind === 'hp' ? c.provider.unsyncedChanges : (c.provider.wsconnected ? 0 : 1),
        typed: c.typed,
        acked: c.kind === 'hp' ? c.typed.slice(0, c.acked) : c.typed.slice(0, c.sent)
      }
    }
    return { clients: per, texts: Object.entries(texts).map(([text, ids]) => ({ text, ids })) }
  },
  async close () {
    if (typing) clearInterval(typing)
    for (const c of live()) destroy(c)
    await sleep(50)
    setTimeout(() => process.exit(0), 10)
    return { closed: true }
  }
}

const reply = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const lines = readline.createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  const { re, cmd, ...args } = JSON.parse(line)
  try {
    if (!commands[cmd]) throw new Error('unknown command ' + cmd)
    reply({ re, ...(await commands[cmd](args)) })
  } catch (err) {
    reply({ re, error: String(err && err.stack ? err.stack : err) })
  }
})
lines.on('close', () => process.exit(0))
reply({ ready: true })

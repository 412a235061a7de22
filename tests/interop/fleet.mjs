// A fleet of real npm clients spread over several mdsync nodes, driven line by line by pytest
// (tests/nodeclients.py Fleet, tests/test_cluster_drill.py):
//   node fleet.mjs fleet '{"nodes": ["http://127.0.0.1:P1", ...]}'
// reads one JSON command per line on stdin and answers each with one JSON line on stdout
// ({re: <the command's id>, ...}, or {re, error}):
//   open   {clients: [{id, kind: "hp"|"yws", node: <index>, doc, token, socket}]}  connects them;
//          answers once all are synced. Hocuspocus clients naming the same `socket` share one
//          socket (many documents on it, as the provider multiplexes them; the first one's node)
//   type   {interval}   every client inserts a marker ⟦id.n⟧ every `interval` ms (at a marker
//          boundary: markers never split, so "the text holds marker m" is exact)
//   stop   {}           stops typing
//   move   {id, node}   the client's socket (with every document on it) goes to that node: the open
//          one is closed, the provider reconnects there
//   kill   {pid, node, abandon: [ids]}  SIGKILLs the node's server from here and, in that same
//          tick, destroys the clients `abandon` (a closed browser tab): what each had seen
//          acknowledged is reported and must survive
//   state  {}           per client: node, synced, what it typed, what was acknowledged (Hocuspocus:
//          the markers typed before `unsyncedChanges` last reached 0, i.e. committed) or sent
//          (y-websocket: typed while its socket was open), the acknowledgements received
//          (Hocuspocus SyncStatus); the distinct texts of each document
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
const sharedLinks = new Map() // socket name -> the link its Hocuspocus documents share
let typing = null

// a client's way to the servers: the node its next socket goes to, the socket, how often one opened
// (shared by the documents of one Hocuspocus socket)
function link (node) {
  const l = { node, socket: null, opens: 0, ws: null }
  l.WS = class NodeSocket extends WebSocket {
    constructor (url, protocols) {
      const target = new URL(url)
      target.host = nodes[l.node].host
      super(target.toString(), protocols)
      l.socket = this
      let opened = false
      this.on('open', () => { opened = true; l.opens++ })
      this.on('close', () => {
        if (!opened && l.socket === this) l.node = (l.node + 1) % nodes.length
      })
      this.on('error', () => {})
    }
  }
  return l
}

function wsUrl (path) {
  const u = new URL(nodes[0].href)
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:'
  u.pathname = path
  return u.toString().replace(/\/$/, '')
}

function hocuspocusLink (node, socket) {
  const l = socket && sharedLinks.has(socket) ? sharedLinks.get(socket) : link(node)
  if (!l.ws) {
    l.ws = new HocuspocusProviderWebsocket({ url: wsUrl('/ws/hocuspocus'), WebSocketPolyfill: l.WS, delay: 100, minDelay: 100, maxDelay: 500 })
    if (socket) sharedLinks.set(socket, l)
  }
  return l
}

function connect ({ id, kind, node, doc, token, socket }) {
  const ydoc = new Y.Doc()
  const c = {
    id, kind, name: doc, doc: ydoc, text: ydoc.getText('markdown'), typed: [], acked: 0, sent: 0, acks: 0,
    synced: false, gone: false, n: 0, shared: Boolean(socket)
  }
  if (kind === 'hp') {
    c.link = hocuspocusLink(node, socket)
    c.provider = new HocuspocusProvider({
      websocketProvider: c.link.ws, name: doc, document: ydoc, token, onSynced: () => { c.synced = true }
    })
    c.provider.on('unsyncedChanges', ({ number }) => { if (number === 0) c.acked = c.typed.length })
    // every SyncStatus "applied" the server sends (one per committed message), counted
    const decrement = c.provider.decrementUnsyncedChanges.bind(c.provider)
    c.provider.decrementUnsyncedChanges = () => { c.acks++; decrement() }
    c.provider.attach()
    c.isSynced = () => c.synced && c.provider.unsyncedChanges === 0
  } else {
    c.link = link(node)
    c.provider = new WebsocketProvider(wsUrl('/ws/docs'), doc, ydoc, {
      WebSocketPolyfill: c.link.WS, params: { token }, disableBc: true, maxBackoffTime: 300
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
  if (c.link.ws && ![...clients.values()].some((o) => !o.gone && o.link === c.link)) c.link.ws.destroy()
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
    // the client's socket (with every document on it) goes to `node`: an open one is closed (the
    // provider reconnects, there); one still connecting finishes where it goes, the next goes there
    const l = clients.get(id).link
    l.node = node
    if (l.socket && l.socket.readyState === WebSocket.OPEN) l.socket.close()
    return { moved: id }
  },
  async kill ({ pid, node, abandon }) {
    process.kill(pid, 'SIGKILL')
    const abandoned = {}
    for (const id of abandon || []) {
      const c = clients.get(id)
      abandoned[id] = { doc: c.name, node: c.link.node, acked: c.typed.slice(0, c.acked), typed: c.typed.length }
      destroy(c)
    }
    return { killed: node, abandoned }
  },
  async state () {
    const texts = {}
    const per = {}
    for (const c of live()) {
      const t = c.text.toString()
      const key = JSON.stringify([c.name, t])
      ;(texts[key] = texts[key] || { doc: c.name, text: t, ids: [] }).ids.push(c.id)
      per[c.id] = {
        kind: c.kind,
        doc: c.name,
        node: c.link.node,
        synced: c.isSynced(),
        opens: c.link.opens,
        socket: c.link.socket ? c.link.socket.readyState : null,
        pending: c.kind === 'hp' ? c.provider.unsyncedChanges : (c.provider.wsconnected ? 0 : 1),
        acks: c.acks,
        typed: c.typed,
        acked: c.kind === 'hp' ? c.typed.slice(0, c.acked) : c.typed.slice(0, c.sent)
      }
    }
    return { clients: per, texts: Object.values(texts) }
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

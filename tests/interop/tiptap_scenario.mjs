// TipTap interop scenarios, run by pytest (tests/test_tiptap_interop.py):
//   node tiptap_scenario.mjs <scenario> '<json config>'   (config.input: read the rest of the config from that file)
// config: {yurl (/ws/docs), hurl (/ws/hocuspocus), http (server base), token, ...}. Command line,
// time limit, output (with the trace on a timeout or an error) and exit codes: harness.mjs.
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'
import { WebsocketProvider } from 'y-websocket'
import { prosemirrorJSONToYXmlFragment } from 'y-prosemirror'
import WebSocket from 'ws'
import { cfg as argCfg, done, run, sleep, trace, until } from './harness.mjs'
import { headlessEditor, markdown, normalize, schema } from './tiptap.mjs'

const cfg = argCfg.input ? { ...argCfg, ...JSON.parse(readFileSync(argCfg.input, 'utf8')) } : argCfg
const auth = () => ({ Authorization: `Bearer ${cfg.token}` })

function hpSocket () {
  return new HocuspocusProviderWebsocket({
    url: cfg.hurl, WebSocketPolyfill: WebSocket, delay: 100, minDelay: 100, maxDelay: 500,
    onClose: ({ event }) => trace.push(['socket close', event && event.code])
  })
}

// a provider on document `name`: HocuspocusProvider on `socket`, or y-websocket's WebsocketProvider
function connect (name, via, socket, doc = new Y.Doc()) {
  const c = { doc, synced: false, via }
  if (via === 'hp') {
    c.provider = new HocuspocusProvider({
      websocketProvider: socket, name, document: doc, token: cfg.token,
      onSynced: () => { c.synced = true },
      onAuthenticationFailed: ({ reason }) => trace.push([name, 'denied', reason])
    })
    c.provider.attach()
  } else {
    c.provider = new WebsocketProvider(cfg.yurl, name, doc, {
      WebSocketPolyfill: WebSocket, params: { token: cfg.token }, disableBc: true, maxBackoffTime: 300
    })
    c.provider.on('sync', (s) => { if (s) c.synced = true })
  }
  c.awareness = c.provider.awareness
  return c
}

const contentUrl = (doc) => `${cfg.http}/api/v1/documents/${doc}/content`

async function getContent (doc) {
  const resp = await fetch(contentUrl(doc), { headers: auth() })
  if (resp.status !== 200) throw new Error(`GET content: ${resp.status} ${await resp.text()}`)
  return { text: await resp.text(), etag: resp.headers.get('etag') }
}

async function putContent (doc, body, ifMatch) {
  const headers = { ...auth(), 'Content-Type': 'text/markdown' }
  if (ifMatch) headers['If-Match'] = ifMatch
  const resp = await fetch(contentUrl(doc), { method: 'PUT', headers, body })
  return { status: resp.status, text: await resp.text(), etag: resp.headers.get('etag') }
}

async function post (path, body, headers = {}) {
  const resp = await fetch(`${cfg.http}${path}`, {
    method: 'POST', headers: { ...auth(), 'Content-Type': 'application/json', ...headers }, body: JSON.stringify(body || {})
  })
  return { status: resp.status, body: await resp.json() }
}

// the position right after the text of the n-th top-level block (ProseMirror positions)
function endOfBlock (editor, n) {
  let pos = 0
  for (let i = 0; i < n; i++) pos += editor.state.doc.child(i).nodeSize
  return pos + editor.state.doc.child(n).nodeSize - 1
}

// a typist: a headless TipTap editor on a HocuspocusProvider, its caret at the end of block `n`,
// typing `tag0;tag1;...` there (one transaction per token); its awareness carries its name and
// a Yjs relative position of the caret (as a caret extension would)
async function typist (doc, n, tag, socket) {
  const c = connect(doc, 'hp', socket)
  await until(() => c.synced, 20000, 'typist sync')
  const editor = await headlessEditor(c.doc)
  await until(() => editor.state.doc.childCount > n, 10000, 'editor content')
  editor.commands.setTextSelection(endOfBlock(editor, n))
  const typed = []
  const publish = () => {
    const { $from } = editor.state.selection
    const paragraph = c.doc.getXmlFragment('default').get(n)
    const ytext = paragraph.get(0)
    const rel = Y.createRelativePositionFromTypeIndex(ytext, $from.parentOffset)
    c.awareness.setLocalStateField('user', { name: tag })
    c.awareness.setLocalStateField('cursor', Y.relativePositionToJSON(rel))
  }
  publish()
  const t = { c, editor, typed, typing: true }
  t.done = (async () => {
    for (let i = 0; t.typing && i < 1000; i++) {
      const token = `${tag}${i};`
      editor.commands.insertContent(token)
      typed.push(token)
      publish()
      await sleep(15)
    }
  })()
  t.stop = async () => { t.typing = false; await t.done }
  return t
}

// where the typist's caret is: in its editor (the block's text and the caret's offset in it) and
// as another client resolves the relative position from its awareness
function caret (t, observer, n) {
  const { $from } = t.editor.state.selection
  const state = [...observer.awareness.getStates().values()].find((s) => s.user && s.user.name === t.typed[0].replace(/0;$/, ''))
  let seen = null
  if (state && state.cursor) {
    const abs = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(state.cursor), observer.doc)
    const block = observer.doc.getXmlFragment('default').get(n)
    seen = abs ? { inBlock: abs.type === block.get(0), index: abs.index, text: abs.type.toString() } : null
  }
  return { editorText: $from.parent.textContent, editorOffset: $from.parentOffset, seen }
}

run({
  // @tiptap/markdown's output for each ProseMirror JSON document
  async serialize () {
    done({ markdown: cfg.docs.map((doc) => markdown.serialize(doc)) })
  },
  // MarkdownManager.parse of each markdown text, normalized by the schema
  async parse () {
    done({ docs: cfg.markdown.map((md) => normalize(markdown.parse(md))) })
  },
  // documents normalized by the schema (to compare the server's JSON with TipTap's)
  async normalize () {
    done({ docs: cfg.docs.map((doc) => normalize(doc)) })
  },

  // each case (ProseMirror JSON) built with getSchema + prosemirrorJSONToYXmlFragment into an
  // empty document through a provider (cfg.cases: [{doc, via: 'yws'|'hp', json, markdown}]);
  // answers TipTap's own markdown of each and MarkdownManager's reading of the expected markdown
  async push () {
    const socket = hpSocket()
    const clients = cfg.cases.map((c) => connect(c.doc, c.via, socket))
    await until(() => clients.every((c) => c.synced), 30000, 'initial sync')
    cfg.cases.forEach((c, i) => {
      const ydoc = clients[i].doc
      ydoc.transact(() => prosemirrorJSONToYXmlFragment(schema, c.json, ydoc.getXmlFragment('default')))
    })
    await until(() => clients.every((c) => c.via !== 'hp' || c.provider.unsyncedChanges === 0), 20000, 'acks')
    // y-websocket has no acknowledgement: read each back until the server has it
    for (const [i, c] of cfg.cases.entries()) {
      if (c.via === 'yws') await until(async () => (await getContent(c.doc)).text !== '', 20000, `content of ${i}`)
    }
    const result = {
      tiptapMarkdown: cfg.cases.map((c) => markdown.serialize(c.json)),
      tiptapParse: cfg.cases.map((c) => normalize(markdown.parse(c.markdown))),
      normalized: cfg.cases.map((c) => normalize(c.json))
    }
    clients.forEach((c) => c.provider.destroy())
    socket.destroy()
    done(result)
  },

  // a headless TipTap editor (Collaboration extension, HocuspocusProvider) opened on each document
  // of cfg.docs: the ProseMirror JSON it shows
  async editor () {
    const socket = hpSocket()
    const out = []
    for (const doc of cfg.docs) {
      const c = connect(doc, 'hp', socket)
      await until(() => c.synced, 20000, 'sync')
      const editor = await headlessEditor(c.doc)
      await sleep(50)
      out.push(editor.getJSON())
      editor.destroy()
      c.provider.destroy()
    }
    socket.destroy()
    done({ docs: out })
  },

  // a HocuspocusProvider client types at the end of block cfg.block while a REST client changes
  // block 1 (with the current ETag, or with cfg.stale: an ETag read before the typing started);
  // then a PUT of the content as it is; an observer (y-websocket) counts the updates it receives
  async typing () {
    const socket = hpSocket()
    const observer = connect(cfg.doc, 'yws')
    await until(() => observer.synced, 20000, 'observer sync')
    const early = await getContent(cfg.doc)
    const t = await typist(cfg.doc, cfg.block, 'T', socket)
    await until(() => t.typed.length >= 10, 10000, 'typing')
    const base = cfg.stale ? early : await getContent(cfg.doc)
    const put = await putContent(cfg.doc, base.text.replace(cfg.from, cfg.to), base.etag)
    await until(() => t.typed.length >= 30, 10000, 'typing after the PUT')
    await t.stop()
    let final = null
    await until(async () => {
      final = await getContent(cfg.doc)
      return observer.doc.getXmlFragment('default').toString() === t.c.doc.getXmlFragment('default').toString() &&
        final.text.includes(t.typed[t.typed.length - 1])
    }, 15000, 'convergence')
    await until(() => caret(t, observer, cfg.block).seen !== null, 10000, 'awareness')
    const afterEdits = caret(t, observer, cfg.block)
    // the same content PUT back: no Yjs update at all
    let received = 0
    observer.doc.on('update', () => { received++ })
    const same = await putContent(cfg.doc, final.text, final.etag)
    const unchanged = await putContent(cfg.doc, final.text)
    await sleep(300)
    const result = {
      put, final: final.text, typed: t.typed, editor: t.editor.getJSON(), caret: afterEdits,
      same: { status: same.status, etag: same.etag, before: final.etag }, unchangedStatus: unchanged.status,
      updatesForSamePut: received
    }
    t.editor.destroy()
    t.c.provider.destroy()
    observer.provider.destroy()
    socket.destroy()
    done(result)
  },

  // a version, a REST change, then a restore of the version (If-Match: the content the restorer
  // read) while a HocuspocusProvider client types at the end of block cfg.block
  async restore () {
    const socket = hpSocket()
    const version = await post(`/api/v1/documents/${cfg.doc}/versions`, { label: 'v1' })
    const before = await getContent(cfg.doc)
    const changed = await putContent(cfg.doc, before.text.replace(cfg.from, cfg.to), before.etag)
    const seen = await getContent(cfg.doc)
    const t = await typist(cfg.doc, cfg.block, 'R', socket)
    await until(() => t.typed.length >= 5, 10000, 'typing')
    const restored = await post(`/api/v1/versions/${version.body.id}/restore`, {}, { 'If-Match': seen.etag })
    await until(() => t.typed.length >= 25, 10000, 'typing after the restore')
    await t.stop()
    let final = null
    await until(async () => {
      final = await getContent(cfg.doc)
      return final.text.includes(t.typed[t.typed.length - 1])
    }, 15000, 'convergence')
    const diff = await (await fetch(`${cfg.http}/api/v1/documents/${cfg.doc}/diff?from=${version.body.id}&to=current`,
      { headers: auth() })).json()
    const result = {
      version: version.status, changed: changed.status, restored: restored.status, final: final.text,
      typed: t.typed, editor: t.editor.getJSON(), diff: diff.unified
    }
    t.editor.destroy()
    t.c.provider.destroy()
    socket.destroy()
    done(result)
  }
})

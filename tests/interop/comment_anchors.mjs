// Comment anchors followed by the real npm clients, run by pytest (tests/test_comments_interop.py):
//   node comment_anchors.mjs follow '<json config>'
// config: {url (ws base), http (server base), doc, tokenA, tokenB}. Two y-websocket clients edit
// before, inside and after three anchored spans: one whose positions client A made itself
// (Y.createRelativePositionFromTypeIndex), one placed by the server from a quote, one from a quote
// that occurs three times, picked by its prefix. Prints what each span covers in A, B and a client
// that joins at the end, resolving the positions the REST listing returns.
import * as Y from 'yjs'
import { cfg, client, done, run, until } from './harness.mjs'

const api = (path) => `${cfg.http}/api/v1${path}`

async function rest (method, path, token, body) {
  const resp = await fetch(api(path), {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await resp.text()
  if (resp.status >= 300) throw new Error(`${method} ${path}: ${resp.status} ${text}`)
  return text ? JSON.parse(text) : null
}

const b64url = (bytes) => Buffer.from(bytes).toString('base64url')

// the text a thread's anchor covers in `doc`, from its base64url positions
function covered (doc, anchor) {
  const at = (encoded) => Y.createAbsolutePositionFromRelativePosition(
    Y.decodeRelativePosition(new Uint8Array(Buffer.from(encoded, 'base64url'))), doc)
  const start = at(anchor.yjs_start)
  const end = at(anchor.yjs_end)
  if (!start || !end) return null
  return doc.getText('markdown').toString().slice(start.index, end.index)
}

async function follow () {
  const a = client(cfg.tokenA)
  const b = client(cfg.tokenB)
  await until(() => a.synced && b.synced, 20000, 'sync')
  const same = () => a.text.toString() === b.text.toString()
  await until(() => same() && a.text.length > 0, 10000, 'the seeded text')

  // an emoji and accents typed before every span: positions count UTF-16 units, not bytes
  a.text.insert(0, 'Start 🎉 ')
  await until(same, 10000, 'first edit')
  await until(async () => {
    const resp = await fetch(api(`/documents/${cfg.doc}/content`), { headers: { Authorization: `Bearer ${cfg.tokenA}` } })
    return (await resp.text()).startsWith('Start 🎉 ')
  }, 10000, 'the server has the first edit')

  // T1: positions made by the client, on its own Y.Doc
  const s = a.text.toString()
  const i1 = s.indexOf('gamma delta epsilon')
  const t1 = await rest('POST', `/documents/${cfg.doc}/comments`, cfg.tokenA, {
    body: 'client positions',
    anchor: {
      quote: 'gamma delta epsilon',
      yjs_start: b64url(Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(a.text, i1, 0))),
      yjs_end: b64url(Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(a.text, i1 + 19, -1)))
    }
  })
  // T2: a quote placed by the server; T3: the second of three repeats, by its prefix
  const t2 = await rest('POST', `/documents/${cfg.doc}/comments`, cfg.tokenB,
    { body: 'server placed', anchor: { quote: 'theta iota kappa' } })
  const t3 = await rest('POST', `/documents/${cfg.doc}/comments`, cfg.tokenB,
    { body: 'which note?', anchor: { quote: 'see note.', prefix: 'B: ' } })
  const created = { t1: covered(a.doc, t1.anchor), t2: covered(a.doc, t2.anchor), t3: covered(b.doc, t3.anchor) }

  // edits from both clients, each on the text both hold
  const edit = async (who, fn) => { fn(who.text, who.text.toString()); await until(same, 10000, 'convergence') }
  await edit(b, (t, s) => t.delete(s.indexOf('beta '), 5))                            // before T1
  await edit(a, (t, s) => t.insert(s.indexOf('delta'), 'EXTRA '))                     // inside T1
  await edit(b, (t, s) => t.delete(s.indexOf('delta '), 6))                           // inside T1
  // at both edges of T1 at once, from both clients: stays outside
  const s5 = a.text.toString()
  a.text.insert(s5.indexOf('gamma'), 'X')
  b.text.insert(s5.indexOf('epsilon') + 7, 'Y')
  await until(same, 10000, 'edges')
  await edit(a, (t, s) => t.delete(s.indexOf('zeta'), 4))                             // after T1, before T2
  await edit(b, (t, s) => t.insert(s.indexOf('iota'), 'NEW '))                        // inside T2
  await edit(a, (t, s) => t.delete(s.indexOf('A: see note. '), 13))                   // before T3, a repeat
  await edit(b, (t, s) => t.insert(s.indexOf('B: see note.') + 7, 'very '))           // inside T3
  await edit(a, (t, s) => t.insert(s.length, 'Tail text.\n'))                         // after everything
  await edit(b, (t, s) => t.delete(s.indexOf('C: '), 3))                              // after T3

  const listed = await rest('GET', `/documents/${cfg.doc}/comments`, cfg.tokenA)
  const byId = Object.fromEntries(listed.items.map((c) => [c.id, c]))
  const late = client(cfg.tokenA)
  await until(() => late.synced && late.text.toString() === a.text.toString(), 10000, 'late client')
  const spans = (doc) => ({
    t1: covered(doc, byId[t1.id].anchor), t2: covered(doc, byId[t2.id].anchor), t3: covered(doc, byId[t3.id].anchor)
  })
  const result = {
    created,
    a: spans(a.doc),
    b: spans(b.doc),
    late: spans(late.doc),
    text: a.text.toString(),
    quotes: [byId[t1.id].anchor.quote, byId[t2.id].anchor.quote, byId[t3.id].anchor.quote],
    samePositions: [t1, t2, t3].every((t) => byId[t.id].anchor.yjs_start === t.anchor.yjs_start &&
      byId[t.id].anchor.yjs_end === t.anchor.yjs_end)
  }
  for (const c of [a, b, late]) c.provider.destroy()
  done(result)
}

// No server: text written by two clients (accents, emoji, CJK, deletions); every UTF-16 index's
// relative positions (assoc 0 and -1), for the server's encoder to reproduce byte for byte.
async function positions () {
  const a = new Y.Doc(); a.clientID = 1
  const b = new Y.Doc(); b.clientID = 2
  const ta = a.getText('markdown'); const tb = b.getText('markdown')
  const sync = () => { Y.applyUpdate(b, Y.encodeStateAsUpdate(a)); Y.applyUpdate(a, Y.encodeStateAsUpdate(b)) }
  ta.insert(0, 'héllo 😀 world — “quoted” ok'); sync()
  tb.insert(3, 'ÄÖ🎉x'); ta.insert(0, 'start '); sync()
  tb.delete(10, 4); ta.insert(ta.length, ' end 日本語'); sync()
  ta.insert(8, 'mid😀'); tb.insert(2, 'zz'); sync()
  const rel = (i, assoc) => b64url(Y.encodeRelativePosition(Y.createRelativePositionFromTypeIndex(ta, i, assoc)))
  const at = []
  for (let i = 0; i <= ta.length; i++) at.push([i, rel(i, 0), rel(i, -1)])
  done({ update: b64url(Y.encodeStateAsUpdate(a)), text: ta.toString(), at })
}

// the text an anchor covers in a TipTap document: both positions in one Y.XmlText (a run of the
// editor's text), resolved as any client resolves them
function coveredRun (doc, anchor) {
  const at = (encoded) => Y.createAbsolutePositionFromRelativePosition(
    Y.decodeRelativePosition(new Uint8Array(Buffer.from(encoded, 'base64url'))), doc)
  const start = at(anchor.yjs_start)
  const end = at(anchor.yjs_end)
  if (!start || !end || start.type !== end.type) return null
  return plain(start.type).slice(start.index, end.index)
}

// a Y.XmlText's text without its formatting (toString() writes the marks as tags)
const plain = (xmlText) => xmlText.toDelta().map((d) => typeof d.insert === 'string' ? d.insert : '').join('')

// A TipTap document (Y.XmlFragment('default')): quotes placed by the server across formatting and
// among repeats, then a client edits the runs of text (Y.XmlText) before, inside and after them.
async function tiptap () {
  const a = client(cfg.tokenA)
  const b = client(cfg.tokenB)
  await until(() => a.synced && b.synced, 20000, 'sync')
  const fragment = (c) => c.doc.getXmlFragment('default')
  await until(() => fragment(a).length >= 3 && fragment(b).length >= 3, 10000, 'the seeded blocks')
  const t1 = await rest('POST', `/documents/${cfg.doc}/comments`, cfg.tokenA,
    { body: 'across bold', anchor: { quote: 'quick brown fox' } })
  const t2 = await rest('POST', `/documents/${cfg.doc}/comments`, cfg.tokenB,
    { body: 'the second', anchor: { quote: 'quick', prefix: 'Another ' } })
  const created = { t1: coveredRun(a.doc, t1.anchor), t2: coveredRun(b.doc, t2.anchor) }
  const run = (c, n) => fragment(c).get(n).get(0) // the Y.XmlText of block n
  const same = () => fragment(a).toString() === fragment(b).toString()
  const edit = async (fn) => { fn(); await until(same, 10000, 'convergence') }
  await edit(() => run(a, 1).insert(0, 'Ünïcødé 😀 '))                                       // before T1
  await edit(() => { const t = run(b, 1); t.insert(plain(t).indexOf('brown'), 'very ', { bold: {} }) }) // inside
  await edit(() => { const t = run(a, 1); t.insert(t.length, ' And more.') })                // after T1
  await edit(() => run(b, 2).delete(0, 'Another '.length))                                   // before T2
  await edit(() => run(a, 2).insert(0, 'Yet another '))                                      // before T2
  const late = client(cfg.tokenA)
  await until(() => late.synced && fragment(late).toString() === fragment(a).toString(), 10000, 'late client')
  const spans = (doc) => ({ t1: coveredRun(doc, t1.anchor), t2: coveredRun(doc, t2.anchor) })
  const result = { created, a: spans(a.doc), b: spans(b.doc), late: spans(late.doc), runs: [1, 2].map((n) => plain(run(a, n))) }
  for (const c of [a, b, late]) c.provider.destroy()
  done(result)
}

run({ follow, positions, tiptap })

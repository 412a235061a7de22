// REST content writes against a live npm y-websocket client, run by pytest
// (tests/test_collab_http.py):  node put_merge.mjs <scenario> '<json config>'
// config: {url (ws base), http (server base), doc, token}. pytest asserts on the JSON it prints;
// command line, time limit, output and exit codes: harness.mjs.
import { cfg, client, done, run, sleep, until } from './harness.mjs'

const contentUrl = () => `${cfg.http}/api/v1/documents/${cfg.doc}/content`
const auth = { Authorization: `Bearer ${cfg.token}` }

async function getContent () {
  const resp = await fetch(contentUrl(), { headers: auth })
  if (resp.status !== 200) throw new Error(`GET content: ${resp.status}`)
  return { text: await resp.text(), etag: resp.headers.get('etag') }
}

async function putContent (body, ifMatch) {
  const headers = { ...auth, 'Content-Type': 'text/markdown' }
  if (ifMatch) headers['If-Match'] = ifMatch
  const resp = await fetch(contentUrl(), { method: 'PUT', headers, body })
  return { status: resp.status, text: await resp.text(), etag: resp.headers.get('etag') }
}

async function stale () {
  // A types steadily at the end of the document; meanwhile a REST client GETs, edits its copy
  // (a new first line, a word removed) and PUTs it back with the ETag it read, which is stale by
  // then. Both sides' edits must survive and everyone must converge.
  const a = client(cfg.token)
  await until(() => a.synced, 20000, 'sync')
  const typed = []
  let typing = true
  const typist = (async () => {
    for (let i = 0; typing && i < 2000; i++) {
      const token = `a${i};`
      a.text.insert(a.text.length, token)
      typed.push(token)
      await sleep(15)
    }
  })()
  await until(() => typed.length >= 10, 10000, 'typing')
  const base = await getContent()
  const typedAtGet = typed.length
  await until(() => typed.length >= typedAtGet + 15, 10000, 'more typing')
  const body = 'REST-EDIT\n' + base.text.replace('obsolete ', '')
  const put = await putContent(body, base.etag)
  await until(() => typed.length >= typedAtGet + 40, 10000, 'typing after the PUT')
  typing = false
  await typist
  let final = null
  await until(async () => {
    final = await getContent()
    return final.text === a.text.toString()
  }, 15000, 'convergence')
  const fresh = client(cfg.token)
  await until(() => fresh.synced && fresh.text.toString() === a.text.toString(), 10000, 'fresh client')
  const result = {
    base: base.text, baseEtag: base.etag, put, typed, a: a.text.toString(), get: final.text,
    fresh: fresh.text.toString()
  }
  a.provider.destroy()
  fresh.provider.destroy()
  done(result)
}

async function diff () {
  // A is connected and idle; a REST client changes one word with the current ETag. Record what
  // A receives: its Y.Text delta and the update's size.
  const a = client(cfg.token)
  await until(() => a.synced, 20000, 'sync')
  const deltas = []
  const updates = []
  a.text.observe((event) => deltas.push(event.delta))
  a.doc.on('update', (update, origin) => { if (origin !== null) updates.push(update.length) })
  const before = await getContent()
  await until(() => a.text.toString() === before.text, 10000, 'initial text')
  const put = await putContent(before.text.replace(cfg.from, cfg.to), before.etag)
  await until(() => a.text.toString() === put.text, 10000, 'the edit')
  const result = { before: before.text, put, deltas, updates, a: a.text.toString() }
  a.provider.destroy()
  done(result)
}

run({ stale, diff })

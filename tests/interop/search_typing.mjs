// Search as you type against a live npm y-websocket client, run by pytest (tests/test_search.py):
//   node search_typing.mjs fresh '<json config>'
// config: {url (ws base), http (server base), doc, token, word, prefix, afterMs}. The client writes
// `word` and goes on typing (so the document never goes idle); `afterMs` after the word was
// written, a search for `prefix` runs. Prints that answer and the client's text.
import { cfg, client, done, run, sleep, until } from './harness.mjs'

async function fresh () {
  const a = client(cfg.token)
  await until(() => a.synced, 20000, 'sync')
  a.text.insert(a.text.length, ` ${cfg.word} `)
  const written = Date.now()
  let typing = true
  const typist = (async () => {
    for (let i = 0; typing && i < 1000; i++) {
      a.text.insert(a.text.length, 'k')
      await sleep(50)
    }
  })()
  await sleep(Math.max(0, cfg.afterMs - (Date.now() - written)))
  const resp = await fetch(`${cfg.http}/api/v1/search?q=${encodeURIComponent(cfg.prefix)}`,
    { headers: { Authorization: `Bearer ${cfg.token}` } })
  const answer = { status: resp.status, body: await resp.json(), afterMs: Date.now() - written }
  typing = false
  await typist
  const result = { answer, text: a.text.toString() }
  a.provider.destroy()
  done(result)
}

run({ fresh })

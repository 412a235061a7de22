// A live y-websocket client beside `mdsync sync` (tests/test_sync_client.py, bench/sync_bench.py):
//   node sync_live.mjs edit '{"url", "doc", "token", "after", "insert", "expect": [..]}'
// connects, inserts `insert` right after the first `after` in Y.Text('markdown'), then stays
// connected until its text holds every string of `expect` (what the sync CLI pushes meanwhile)
// and prints its final text.
//   node sync_live.mjs observe '{"url", "doc", "token", "count"}'
// connects, prints {"ready": true} once synced, then {"marker": k, "at": ms since the epoch} the
// moment each new marker ⟦k⟧ appears in the text, and ends after `count` markers with {"seen"}.
//   node sync_live.mjs tiptap_edit '{"url", "doc", "token", "block", "insert", "expect": [..]}'
// a headless TipTap editor (tiptap.mjs, Collaboration on the fragment `default`) types `insert` at
// the end of top-level block `block`, then stays until its document's text holds every string
// of `expect`; prints the editor's markdown (@tiptap/markdown).
// Command line, time limit, output: harness.mjs.
import { performance } from 'node:perf_hooks'
import { cfg, client, done, run, until } from './harness.mjs'
import { headlessEditor, markdown } from './tiptap.mjs'

async function edit () {
  const c = client(cfg.token)
  await until(() => c.synced, 20000, 'sync')
  const at = c.text.toString().indexOf(cfg.after)
  if (at < 0) throw new Error('not found: ' + cfg.after)
  c.text.insert(at + cfg.after.length, cfg.insert)
  await until(() => (cfg.expect || []).every((s) => c.text.toString().includes(s)), 40000, 'the pushed edit')
  const text = c.text.toString()
  c.provider.destroy()
  done({ text })
}

async function observe () {
  const c = client(cfg.token)
  await until(() => c.synced, 20000, 'sync')
  const seen = new Set()
  const look = () => {
    const now = performance.timeOrigin + performance.now()
    for (const m of c.text.toString().matchAll(/⟦(\d+)⟧/g)) {
      if (!seen.has(m[1])) {
        seen.add(m[1])
        console.log(JSON.stringify({ marker: Number(m[1]), at: now }))
      }
    }
  }
  look()
  c.text.observe(look)
  console.log(JSON.stringify({ ready: true }))
  await until(() => seen.size >= cfg.count, cfg.timeoutMs || 60000, 'every marker')
  c.provider.destroy()
  done({ seen: seen.size })
}

async function tiptapEdit () {
  const c = client(cfg.token)
  await until(() => c.synced, 20000, 'sync')
  const editor = await headlessEditor(c.doc)
  await until(() => editor.state.doc.childCount > cfg.block, 10000, 'editor content')
  let pos = 0
  for (let i = 0; i < cfg.block; i++) pos += editor.state.doc.child(i).nodeSize
  editor.commands.insertContentAt(pos + editor.state.doc.child(cfg.block).nodeSize - 1, cfg.insert)
  await until(() => (cfg.expect || []).every((s) => editor.state.doc.textContent.includes(s)), 40000, 'the pushed edit')
  const text = markdown.serialize(editor.getJSON())
  editor.destroy()
  c.provider.destroy()
  done({ text })
}

run({ edit, observe, tiptap_edit: tiptapEdit })

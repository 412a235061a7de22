// The Node side of bench/tiptap/bench.py: @tiptap/markdown + y-prosemirror doing what the server
// does, on the same markdown. Run from tests/interop (its node_modules) by bench.py:
//   node --input-type=module - < node_side.mjs   with BENCH_INPUT={markdown, edited, rounds} (file paths)
// Prints one JSON line: medians in ms and the update sizes.
import { readFileSync } from 'node:fs'
import * as Y from 'yjs'
import { prosemirrorJSONToYXmlFragment, yXmlFragmentToProsemirrorJSON, updateYFragment } from 'y-prosemirror'
import { markdown, schema } from './tiptap.mjs'

const input = JSON.parse(process.env.BENCH_INPUT)
const md = readFileSync(input.markdown, 'utf8')
const edited = readFileSync(input.edited, 'utf8')
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const time = (fn) => { const t = performance.now(); const r = fn(); return [performance.now() - t, r] }

const write = []; const render = []; const edit = []
let stateBytes = 0; let editBytes = 0; let rendered = ''
for (let round = 0; round < input.rounds; round++) {
  // write: markdown -> ProseMirror JSON -> an empty fragment
  const ydoc = new Y.Doc()
  const frag = ydoc.getXmlFragment('default')
  write.push(time(() => ydoc.transact(() => prosemirrorJSONToYXmlFragment(schema, markdown.parse(md), frag)))[0])
  stateBytes = Y.encodeStateAsUpdate(ydoc).length
  // render: the fragment -> ProseMirror JSON -> markdown
  const [ms, out] = time(() => markdown.serialize(yXmlFragmentToProsemirrorJSON(frag)))
  render.push(ms)
  rendered = out
  // one paragraph changed: parse the edited markdown, update the fragment as the editor's binding does
  const updates = []
  ydoc.on('update', (u) => updates.push(u.length))
  edit.push(time(() => {
    const node = schema.nodeFromJSON(markdown.parse(edited))
    ydoc.transact(() => updateYFragment(ydoc, frag, node, { mapping: new Map(), isOMark: new Map() }))
  })[0])
  editBytes = updates.reduce((a, b) => a + b, 0)
}
console.log(JSON.stringify({
  write_ms: median(write), render_ms: median(render), edit_ms: median(edit),
  state_bytes: stateBytes, edit_update_bytes: editBytes, rendered_bytes: Buffer.byteLength(rendered)
}))

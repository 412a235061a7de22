// TipTap interop scenarios, run by pytest (tests/test_tiptap_interop.py):
//   node tiptap_scenario.mjs <scenario> '<json config>'   (config.input: read the config from that file)
// Command line, time limit, output and exit codes: harness.mjs.
import { readFileSync } from 'node:fs'
import { cfg as argCfg, done, run } from './harness.mjs'
import { markdown, normalize } from './tiptap.mjs'

const cfg = argCfg.input ? { ...argCfg, ...JSON.parse(readFileSync(argCfg.input, 'utf8')) } : argCfg

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
  }
})

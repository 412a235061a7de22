// A live y-websocket client beside `mdsync sync` (tests/test_sync_client.py):
//   node sync_live.mjs edit '{"url", "doc", "token", "after", "insert", "expect": [..]}'
// connects, inserts `insert` right after the first `after` in Y.Text('markdown'), then stays
// connected until its text holds every string of `expect` (what the sync CLI pushes meanwhile)
// and prints its final text. Command line, time limit, output: harness.mjs.
import { cfg, client, done, run, until } from './harness.mjs'

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

run({ edit })

#!/usr/bin/env bash
# S1 (1 doc x 50 clients) and S2 (500 docs x 2 clients) of ../shared/bench against mdsync's
# /ws/hocuspocus on `tiptap` documents, beside the Hocuspocus anchor, in one run on this machine.
#
#   bench/tiptap/collab.sh            # SCENARIOS="s1 s2" (default)
#
# ../shared/bench is read-only: it is copied to a work dir (BENCH_WORK, default
# $TMPDIR/mdsync-tiptap-bench) and three things are changed in the copy:
#   - mdsync_prep.py creates the documents with content_model "tiptap";
#   - mdsync-bench.sh drives mdsync with yload's Hocuspocus client on /ws/hocuspocus (and lifts
#     collab.max_connections_per_user_per_document: S1's 50 sockets are one user's);
#   - yload.mjs edits what a TipTap editor edits: the Y.XmlText of a paragraph in
#     Y.XmlFragment('default') (a paragraph is added when there is none), not Y.Text('markdown'),
#     for the anchor and for mdsync alike. So mdsync's markdown projection renders a real fragment.
# Results (raw JSON lines, results-mdsync.md) stay in the work dir; the table is printed.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd -P)
PROJECT=$(cd "$HERE/../.." && pwd -P)
SHARED=${SHARED_BENCH:-$(cd "$PROJECT/../shared/bench" && pwd -P)}
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/mdsync-tiptap-bench}
SCENARIOS=${SCENARIOS:-"s1 s2"}
mkdir -p "$WORK/results"
for f in "$SHARED"/*; do cp -r "$f" "$WORK/" 2>/dev/null; done
chmod -R u+w "$WORK"
cd "$WORK" || exit 1

python3 - <<'PY' || exit 1
import re
from pathlib import Path
prep = Path("mdsync_prep.py")
s = prep.read_text()
s = s.replace('{"title": f"bench {stamp} {s} {i}"}', '{"title": f"bench {stamp} {s} {i}", "content_model": "tiptap"}')
assert '"content_model": "tiptap"' in s, "mdsync_prep.py: document creation not found"
prep.write_text(s)
bench = Path("mdsync-bench.sh")
s = bench.read_text()
old = ('run_yload "$YLOAD_TIMEOUT_S" --server-kind ywebsocket --label mdsync \\\n'
       '    --url "ws://127.0.0.1:$PORT/ws/docs/{doc}"')
assert old in s, "mdsync-bench.sh: yload call not found"
s = s.replace(old, 'run_yload "$YLOAD_TIMEOUT_S" --server-kind hocuspocus --label mdsync-tiptap \\\n'
                   '    --url "ws://127.0.0.1:$PORT/ws/hocuspocus"')
# one user opens all 50 sockets of S1: lift the per-user-per-document cap (32) for the bench
old = "export MDSYNC_AUTH__REGISTRATION=open MDSYNC_AUTH__ACCESS_TOKEN_TTL=3600"
assert old in s, "mdsync-bench.sh: server environment not found"
s = s.replace(old, old + " MDSYNC_COLLAB__MAX_CONNECTIONS_PER_USER_PER_DOCUMENT=1000")
bench.write_text(s)
yload = Path("yload.mjs")
s = yload.read_text()
shim = '''
// (bench/tiptap/collab.sh) what a TipTap editor edits: the text of paragraphs in XmlFragment('default')
class FragmentText {
  constructor (doc) { this.frag = doc.getXmlFragment('default') }
  texts () { return this.frag.toArray().map((p) => p.get(0)).filter((t) => t instanceof Y.XmlText) }
  get length () { return this.texts().reduce((n, t) => n + t.length, 0) }
  toString () { return this.texts().map((t) => t.toString()).join('') }
  insert (pos, content) {
    const texts = this.texts()
    if (!texts.length) {
      const p = new Y.XmlElement('paragraph')
      const t = new Y.XmlText()
      p.insert(0, [t])
      this.frag.insert(this.frag.length, [p])
      t.insert(0, content)
      return
    }
    for (const t of texts) {
      if (pos <= t.length) { t.insert(pos, content); return }
      pos -= t.length
    }
    texts[texts.length - 1].insert(texts[texts.length - 1].length, content)
  }
}
'''
anchor = "// ---------------------------------------------------------------- clients ---"
assert anchor in s and s.count("this.text = this.doc.getText('markdown')") == 2, "yload.mjs: clients not found"
s = s.replace(anchor, shim + anchor).replace("this.text = this.doc.getText('markdown')", "this.text = new FragmentText(this.doc)")
yload.write_text(s)
PY

MARK=$(mktemp); sleep 1
SERVERS=hocuspocus SCENARIOS="$SCENARIOS" CROSSCHECK=0 ./run-anchors.sh || echo "run-anchors.sh failed" >&2
A=$(find results -name 'anchors-*.jsonl' -newer "$MARK" | sort | tail -n 1)
SCENARIOS="$SCENARIOS" CROSSCHECK=0 ANCHORS="$A" REPORT=results-tiptap.md ./mdsync-bench.sh --project "$PROJECT" \
  || echo "mdsync-bench.sh reported a failure" >&2
rm -f "$MARK"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
cat results-tiptap.md

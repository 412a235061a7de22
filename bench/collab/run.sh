#!/usr/bin/env bash
# Collaboration benchmark for mdsync: the shared yload scenarios (S1 fan-out, S2 many docs,
# S3 big doc) against the anchors (Hocuspocus, y-websocket server, pycrdt-websocket) and against
# mdsync, in one run on this machine, then the ratios mdsync / anchor into bench/README.md.
#
#   bench/collab/run.sh              # anchors (~5 min) + mdsync (~3 min) + ratios
#   ANCHORS=0 bench/collab/run.sh    # reuse the newest anchor run in the work copy
#   MDSYNC=0 bench/collab/run.sh     # anchors only
#
# ../shared/bench is read-only here, so it is copied to a writable work dir
# (BENCH_WORK, default $TMPDIR/mdsync-collab-bench) and run from there; results stay there.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd -P)
PROJECT=$(cd "$HERE/../.." && pwd -P)
SHARED=${SHARED_BENCH:-$(cd "$PROJECT/../shared/bench" && pwd -P)}
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/mdsync-collab-bench}
mkdir -p "$WORK"
# copy the scripts (not node_modules/.venv/results, which live only in the work copy)
for f in "$SHARED"/*; do
  cp -r "$f" "$WORK/" 2>/dev/null
done
chmod -R u+w "$WORK"

if [ "${ANCHORS:-1}" = 1 ]; then
  (cd "$WORK" && ./run-anchors.sh) || echo "run-anchors.sh failed" >&2
fi
if [ "${MDSYNC:-1}" = 1 ]; then
  (cd "$WORK" && ./mdsync-bench.sh --project "$PROJECT") || echo "mdsync-bench.sh reported a failure" >&2
fi
A=$(ls -t "$WORK"/results/anchors-*.jsonl 2>/dev/null | head -1)
M=$(ls -t "$WORK"/results/mdsync-2*.jsonl 2>/dev/null | head -1)
if [ -n "$A" ] && [ -n "$M" ]; then
  "$PROJECT/.venv/bin/python" "$HERE/ratios.py" --anchors "$A" --mdsync "$M" \
    --readme "$PROJECT/bench/README.md" --report "$WORK/results-mdsync.md"
fi

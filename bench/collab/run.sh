#!/usr/bin/env bash
# Collaboration benchmark for mdsync: the shared yload scenarios (S1 fan-out, S2 many docs,
# S3 big doc) against the anchors (Hocuspocus, y-websocket server, pycrdt-websocket) and against
# mdsync, alternating in one run on this machine, then the ratios mdsync / anchor (medians over
# the rounds) into bench/README.md under "## Collaboration (bench/collab)".
#
#   bench/collab/run.sh                    # 1 round: all anchors + cross-check, then mdsync
#   ROUNDS=3 bench/collab/run.sh           # 3 alternating rounds (anchors, mdsync) x 3, medians
#   SERVERS="hocuspocus ywebsocket" ...    # anchors to run (run-anchors.sh's knob)
#   MDSYNC=0 / ANCHORS=0                   # one side only (ratios use the newest files of the other)
#   NICE=-10                               # run at this niceness (root only): a busy machine
#                                          # (other jobs) skews both sides less
#
# ../shared/bench is read-only here, so it is copied to a writable work dir
# (BENCH_WORK, default $TMPDIR/mdsync-collab-bench) and run from there; results stay there.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd -P)
PROJECT=$(cd "$HERE/../.." && pwd -P)
# ../shared/bench beside the project; from a git worktree, beside its main checkout
MAIN=$(cd "$(git -C "$PROJECT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)/.." 2>/dev/null && pwd -P)
SHARED=${SHARED_BENCH:-$(cd "$PROJECT/../shared/bench" 2>/dev/null && pwd -P)}
[ -n "$SHARED" ] || SHARED=$(cd "$MAIN/../shared/bench" 2>/dev/null && pwd -P)
[ -n "$SHARED" ] && [ -f "$SHARED/yload.mjs" ] || { echo "$(basename "$0"): no ../shared/bench (set SHARED_BENCH)" >&2; exit 1; }
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/mdsync-collab-bench}
ROUNDS=${ROUNDS:-1}
mkdir -p "$WORK/results"
for f in "$SHARED"/*; do cp -r "$f" "$WORK/" 2>/dev/null; done
chmod -R u+w "$WORK"
if [ -n "${NICE:-}" ] && [ "$(id -u)" = 0 ]; then renice -n "$NICE" -p $$ >/dev/null; fi

MARK=$(mktemp); sleep 1
for round in $(seq "$ROUNDS"); do
  echo "== round $round of $ROUNDS" >&2
  if [ "${ANCHORS:-1}" = 1 ]; then
    (cd "$WORK" && CROSSCHECK=${CROSSCHECK:-$([ "$ROUNDS" = 1 ] && echo 1 || echo 0)} ./run-anchors.sh) || echo "run-anchors.sh failed" >&2
  fi
  if [ "${MDSYNC:-1}" = 1 ]; then
    (cd "$WORK" && CROSSCHECK=${CROSSCHECK:-$([ "$ROUNDS" = 1 ] && echo 1 || echo 0)} ./mdsync-bench.sh --project "$PROJECT") \
      || echo "mdsync-bench.sh reported a failure" >&2
  fi
done
A=$(find "$WORK/results" -name 'anchors-*.jsonl' -newer "$MARK" | sort)
M=$(find "$WORK/results" -name 'mdsync-2*.jsonl' -newer "$MARK" | sort)
[ -z "$A" ] && A=$(ls -t "$WORK"/results/anchors-*.jsonl 2>/dev/null | head -1)
[ -z "$M" ] && M=$(ls -t "$WORK"/results/mdsync-2*.jsonl 2>/dev/null | head -1)
rm -f "$MARK"
if [ -n "$A" ] && [ -n "$M" ]; then
  # shellcheck disable=SC2086
  "$PROJECT/.venv/bin/python" "$HERE/ratios.py" --anchors $A --mdsync $M --readme "$PROJECT/bench/README.md"
fi

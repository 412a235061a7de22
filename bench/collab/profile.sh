#!/usr/bin/env bash
# Profile `mdsync serve` (this checkout's .venv) with py-spy under the shared bench scenarios.
#
#   bench/collab/profile.sh                 # S1 then S2, one fresh server each
#   SCENARIOS=s1 RATE=200 bench/collab/profile.sh
#   SPY_ARGS=--native bench/collab/profile.sh   # with C/Rust frames (stops the server per sample)
#   SPY_ON=0 bench/collab/profile.sh               # no profiler: the bench's numbers and /metrics only
#   SERVE=".venv/bin/python bench/collab/volatile_serve.py" ...   # another server command
#   SPY=/path/to/recorder ...   # another profiler taking py-spy's `record --pid P ... -o OUT` (e.g. a
#                               # wrapper around `perf record -g -p P -o OUT.perf`)
#
# Besides the profile it prints the edit phase's numbers: CPU per delivery, write system calls,
# and the CPU of each server thread (user and system; "main" is the event loop's).
#
# Needs py-spy in the venv (`.venv/bin/pip install py-spy`: bench tooling, not a dependency) and
# permission to ptrace the server (root, or kernel.yama.ptrace_scope 0). Writes, per scenario,
# py-spy's collapsed stacks and an SVG flame graph under $BENCH_WORK/results/ and prints the top
# frames (bench/collab/top_frames.py). The server is stopped by its pid.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd -P)
PROJECT=$(cd "$HERE/../.." && pwd -P)
# ../shared/bench beside the project; from a git worktree, beside its main checkout
MAIN=$(cd "$(git -C "$PROJECT" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)/.." 2>/dev/null && pwd -P)
SHARED=${SHARED_BENCH:-$(cd "$PROJECT/../shared/bench" 2>/dev/null && pwd -P)}
[ -n "$SHARED" ] || SHARED=$(cd "$MAIN/../shared/bench" 2>/dev/null && pwd -P)
[ -n "$SHARED" ] && [ -f "$SHARED/yload.mjs" ] || { echo "$(basename "$0"): no ../shared/bench (set SHARED_BENCH)" >&2; exit 1; }
WORK=${BENCH_WORK:-${TMPDIR:-/tmp}/mdsync-collab-bench}
SCENARIOS=${SCENARIOS:-"s1 s2"}
RATE=${RATE:-250}
PY=$PROJECT/.venv/bin/python
SPY=${SPY:-$PROJECT/.venv/bin/py-spy}   # or another recorder taking py-spy's `record --pid P ... -o OUT`
[ "${SPY_ON:-1}" = 0 ] || [ -x "$SPY" ] || { echo "profile.sh: $SPY missing (.venv/bin/pip install py-spy)" >&2; exit 1; }
mkdir -p "$WORK/results"
[ -f "$WORK/yload.mjs" ] || { for f in "$SHARED"/*; do cp -r "$f" "$WORK/"; done; chmod -R u+w "$WORK"; }
cd "$WORK" || exit 1
[ -d node_modules/yjs ] || timeout 900 npm ci --no-audit --no-fund --loglevel=error || exit 1
# shellcheck source=/dev/null
source ./scenario-params.sh
STAMP=$(date +%Y%m%d-%H%M%S)
RUN=$(mktemp -d "${TMPDIR:-/tmp}/mdsync-profile-XXXX")
SERVER_PID=""
SPY_PID=""
stop() { # pid: SIGTERM, then SIGKILL after 15 s
  local pid=$1
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}
cleanup() {
  [ -n "${YLOAD_PID:-}" ] && kill -TERM "$YLOAD_PID" 2>/dev/null
  [ -n "$SPY_PID" ] && { kill -INT "$SPY_PID" 2>/dev/null; wait "$SPY_PID" 2>/dev/null; }
  [ -n "$SERVER_PID" ] && stop "$SERVER_PID"
  rm -rf "$RUN"
}
trap cleanup EXIT
threads_cpu() { # "tid name utime stime" of each of the server's threads (clock ticks; the loop's is "main")
  for t in /proc/"$SERVER_PID"/task/*/stat; do
    awk '{ line = $0; sub(/^[0-9]+ \(/, "", line); name = line; sub(/\) .*/, "", name); gsub(/ /, "_", name)
           rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " "); print $1 " " ($1 == pid ? "main" : name "-" $1) " " f[12] " " f[13] }' pid="$SERVER_PID" "$t" 2>/dev/null
  done
}
start_server() {
  PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  ( cd "$RUN" && exec env -u MDSYNC_DB__URL MDSYNC_AUTH__REGISTRATION=open MDSYNC_AUTH__ACCESS_TOKEN_TTL=3600 \
      ${SERVE:-"$PROJECT/.venv/bin/mdsync"} serve --data-dir "$RUN/data" --host 127.0.0.1 --port "$PORT" ) \
      >>"$WORK/results/server-profile-$STAMP.log" 2>&1 &
  SERVER_PID=$!
  "$PY" mdsync_prep.py wait --base "http://127.0.0.1:$PORT" --pid "$SERVER_PID" --timeout 60
}
NEED=$(node yload.mjs --print-docs-needed --scenario "$(echo "$SCENARIOS" | xargs | tr ' ' ',')" "${YLOAD_SCENARIO_ARGS[@]}")
mkdir -m 700 "$RUN/data"
start_server || exit 1
"$PY" mdsync_prep.py setup --base "http://127.0.0.1:$PORT" --need "$NEED" \
  --account-out "$RUN/account.json" --docs-out "$RUN/docs.json" --token-out "$RUN/token" || exit 1
stop "$SERVER_PID"; SERVER_PID=""
for sc in $SCENARIOS; do
  start_server || exit 1
  "$PY" mdsync_prep.py login --base "http://127.0.0.1:$PORT" --account "$RUN/account.json" --token-out "$RUN/token" || exit 1
  OUT=$WORK/results/profile-$sc-$STAMP
  # py-spy samples the edit phase only: from yload's "connected" line to its "deliveries" line
  timeout "$YLOAD_TIMEOUT_S" node yload.mjs --server-kind ywebsocket --label mdsync-profiled \
    --url "ws://127.0.0.1:$PORT/ws/docs/{doc}" --token="$(cat "$RUN/token")" --docs-file "$RUN/docs.json" \
    --server-pid "$SERVER_PID" --scenario "$sc" --out "$OUT.jsonl" "${YLOAD_SCENARIO_ARGS[@]}" >/dev/null 2>"$OUT.log" &
  YLOAD_PID=$!
  until grep -q ": connected " "$OUT.log" || ! kill -0 "$YLOAD_PID" 2>/dev/null; do sleep 0.02; done
  W0=$(awk '/^syscw/ {print $2}' "/proc/$SERVER_PID/io" 2>/dev/null)  # write system calls so far
  T0=$(threads_cpu)
  if [ "${SPY_ON:-1}" != 0 ]; then
    # shellcheck disable=SC2086
    "$SPY" record --pid "$SERVER_PID" --rate "$RATE" ${SPY_ARGS:---nonblocking} --format raw -o "$OUT.txt" >/dev/null 2>&1 &
    SPY_PID=$!
  fi
  until grep -q " deliveries in " "$OUT.log" || ! kill -0 "$YLOAD_PID" 2>/dev/null; do sleep 0.02; done
  W1=$(awk '/^syscw/ {print $2}' "/proc/$SERVER_PID/io" 2>/dev/null)
  T1=$(threads_cpu)
  if [ -n "$SPY_PID" ]; then kill -INT "$SPY_PID"; wait "$SPY_PID" 2>/dev/null; SPY_PID=""; fi
  wait "$YLOAD_PID"; YLOAD_PID=""
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^mdsync_(collab|db)_' > "$OUT.metrics"
  stop "$SERVER_PID"; SERVER_PID=""
  echo "== $sc: $OUT.txt (load average $(cut -d' ' -f1-3 /proc/loadavg)); server: $("$PY" -c 'import json,sys; r = json.loads(open(sys.argv[1]).readline()); s = r["server"]; print(f"cpu_edit_s {s['"'"'cpu_edit_s'"'"']}, deliveries {r['"'"'deliveries_observed'"'"']}, {1e6 * s['"'"'cpu_edit_s'"'"'] / max(1, r['"'"'deliveries_observed'"'"']):.1f} us per delivery, p99 {r['"'"'latency_ms'"'"']['"'"'p99'"'"']} ms, rss/conn {s['"'"'rss_per_client_kb'"'"']} KB")' "$OUT.jsonl")"
  grep -E 'flushes|flushed_updates|write_jobs|write_batches|projection_lag_seconds_count|deliveries' "$OUT.metrics"
  # every socket write is one write system call (the log's and the database's are a few hundred)
  [ -n "$W0" ] && [ -n "$W1" ] && echo "write system calls in the edit phase: $((W1 - W0))"
  # per thread (name, user and system clock ticks): the loop's thread, the database writer, ...
  join -a2 <(echo "$T0" | sort) <(echo "$T1" | sort) | awk -v hz="$(getconf CLK_TCK)" \
    '{ if (NF == 7) { u = $6 - $3; k = $7 - $4 } else { u = $3; k = $4 }
       if (u + k > 0) printf "edit-phase CPU of thread %s: user %.2f s, system %.2f s\n", $2, u / hz, k / hz }'

  [ "${SPY_ON:-1}" = 0 ] || [ ! -s "$OUT.txt" ] || "$PY" "$HERE/top_frames.py" "$OUT.txt"
done

"""Issue 21's bench: S1 (1 document x 50 clients, 40 edits each at 2/s: ../shared/bench's
scenario-params.sh) with the clients spread over 3 nodes vs all on 1 node, for mdsync and for
Hocuspocus with its Redis extension, in one run; the ratios into bench/README.md ("Several nodes").

    .venv/bin/python bench/cluster/run.py [--rounds 1] [--layouts mdsync-solo,mdsync-1,mdsync-3,...]
        [--clients 50] [--edits 40] [--rate 2] [--set collab.flush_delay_seconds=0.01 ...] [--no-readme]
        [--profile]   # py-spy on node A of each mdsync layout (the `bench` extra), top frames printed

Started here and stopped by their pids at the end: one PostgreSQL with durable settings
(bench/pgcluster.py: fsync, synchronous_commit on), one redis-server (tests/redisserver.py), moto's
S3 server (tests/s3server.py: a clustered mdsync refuses local attachments). Then per layout and
round, fresh server processes:

- `mdsync-solo`: one `mdsync serve` on the same PostgreSQL, no `cluster.redis_url` (the one-node
  server as it was before issue 21);
- `mdsync-1` / `mdsync-3`: three clustered `mdsync serve` nodes (one PostgreSQL, one Redis, S3);
  the 50 clients all on node A, or round-robin over A, B, C;
- `hocuspocus-solo` / `hocuspocus-1` / `hocuspocus-3`: the same with Hocuspocus v4 in memory
  (hocuspocus-redis-server.mjs; solo without the Redis extension).

The load client is cload.mjs (yload.mjs's S1 over several URLs, see its header). CPU is read from
/proc: the nodes (every node started, summed, idle ones included), Redis and PostgreSQL (the
postmaster and its backends) over the edit phase; per delivered update = CPU / deliveries observed.
Node deps (bench/cluster/package.json, lock committed) are installed with `npm ci` into the work
dir BENCH_WORK (default $TMPDIR/mdsync-cluster-bench), where the scripts are copied and results kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
sys.path.insert(0, str(PROJECT))
from bench.benchserver import BenchServer  # noqa: E402
from bench.pgcluster import DURABILITY, Engines  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server  # noqa: E402

SHARED = Path(os.environ.get("SHARED_BENCH", PROJECT.parent / "shared" / "bench")).resolve()
HEADING = "## Several nodes (bench/cluster)"
NODE_FILES = ("package.json", "package-lock.json", "cload.mjs", "hocuspocus-redis-server.mjs")
BUCKET = "mdsync-bench"
CLOAD_LIMIT_S = 300  # one cload run (connect + edits + settle + checks); it has its own caps inside
# layout -> (server, nodes started, nodes the clients use, clustered)
LAYOUTS = {
    "mdsync-solo": ("mdsync", 1, 1, False),
    "mdsync-1": ("mdsync", 3, 1, True),
    "mdsync-3": ("mdsync", 3, 3, True),
    "hocuspocus-solo": ("hocuspocus", 1, 1, False),
    "hocuspocus-1": ("hocuspocus", 3, 1, True),
    "hocuspocus-3": ("hocuspocus", 3, 3, True),
}
# no HTTP proxy from the environment for 127.0.0.1
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(*parts) -> None:
    print("[cluster-bench]", *parts, file=sys.stderr, flush=True)


def prepare_work(work: Path) -> None:
    """The node scripts and their deps in the work dir (`npm ci` when the lock changed)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "results").mkdir(exist_ok=True)
    for name in NODE_FILES:
        shutil.copyfile(HERE / name, work / name)
    stamp = work / "node_modules" / ".lock-sha256"
    digest = hashlib.sha256((HERE / "package-lock.json").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        log("npm ci in", work)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=work, check=True,
                       timeout=600)
        stamp.write_text(digest)


def s1_args() -> list[str]:
    """S1's and the common yload options from ../shared/bench/scenario-params.sh (same as the anchors)."""
    out = subprocess.run(["bash", "-c", 'source "$1" && printf "%s\\n" "${YLOAD_COMMON_ARGS[@]}" "${YLOAD_S1_ARGS[@]}"',
                          "-", str(SHARED / "scenario-params.sh")], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return out.split()


def api(base: str, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with OPENER.open(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


class Account:
    """The bench user: registered on the first mdsync run, signed in again on each later one."""

    def __init__(self):
        self.email = f"cluster-bench-{secrets.token_hex(4)}@example.com"
        self.password = "correct horse battery staple"
        self.workspace = None

    def token(self, base: str) -> str:
        if self.workspace is None:
            pair = api(base, "POST", "/api/v1/auth/register",
                       {"email": self.email, "password": self.password, "name": "Cluster bench"})
            self.workspace = api(base, "POST", "/api/v1/workspaces", {"name": "Cluster bench"},
                                 pair["access_token"])["id"]
        else:
            pair = api(base, "POST", "/api/v1/auth/login", {"email": self.email, "password": self.password})
        return pair["access_token"]

    def document(self, base: str, token: str, title: str) -> str:
        return api(base, "POST", f"/api/v1/workspaces/{self.workspace}/documents", {"title": title}, token)["id"]


def mdsync_env(db_url: str, secret: str, s3: S3Server, redis_url: str | None) -> dict[str, str]:
    env = {
        "MDSYNC_DATABASE__URL": db_url,
        "MDSYNC_SERVER__SECRET": secret,  # one secret: a token from node A is good on node B
        "MDSYNC_AUTH__ACCESS_TOKEN_TTL": "3600",
        "MDSYNC_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS": "1000",
        "MDSYNC_STORAGE__BACKEND": "s3",
        "MDSYNC_STORAGE__S3__ENDPOINT": s3.endpoint,
        "MDSYNC_STORAGE__S3__BUCKET": BUCKET,
        "MDSYNC_STORAGE__S3__ACCESS_KEY_ID": ACCESS_KEY,
        "MDSYNC_STORAGE__S3__SECRET_ACCESS_KEY": SECRET_KEY,
        "MDSYNC_STORAGE__S3__PATH_STYLE": "true",
    }
    if redis_url:
        env["MDSYNC_CLUSTER__REDIS_URL"] = redis_url
    return env


def start_hocuspocus(work: Path, redis: RedisServer | None, index: int) -> BenchServer:
    argv = ["node", str(work / "hocuspocus-redis-server.mjs"), "--port", "0", "--identifier", f"node-{index}",
            "--redis-port", str(redis.port if redis else 0)]
    return BenchServer(argv, {k: v for k, v in os.environ.items() if not k.startswith("MDSYNC_")}, work)


def run_cload(work: Path, label: str, kind: str, urls: list[str], pids: list[int], aux: dict[str, int],
              extra: list[str]) -> dict | None:
    argv = ["node", str(work / "cload.mjs"), "--server-kind", kind, "--label", label, "--scenario", "s1", "--quiet",
            *[a for u in urls for a in ("--url", u)], *[a for p in pids for a in ("--server-pid", str(p))],
            *[a for n, p in aux.items() for a in ("--aux-pid", f"{n}={p}")], *extra]
    proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=CLOAD_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
        stderr += f"\n(stopped after {CLOAD_LIMIT_S} s)"
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        log(f"{label}: cload exited {proc.returncode} without a result: {stderr.strip()[-800:]}")
        return None
    row = json.loads(lines[-1])
    if not row.get("ok"):
        log(f"{label}: not ok: {row.get('errors')}")
    return row


def run_layout(layout: str, ctx: dict, extra: list[str], out: Path, round_no: int) -> dict | None:
    server, started, used, clustered = LAYOUTS[layout]
    work, redis = ctx["work"], ctx["redis"]
    nodes: list[BenchServer] = []
    try:
        if server == "mdsync":
            env = {**mdsync_env(ctx["db_url"], ctx["secret"], ctx["s3"], redis.url if clustered else None),
                   **ctx["settings"]}
            for i in range(started):  # one after the other: the first migrates, the others find it done
                nodes.append(BenchServer.mdsync(work / "nodes" / f"{layout}-{i}", **env))
            token = ctx["account"].token(nodes[0].base)
            doc = ctx["account"].document(nodes[0].base, token, f"{layout} round {round_no}")
            docs_file = work / "results" / f"docs-{layout}.json"
            docs_file.write_text(json.dumps({"s1": [doc]}))
            urls = [n.base.replace("http://", "ws://") + "/ws/docs/{doc}" for n in nodes[:used]]
            args = [f"--token={token}", "--docs-file", str(docs_file), *extra]
            aux = {"redis": redis.proc.pid, **({"postgresql": ctx["pg_pid"]} if ctx["pg_pid"] else {})}
            kind = "ywebsocket"
        else:
            for i in range(started):
                nodes.append(start_hocuspocus(work, redis if clustered else None, i))
            urls = [n.base.replace("http://", "ws://") for n in nodes[:used]]
            args, aux, kind = list(extra), {"redis": redis.proc.pid}, "hocuspocus"
        log(f"{layout}: {started} node(s) up (pids {', '.join(str(n.pid) for n in nodes)}), clients on {used}")
        spy = profile_start(nodes[0].pid, work / "results" / f"profile-{layout}-r{round_no}.txt") \
            if ctx["profile"] and server == "mdsync" else None
        try:
            row = run_cload(work, layout, kind, urls, [n.pid for n in nodes], aux, args)
        finally:
            if spy is not None:
                profile_stop(*spy)
        if row is not None:
            row.update(round=round_no, nodes_started=started)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return row
    finally:
        for n in nodes:
            n.stop(15)


def profile_start(pid: int, out: Path) -> tuple[subprocess.Popen, Path]:
    """py-spy (the `bench` extra) sampling node A until profile_stop; collapsed stacks into `out`."""
    spy = Path(sys.executable).parent / "py-spy"
    proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
                             "--output", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, out


def profile_stop(proc: subprocess.Popen, out: Path) -> None:
    proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if out.exists():
        top = subprocess.run([sys.executable, str(PROJECT / "bench" / "collab" / "top_frames.py"), str(out),
                              "--top", "25"], capture_output=True, text=True, timeout=60)
        log(f"profile of node A: {out}\n{top.stdout}")
    else:
        log(f"py-spy wrote no profile ({out}): is it installed (the bench extra) and may it ptrace?")


# ------------------------------------------------------------------ report ---

def per_delivery_us(row: dict, with_aux: bool) -> float | None:
    cpu = (row.get("server") or {}).get("cpu_edit_s")
    n = row.get("deliveries_observed")
    if cpu is None or not n:
        return None
    if with_aux:
        cpu += sum(v for v in ((row.get("aux") or {}).get("cpu_edit_s") or {}).values() if v is not None)
    return 1e6 * cpu / n


def aux_s(name: str):
    return lambda r: ((r.get("aux") or {}).get("cpu_edit_s") or {}).get(name)


ROWS = [
    ("propagation p50 ms", lambda r: r["latency_ms"]["p50"]),
    ("propagation p99 ms", lambda r: r["latency_ms"]["p99"]),
    ("propagation max ms", lambda r: r["latency_ms"]["max"]),
    ("cross-node deliveries p99 ms", lambda r: r["latency_cross_node_ms"].get("p99")),
    ("delivered updates/s", lambda r: r["delivered_per_s"]),
    ("nodes' CPU µs per delivered update", lambda r: per_delivery_us(r, False)),
    ("nodes + Redis + PostgreSQL CPU µs per delivered update", lambda r: per_delivery_us(r, True)),
    ("nodes' CPU % (edit phase, 100 = 1 core)", lambda r: r["server"]["cpu_edit_pct"]),
    ("Redis CPU s (edit phase)", aux_s("redis")),
    ("PostgreSQL CPU s (edit phase)", aux_s("postgresql")),
    ("nodes' RSS after the edits MB", lambda r: r["server"]["rss_after_edits_mb"]),
    ("load-client CPU %", lambda r: r["client"]["cpu_edit_pct"]),
    ("load-client loop delay p99 ms", lambda r: r["client"]["loop_delay_p99_edit_ms"]),
]
RATIOS = [  # (name, numerator layout, denominator layout)
    ("mdsync: 3 nodes / 1 node", "mdsync-3", "mdsync-1"),
    ("mdsync: 1 node clustered / one node without Redis", "mdsync-1", "mdsync-solo"),
    ("Hocuspocus+Redis: 3 nodes / 1 node", "hocuspocus-3", "hocuspocus-1"),
    ("3 nodes: mdsync / Hocuspocus+Redis", "mdsync-3", "hocuspocus-3"),
    ("1 node: mdsync / Hocuspocus+Redis", "mdsync-1", "hocuspocus-1"),
]
RATIO_ROWS = ("propagation p99 ms", "nodes' CPU µs per delivered update",
              "nodes + Redis + PostgreSQL CPU µs per delivered update")


def median(fn, rows: list[dict]) -> float | None:
    values = []
    for r in rows:
        try:
            v = fn(r)
        except (KeyError, TypeError, AttributeError):
            continue
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            values.append(float(v))
    return statistics.median(values) if values else None


def counted(rows: list[dict]) -> list[dict]:
    """The runs the medians are taken over: the ok ones (converged, every delivery) when there are any."""
    ok = [r for r in rows if r.get("ok")]
    return ok or rows


def report(all_rows: dict[str, list[dict]], layouts: list[str], failed: dict[str, int]) -> str:
    fmt = lambda x: "–" if x is None else (f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}")  # noqa: E731
    shown = [name for name in layouts if all_rows.get(name)]
    by_layout = {name: counted(all_rows[name]) for name in shown}
    out = ["| metric | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for name, fn in ROWS:
        cells = [median(fn, by_layout[layout]) for layout in shown]
        if all(c is None for c in cells):
            continue
        out.append(f"| {name} | " + " | ".join(fmt(c) for c in cells) + " |")
    oks = []
    for layout in shown:
        rows = all_rows[layout]
        good = sum(1 for r in rows if r.get("ok"))
        oks.append(f"{good}/{len(rows)}" + (f" ({rows[-1]['deliveries_observed']}/{rows[-1]['deliveries_expected']}, "
                                             f"fresh client on each node {rows[-1]['fresh_client_verified']})"))
    per_node = []
    for layout in shown:
        cpu = by_layout[layout][-1]["server"].get("node_cpu_edit_s") or []
        per_node.append(" / ".join(f"{c:.2f}" for c in cpu) or "–")
    out.append("| CPU s per node, A / B / C (edit phase, last run) | " + " | ".join(per_node) + " |")
    out.append("| runs ok (converged, every delivery, fresh client on every node) | " + " | ".join(oks) + " |")
    lines = ["| ratio (medians) | " + " | ".join(RATIO_ROWS) + " |", "|---|" + "---:|" * len(RATIO_ROWS)]
    fns = dict(ROWS)
    for name, num, den in RATIOS:
        if not by_layout.get(num) or not by_layout.get(den):
            continue
        if not all(any(r.get("ok") for r in all_rows[x]) for x in (num, den)):
            lines.append(f"| {name} | " + " | ".join(["not converged"] * len(RATIO_ROWS)) + " |")
            continue
        cells = []
        for metric in RATIO_ROWS:
            a, b = median(fns[metric], by_layout[num]), median(fns[metric], by_layout[den])
            cells.append(f"{a / b:.2f}" if a is not None and b else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    notes = [f"{layout}: {n} run(s) gave no result (see the log above)" for layout, n in failed.items() if n]
    notes += [f"**{layout}: no run converged** (its numbers are over the deliveries that did arrive): "
              f"{all_rows[layout][-1].get('errors', [])[:2]}" for layout in shown
              if not any(r.get("ok") for r in all_rows[layout])]
    return "\n".join([*out, "", *lines, *([""] + notes if notes else [])])


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def write_readme(text: str) -> None:
    readme = PROJECT / "bench" / "README.md"
    current = readme.read_text()
    pattern = re.compile(re.escape(HEADING) + r"\n.*?(?=\n## |\Z)", re.S)
    if pattern.search(current):
        current = pattern.sub(lambda _m: text.rstrip("\n") + "\n", current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    readme.write_text(current.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--clients", type=int, default=50, help="S1 clients (default: scenario-params.sh's 50)")
    parser.add_argument("--edits", type=int, default=40, help="edits per client (default 40)")
    parser.add_argument("--rate", type=float, default=2, help="edits/s per client (default 2)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="an mdsync setting for every mdsync node (repeatable), e.g. collab.flush_delay_seconds=0.01")
    parser.add_argument("--no-readme", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy on node A of each mdsync layout")
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item}: expected SECTION.KEY=VALUE")
        settings["MDSYNC_" + key.upper().replace(".", "__")] = value
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layouts {unknown}; known: {', '.join(LAYOUTS)}")
    work = Path(os.environ.get("BENCH_WORK", Path(os.environ.get("TMPDIR", "/tmp")) / "mdsync-cluster-bench"))
    prepare_work(work)
    shutil.rmtree(work / "nodes", ignore_errors=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = work / "results" / f"cluster-{stamp}.jsonl"
    extra = [*s1_args(), "--s1-clients-per-doc", str(args.clients), "--s1-edits-per-client", str(args.edits),
             "--s1-rate", f"{args.rate:g}"]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loads = [os.getloadavg()]
    by_layout: dict[str, list[dict]] = {name: [] for name in layouts}
    failed = {name: 0 for name in layouts}
    with ExitStack() as stack:
        engines = stack.enter_context(Engines(["postgresql"]))
        redis = RedisServer(work / "redis").start()
        stack.callback(redis.stop)
        s3 = S3Server(work).start()
        stack.callback(s3.stop)
        s3.create_bucket(BUCKET)
        ctx = {"work": work, "redis": redis, "s3": s3, "db_url": engines.database("cluster"),
               "pg_pid": engines.cluster.proc.pid if engines.cluster else None,
               "secret": secrets.token_urlsafe(32), "account": Account(), "settings": settings,
               "profile": args.profile}
        log(f"PostgreSQL {ctx['pg_pid']}, redis {redis.proc.pid} ({redis.url}), moto {s3.proc.pid}; results {out}")
        for round_no in range(1, args.rounds + 1):
            for layout in layouts:
                try:
                    row = run_layout(layout, ctx, extra, out, round_no)
                except (RuntimeError, OSError, urllib.error.URLError, subprocess.SubprocessError) as e:
                    log(f"{layout}: {e}")
                    row = None
                if row is None:
                    failed[layout] += 1
                else:
                    by_layout[layout].append(row)
                    log(f"{layout} round {round_no}: p99 {row['latency_ms'].get('p99')} ms, "
                        f"{per_delivery_us(row, False) or math.nan:.1f} µs/delivery (nodes), ok {row.get('ok')}")
            loads.append(os.getloadavg())
    table = report(by_layout, layouts, failed)
    load_text = "; ".join("/".join(f"{x:.1f}" for x in la) for la in loads)
    any_row = next((r for rows in by_layout.values() for r in rows), {})
    versions = any_row.get("versions", {})
    cmd = "`.venv/bin/python bench/cluster/run.py" + (f" --rounds {args.rounds}" if args.rounds != 1 else "") + \
        "".join(f" --set {item}" for item in args.set) + "`"
    text = "\n".join([
        HEADING, "",
        f"{cmd} at {git_rev()}, {started}, {args.rounds} round(s) (each layout once per round, fresh server",
        "processes per layout, medians over the rounds). Issue 21's bench: S1 (1 document, "
        f"{args.clients} clients x {args.edits} edits at {args.rate:g}/s,",
        "../shared/bench/scenario-params.sh) with the clients all on one node or round-robin over three, for mdsync",
        "and for Hocuspocus v4 with @hocuspocus/extension-redis "
        f"{versions.get('@hocuspocus/extension-redis', '4.7.0')} (in memory, no storage extension).",
        "",
        "- `mdsync-solo`: one node, no `cluster.redis_url`; `mdsync-1` / `mdsync-3`: three clustered nodes",
        "  (one PostgreSQL, one Redis, moto S3), clients on node A / spread A, B, C. Same for `hocuspocus-*`",
        "  (solo: no Redis extension). CPU: every node started, summed (idle ones included), Redis and PostgreSQL",
        "  (postmaster and backends) apart, over the edit phase, from /proc; per delivered update = CPU / deliveries.",
        "- Cross-node deliveries: writer and receiver on different nodes (none in the one-node layouts).",
        f"- {DURABILITY['postgresql']}. Redis: no persistence.",
        f"- Load average (1/5/15 min) at the start and after each round: {load_text}. The machine has "
        f"{os.cpu_count()} cores,",
        "  shared with other helpers' tests while this ran, and the load client runs on them too: the numbers are",
        "  from a busy machine and move 10-30 % between runs; read the ratios.",
        "",
        table, ""])
    print(text)
    if not args.no_readme:
        write_readme(text)


if __name__ == "__main__":
    main()

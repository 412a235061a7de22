"""The shared collaboration scenarios (../shared/bench: S1 fan-out, S2 many docs, S3 big doc) on
`mdsync serve` with SQLite and with PostgreSQL, alternating in one run, and the PostgreSQL / SQLite
ratios (medians over the rounds).

    .venv/bin/python bench/collab/engines.py [--rounds 2] [--scenarios s1,s2,s3] [--pg-url URL] [--out FILE]

../shared/bench/mdsync-bench.sh drops every MDSYNC_* variable of its caller, so it cannot point
mdsync at PostgreSQL. As bench/collab/run.sh does, ../shared/bench is copied to a work dir
(BENCH_WORK, default $TMPDIR/mdsync-pg-bench; its node_modules are kept between runs); there the
runner is copied once more with MDSYNC_DATABASE__URL let through (the one line that drops the
variables, checked), and run once per engine and round with the same yload.mjs, mdsync_prep.py and
scenario-params.sh. Its venv is this checkout's .venv (linked where the runner looks for it).
PostgreSQL: a fresh database per run in bench/pgcluster.py's durable cluster (started here unless
`--pg-url` names a running one). Each run's JSON lines are relabelled `sqlite` / `postgresql` and
collected in `--out` (default BENCH_WORK/results/engines-<stamp>.jsonl).

Server CPU and RSS are yload's: the mdsync process (and its children). PostgreSQL's own
processes are not children of mdsync: their CPU over each whole run (preparation included) is
printed separately (when the cluster was started here, or `--pg-pid` names its postmaster).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
sys.path.insert(0, str(PROJECT))
from bench.pgcluster import DURABILITY, Engines  # noqa: E402

SHARED = Path(os.environ.get("SHARED_BENCH", PROJECT.parent / "shared" / "bench")).resolve()
DROP_LINE = "grep -v '^MDSYNC_BENCH_DIR$')"
KEEP_LINE = "grep -v -e '^MDSYNC_BENCH_DIR$' -e '^MDSYNC_DATABASE__URL$')"
RUN_LIMIT_S = 1500  # one runner call (prepare + every scenario); yload has its own 300 s per scenario
TICKS = os.sysconf("SC_CLK_TCK")


def per_update_us(cpu_s, count):
    return None if cpu_s is None or not count else 1e6 * cpu_s / count


# (row, function of one engine's {scenario: row} -> number); lower is better on every row
ROWS = [
    ("S1 propagation p50 ms", lambda r: r["s1"]["latency_ms"]["p50"]),
    ("S1 propagation p99 ms", lambda r: r["s1"]["latency_ms"]["p99"]),
    ("S1 server CPU µs per delivered update", lambda r: per_update_us(r["s1"]["server"]["cpu_edit_s"],
                                                                       r["s1"]["deliveries_observed"])),
    ("S1 server RSS after the edits MB", lambda r: r["s1"]["server"]["rss_after_edits_mb"]),
    ("S2 connect+sync p99 ms", lambda r: r["s2"]["connect"]["sync_ms"]["p99"]),
    ("S2 propagation p50 ms", lambda r: r["s2"]["latency_ms"]["p50"]),
    ("S2 propagation p99 ms", lambda r: r["s2"]["latency_ms"]["p99"]),
    ("S2 server CPU µs per delivered update", lambda r: per_update_us(r["s2"]["server"]["cpu_edit_s"],
                                                                       r["s2"]["deliveries_observed"])),
    ("S2 server CPU s for the 1000 connects", lambda r: r["s2"]["server"]["cpu_connect_s"]),
    ("S2 server RSS with 1000 sockets MB", lambda r: r["s2"]["server"]["rss_connected_mb"]),
    ("S3 ingest of 10k edits s", lambda r: r["s3"]["fill_ingest_s"]),
    ("S3 server CPU µs per ingested edit", lambda r: per_update_us(r["s3"]["server"]["cpu_fill_s"],
                                                                    r["s3"]["params"]["edits"])),
    ("S3 fresh sync of the 1 MB doc p50 ms", lambda r: r["s3"]["fresh_sync_ms"]["p50"]),
    ("S3 server RSS with the 1 MB doc MB", lambda r: r["s3"]["server"]["rss_filled_mb"]),
]


def prepare_work(work: Path) -> Path:
    """The work copy of ../shared/bench with the engine-aware runner; its path."""
    work.mkdir(parents=True, exist_ok=True)
    for f in SHARED.iterdir():
        if f.name in ("node_modules", "results"):
            continue
        target = work / f.name
        if f.is_dir():
            shutil.copytree(f, target, dirs_exist_ok=True)
        else:
            shutil.copyfile(f, target)
            target.chmod(f.stat().st_mode | 0o200)
    text = (SHARED / "mdsync-bench.sh").read_text()
    if text.count(DROP_LINE) != 1:
        raise SystemExit(f"{SHARED}/mdsync-bench.sh changed: the line that drops MDSYNC_* ({DROP_LINE}) is not "
                         "there once; update bench/collab/engines.py")
    runner = work / "mdsync-bench-engines.sh"
    runner.write_text(text.replace(DROP_LINE, KEEP_LINE))
    runner.chmod(0o755)
    # the runner's venv is $TMPDIR/mdsync-bench/venv-<hash of pyproject.toml>: point it at this checkout's
    # (not MDSYNC_BENCH_DIR: the runner passes that variable on, and mdsync refuses unknown settings)
    base = work / "tmp" / "mdsync-bench"
    base.mkdir(parents=True, exist_ok=True)
    venv = base / ("venv-" + hashlib.sha256((PROJECT / "pyproject.toml").read_bytes()).hexdigest()[:16])
    if not venv.exists():
        venv.symlink_to(PROJECT / ".venv")
    (PROJECT / ".venv" / ".mdsync-bench-project").write_text(str(PROJECT) + "\n")
    (work / "results").mkdir(exist_ok=True)
    return runner


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its living children and the children it has reaped."""
    total = 0.0
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    total += sum(int(x) for x in stat[11:15])  # utime stime cutime cstime
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICKS


def run_engine(runner: Path, work: Path, engine: str, env_extra: dict[str, str], scenarios: list[str],
               log) -> tuple[list[dict], int]:
    before = set((work / "results").glob("mdsync-2*.jsonl"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDSYNC_")}
    env.update(env_extra, SCENARIOS=" ".join(scenarios), CROSSCHECK="0", TMPDIR=str(work / "tmp"),
               REPORT=str(work / "results" / f"report-{engine}.md"))
    proc = subprocess.Popen([str(runner), "--project", str(PROJECT)], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        rc = proc.wait(RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()  # its trap stops its server and yload by pid
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(10)
    time.sleep(1.1)  # the runner names its files by the second
    new = sorted(set((work / "results").glob("mdsync-2*.jsonl")) - before)
    rows = []
    for path in new:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                row["label"] = engine
                rows.append(row)
    return rows, rc


def failure_lines(log_path: Path, since: float, count: int = 4) -> list[str]:
    """The runner log's lines that say what went wrong (the last `count`)."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
             if any(w in line for w in ("Error", "error", "did not", "failed", "Traceback"))]
    return [f"`{line[:300]}`" for line in lines[-count:]] or ["nothing"]


def median_of(fn, rounds: list[dict]) -> float | None:
    values = []
    for rows in rounds:
        try:
            v = fn(rows)
        except (KeyError, TypeError):
            continue
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            values.append(float(v))
    return statistics.median(values) if values else None


def table(by_engine: dict[str, list[dict]], pg_cpu: list[float], notes: list[str]) -> str:
    out = ["| metric | SQLite | PostgreSQL | PostgreSQL / SQLite |", "|---|---:|---:|---:|"]
    fmt = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    for name, fn in ROWS:
        lite, pg = median_of(fn, by_engine.get("sqlite", [])), median_of(fn, by_engine.get("postgresql", []))
        if lite is None and pg is None:
            continue  # a scenario not run
        ratio = f"{pg / lite:.2f}" if lite and pg is not None else "–"
        out.append(f"| {name} | {fmt(lite)} | {fmt(pg)} | {ratio} |")
    ok = []
    for engine, rounds in by_engine.items():
        for sc in ("s1", "s2", "s3"):
            flags = [r[sc].get("ok") for r in rounds if sc in r]
            if flags:
                ok.append(f"{engine} {sc} {sum(1 for f in flags if f)}/{len(flags)}")
    out += ["", "scenario runs ok (no errors, converged): " + (", ".join(ok) or "none"), *notes]
    if pg_cpu:
        out.append(f"PostgreSQL's own processes: {statistics.median(pg_cpu):.1f} s CPU per PostgreSQL run (median; "
                   "preparation and every scenario; not in the server CPU rows above)")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scenarios", default="s1,s2,s3")
    parser.add_argument("--pg-url", help="a running PostgreSQL's admin URL (default: start one, see pgcluster.py)")
    parser.add_argument("--pg-pid", type=int, help="with --pg-url: its postmaster's pid (to count its CPU)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    work = Path(os.environ.get("BENCH_WORK", Path(os.environ.get("TMPDIR", "/tmp")) / "mdsync-pg-bench"))
    runner = prepare_work(work)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or work / "results" / f"engines-{stamp}.jsonl"
    log_path = work / "results" / f"engines-{stamp}.log"
    by_engine: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    pg_cpu: list[float] = []
    notes: list[str] = []
    loads = []
    started = time.monotonic()
    with Engines(["sqlite", "postgresql"], args.pg_url) as engines, open(log_path, "ab") as log, open(out, "a") as sink:
        for round_ in range(args.rounds):
            order = ("sqlite", "postgresql") if round_ % 2 == 0 else ("postgresql", "sqlite")
            for engine in order:
                loads.append(os.getloadavg()[0])
                env = engines.env(engine, f"collab_{os.getpid()}_{round_}")
                pid = (engines.cluster.proc.pid if engines.cluster else args.pg_pid) if engine == "postgresql" else None
                cpu0 = tree_cpu_s(pid) if pid else 0.0
                t0 = time.monotonic()
                rows, rc = run_engine(runner, work, engine, env, scenarios, log)
                if pid:
                    pg_cpu.append(tree_cpu_s(pid) - cpu0)
                for row in rows:
                    sink.write(json.dumps(row) + "\n")
                sink.flush()
                by_engine[engine].append({row["scenario"]: row for row in rows})
                if rc != 0:
                    notes.append(f"- round {round_ + 1} {engine}: the runner exited {rc}, {len(rows)} scenario rows; "
                                 "from its log: " + "; ".join(failure_lines(log_path, t0)))
                print(f"round {round_ + 1} {engine}: runner exit {rc}, {len(rows)} scenario rows, "
                      f"{time.monotonic() - t0:.0f} s (load {loads[-1]:.1f})", file=sys.stderr, flush=True)
    loads.append(os.getloadavg()[0])
    print(f"S1/S2/S3 of ../shared/bench (scenario-params.sh), {args.rounds} round(s), engines alternating; "
          f"medians; {time.monotonic() - started:.0f} s; 1-min load average {min(loads):.1f}-{max(loads):.1f} "
          f"({os.cpu_count()} cpus shared with other work); raw rows {out}, runner log {log_path}")
    for engine in ("sqlite", "postgresql"):
        print(f"- {DURABILITY[engine]}")
    print()
    print(table(by_engine, pg_cpu, notes))


if __name__ == "__main__":
    main()

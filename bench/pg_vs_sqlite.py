"""PostgreSQL vs SQLite in one run (issue 20's bench): the collaboration scenarios S1/S2/S3
(bench/collab/engines.py), `GET /me` with a JWT and a PAT (bench/rest_bench.py --engines) and group
commit throughput (bench/collab/durable_bench.py --engines), all against one durable PostgreSQL
(bench/pgcluster.py, started here and stopped by its pid), each bench alternating the engines; the
outputs go into bench/README.md's section "PostgreSQL vs SQLite" (replaced, the rest kept).

    .venv/bin/python bench/pg_vs_sqlite.py [--collab-rounds 1] [--rest-rounds 3] [--durable-rounds 2]
        [--only collab,rest,durable] [--no-readme]

Every child bench has a time limit; a bench that fails leaves its output (and its exit status) in
the section instead of numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(PROJECT))
from bench.pgcluster import DURABILITY, Engines  # noqa: E402

HEADING = "## PostgreSQL vs SQLite"


def git_rev() -> str:
    try:
        return subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def run(name: str, argv: list[str], limit: float) -> tuple[str, float]:
    print(f"== {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        err += f"\n(stopped after the {limit:.0f} s limit)"
    took = time.monotonic() - t0
    sys.stderr.write(err[-4000:])
    print(out, file=sys.stderr, flush=True)
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        out = out + f"\n**{name} exited {proc.returncode}**; end of its stderr:\n\n```\n{tail}\n```\n"
    return out.strip(), took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collab-rounds", type=int, default=1)
    parser.add_argument("--rest-rounds", type=int, default=3)
    parser.add_argument("--rest-duration", type=int, default=8)
    parser.add_argument("--durable-rounds", type=int, default=2)
    parser.add_argument("--durable-docs", type=int, default=100)
    parser.add_argument("--durable-seconds", type=float, default=5)
    parser.add_argument("--only", default="collab,rest,durable")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    only = args.only.split(",")
    py = sys.executable
    parts: list[str] = []
    loads = [os.getloadavg()]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with Engines(["postgresql"]) as engines:
        url = engines.admin_url
        if "collab" in only:
            out, took = run("collab", [py, "bench/collab/engines.py", "--rounds", str(args.collab_rounds),
                                       "--pg-url", url, "--pg-pid", str(engines.cluster.proc.pid)], 1800 * args.collab_rounds + 300)
            parts += ["### S1/S2/S3 (`bench/collab/engines.py`)", "", out, ""]
            loads.append(os.getloadavg())
        if "rest" in only:
            out, took = run("rest", [py, "bench/rest_bench.py", "--engines", "sqlite,postgresql", "--pg-url", url,
                                     "--rounds", str(args.rest_rounds), "--duration", str(args.rest_duration)],
                            args.rest_rounds * 5 * (args.rest_duration + 15) + 120)
            parts += ["### `GET /api/v1/me` (`bench/rest_bench.py --engines sqlite,postgresql`)", "", out, ""]
            loads.append(os.getloadavg())
        if "durable" in only:
            out, took = run("durable", [py, "bench/collab/durable_bench.py", "--engines", "sqlite,postgresql",
                                        "--pg-url", url, "--no-volatile", "--rounds", str(args.durable_rounds),
                                        "--docs", str(args.durable_docs), "--seconds", str(args.durable_seconds)],
                            args.durable_rounds * 2 * 240 + 120)
            parts += ["### Group commit throughput (`bench/collab/durable_bench.py --engines sqlite,postgresql`)",
                      "", out, ""]
            loads.append(os.getloadavg())
    load_text = ", ".join("/".join(f"{x:.1f}" for x in la) for la in loads)
    text = "\n".join([
        HEADING, "",
        f"`bench/pg_vs_sqlite.py` at {git_rev()}, {started}: every bench below in this one run, against one",
        "PostgreSQL 15 cluster (Debian's binaries, `bench/pgcluster.py`: temp dir, 127.0.0.1, a fresh database per",
        "server) and SQLite in the server's data dir, the engines alternating inside each bench. Durability:",
        f"- {DURABILITY['sqlite']}",
        f"- {DURABILITY['postgresql']}",
        "",
        f"Load average (1/5/15 min) at the start and after each bench: {load_text}. The machine has "
        f"{os.cpu_count()} cores shared with other helpers' builds and tests while this ran: the numbers are noisy",
        "(single rows move 10-30 % between runs), read the ratios, not the absolute values. Server CPU and RSS",
        "are the mdsync process's; PostgreSQL's own processes run beside it (their CPU is given where measured).",
        "", *parts])
    print(text)
    if not args.no_readme:
        readme = PROJECT / "bench" / "README.md"
        current = readme.read_text()
        pattern = re.compile(re.escape(HEADING) + r"\n.*?(?=\n## |\Z)", re.S)
        if pattern.search(current):
            current = pattern.sub(lambda _m: text.rstrip("\n") + "\n", current)
        else:
            current = current.rstrip("\n") + "\n\n" + text
        readme.write_text(current.rstrip("\n") + "\n")


if __name__ == "__main__":
    main()

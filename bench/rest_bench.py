"""REST per-request cost (reported, not asserted): `wrk` against authenticated `GET /api/v1/me` on a
real `mdsync serve` (access JWT and personal access token) and against a bare aiohttp handler
answering the same JSON, in interleaved rounds of one run; medians and ratios.

    .venv/bin/python bench/rest_bench.py [--rounds 3] [--duration 10] [--profile OUT_DIR]
    .venv/bin/python bench/rest_bench.py --engines sqlite,postgresql [--pg-url URL]

`--engines sqlite,postgresql`: one mdsync server per engine (PostgreSQL: bench/pgcluster.py, a
durable cluster started here unless `--pg-url` names a running one), their JWT and PAT rounds
interleaved with the bare handler's, and a PostgreSQL / SQLite table of the medians.

mdsync runs with its default log level (info: every request writes its access-log line) and the
default middlewares; the bare handler has no middleware and no access log. With `--profile`, one
extra round (`--profile-token jwt|pat`) runs under `py-spy record` (`pip install -e '.[bench]'`;
needs ptrace rights) and the top frames of the event-loop thread (own time and inclusive) are
printed: worker threads idling in their queues are left out, and py-spy pauses the process for
each sample (its default), so every stack is whole. Needs `wrk` on PATH (Debian's `wrk`). Every
process it starts is stopped by its pid; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from auth_bench import BARE_SERVER, register
from benchserver import BenchServer
from pgcluster import Engines, parse_engines


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, token: str | None, threads: int, connections: int, duration: int,
        pid: int | None = None) -> tuple[float, float]:
    """Requests/s that `wrk` measured and the server's CPU µs per request (with `pid`); non-2xx
    answers make the run fail loudly."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    cpu = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    cpu = cpu_seconds(pid) - cpu if pid else 0.0
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), cpu / max(requests, 1) * 1e6


def top_frames(raw: Path, count: int = 15) -> str:
    """Own-time and inclusive top frames of the event-loop thread in a py-spy `--format raw`
    (collapsed stacks) file: stacks that start in a worker thread are left out."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit() or stack.startswith("Thread._bootstrap") or "Runner.run" not in stack:
            continue
        n = int(samples)
        total += n
        frames = [re.sub(r" \(/.*?(site-packages|h19|mdsync)/", " (", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "py-spy recorded no sample of the event-loop thread"
    lines = [f"{total} samples of the event-loop thread", "", "own time:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(count)]
    lines += ["", "inclusive:"]
    lines += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(count * 2)]
    return "\n".join(lines)


def profile(pid: int, url: str, token: str, out_dir: Path, args) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / f"rest-me-{args.profile_token}.txt"
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
                            "--format", "raw", "--rate", "250", "--duration", str(args.duration),
                            "--output", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wrk(url, token, args.threads, args.connections, args.duration, pid)
        spy.wait(timeout=args.duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait(10)
    return top_frames(raw) if raw.exists() else f"py-spy wrote nothing: {spy.stderr.read()}"


async def tokens(base: str) -> tuple[str, str]:
    jwt = await register(base, "me@example.com")
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/api/v1/me/tokens", json={"name": "bench"},
                                headers={"Authorization": f"Bearer {jwt}"}) as resp:
            pat = (await resp.json())["token"]
    return jwt, pat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profile", type=Path, help="directory for the py-spy output of one extra round")
    parser.add_argument("--profile-token", choices=("jwt", "pat"), default="jwt")
    parser.add_argument("--engines", type=parse_engines, default=["sqlite"],
                        help="comma-separated: sqlite, postgresql (one mdsync server each)")
    parser.add_argument("--pg-url", help="a running PostgreSQL's admin URL (default: start one, see pgcluster.py)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="mdsync-rest-bench-"))
    servers: list[BenchServer] = []
    engines = Engines(args.engines, args.pg_url)
    try:
        engines.__enter__()
        bare = BenchServer([sys.executable, "-c", BARE_SERVER], os.environ.copy(), work)
        servers.append(bare)
        targets = {"bare": (bare.base + "/api/v1/me", None, bare.pid)}
        for engine in args.engines:
            # the default log level: the access log is part of the per-request cost
            try:
                server = BenchServer.mdsync(work / f"data-{engine}", MDSYNC_LOG__LEVEL="info",
                                            **engines.env(engine, f"rest_{os.getpid()}"))
            except RuntimeError as error:  # measure the engines that work, say which did not
                print(f"{engine}: {error}".strip() + "\n")
                continue
            servers.append(server)
            jwt, pat = asyncio.run(tokens(server.base))
            me = server.base + "/api/v1/me"
            suffix = "" if len(args.engines) == 1 else f" {engine}"
            targets[f"jwt{suffix}"] = (me, jwt, server.pid)
            targets[f"pat{suffix}"] = (me, pat, server.pid)
        runs: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        load = []
        for _ in range(args.rounds):  # interleaved: every server sees the same background load
            load.append(os.getloadavg()[0])
            for name, (url, token, pid) in targets.items():
                rps, us = wrk(url, token, args.threads, args.connections, args.duration, pid)
                runs[name].append(rps)
                cpu[name].append(us)
        load.append(os.getloadavg()[0])
        print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, {args.rounds} interleaved rounds, "
              f"1-min load average {min(load):.1f}-{max(load):.1f} ({os.cpu_count()} cpus; other work on the "
              "machine shares them)")
        print("| target | req/s per round | median req/s | req/s ratio vs bare | server CPU µs/request (median) "
              "| CPU ratio vs bare |")
        print("|---|---|---:|---:|---:|---:|")
        for name in targets:  # ratios: median of the per-round ratios
            ratio = statistics.median(a / b for a, b in zip(runs[name], runs["bare"]))
            cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu["bare"]))
            print(f"| {name} | {' / '.join(f'{r:.0f}' for r in runs[name])} | {statistics.median(runs[name]):.0f} "
                  f"| {ratio:.2f} | {statistics.median(cpu[name]):.0f} | {cpu_ratio:.2f} |")
        if len(args.engines) == 2 and all(f"jwt {e}" in runs for e in args.engines):
            print()
            print("| GET /me | req/s PostgreSQL / SQLite (median of per-round ratios) "
                  "| server CPU µs/request PostgreSQL / SQLite |")
            print("|---|---:|---:|")
            for token in ("jwt", "pat"):
                pg, lite = f"{token} postgresql", f"{token} sqlite"
                rps = statistics.median(a / b for a, b in zip(runs[pg], runs[lite]))
                us = statistics.median(a / b for a, b in zip(cpu[pg], cpu[lite]))
                print(f"| {token} | {rps:.2f} | {us:.2f} |")
        if args.profile:
            print()
            url, token, pid = targets[args.profile_token if len(args.engines) == 1
                                      else f"{args.profile_token} {args.engines[0]}"]
            print(profile(pid, url, token, args.profile, args))
    finally:
        for s in servers:
            s.stop()
        engines.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

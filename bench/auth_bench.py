"""Foundation benchmark (reported, not asserted): `mdsync serve` start-to-ready time and idle RSS,
authenticated GET /api/v1/me requests/s against a bare aiohttp handler in the same run, login
latency at the default argon2 cost, and /healthz latency while a burst of logins is hashed.

    .venv/bin/python bench/auth_bench.py            # prints a markdown table; --json for raw numbers

Everything runs on 127.0.0.1, every loop is bounded in count and time, and every process it
starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from benchserver import BenchServer, Latencies

PASSWORD = "correct horse battery"

BARE_SERVER = r"""
import asyncio, sys
from aiohttp import web
try:
    import uvloop
    new_loop = uvloop.new_event_loop
except ImportError:
    new_loop = asyncio.new_event_loop

async def me(request):
    return web.json_response({"id": "0", "email": "bare@example.com", "name": "Bare", "is_admin": False,
                              "created_at": "2026-01-01T00:00:00Z"})

async def main():
    app = web.Application()
    app.router.add_get("/api/v1/me", me)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"listening on http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()

with asyncio.Runner(loop_factory=new_loop) as runner:
    runner.run(main())
"""


def mdsync(data_dir: Path) -> BenchServer:
    """`mdsync serve` at the default argon2 cost; the login limits raised so bursts are measured, not refused."""
    return BenchServer.mdsync(data_dir, fast_auth=False, MDSYNC_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS="100000",
                              MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS="100000")


async def first_healthz(base: str, started: float, timeout: float = 10) -> float:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(base + "/healthz") as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.002)
    return float("nan")


async def throughput(url: str, headers: dict[str, str], requests: int, concurrency: int,
                     max_seconds: float = 60) -> float:
    """Requests/s of `requests` GETs over `concurrency` keep-alive connections (bounded in time too).

    A minimal HTTP/1.1 client on raw asyncio streams: aiohttp's own client costs more CPU per
    request than the servers being measured, and on a small machine it would cap both numbers.
    """
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode()
    done = 0
    deadline = time.monotonic() + max_seconds

    async def worker(share: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in range(share):
                if time.monotonic() > deadline:
                    return
                writer.write(request)
                status_and_headers = await reader.readuntil(b"\r\n\r\n")
                assert status_and_headers.startswith(b"HTTP/1.1 200"), status_and_headers[:40]
                length = int(re.search(rb"(?i)content-length: *(\d+)", status_and_headers).group(1))
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm up
    done = 0
    started = time.perf_counter()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def login_latency(base: str, email: str, count: int) -> list[float]:
    timings = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.post(base + "/api/v1/auth/login", json={"email": email, "password": PASSWORD}) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            timings.append(time.perf_counter() - started)
    return timings


async def healthz_during_logins(base: str, email: str, logins: int) -> tuple[list[float], list[float], float]:
    """/healthz latencies while idle, then while `logins` concurrent logins are being hashed."""
    async with aiohttp.ClientSession() as session:
        async def probe(stop: asyncio.Event, out: list[float], limit: int = 5000) -> None:
            while not stop.is_set() and len(out) < limit:
                started = time.perf_counter()
                async with session.get(base + "/healthz") as resp:
                    await resp.read()
                out.append(time.perf_counter() - started)
                await asyncio.sleep(0.002)

        idle: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(stop, idle))
        await asyncio.sleep(1.0)
        stop.set()
        await task

        busy: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(stop, busy))

        async def one_login() -> None:
            async with session.post(base + "/api/v1/auth/login", json={"email": email, "password": PASSWORD}) as resp:
                await resp.read()

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one_login() for _ in range(logins))), 120)
        burst_seconds = time.perf_counter() - started
        stop.set()
        await task
        return idle, busy, burst_seconds


async def register(base: str, email: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/api/v1/auth/register",
                                json={"email": email, "password": PASSWORD, "name": "Bench"}) as resp:
            body = await resp.json()
            assert resp.status == 201, body
            return body["access_token"]


async def run(args) -> dict:
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
                     "load_average": os.getloadavg()[0]}
    work = Path(tempfile.mkdtemp(prefix="mdsync-bench-"))
    servers: list[BenchServer] = []
    try:
        # 1. start-to-ready and idle RSS (fresh data dir each time: migrations included)
        ready, healthz, rss = [], [], []
        for n in range(args.starts):
            server = mdsync(work / f"start-{n}" / "data")
            servers.append(server)
            ready.append(server.ready_seconds)
            healthz.append(await first_healthz(server.base, server.started))
            await asyncio.sleep(1.0)
            rss.append(server.rss_mib())
            server.stop()
        results["start_to_ready_s"] = statistics.median(ready)
        results["start_to_healthz_s"] = statistics.median(healthz)
        results["idle_rss_mib"] = statistics.median(rss)

        # 2. GET /me (access JWT, default settings) vs a bare aiohttp handler, same run
        server = mdsync(work / "me" / "data")
        servers.append(server)
        token = await register(server.base, "me@example.com")
        bare = BenchServer([sys.executable, "-c", BARE_SERVER], os.environ.copy(), work)
        servers.append(bare)
        async with aiohttp.ClientSession() as session:  # a PAT as well: another lookup path
            async with session.post(server.base + "/api/v1/me/tokens", json={"name": "bench"},
                                    headers={"Authorization": f"Bearer {token}"}) as resp:
                pat = (await resp.json())["token"]
        # interleaved rounds, medians: the two servers see the same background load
        me_runs, pat_runs, bare_runs = [], [], []
        for _ in range(args.rounds):
            me_runs.append(await throughput(server.base + "/api/v1/me", {"Authorization": f"Bearer {token}"},
                                            args.requests, args.concurrency))
            bare_runs.append(await throughput(bare.base + "/api/v1/me", {}, args.requests, args.concurrency))
            pat_runs.append(await throughput(server.base + "/api/v1/me", {"Authorization": f"Bearer {pat}"},
                                             args.requests, args.concurrency))
        me_rps, bare_rps = statistics.median(me_runs), statistics.median(bare_runs)
        results.update(me_rps=me_rps, me_pat_rps=statistics.median(pat_runs), bare_rps=bare_rps,
                       me_ratio=statistics.median(m / b for m, b in zip(me_runs, bare_runs)))
        bare.stop()
        server.stop()

        # 3. login latency at the default argon2 cost, and /healthz while logins are hashed
        server = mdsync(work / "login" / "data")
        servers.append(server)
        await register(server.base, "login@example.com")
        login = Latencies.of(await login_latency(server.base, "login@example.com", args.logins))
        results["login_p50_ms"] = login.p50_ms
        results["login_p99_ms"] = login.p99_ms
        idle, busy, burst = await healthz_during_logins(server.base, "login@example.com", args.burst)
        busy = Latencies.of(busy)
        results["healthz_idle_p99_ms"] = Latencies.of(idle).p99_ms
        results["healthz_during_logins_p50_ms"] = busy.p50_ms
        results["healthz_during_logins_p99_ms"] = busy.p99_ms
        results["healthz_during_logins_max_ms"] = busy.max_ms
        results["login_burst"] = args.burst
        results["login_burst_seconds"] = burst
        server.stop()
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def table(r: dict) -> str:
    rows = [
        ("machine", f"{r['machine']}, load average {r['load_average']:.1f} at start"),
        ("`mdsync serve` start → ready line (fresh data dir, median)", f"{r['start_to_ready_s'] * 1000:.0f} ms"),
        ("start → first `/healthz` 200 (median)", f"{r['start_to_healthz_s'] * 1000:.0f} ms"),
        ("idle RSS after start (median)", f"{r['idle_rss_mib']:.0f} MiB"),
        ("GET /api/v1/me with an access JWT", f"{r['me_rps']:.0f} req/s"),
        ("GET /api/v1/me with a personal access token", f"{r['me_pat_rps']:.0f} req/s"),
        ("bare aiohttp handler, same client", f"{r['bare_rps']:.0f} req/s"),
        ("ratio /me ÷ bare", f"{r['me_ratio']:.2f}"),
        ("login latency, default argon2id (t=3, m=64 MiB, p=4), p50 / p99",
         f"{r['login_p50_ms']:.0f} / {r['login_p99_ms']:.0f} ms"),
        ("/healthz p99 idle", f"{r['healthz_idle_p99_ms']:.1f} ms"),
        (f"/healthz p50 / p99 / max during {r['login_burst']} concurrent logins "
         f"({r['login_burst_seconds']:.1f} s)",
         f"{r['healthz_during_logins_p50_ms']:.1f} / {r['healthz_during_logins_p99_ms']:.1f} / "
         f"{r['healthz_during_logins_max_ms']:.1f} ms"),
    ]
    return "| measure | result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--burst", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        results = runner.run(run(args))
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    main()

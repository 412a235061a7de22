"""AI proxy bench: the same requests straight to the fake upstream and through `mdsync serve`.

    .venv/bin/python bench/ai_bench.py [--rounds 50] [--requests 1000]

Both run as processes of their own (the fake: `python -m tests.fake_ai_upstream`; mdsync with
`ai.*` pointed at it and its server keys); the client is this process (aiohttp). Measured:

1. time to first byte of a chat stream (sequential requests), p50 / p99;
2. per-chunk throughput of one 2 000-chunk chat stream (chunks/s, each chunk its own SSE event);
3. non-stream chat requests/s with 50 in flight;
4. the ledger's added p99 at 200 concurrent requests: reserve + settle (two jobs of the single
   writer) timed in-process on a fresh database with a budget set, 200 calls at once; and the
   end-to-end p99 of 200 concurrent requests through mdsync against straight to the fake.

Every figure is printed with its ratio (mdsync ÷ direct, or per request).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.benchserver import BenchServer, percentile  # noqa: E402
from tests.fake_ai_upstream import OPENAI_KEY  # noqa: E402

CHAT = {"model": "gpt-fake", "max_tokens": 20, "messages": [{"role": "user", "content": "Say hello"}]}


class FakeProcess:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_ai_upstream"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"fake upstream on (http://\S+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.url = match.group(1)
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


async def ttfb(http, url: str, headers: dict, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        async with http.post(url, json={**CHAT, "stream": True}, headers=headers) as resp:
            await resp.content.readany()
            times.append(time.perf_counter() - started)
            await resp.read()
    return times


async def long_stream(http, url: str, headers: dict) -> tuple[int, float]:
    started = time.perf_counter()
    async with http.post(url, json={**CHAT, "model": "fake-chunks-2000", "stream": True}, headers=headers) as resp:
        body = await resp.read()
    return body.count(b"data: "), time.perf_counter() - started


async def concurrent(http, url: str, headers: dict, total: int, in_flight: int) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(in_flight)
    latencies: list[float] = []

    async def one():
        async with gate:
            started = time.perf_counter()
            async with http.post(url, json=CHAT, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(total)))
    return total / (time.perf_counter() - started), latencies


async def ledger_p99(calls: int) -> tuple[list[float], list[float]]:
    """reserve + settle of `calls` concurrent calls on one database, in-process."""
    from mdsync.ai.ledger import Ledger, Limits
    from mdsync.ai.provider import Usage
    from mdsync.db import SqliteDatabase

    with tempfile.TemporaryDirectory() as tmp:
        db = SqliteDatabase(Path(tmp) / "ledger.db")
        await db.open()
        await db.write(lambda tx: tx.execute(
            "INSERT INTO workspaces (id, name, slug, created_at, updated_at) VALUES ('w', 'W', 'w', 'now', 'now')"))
        ledger = Ledger(db)
        await ledger.set_limits("w", Limits(tokens_per_month=10**12, user_requests_per_minute=10**6,
                                            user_tokens_per_day=10**12))
        reserve_times, settle_times = [], []

        async def one(i: int):
            started = time.perf_counter()
            call = await ledger.reserve("w", f"user-{i % 20}", "openai", "gpt-fake", 4200)
            reserve_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            await ledger.settle(call, 200, Usage(12, 5, False))
            settle_times.append(time.perf_counter() - started)

        await asyncio.gather(*(one(i) for i in range(calls)))
        await db.close()
    return reserve_times, settle_times


def ms(values: list[float], q: float) -> float:
    return percentile(values, q) * 1000


async def run(args) -> None:
    fake = FakeProcess()
    data = Path(tempfile.mkdtemp(prefix="ai-bench-")) / "data"
    server = BenchServer.mdsync(data, MDSYNC_AI__OPENAI__BASE_URL=f"{fake.url}/openai/v1",
                                MDSYNC_AI__OPENAI__API_KEY=OPENAI_KEY)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            async with http.post(f"{server.base}/api/v1/auth/register",
                                 json={"email": "bench@example.com", "password": "bench password", "name": "B"}) as r:
                token = (await r.json())["access_token"]
            mdsync_headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{server.base}/api/v1/workspaces", json={"name": "Bench"},
                                 headers=mdsync_headers) as r:
                assert r.status == 201
            direct = (f"{fake.url}/openai/v1/chat/completions", {"Authorization": f"Bearer {OPENAI_KEY}"})
            proxied = (f"{server.base}/api/v1/ai/openai/v1/chat/completions", mdsync_headers)
            for url, headers in (direct, proxied):  # warm both paths
                await concurrent(http, url, headers, 20, 5)

            print(f"AI proxy bench: {args.rounds} TTFB rounds, {args.requests} requests per throughput run\n")
            print("| measure | direct to the fake | through mdsync | ratio |")
            print("|---|---|---|---|")
            d, m = await ttfb(http, *direct, args.rounds), await ttfb(http, *proxied, args.rounds)
            print(f"| TTFB of a chat stream, p50 | {ms(d, 50):.2f} ms | {ms(m, 50):.2f} ms | {ms(m, 50) / ms(d, 50):.2f} |")
            print(f"| TTFB of a chat stream, p99 | {ms(d, 99):.2f} ms | {ms(m, 99):.2f} ms | {ms(m, 99) / ms(d, 99):.2f} |")
            (dn, dt), (mn, mt) = await long_stream(http, *direct), await long_stream(http, *proxied)
            assert dn == mn == 2001, (dn, mn)  # 2 000 chunks and [DONE] (no usage chunk: not asked)
            print(f"| 2 000-chunk stream | {dn / dt:,.0f} chunks/s | {mn / mt:,.0f} chunks/s | {(mn / mt) / (dn / dt):.2f} |")
            (drps, _), (mrps, _) = (await concurrent(http, *direct, args.requests, 50),
                                    await concurrent(http, *proxied, args.requests, 50))
            print(f"| non-stream requests/s, 50 in flight | {drps:,.0f} | {mrps:,.0f} | {mrps / drps:.2f} |")
            (_, d200), (_, m200) = (await concurrent(http, *direct, 200, 200),
                                    await concurrent(http, *proxied, 200, 200))
            print(f"| p99 of 200 concurrent requests | {ms(d200, 99):.1f} ms | {ms(m200, 99):.1f} ms |"
                  f" {ms(m200, 99) / ms(d200, 99):.2f} |")
    finally:
        server.stop()
        fake.stop()
    reserve, settle = await ledger_p99(200)
    both = [r + s for r, s in zip(sorted(reserve), sorted(settle))]
    print(f"\nledger, 200 concurrent calls in-process: reserve p50 {ms(reserve, 50):.1f} ms p99 {ms(reserve, 99):.1f} ms;"
          f" settle p50 {ms(settle, 50):.1f} ms p99 {ms(settle, 99):.1f} ms; reserve + settle p99 ≈ {ms(both, 99):.1f} ms"
          f" ({ms(both, 99) / ms(m200, 99) * 100:.0f}% of the proxied p99 above)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--requests", type=int, default=1000)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

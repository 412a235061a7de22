"""Bench: the change feed (`GET /api/v1/sync/changes`) of a real `mdsync serve` process.

Setup: one user in one workspace; 100 000 changes in that workspace written straight through
the writer (`run_offline` beside the running server), interleaved with 100 000 changes of a
workspace the user is not in — so the feed has to find the caller's rows, not just read the table.

Measures, over real HTTP on 127.0.0.1:
  1. paging through all 100 000 changes with limit=200 and limit=50, one client (sequential):
     requests/s, p50, p99 per request;
  2. the same with 4 clients paging concurrently (aggregate requests/s, p99);
  3. wake-up of parked long-polls: N clients wait (`wait=30`), one change commits, time until
     every one has its answer.

Usage: .venv/bin/python bench/feed_bench.py [--changes 100000] [--pollers 200]
Every loop is bounded in count and time; the server is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from benchserver import BenchServer, Latencies

from mdsync import clock
from mdsync.db.sqlite import run_offline

TIME_LIMIT = 300.0   # seconds for any one phase


def insert_changes(tx, visible_ws: str, other_ws: str, n: int) -> None:
    at = clock.iso()
    rows = []
    for i in range(n):
        rows.append((visible_ws, "document", str(uuid.uuid4()), "upsert", at))
        rows.append((other_ws, "document", str(uuid.uuid4()), "upsert", at))
    tx.executemany("INSERT INTO changes (workspace_id, entity, entity_id, op, at) VALUES (?, ?, ?, ?, ?)", rows)


async def page_through(http: aiohttp.ClientSession, base: str, headers: dict, limit: int,
                       expected: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    seen, params = 0, {"limit": str(limit)}
    deadline = time.monotonic() + TIME_LIMIT
    for _ in range(expected // limit + 10):
        started = time.perf_counter()
        async with http.get(base + "/api/v1/sync/changes", params=params, headers=headers) as resp:
            body = await resp.json()
        latencies.append(time.perf_counter() - started)
        assert resp.status == 200, body
        seen += len(body["changes"])
        params["since"] = body["cursor"]
        if not body["has_more"] or time.monotonic() > deadline:
            break
    return latencies, seen


def line(label: str, latencies: list[float], wall: float, seen: int) -> str:
    stats = Latencies.of(latencies)
    return (f"| {label} | {stats.count} | {seen} | {stats.count / wall:,.0f} | "
            f"{stats.p50_ms:.2f} | {stats.p99_ms:.2f} |")


async def run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with BenchServer.mdsync(data_dir) as server:
            base = server.base
            async with aiohttp.ClientSession() as http:
                async def account(email):
                    async with http.post(base + "/api/v1/auth/register",
                                         json={"email": email, "password": "bench password", "name": "Bench"}) as r:
                        assert r.status == 201, await r.text()
                        return {"Authorization": "Bearer " + (await r.json())["access_token"]}

                reader, other = await account("reader@example.com"), await account("other@example.com")

                async def workspace(headers, name):
                    async with http.post(base + "/api/v1/workspaces", json={"name": name}, headers=headers) as r:
                        assert r.status == 201, await r.text()
                        return (await r.json())["id"]

                mine, theirs = await workspace(reader, "Reader's"), await workspace(other, "Other")
                _, before = await page_through(http, base, reader, 200, 100)   # its creation's own changes
                started = time.perf_counter()
                await asyncio.to_thread(run_offline, data_dir / "mdsync.db", insert_changes, mine, theirs, args.changes)
                print(f"setup: {2 * args.changes:,} changes inserted in {time.perf_counter() - started:.1f} s "
                      f"({args.changes:,} visible to the reader)", flush=True)

                print("\n| run | requests | changes seen | requests/s | p50 ms | p99 ms |")
                print("|---|---|---|---|---|---|")
                expected = args.changes + before
                for limit in (200, 50):
                    await page_through(http, base, reader, limit, 2000)          # warm caches
                    t0 = time.perf_counter()
                    latencies, seen = await page_through(http, base, reader, limit, expected)
                    wall = time.perf_counter() - t0
                    assert seen == expected, (seen, expected)
                    print(line(f"1 client, limit={limit}", latencies, wall, seen), flush=True)
                for limit in (200,):
                    t0 = time.perf_counter()
                    results = await asyncio.gather(*(page_through(http, base, reader, limit, expected)
                                                     for _ in range(4)))
                    wall = time.perf_counter() - t0
                    latencies = [x for lat, _ in results for x in lat]
                    assert all(seen == expected for _, seen in results)
                    print(line(f"4 clients, limit={limit}", latencies, wall, sum(s for _, s in results)), flush=True)

                # parked long-polls: all wake on one commit
                async with http.get(base + "/api/v1/sync/changes", params={"since": "now"}, headers=reader) as r:
                    cursor = (await r.json())["cursor"]
                connector = aiohttp.TCPConnector(limit=args.pollers + 10)
                async with aiohttp.ClientSession(connector=connector) as pollers_http:
                    async def poll():
                        async with pollers_http.get(base + "/api/v1/sync/changes",
                                                    params={"since": cursor, "wait": "30"}, headers=reader) as r:
                            body = await r.json()
                        return time.perf_counter(), len(body["changes"])
                    tasks = [asyncio.ensure_future(poll()) for _ in range(args.pollers)]
                    await asyncio.sleep(2.0)   # let every poll park in the server
                    t0 = time.perf_counter()
                    async with http.patch(base + f"/api/v1/workspaces/{mine}", json={"name": "Wake"},
                                          headers=reader) as r:
                        assert r.status == 200
                    done = await asyncio.wait_for(asyncio.gather(*tasks), 60)
                    assert all(n == 1 for _, n in done)
                    waits = Latencies.of([t - t0 for t, _ in done])
                    print(f"\nlong-poll wake-up: {args.pollers} parked polls, one commit → all answered; "
                          f"p50 {waits.p50_ms:.1f} ms, last {waits.max_ms:.1f} ms "
                          "(from sending the write to each answer, incl. the write itself)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--pollers", type=int, default=200)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

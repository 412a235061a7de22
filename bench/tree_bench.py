"""Bench: `GET /api/v1/workspaces/{ws}/tree` of a real `mdsync serve` process for a workspace of
10 000 documents in 500 folders (nested three levels deep).

Setup: one user and one workspace through the API; the folders and documents inserted straight
through the writer (`run_offline` beside the running server), each document with ~300 bytes of
markdown so the table has realistic rows (the tree must not read the markdown).

Measures, over real HTTP on 127.0.0.1: one client fetching the tree back to back, then N clients
concurrently, for a bounded time each: requests/s, p50, p99 per request, and the answer's size.

Usage: .venv/bin/python bench/tree_bench.py [--docs 10000] [--folders 500] [--seconds 10] [--clients 4]
Every loop is bounded in count and time; the server is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from benchserver import BenchServer, Latencies, bench_account

from mdsync import clock
from mdsync.db.sqlite import run_offline

MAX_REQUESTS = 100_000  # per phase, beside the time bound


def populate(tx, ws: str, user_id: str, n_folders: int, n_docs: int) -> None:
    now = clock.iso()
    folders: list[str] = []
    rows = []
    for i in range(n_folders):
        fid = str(uuid.uuid4())
        # the first 50 at the top, the next 150 under them, the rest one level further down
        parent = None if i < 50 else folders[(i - 50) // 3] if i < 200 else folders[50 + (i - 200) % 150]
        folders.append(fid)
        rows.append((fid, ws, parent, f"Folder {i}", float(i), user_id, now, now))
    tx.executemany("INSERT INTO folders (id, workspace_id, parent_id, name, position, created_by, created_at, updated_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    body = "# Title\n\n" + "Some markdown text with a [link](https://example.com). " * 5
    tx.executemany(
        "INSERT INTO documents (id, workspace_id, folder_id, title, kind, content_model, markdown, size, position,"
        " created_by, created_at, updated_at) VALUES (?, ?, ?, ?, 'note', 'text', ?, ?, ?, ?, ?, ?)",
        ((str(uuid.uuid4()), ws, folders[i % n_folders], f"Document {i}", body, len(body), float(i // n_folders),
          user_id, now, now) for i in range(n_docs)))
    # as every real write does: the change that tells readers (and the tree cache) it changed
    tx.execute("INSERT INTO changes (workspace_id, entity, entity_id, op, at) VALUES (?, 'workspace', ?, 'upsert', ?)",
               (ws, ws, now))


async def fetch_loop(session, url, headers, deadline, latencies, budget) -> None:
    while time.monotonic() < deadline and budget[0] > 0:
        budget[0] -= 1
        started = time.perf_counter()
        async with session.get(url, headers=headers) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        latencies.append(time.perf_counter() - started)


async def cold_phase(base, ws, headers, doc_id: str, seconds: float) -> Latencies:
    """Each GET right after a rename: the cached tree is stale, so every answer is rebuilt."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds
        for i in range(MAX_REQUESTS):
            if time.monotonic() >= deadline:
                break
            async with session.patch(f"{base}/api/v1/documents/{doc_id}", json={"title": f"Renamed {i}"},
                                     headers=headers) as resp:
                assert resp.status == 200
            started = time.perf_counter()
            async with session.get(f"{base}/api/v1/workspaces/{ws}/tree", headers=headers) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - started)
    return Latencies.of(latencies)


async def phase(base, ws, headers, clients: int, seconds: float) -> tuple[Latencies, float]:
    """Latencies and requests/s of `clients` fetching the tree back to back for `seconds`."""
    latencies: list[float] = []
    budget = [MAX_REQUESTS]
    url = f"{base}/api/v1/workspaces/{ws}/tree"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(fetch_loop(session, url, headers, deadline, latencies, budget) for _ in range(clients)))
        elapsed = time.monotonic() - started
    return Latencies.of(latencies), len(latencies) / elapsed


async def main(args) -> None:
    with tempfile.TemporaryDirectory(prefix="mdsync-tree-bench-") as tmp:
        data = Path(tmp) / "data"
        with BenchServer.mdsync(data) as server:
            base = server.base
            async with aiohttp.ClientSession() as session:
                account = await bench_account(session, base, "Big")
                headers, ws = account.headers, account.workspace_id
            started = time.monotonic()
            run_offline(data / "mdsync.db", populate, ws, account.user_id, args.folders, args.docs)
            print(f"inserted {args.folders} folders and {args.docs} documents in {time.monotonic() - started:.1f} s")
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/api/v1/workspaces/{ws}/tree", headers=headers) as resp:
                    tree = await resp.read()
            parsed = json.loads(tree)
            assert len(parsed["documents"]) == args.docs and len(parsed["folders"]) == args.folders
            print(f"tree answer: {len(tree) / 1024:.0f} KiB")
            await phase(base, ws, headers, 1, 1.0)  # warm-up
            print("| encoding | clients | requests | requests/s | p50 ms | p99 ms |")
            for encoding in ("gzip", "identity"):
                for clients in (1, args.clients):
                    r, rps = await phase(base, ws, {**headers, "Accept-Encoding": encoding}, clients, args.seconds)
                    print(f"| {encoding} | {clients} | {r.count} | {rps:.1f} |"
                          f" {r.p50_ms:.1f} | {r.p99_ms:.1f} |")
            r = await cold_phase(base, ws, {**headers, "Accept-Encoding": "identity"}, parsed["documents"][0]["id"],
                                 args.seconds)
            print(f"rebuilt after every change (identity, 1 client): {r.count} requests,"
                  f" p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--folders", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    asyncio.run(main(parser.parse_args()))

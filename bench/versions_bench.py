"""Bench: version history on a real `mdsync serve` process, over real HTTP on 127.0.0.1.

Measures:
  1. creating a version of a 1 MB document (POST /documents/{id}/versions, the room loaded):
     time per version and bytes stored per version (markdown + Yjs state);
  2. listing 10 000 versions of one document: the first page (limit 50), and paging through all
     of them with limit=200;
  3. diffing two 1 MB versions (GET /documents/{id}/diff): 1 % of lines changed, and a complete
     rewrite; meanwhile /healthz is polled every 10 ms to show the event loop stays responsive
     (the diff runs in an executor);
  4. `mdsync versions prune` on 10 000 automatic versions spread over 90 days.

Usage: .venv/bin/python bench/versions_bench.py [--versions 10000] [--repeat 10]
Every loop is bounded in count and time; the server is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import subprocess
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
from benchserver import MDSYNC, BenchServer, Latencies, server_env

from mdsync import clock
from mdsync.db.sqlite import run_offline

MiB = 1024 * 1024
TIME_LIMIT = 300.0


# the server and `mdsync versions prune` beside it: 1 MB bodies, no automatic versions during the bench
SETTINGS = {"MDSYNC_LIMITS__MAX_BODY_BYTES": str(8 * MiB), "MDSYNC_VERSIONS__IDLE_SECONDS": "3600"}


def markdown_of_size(size: int, seed: int) -> str:
    rand = random.Random(seed)
    words = ["version", "history", "markdown", "restore", "diff", "paragraph", "editor", "sync", "é", "😀"]
    lines, total, n = [], 0, 0
    while total < size:
        if n % 12 == 0:
            line = f"## Section {n // 12}\n"
        elif n % 12 == 11:
            line = "\n"
        else:
            line = " ".join(rand.choice(words) for _ in range(12)) + f" {n}.\n"
        lines.append(line)
        total += len(line.encode())
        n += 1
    return "".join(lines)


def change_lines(text: str, fraction: float, seed: int) -> str:
    rand = random.Random(seed)
    lines = text.splitlines(keepends=True)
    for i in rand.sample(range(len(lines)), int(len(lines) * fraction)):
        lines[i] = f"changed line {i}\n"
    return "".join(lines)


def ms(milliseconds: float) -> str:
    return f"{milliseconds:,.1f}"


def insert_versions(tx, document_id: str, n: int, kind: str, spread_days: float) -> None:
    ws = tx.value("SELECT workspace_id FROM documents WHERE id = ?", (document_id,))
    now = clock.now()
    rand = random.Random(11)
    markdown = "a small version\n" * 4
    tx.executemany(
        "INSERT INTO versions (id, document_id, workspace_id, created_at, kind, label, authors, size, markdown, state)"
        " VALUES (?, ?, ?, ?, ?, NULL, '[]', ?, ?, ?)",
        [(str(uuid.uuid4()), document_id, ws, clock.iso(now - timedelta(seconds=rand.uniform(60, spread_days * 86400))),
          kind, len(markdown), markdown, b"\x00" * 64) for _ in range(n)])


async def run(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        with BenchServer.mdsync(data_dir, **SETTINGS) as server:
            base = server.base
            api = base + "/api/v1"
            async with aiohttp.ClientSession() as http:
                async with http.post(api + "/auth/register", json={"email": "bench@example.com",
                                                                    "password": "bench password", "name": "Bench"}) as r:
                    headers = {"Authorization": "Bearer " + (await r.json())["access_token"]}
                async with http.post(api + "/workspaces", json={"name": "Bench"}, headers=headers) as r:
                    ws = (await r.json())["id"]

                async def new_doc(markdown: str) -> str:
                    async with http.post(f"{api}/workspaces/{ws}/documents", json={"title": "Big", "markdown": markdown},
                                         headers=headers) as r:
                        assert r.status == 201, await r.text()
                        return (await r.json())["id"]

                # 1. a version of a 1 MB document
                big = markdown_of_size(MiB, 1)
                doc = await new_doc(big)
                async with http.get(f"{api}/documents/{doc}/content", headers=headers) as r:  # loads the room
                    assert (await r.text()) == big
                times, ids = [], []
                for i in range(args.repeat):
                    started = time.perf_counter()
                    async with http.post(f"{api}/documents/{doc}/versions", json={"label": f"v{i}"}, headers=headers) as r:
                        assert r.status == 201, await r.text()
                        ids.append((await r.json())["id"])
                    times.append(time.perf_counter() - started)
                took = Latencies.of(times)
                conn = sqlite3.connect(data_dir / "mdsync.db")
                size, state = conn.execute("SELECT size, length(state) FROM versions WHERE id = ?", (ids[0],)).fetchone()
                conn.close()
                print(f"\n1. version of a {len(big.encode()) / MiB:.2f} MiB document ({len(big.splitlines()):,} lines),"
                      f" {args.repeat} times")
                print("| p50 ms | max ms | markdown bytes | Yjs state bytes | stored per version |")
                print("|---|---|---|---|---|")
                print(f"| {ms(took.p50_ms)} | {ms(took.max_ms)} | {size:,} | {state:,} | {size + state:,} |")

                # 3. diffs of two 1 MB versions (done before 2 so the big document is still loaded)
                print("\n3. diff of two 1 MiB versions (and /healthz polled every 10 ms meanwhile)")
                print("| case | diff lines | added | removed | p50 ms | max ms | worst /healthz ms |")
                print("|---|---|---|---|---|---|---|")
                for label, new_text in (("1 % of lines changed", change_lines(big, 0.01, 2)),
                                        ("complete rewrite", markdown_of_size(MiB, 3))):
                    async with http.put(f"{api}/documents/{doc}/content", data=new_text.encode(),
                                        headers={**headers, "Content-Type": "text/markdown"}) as r:
                        assert r.status == 200, await r.text()
                    async with http.post(f"{api}/documents/{doc}/versions", json={"label": label}, headers=headers) as r:
                        to_id = (await r.json())["id"]
                    times, worst_ping = [], 0.0
                    for _ in range(max(3, args.repeat // 2)):
                        stop = asyncio.Event()

                        async def ping():
                            nonlocal worst_ping
                            while not stop.is_set():
                                t0 = time.perf_counter()
                                async with http.get(base + "/healthz") as pr:
                                    await pr.read()
                                worst_ping = max(worst_ping, time.perf_counter() - t0)
                                await asyncio.sleep(0.01)

                        pinger = asyncio.create_task(ping())
                        started = time.perf_counter()
                        async with http.get(f"{api}/documents/{doc}/diff", params={"from": ids[0], "to": to_id},
                                            headers=headers) as r:
                            body = await r.json()
                        times.append(time.perf_counter() - started)
                        stop.set()
                        await pinger
                    took = Latencies.of(times)
                    print(f"| {label} | {body['unified'].count(chr(10)):,} | {body['stats']['added']:,} | "
                          f"{body['stats']['removed']:,} | {ms(took.p50_ms)} | {ms(took.max_ms)} | "
                          f"{ms(worst_ping * 1000)} |")

                # 2. listing 10 000 versions
                listed = await new_doc("small")
                started = time.perf_counter()
                await asyncio.to_thread(run_offline, data_dir / "mdsync.db", insert_versions, listed, args.versions,
                                        "named", 90)
                print(f"\n2. list {args.versions:,} versions of one document (inserted in "
                      f"{time.perf_counter() - started:.1f} s)")
                first = []
                for _ in range(20):
                    started = time.perf_counter()
                    async with http.get(f"{api}/documents/{listed}/versions", headers=headers) as r:
                        await r.json()
                    first.append(time.perf_counter() - started)
                pages, seen, params = [], 0, {"limit": "200"}
                wall = time.perf_counter()
                deadline = time.monotonic() + TIME_LIMIT
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    async with http.get(f"{api}/documents/{listed}/versions", params=params, headers=headers) as r:
                        body = await r.json()
                    pages.append(time.perf_counter() - started)
                    seen += len(body["items"])
                    if not body["next_cursor"]:
                        break
                    params["cursor"] = body["next_cursor"]
                wall = time.perf_counter() - wall
                print("| run | requests | versions seen | p50 ms | p99 ms | total s |")
                print("|---|---|---|---|---|---|")
                for label, took, versions, total in (("first page (limit 50)", Latencies.of(first), 50, sum(first)),
                                                     ("all pages (limit 200)", Latencies.of(pages), seen, wall)):
                    print(f"| {label} | {took.count} | {versions:,} | {ms(took.p50_ms)} | {ms(took.p99_ms)} | "
                          f"{total:.2f} |")

                # 4. prune
                pruned_doc = await new_doc("pruned")
                await asyncio.to_thread(run_offline, data_dir / "mdsync.db", insert_versions, pruned_doc,
                                        args.versions, "auto", 90)
                started = time.perf_counter()
                out = await asyncio.to_thread(subprocess.run, [*MDSYNC, "versions", "prune"],
                                              env=server_env(data_dir, **SETTINGS), capture_output=True, text=True, timeout=TIME_LIMIT)
                wall = time.perf_counter() - started
                assert out.returncode == 0, out.stderr
                print(f"\n4. `mdsync versions prune` on {args.versions:,} automatic versions over 90 days "
                      f"(beside the running server): {out.stdout.strip().splitlines()[-1]} in {wall:.2f} s "
                      "(process start included)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()

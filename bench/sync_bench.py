"""Bench: `mdsync sync DIR` (docs/sync.md) against a real `mdsync serve` process, in one run.

Setup: one user, one workspace and a personal access token through the API; N documents of
1–100 KB of markdown (sizes uniform, seeded) in 50 folders written straight through the writer
(`run_offline` beside the running server), as the tree bench does.

Measures, over real HTTP on 127.0.0.1:
  1. initial pull: `mdsync sync DIR` (a subprocess, -q) of the N documents, against a bare aiohttp
     script fetching each `GET …/content` at the same concurrency (the client's 8): seconds,
     documents/s, MB/s and the ratio. The bare fetch runs before and after the pull (the first
     fetch of a document loads it on the server; the pull pays that too, the second bare fetch not).
  2. a local save seen by a live y-websocket client (tests/interop/sync_live.mjs observe): the
     file rewritten with a new marker while `mdsync sync DIR --watch` runs over the N files,
     until the client sees it; against the same edit sent as `PUT …/content` by a bare script:
     p50/p99 and the ratio.
  3. idle `--watch` over the N files: once its first pass is over, the process's CPU (user +
     system, % of one core) and RSS over a quiet window.

Usage: .venv/bin/python bench/sync_bench.py [--docs 10000] [--saves 30] [--idle-seconds 30]
Every loop is bounded in count and time; every process (server, CLI, node) is stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
from benchserver import MDSYNC, BenchServer, Latencies, bench_account

from mdsync import clock
from mdsync.db.sqlite import run_offline
from mdsync.syncclient.engine import CONCURRENCY

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "tests" / "interop"
TIME_LIMIT = 1800.0  # seconds for any one phase
WORDS = ("sync", "folder", "markdown", "offline", "merge", "paragraph", "train", "editor", "notes", "workspace",
         "document", "replica", "cursor", "change", "feed", "token", "vim", "Obsidian", "colleague", "words")


def markdown_of(rng: random.Random, size: int) -> str:
    parts, length, n = [], 0, 0
    while length < size:
        n += 1
        line = (f"## Section {n}\n\n" if n % 8 == 1 else "") + " ".join(rng.choice(WORDS) for _ in range(60)) + "\n\n"
        parts.append(line)
        length += len(line)
    return "".join(parts)[:size]


def populate(tx, ws: str, user_id: str, n_docs: int, min_kb: int, max_kb: int, seed: int) -> int:
    rng = random.Random(seed)
    now = clock.iso()
    folders = [str(uuid.uuid4()) for _ in range(50)]
    tx.executemany("INSERT INTO folders (id, workspace_id, parent_id, name, position, created_by, created_at, updated_at)"
                   " VALUES (?, ?, NULL, ?, ?, ?, ?, ?)",
                   [(fid, ws, f"Folder {i}", float(i), user_id, now, now) for i, fid in enumerate(folders)])
    total = [0]

    def rows():
        for i in range(n_docs):
            body = markdown_of(rng, rng.randint(min_kb * 1024, max_kb * 1024))
            total[0] += len(body)
            yield (str(uuid.uuid4()), ws, folders[i % 50], f"Document {i}", body, len(body), float(i // 50),
                   user_id, now, now)

    tx.executemany(
        "INSERT INTO documents (id, workspace_id, folder_id, title, kind, content_model, markdown, size, position,"
        " created_by, created_at, updated_at) VALUES (?, ?, ?, ?, 'note', 'text', ?, ?, ?, ?, ?, ?)", rows())
    tx.execute("INSERT INTO changes (workspace_id, entity, entity_id, op, at) VALUES (?, 'workspace', ?, 'upsert', ?)",
               (ws, ws, now))
    return total[0]


async def bare_fetch(base: str, headers: dict, ids: list[str], concurrency: int) -> tuple[float, int]:
    """Every document's `GET …/content`, `concurrency` at a time: (seconds, bytes)."""
    got = [0]
    queue = list(reversed(ids))
    deadline = time.monotonic() + TIME_LIMIT

    async def worker(session):
        while queue and time.monotonic() < deadline:
            doc_id = queue.pop()
            async with session.get(f"{base}/api/v1/documents/{doc_id}/content", headers=headers) as resp:
                got[0] += len(await resp.read())
                assert resp.status == 200, resp.status

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return time.perf_counter() - started, got[0]


def cli_env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MDSYNC_")}
    env["MDSYNC_TOKEN"] = token
    env["PYTHONPATH"] = str(ROOT)
    return env


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mib(pid: int, key: str = "VmRSS") -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(match.group(1)) / 1024 if match else float("nan")


def wait_quiet(pid: int, quiet_for: float = 3.0, limit: float = TIME_LIMIT) -> float:
    """Wait until the process used no CPU for `quiet_for` seconds (its first pass is over);
    the seconds waited."""
    started = time.monotonic()
    last, still_since = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - started < limit:
        time.sleep(0.5)
        now = cpu_seconds(pid)
        if now - last > 0.02:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet_for:
            break
    return time.monotonic() - started


class Observer:
    """The node client of sync_live.mjs observe: `wait(k)` is when it saw marker k (ms, epoch)."""

    def __init__(self, ws_url: str, doc_id: str, token: str, count: int):
        config = {"url": ws_url, "doc": doc_id, "token": token, "count": count, "timeoutMs": int(TIME_LIMIT * 1000)}
        self.proc = subprocess.Popen(["node", str(INTEROP / "sync_live.mjs"), "observe", json.dumps(config)],
                                     cwd=INTEROP, stdout=subprocess.PIPE, text=True)
        self.seen: dict[int, float] = {}
        line = self.proc.stdout.readline()
        if '"ready"' not in line:
            stop(self.proc)
            raise RuntimeError(f"the live client did not connect: {line!r}")

    def wait(self, marker: int) -> float:
        deadline = time.monotonic() + 30
        while marker not in self.seen and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            if "marker" in record:
                self.seen[record["marker"]] = record["at"]
        if marker not in self.seen:
            raise RuntimeError(f"marker {marker} never reached the live client")
        return self.seen[marker]


async def main(args) -> None:
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        tmp_path = Path(tmp)
        with BenchServer.mdsync(tmp_path / "data", MDSYNC_LIMITS__MAX_DOCUMENT_BYTES=str(4 * 1024 * 1024)) as server:
            base = server.base
            async with aiohttp.ClientSession() as session:
                account = await bench_account(session, base)
                async with session.post(f"{base}/api/v1/me/tokens", json={"name": "sync", "scopes": ["read", "write"]},
                                        headers=account.headers) as resp:
                    assert resp.status == 201, await resp.text()
                    pat = (await resp.json())["token"]
            started = time.perf_counter()
            total = run_offline(tmp_path / "data" / "mdsync.db", populate, account.workspace_id, account.user_id,
                                args.docs, args.min_kb, args.max_kb, 18)
            print(f"setup: {args.docs} documents, {total / 1e6:.0f} MB of markdown, {time.perf_counter() - started:.0f} s",
                  flush=True)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{base}/api/v1/workspaces/{account.workspace_id}/tree",
                                       headers=account.headers) as resp:
                    ids = [d["id"] for d in (await resp.json())["documents"]]
            assert len(ids) == args.docs

            # 1. initial pull against a bare fetch at the same concurrency
            bare_cold, bare_bytes = await bare_fetch(base, account.headers, ids, CONCURRENCY)
            print(f"bare fetch (first): {bare_cold:.1f} s", flush=True)
            root = tmp_path / "dir"
            started = time.perf_counter()
            pull = subprocess.run([*MDSYNC, "sync", str(root), "--server", base, "--workspace", "Bench", "-q"],
                                  env=cli_env(pat), cwd=ROOT, capture_output=True, text=True, timeout=TIME_LIMIT)
            sync_seconds = time.perf_counter() - started
            assert pull.returncode == 0, pull.stderr[-2000:]
            files = sum(1 for _ in root.rglob("*.md"))
            assert files == args.docs, files
            print(f"mdsync sync (initial pull): {sync_seconds:.1f} s", flush=True)
            bare_warm, _ = await bare_fetch(base, account.headers, ids, CONCURRENCY)
            started = time.perf_counter()
            again = subprocess.run([*MDSYNC, "sync", str(root), "--json"], env=cli_env(pat), cwd=ROOT,
                                   capture_output=True, text=True, timeout=TIME_LIMIT)
            second_seconds = time.perf_counter() - started
            assert again.returncode == 0 and again.stdout == "", again.stdout[-2000:] + again.stderr[-2000:]

            # 2. a local save seen by a live client, against a bare PUT
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{base}/api/v1/workspaces/{account.workspace_id}/documents",
                                        json={"title": "Live", "markdown": "live document\n"},
                                        headers=account.headers) as resp:
                    live_id = (await resp.json())["id"]
            watch = subprocess.Popen([*MDSYNC, "sync", str(root), "--watch", "-q"], env=cli_env(pat), cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            save_ms: list[float] = []
            put_ms: list[float] = []
            observer = None
            try:
                live = root / "Live.md"
                deadline = time.monotonic() + TIME_LIMIT
                while not live.exists() and time.monotonic() < deadline and watch.poll() is None:
                    time.sleep(0.1)
                wait_quiet(watch.pid, 2.0)
                observer = Observer(base.replace("http://", "ws://") + "/ws/docs", live_id,
                                    account.headers["Authorization"].split()[1], 2 * args.saves)
                for k in range(args.saves):
                    sent = time.time() * 1000
                    live.write_text(f"live document\n\n⟦{k}⟧\n")
                    save_ms.append(observer.wait(k) - sent)
                    time.sleep(0.3)
                stop(watch)  # the bare PUTs are measured without the watching client
                async with aiohttp.ClientSession() as session:
                    for k in range(args.saves, 2 * args.saves):
                        sent = time.time() * 1000
                        async with session.put(f"{base}/api/v1/documents/{live_id}/content",
                                               data=f"live document\n\n⟦{k}⟧\n".encode(),
                                               headers={**account.headers, "Content-Type": "text/markdown"}) as resp:
                            assert resp.status == 200, await resp.text()
                        put_ms.append(await asyncio.to_thread(observer.wait, k) - sent)
            finally:
                stop(watch)
                if observer is not None:
                    stop(observer.proc)

            # 3. idle --watch over the N files
            watch = subprocess.Popen([*MDSYNC, "sync", str(root), "--watch", "-q"], env=cli_env(pat), cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                first_pass = wait_quiet(watch.pid, 3.0)
                peak = rss_mib(watch.pid, "VmHWM")
                cpu0, t0 = cpu_seconds(watch.pid), time.monotonic()
                time.sleep(args.idle_seconds)
                idle_cpu = (cpu_seconds(watch.pid) - cpu0) / (time.monotonic() - t0) * 100
                idle_rss = rss_mib(watch.pid)
                assert watch.poll() is None, watch.stderr.read()[-2000:]
            finally:
                stop(watch)

    mb = bare_bytes / 1e6
    saves, puts = Latencies.of([x / 1000 for x in save_ms]), Latencies.of([x / 1000 for x in put_ms])
    print()
    print(f"## {args.docs} documents, {mb:.0f} MB, concurrency {CONCURRENCY}")
    print("| initial pull | s | documents/s | MB/s |")
    print("|---|---:|---:|---:|")
    for name, seconds in (("bare GET …/content (first fetch)", bare_cold), ("bare GET …/content (again)", bare_warm),
                          ("`mdsync sync DIR`", sync_seconds)):
        print(f"| {name} | {seconds:.1f} | {args.docs / seconds:.0f} | {mb / seconds:.1f} |")
    print(f"ratio sync / first bare fetch: {sync_seconds / bare_cold:.2f}; / second: {sync_seconds / bare_warm:.2f};"
          f" a second pass with nothing to do: {second_seconds:.1f} s")
    print()
    print("| edit → live y-websocket client | n | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    print(f"| file saved, `--watch` over {args.docs} files | {saves.count} | {saves.p50_ms:.0f} | {saves.p99_ms:.0f} |"
          f" {saves.max_ms:.0f} |")
    print(f"| bare `PUT …/content` | {puts.count} | {puts.p50_ms:.0f} | {puts.p99_ms:.0f} | {puts.max_ms:.0f} |")
    print(f"ratio p50: {saves.p50_ms / puts.p50_ms:.1f}")
    print()
    print(f"idle `--watch` over {args.docs} files: first pass {first_pass:.0f} s (peak RSS {peak:.0f} MiB); then over"
          f" {args.idle_seconds:.0f} s: CPU {idle_cpu:.2f} % of a core, RSS {idle_rss:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--min-kb", type=int, default=1)
    parser.add_argument("--max-kb", type=int, default=100)
    parser.add_argument("--saves", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    if not 1 <= args.docs <= 100_000 or not 1 <= args.saves <= 1000:
        sys.exit("--docs 1..100000, --saves 1..1000")
    asyncio.run(main(args))

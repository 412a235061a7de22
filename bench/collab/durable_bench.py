"""Durable throughput: many documents x writers on `/ws/hocuspocus`, each writer sending its next
Yjs update as soon as the previous one is acknowledged (SyncStatus, which mdsync sends only once
the update is committed to the update log), against the same load on a server whose update log is
switched off (bench/collab/volatile_serve.py: relayed and acknowledged at once, nothing written).

    .venv/bin/python bench/collab/durable_bench.py [--docs 50] [--writers 2] [--seconds 8] [--rounds 3]

Per run: a fresh `mdsync serve` (bench/benchserver.py) on its own data dir, one user, `--docs`
documents made over REST, `--writers` sockets per document (each its own Yjs client appending to
Y.Text('markdown'): updates built before the run, so the load client only sends bytes and reads
acks). Measured over the timed window: acknowledged updates/s, ack latency, server CPU per update
(/proc), and from /metrics the log's commits (mdsync_collab_flushes, mdsync_collab_flushed_updates:
their ratio is the commit batch size) and the writer's (mdsync_db_write_batches / _jobs). Modes
alternate per round; the table shows medians and the durable / volatile ratio.

`--engines sqlite,postgresql [--pg-url URL] [--no-volatile]`: the durable runs on each engine
(PostgreSQL: a fresh database per run in bench/pgcluster.py's durable cluster, started here unless
`--pg-url` names a running one), alternating per round, and the PostgreSQL / SQLite ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from pycrdt import Doc, Text

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.benchserver import MDSYNC, BenchServer, bench_account, percentile, server_env  # noqa: E402
from bench.pgcluster import Engines, parse_engines  # noqa: E402
from mdsync.collab import hocuspocus as hp  # noqa: E402
from mdsync.collab import protocol as p  # noqa: E402

VOLATILE = [sys.executable, str(Path(__file__).with_name("volatile_serve.py"))]
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def chains(count: int, length: int) -> list[list[bytes]]:
    """`count` independent Yjs clients, each `length` updates appending a few characters to
    Y.Text('markdown') (valid in any document: they name only the root and their own items)."""
    out = []
    for n in range(count):
        doc = Doc(client_id=1000 + n)
        updates: list[bytes] = []
        doc.observe(lambda event, updates=updates: updates.append(event.update))
        text = doc.get("markdown", type=Text)
        for i in range(length):
            text.insert(len(text), f"w{n}.{i} ")
        out.append(updates)
    return out


class Writer:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, doc_id: str, updates: list[bytes]):
        self.ws = ws
        self.key = p.varbytes(doc_id.encode())
        self.messages = [self.key + p.update_message(u) for u in updates]
        self.acked = 0
        self.latencies: list[float] = []
        self.ack = asyncio.Event()

    async def open(self, doc_id: str, token: str) -> None:
        await self.ws.send_bytes(self.key + bytes((p.MSG_AUTH, hp.AUTH_TOKEN)) + p.varbytes(token.encode())
                                 + p.varbytes(b"4.8.0"))
        await self.ws.send_bytes(self.key + p.sync_step1(Doc().get_state()))

    async def read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                break
            data = msg.data
            if data == bytes((hp.MSG_PING,)):
                await self.ws.send_bytes(hp.PONG)
                continue
            _, pos = p.read_varbytes(data, 0)
            kind = data[pos]
            if kind == hp.MSG_SYNC_STATUS:
                self.acked += 1
                self.ack.set()
            elif kind == p.MSG_SYNC and data[pos + 1] == p.SYNC_STEP1:
                await self.ws.send_bytes(self.key + p.sync_step2(Doc().get_update()))

    async def run(self, stop_at: float) -> int:
        """Send, wait for the ack, send the next; the number of updates sent."""
        sent = 0
        for message in self.messages:
            if time.perf_counter() >= stop_at:
                break
            self.ack.clear()
            before = self.acked
            started = time.perf_counter()
            await self.ws.send_bytes(message)
            while self.acked == before:
                await self.ack.wait()
                self.ack.clear()
            self.latencies.append(time.perf_counter() - started)
            sent += 1
        return sent


def scrape(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        match = re.match(r"^(mdsync_(?:collab|db)_\w+?)(?:_total)? ([0-9.e+-]+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


async def one_run(mode: str, args, updates: list[list[bytes]], env: dict[str, str] | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="mdsync-durable-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        command = (VOLATILE if mode == "volatile" else MDSYNC) + ["serve", "--host", "127.0.0.1", "--port", "0"]
        with BenchServer(command, server_env(data, **(env or {})), Path(tmp)) as server:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
                account = await bench_account(session, server.base)
                token = account.headers["Authorization"].split(" ", 1)[1]
                doc_ids = []
                for n in range(args.docs):
                    async with session.post(f"{server.base}/api/v1/workspaces/{account.workspace_id}/documents",
                                            json={"title": f"durable {n}"}, headers=account.headers) as resp:
                        assert resp.status == 201, await resp.text()
                        doc_ids.append((await resp.json())["id"])
                writers, readers = [], []
                for d, doc_id in enumerate(doc_ids):
                    for w in range(args.writers):
                        ws = await session.ws_connect(f"{server.base}/ws/hocuspocus", max_msg_size=64 << 20)
                        writer = Writer(ws, doc_id, updates[d * args.writers + w])
                        await writer.open(doc_id, token)
                        writers.append(writer)
                        readers.append(asyncio.ensure_future(writer.read()))
                # the initial sync is acknowledged too: wait for every socket's first ack
                async with asyncio.timeout(60):
                    while any(w.acked < 1 for w in writers):
                        await asyncio.sleep(0.05)
                async with session.get(f"{server.base}/metrics") as resp:
                    before = scrape(await resp.text())
                cpu0, mine0, t0 = cpu_seconds(server.pid), time.process_time(), time.perf_counter()
                try:
                    async with asyncio.timeout(args.seconds + 60):  # an ack that never comes ends the run
                        sent = await asyncio.gather(*(w.run(t0 + args.seconds) for w in writers))
                except TimeoutError:
                    raise RuntimeError(f"{mode}: acks stopped coming ({sum(w.acked for w in writers)} acked in "
                                       f"{args.seconds + 60:g} s)") from None
                elapsed, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
                client_cpu = time.process_time() - mine0
                async with session.get(f"{server.base}/metrics") as resp:
                    after = scrape(await resp.text())
                for w in writers:
                    await w.ws.close()
                await asyncio.gather(*readers, return_exceptions=True)
                load = os.getloadavg()[0]
    total = sum(sent)
    latencies = [x for w in writers for x in w.latencies]

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    flushes, jobs, batches = delta("mdsync_collab_flushes"), delta("mdsync_db_write_jobs"), delta("mdsync_db_write_batches")
    return {"mode": mode, "updates": total, "per_s": total / elapsed, "cpu_us": 1e6 * cpu / max(total, 1),
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 99),
            "log_batch": delta("mdsync_collab_flushed_updates") / flushes if flushes else float("nan"),
            "jobs_per_commit": jobs / batches if batches else float("nan"), "commits_per_s": batches / elapsed,
            "server_pct": 100 * cpu / elapsed, "client_pct": 100 * client_cpu / elapsed, "load": load}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--writers", type=int, default=1, help="sockets writing to each document")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-updates", type=int, default=800, help="updates built per writer")
    parser.add_argument("--engines", type=parse_engines, default=["sqlite"],
                        help="comma-separated: sqlite, postgresql (the durable runs on each)")
    parser.add_argument("--pg-url", help="a running PostgreSQL's admin URL (default: start one, see pgcluster.py)")
    parser.add_argument("--no-volatile", action="store_true", help="leave out the runs without an update log")
    args = parser.parse_args()
    started = time.perf_counter()
    updates = chains(args.docs * args.writers, args.max_updates)
    print(f"built {args.max_updates} updates for each of {args.docs * args.writers} writers in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    runs = []
    # a mode is "durable" (the engine of a single-engine run), "durable <engine>" or "volatile"
    modes = ["durable"] if len(args.engines) == 1 else [f"durable {e}" for e in args.engines]
    modes += [] if args.no_volatile else ["volatile"]
    engines = Engines(args.engines, args.pg_url)
    failed: dict[str, str] = {}
    with engines:
        for round_ in range(args.rounds):
            for mode in (modes if round_ % 2 == 0 else modes[::-1]):
                engine = mode.split()[1] if " " in mode else args.engines[0]
                env = {} if mode == "volatile" else engines.env(engine, f"durable_{os.getpid()}_{round_}_{engine}")
                try:
                    run = await one_run(mode, args, updates, env)
                except (RuntimeError, AssertionError, OSError, aiohttp.ClientError) as error:
                    failed.setdefault(mode, f"{type(error).__name__}: {error}".strip())
                    print(f"round {round_ + 1} {mode}: failed: {failed[mode]}", file=sys.stderr)
                    continue
                run["mode"] = mode
                runs.append(run)
                print(f"round {round_ + 1} {mode}: {run['per_s']:.0f} updates/s, {run['cpu_us']:.0f} µs CPU each, "
                      f"ack p50 {run['p50_ms']:.1f} / p99 {run['p99_ms']:.1f} ms, log batch {run['log_batch']:.1f}, "
                      f"jobs per commit {run['jobs_per_commit']:.1f}, CPU % server {run['server_pct']:.0f} / load "
                      f"client {run['client_pct']:.0f} (load {run['load']:.1f})", file=sys.stderr)

    def med(mode: str, key: str) -> float:
        values = [r[key] for r in runs if r["mode"] == mode]
        return statistics.median(values) if values else float("nan")

    for mode, error in failed.items():
        print(f"**{mode} failed**: {error}\n")
    if not runs:
        sys.exit(1)

    print(f"\n{args.docs} documents x {args.writers} writers, {args.seconds:g} s per run, medians of "
          f"{args.rounds} rounds (modes alternating); 1-min load average during the runs "
          f"{min(r['load'] for r in runs):.1f}-{max(r['load'] for r in runs):.1f}\n")
    print("| update log | acked updates/s | server CPU µs per update | ack p50 ms | ack p99 ms "
          "| updates per log commit | writer jobs per commit | commits/s | CPU % server / load client |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        print(f"| {mode} | {med(mode, 'per_s'):.0f} | {med(mode, 'cpu_us'):.0f} | {med(mode, 'p50_ms'):.2f} "
              f"| {med(mode, 'p99_ms'):.2f} | {med(mode, 'log_batch'):.1f} | {med(mode, 'jobs_per_commit'):.1f} "
              f"| {med(mode, 'commits_per_s'):.0f} | {med(mode, 'server_pct'):.0f} / {med(mode, 'client_pct'):.0f} |")
    print()
    for mode in modes[:-1] if not args.no_volatile else []:
        ratio = med(mode, "per_s") / med("volatile", "per_s")
        cpu_ratio = med(mode, "cpu_us") / med("volatile", "cpu_us")
        print(f"{mode} / volatile: throughput {ratio:.2f}, server CPU per update {cpu_ratio:.2f}")
    if len(args.engines) == 2 and not failed:
        pg, lite = "durable postgresql", "durable sqlite"
        print("PostgreSQL / SQLite (medians): " + ", ".join(
            f"{what} {med(pg, key) / med(lite, key):.2f}" for what, key in (
                ("acked updates/s", "per_s"), ("server CPU per update", "cpu_us"), ("ack p50", "p50_ms"),
                ("ack p99", "p99_ms"), ("updates per log commit", "log_batch"),
                ("writer jobs per commit", "jobs_per_commit"))))


if __name__ == "__main__":
    asyncio.run(main())

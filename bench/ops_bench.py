"""Operations benchmarks: replica lag under a sustained write load, and backup/restore time for a
large database.

    .venv/bin/python bench/ops_bench.py lag [--seconds 30] [--rate 200] [--concurrency 8]
    .venv/bin/python bench/ops_bench.py backup [--db-mb 1024]

lag: a real moto S3 server and a real `mdsync serve` with replica.url set (litestream
supervised, sync-interval 1 s). Writers create documents through the API at a target rate; every
250 ms the bench reads /readyz (the supervisor's lag, local and replicated transaction ids). At the
end, one marker write is timed until the replica holds it, then `mdsync restore --from-replica`
proves every acknowledged document is in the replica.

backup: a data dir whose database is filled to --db-mb with document-like rows (documents table
plus a filler table of random text, as a busy server would have), then `mdsync backup`, `mdsync
restore --from-file` and `mdsync doctor` are timed as the CLI runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchserver import MDSYNC, BenchServer, Latencies, percentile, server_env

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import S3Server  # noqa: E402

PASSWORD = "correct horse battery"


# -- replica lag ----------------------------------------------------------------------------------
async def lag_bench(args) -> None:
    import aiohttp

    work = Path(tempfile.mkdtemp(prefix="mdsync-opsbench-"))
    s3 = S3Server(work).start()
    try:
        s3.create_bucket("bench")
        url = s3.replica_url("bench", "lag")
        env = {"MDSYNC_REPLICA__URL": url, **s3.credentials()}
        with BenchServer.mdsync(work / "data", **env) as server:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
                base = server.base
                async with http.post(f"{base}/api/v1/auth/register",
                                     json={"email": "bench@example.com", "password": PASSWORD, "name": "B"}) as r:
                    headers = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
                async with http.post(f"{base}/api/v1/workspaces", json={"name": "bench"}, headers=headers) as r:
                    ws = (await r.json())["id"]
                docs_url = f"{base}/api/v1/workspaces/{ws}/documents"
                acknowledged: list[str] = []
                latencies: list[float] = []
                samples: list[dict] = []
                stop = asyncio.Event()
                body = "lorem ipsum dolor sit amet " * 20  # ~500 B of markdown per document

                async def writer(index: int) -> None:
                    interval = args.concurrency / args.rate
                    next_at = time.monotonic()
                    n = 0
                    while not stop.is_set():
                        started = time.monotonic()
                        async with http.post(docs_url, json={"title": f"w{index}-{n}", "markdown": body},
                                             headers=headers) as r:
                            assert r.status == 201, await r.text()
                            acknowledged.append((await r.json())["id"])
                        latencies.append(time.monotonic() - started)
                        n += 1
                        next_at += interval
                        await asyncio.sleep(max(0.0, next_at - time.monotonic()))

                async def sampler() -> None:
                    while not stop.is_set():
                        async with http.get(f"{base}/readyz") as r:
                            samples.append((await r.json())["checks"]["replica"])
                        await asyncio.sleep(0.25)

                tasks = [asyncio.create_task(writer(i)) for i in range(args.concurrency)]
                tasks.append(asyncio.create_task(sampler()))
                began = time.monotonic()
                await asyncio.sleep(args.seconds)
                stop.set()
                await asyncio.gather(*tasks)
                elapsed = time.monotonic() - began

                # one marker write, timed until the replica holds it
                async with http.post(docs_url, json={"title": "marker", "markdown": "m"}, headers=headers) as r:
                    acknowledged.append((await r.json())["id"])
                marked = time.monotonic()
                target = None
                while time.monotonic() - marked < 30:
                    async with http.get(f"{base}/readyz") as r:
                        state = (await r.json())["checks"]["replica"]
                    target = target or state["local_txid"]
                    if state["replicated_txid"] >= state["local_txid"] and state["local_txid"] >= target:
                        break
                    await asyncio.sleep(0.05)
                marker_seconds = time.monotonic() - marked
        restored = work / "restored"
        started = time.monotonic()
        result = subprocess.run([*MDSYNC, "restore", "--from-replica", "--data-dir", str(restored)],
                                env=server_env(restored, **env), capture_output=True, text=True, cwd=ROOT)
        restore_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        conn = sqlite3.connect(restored / "mdsync.db")
        present = {row[0] for row in conn.execute("SELECT id FROM documents")}
        conn.close()
        missing = [d for d in acknowledged if d not in present]
        lags = [s["lag_seconds"] for s in samples]
        writes = Latencies.of(latencies)
        print(f"writes: {len(acknowledged)} documents in {elapsed:.1f} s = {len(acknowledged) / elapsed:.0f}/s "
              f"(target {args.rate}/s, {args.concurrency} writers); write p50 {writes.p50_ms:.1f} ms, "
              f"p99 {writes.p99_ms:.1f} ms")
        print(f"replica lag over {len(lags)} samples: p50 {statistics.median(lags):.2f} s, "
              f"p95 {percentile(lags, 95):.2f} s, "
              f"max {max(lags):.2f} s, mean {statistics.mean(lags):.2f} s; restarts "
              f"{samples[-1]['restarts']}")
        print(f"marker write on the replica after {marker_seconds:.2f} s; restore --from-replica "
              f"{restore_seconds:.1f} s; acknowledged documents missing from the replica: {len(missing)}")
    finally:
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


# -- backup time ----------------------------------------------------------------------------------
def fill(db: Path, megabytes: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS bench_filler (id TEXT PRIMARY KEY, body TEXT NOT NULL) STRICT")
    chunk = 4000
    row = 4096
    target = megabytes * 1024 * 1024
    while db.stat().st_size + (db.with_name(db.name + "-wal").stat().st_size
                               if db.with_name(db.name + "-wal").exists() else 0) < target:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO bench_filler VALUES (?, ?)",
                         ((str(uuid.uuid4()), os.urandom(row // 2).hex()) for _ in range(chunk)))
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def timed(cmd, data_dir) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    result = subprocess.run(cmd, env=server_env(data_dir), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return time.monotonic() - started, result


def backup_bench(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="mdsync-opsbench-"))
    try:
        data = work / "data"
        subprocess.run([*MDSYNC, "migrate", "--data-dir", str(data)], env=server_env(data), check=True,
                       capture_output=True, cwd=ROOT)
        started = time.monotonic()
        fill(data / "mdsync.db", args.db_mb)
        size = (data / "mdsync.db").stat().st_size
        print(f"database: {size / 1e6:.0f} MB (filled in {time.monotonic() - started:.0f} s)")
        for name in ("backup.tar", "backup.tar.gz") if args.gzip else ("backup.tar",):
            seconds, _ = timed([*MDSYNC, "backup", "--to", str(work / name), "--data-dir", str(data)], data)
            out = (work / name).stat().st_size
            print(f"mdsync backup --to {name}: {seconds:.1f} s ({size / 1e6 / seconds:.0f} MB/s), "
                  f"file {out / 1e6:.0f} MB")
        restored = work / "restored"
        seconds, _ = timed([*MDSYNC, "restore", "--from-file", str(work / "backup.tar"), "--data-dir",
                            str(restored)], restored)
        print(f"mdsync restore --from-file (includes integrity_check and doctor): {seconds:.1f} s")
        seconds, _ = timed([*MDSYNC, "doctor", "--data-dir", str(restored)], restored)
        print(f"mdsync doctor (integrity_check of {size / 1e6:.0f} MB): {seconds:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    lag = sub.add_parser("lag")
    lag.add_argument("--seconds", type=float, default=30)
    lag.add_argument("--rate", type=float, default=200, help="target document writes per second")
    lag.add_argument("--concurrency", type=int, default=8)
    backup = sub.add_parser("backup")
    backup.add_argument("--db-mb", type=int, default=1024)
    backup.add_argument("--gzip", action="store_true", help="also time a .tar.gz backup")
    args = parser.parse_args()
    if args.bench == "lag":
        asyncio.run(lag_bench(args))
    else:
        backup_bench(args)


if __name__ == "__main__":
    main()

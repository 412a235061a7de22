"""Bench: export throughput of a real `mdsync serve` process (`GET /api/v1/workspaces/{ws}/export`)
and of `mdsync export` (the CLI, offline on the same data dir).

Setup: one workspace filled through the import API (a zip of N generated notes of about S bytes
each, in 50 folders; text of words and numbers, which deflate compresses about 2.3:1, like prose).
Measures, for R runs each: documents/s, MB/s of markdown exported and MB/s of zip sent; the
server's RSS before and at its peak during the HTTP export (sampled from /proc every 10 ms).
The client reads the zip as it streams and counts it (nothing is written to disk).

Usage: .venv/bin/python bench/export_bench.py [--documents 5000] [--size 8000] [--runs 3]
Every loop is bounded; the server is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import aiohttp
from benchserver import MDSYNC, BenchServer, server_env

API = "/api/v1"


def vault(documents: int, size: int) -> bytes:
    rng = random.Random(42)
    words = ["the", "markdown", "sync", "server", "keeps", "notes", "folder", "über", "東京", "lorem", "ipsum"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for i in range(documents):
            lines, n = [f"# Note {i}", ""], 0
            while n < size:
                line = " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(10))
                lines.append(line)
                n += len(line) + 1
            zf.writestr(f"folder {i % 50}/note {i}.md", "\n".join(lines) + "\n")
    return buf.getvalue()


async def http_export(server: BenchServer, headers: dict, ws: str) -> tuple[float, int, float, float]:
    before = peak = server.rss_mib()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.01):
            peak = max(peak, server.rss_mib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    size = 0
    started = time.perf_counter()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.base}{API}/workspaces/{ws}/export", headers=headers,
                                timeout=aiohttp.ClientTimeout(total=600)) as resp:
                assert resp.status == 200, await resp.text()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    size += len(chunk)
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return seconds, size, before, peak


def cli_export(data_dir: Path, ws: str, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([*MDSYNC, "export", "--workspace", ws, str(out), "--data-dir", str(data_dir)],
                   env=server_env(data_dir), check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


async def main(documents: int, size: int, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mdsync-export-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        with BenchServer.mdsync(data_dir) as server:
            base = server.base
            async with aiohttp.ClientSession() as http:
                resp = await http.post(f"{base}{API}/auth/register",
                                       json={"email": "bench@example.com", "password": "bench password", "name": "B"})
                headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
                resp = await http.post(f"{base}{API}/workspaces", json={"name": "Bench"}, headers=headers)
                ws = (await resp.json())["id"]
                body = vault(documents, size)
                started = time.perf_counter()
                resp = await http.post(f"{base}{API}/workspaces/{ws}/import", data=body,
                                       headers={**headers, "Content-Type": "application/zip"},
                                       timeout=aiohttp.ClientTimeout(total=600))
                assert resp.status == 200, await resp.text()
                imported = time.perf_counter() - started
            markdown = sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(body)).infolist())
            print(f"workspace: {documents} documents, {markdown / 1e6:.1f} MB of markdown "
                  f"(imported from a {len(body) / 1e6:.1f} MB zip in {imported:.2f} s: "
                  f"{documents / imported:.0f} documents/s)")
            print("| run | seconds | documents/s | markdown MB/s | zip MB | zip MB/s | server RSS before → peak MiB |")
            print("|---|---|---|---|---|---|---|")
            rates = []
            for run in range(1, runs + 1):
                seconds, zip_bytes, before, peak = await http_export(server, headers, ws)
                rates.append(documents / seconds)
                print(f"| HTTP {run} | {seconds:.2f} | {documents / seconds:.0f} | {markdown / 1e6 / seconds:.1f} | "
                      f"{zip_bytes / 1e6:.1f} | {zip_bytes / 1e6 / seconds:.1f} | {before:.0f} → {peak:.0f} |")
            for run in range(1, runs + 1):
                out = Path(tmp) / f"cli-{run}.zip"
                seconds = cli_export(data_dir, ws, out)
                zip_bytes = out.stat().st_size
                out.unlink()
                print(f"| CLI {run} (process start included) | {seconds:.2f} | {documents / seconds:.0f} | "
                      f"{markdown / 1e6 / seconds:.1f} | {zip_bytes / 1e6:.1f} | {zip_bytes / 1e6 / seconds:.1f} | - |")
            print(f"HTTP median: {statistics.median(rates):.0f} documents/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--size", type=int, default=8000, help="approximate bytes of markdown per document")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.documents, args.size, args.runs))

"""Bench: search and comments of a real `mdsync serve` process, each beside a peer in the same run.

1. `GET /api/v1/search` over N documents (default 10 000) of 1–100 KB of generated prose, for
   two-word prefix queries (as a search box sends them while typing), one client back to back:
   p50/p99 per request. Peer: plain `sqlite3` in the bench process running the very statement the
   server runs (mdsync.search.service.SEARCH, same parameters) on the same database file; the
   server also cuts the snippets (query.Highlighter), the peer does not. Ratio = HTTP / sqlite3
   (the goal: ≤ 2).
2. Index maintenance per projection write: the UPDATE the markdown projection makes
   (collab/projection.py), one word changed in a document, one transaction each, on a copy of the
   same database with the search triggers and without them. Cost = the difference per write.
3. Listing 1 000 threads (0–3 replies each) of one document: all pages of
   `GET /api/v1/documents/{id}/comments?status=all&limit=200`, against plain `sqlite3` running the
   service's statement (each page's JSON, replies included, built by SQLite) for every page.

Documents and comments are inserted straight through the writer (`run_offline` beside the running
server): the search triggers index them in the same transactions, as any write does.

Usage: .venv/bin/python bench/search_bench.py [--docs 10000] [--min-kb 1] [--max-kb 100] [--seconds 10]
Every loop is bounded in count and time; the server is stopped by its pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from benchserver import BenchServer, Latencies, bench_account

from mdsync import clock
from mdsync.comments.service import SELECT as COMMENT_SELECTS
from mdsync.db import connect
from mdsync.db.sqlite import run_offline
from mdsync.search.query import match_expression
from mdsync.search.service import SEARCH

COMMENT_SELECT = COMMENT_SELECTS["sqlite"]  # the peer is plain sqlite3
MAX_REQUESTS = 100_000  # per phase, beside the time bound
BATCH = 250             # documents per writer transaction while populating
# two-word prefixes of words from the most frequent to rare ones (see vocabulary())
QUERIES = [("lor", "ips"), ("dol", "sit"), ("con", "adi"), ("tem", "inc"), ("mag", "ali"), ("ven", "qui"),
           ("exe", "ull"), ("vel", "ess"), ("cup", "pro"), ("per", "nat")]


def vocabulary(rng: random.Random) -> list[str]:
    """Latin-looking words, frequent ones first (Zipf-like use below): prefixes of the queries
    above match thousands of documents, as the first letters typed into a search box do."""
    common = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
              " et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi"
              " aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum"
              " fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia"
              " deserunt mollit anim id est laborum perspiciatis unde omnis iste natus error").split()
    syllables = ["ca", "ve", "lo", "ri", "tu", "ma", "ne", "qui", "sol", "pra", "gen", "dor", "lex", "vir", "tas"]
    rare = {"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(20_000)}
    return common + sorted(rare)


def prose(rng: random.Random, words: list[str], size: int) -> str:
    parts, length = ["# Notes\n\n"], 9
    while length < size:
        # Zipf-like: the first words of the vocabulary are far more frequent than the rest
        sentence = " ".join(words[min(int(rng.paretovariate(0.9)) - 1, len(words) - 1)]
                            for _ in range(rng.randint(6, 18)))
        sentence = sentence.capitalize() + (".\n\n" if rng.random() < 0.15 else ". ")
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)[:size]


def populate(tx, ws: str, user_id: str, start: int, count: int, seed: int, min_kb: int, max_kb: int) -> int:
    rng = random.Random(seed + start)
    words = vocabulary(random.Random(seed))
    now = clock.iso()
    rows, total = [], 0
    for i in range(start, start + count):
        markdown = prose(rng, words, rng.randint(min_kb * 1024, max_kb * 1024))
        total += len(markdown)
        rows.append((str(uuid.uuid4()), ws, f"Document {i} {words[rng.randrange(200)]}", markdown,
                     len(markdown.encode()), float(i), user_id, now, now))
    tx.executemany("INSERT INTO documents (id, workspace_id, title, kind, content_model, markdown, size, position,"
                   " created_by, created_at, updated_at) VALUES (?, ?, ?, 'note', 'text', ?, ?, ?, ?, ?, ?)", rows)
    return total


def add_threads(tx, ws: str, doc_id: str, user_id: str, threads: int) -> None:
    rng = random.Random(7)
    base = clock.now().timestamp()
    for i in range(threads):
        thread_id, at = str(uuid.uuid4()), clock.iso(datetime.fromtimestamp(base + i, UTC))
        tx.execute("INSERT INTO comments (id, document_id, workspace_id, author_id, body, anchor, created_at, updated_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (thread_id, doc_id, ws, user_id, f"Thread {i}: is this right?",
                    '{"quote":"lorem ipsum","prefix":null,"suffix":null,"yjs_start":"AAcJAA","yjs_end":"AAcRQQ"}', at, at))
        for r in range(rng.randint(0, 3)):
            tx.execute("INSERT INTO comments (id, document_id, workspace_id, parent_id, author_id, body, created_at,"
                       " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (str(uuid.uuid4()), doc_id, ws, thread_id, user_id, f"Reply {r}", at, at))


async def http_phase(session, url_for, headers, items, seconds: float) -> Latencies:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    for i in range(MAX_REQUESTS):
        if time.monotonic() >= deadline:
            break
        started = time.perf_counter()
        for url in url_for(items[i % len(items)]):
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
        latencies.append(time.perf_counter() - started)
    return Latencies.of(latencies)


def sqlite_phase(run, items, seconds: float) -> Latencies:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    for i in range(MAX_REQUESTS):
        if time.monotonic() >= deadline:
            break
        started = time.perf_counter()
        run(items[i % len(items)])
        latencies.append(time.perf_counter() - started)
    return Latencies.of(latencies)


def projection_writes(db_path: Path, workdir: Path, writes: int, min_kb: int, max_kb: int) -> dict[str, Latencies]:
    """Per-write time of the projection UPDATE with and without the search triggers, on copies."""
    out = {}
    for label, drop in (("with index", False), ("without index", True)):
        copy = workdir / f"copy-{label.replace(' ', '-')}.db"
        shutil.copyfile(db_path, copy)
        conn = connect(copy)
        if drop:
            conn.executescript("DROP TRIGGER docs_fts_insert; DROP TRIGGER docs_fts_update; DROP TRIGGER docs_fts_delete;")
        low, high = min_kb * 1024, max_kb * 1024
        targets = [r[0] for r in conn.execute("SELECT rowid FROM documents WHERE size BETWEEN ? AND ? LIMIT 50",
                                              (low, high))]
        texts = {rowid: conn.execute("SELECT markdown FROM documents WHERE rowid = ?", (rowid,)).fetchone()[0]
                 for rowid in targets}
        latencies = []
        for i in range(writes):
            rowid = targets[i % len(targets)]
            text = texts[rowid]
            middle = len(text) // 2
            text = texts[rowid] = text[:middle] + f" edit{i} " + text[middle:]
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE documents SET markdown = ?, size = ?, seq = seq + 1, updated_at = ? WHERE rowid = ?",
                         (text, len(text.encode()), clock.iso(), rowid))
            conn.execute("COMMIT")
            latencies.append(time.perf_counter() - started)
        out[label] = Latencies.of(latencies)
        conn.close()
        copy.unlink()
    return out


async def main(args) -> None:
    with tempfile.TemporaryDirectory(prefix="mdsync-search-bench-") as tmp:
        data = Path(tmp) / "data"
        with BenchServer.mdsync(data) as server:
            base = server.base
            async with aiohttp.ClientSession() as session:
                account = await bench_account(session, base, "Big")
                headers, ws = account.headers, account.workspace_id
                async with session.post(f"{base}/api/v1/workspaces/{ws}/documents", headers=headers,
                                        json={"title": "Threads", "markdown": "lorem ipsum"}) as resp:
                    thread_doc = (await resp.json())["id"]
            user_id = account.user_id
            db_path = data / "mdsync.db"
            started, total = time.monotonic(), 0
            for start in range(0, args.docs, BATCH):
                total += run_offline(db_path, populate, ws, user_id, start, min(BATCH, args.docs - start), args.seed,
                                     args.min_kb, args.max_kb)
            took = time.monotonic() - started
            print(f"inserted and indexed {args.docs} documents ({total / 2**20:.0f} MiB of markdown) in {took:.0f} s"
                  f" ({took / args.docs * 1000:.1f} ms per document); database {db_path.stat().st_size / 2**20:.0f} MiB")
            run_offline(db_path, add_threads, ws, thread_doc, user_id, args.threads)

            # -- 1. search: HTTP vs sqlite3 -------------------------------------------------------
            reader = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
            reader.row_factory = sqlite3.Row

            def run_sqlite(words) -> None:
                expression = match_expression(" ".join(words))
                reader.execute(SEARCH, (user_id, expression, None, None, 50)).fetchall()

            def search_urls(words):
                return [f"{base}/api/v1/search?q={'+'.join(words)}"]

            async with aiohttp.ClientSession() as session:
                await http_phase(session, search_urls, headers, QUERIES, 1.0)  # warm-up (both read the same pages)
                sqlite_phase(run_sqlite, QUERIES, 1.0)
                rows = []
                for _ in range(args.rounds):  # alternate, so load changes hit both alike
                    rows.append(("http", await http_phase(session, search_urls, headers, QUERIES, args.seconds)))
                    rows.append(("sqlite3", sqlite_phase(run_sqlite, QUERIES, args.seconds)))
                hits = []
                for words in QUERIES:
                    async with session.get(search_urls(words)[0], headers=headers) as resp:
                        hits.append(len((await resp.json())["items"]))
            matched = [reader.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH ?",
                                      (match_expression(" ".join(w)),)).fetchone()[0] for w in QUERIES]
            print(f"queries {', '.join(' '.join(w) for w in QUERIES)}: {min(matched)}–{max(matched)} documents match"
                  f" (median {sorted(matched)[len(matched) // 2]}), {min(hits)}–{max(hits)} returned")
            print("| search | requests | p50 ms | p99 ms | max ms |")
            for label, r in rows:
                print(f"| {label} | {r.count} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} |")
            http = [r for label, r in rows if label == "http"]
            peer = [r for label, r in rows if label == "sqlite3"]
            p50 = sorted(h.p50_ms / s.p50_ms for h, s in zip(http, peer))
            p99 = sorted(h.p99_ms / s.p99_ms for h, s in zip(http, peer))
            print(f"ratio http / sqlite3: p50 {p50[len(p50) // 2]:.2f}, p99 {p99[len(p99) // 2]:.2f}"
                  f" (median of {len(p50)} rounds)")

            # -- 3. listing 1 000 threads: HTTP vs sqlite3 ---------------------------------------
            def thread_urls(_):
                return [f"{base}/api/v1/documents/{thread_doc}/comments?status=all&limit=200"]

            async def all_pages(session) -> tuple[int, int]:
                url, threads, replies = thread_urls(None)[0], 0, 0
                for _ in range(100):
                    async with session.get(url, headers=headers) as resp:
                        page = await resp.json()
                    threads += len(page["items"])
                    replies += sum(len(t["replies"]) for t in page["items"])
                    if not page["next_cursor"]:
                        return threads, replies
                    url = thread_urls(None)[0] + f"&cursor={page['next_cursor']}"
                raise AssertionError("more pages than expected")

            def list_sqlite(_) -> None:
                after = ("", "")
                while True:
                    page = reader.execute(f"{COMMENT_SELECT} WHERE c.document_id = ? AND c.parent_id IS NULL AND 1"
                                          " AND (c.created_at, c.id) > (?, ?) ORDER BY c.created_at, c.id LIMIT ?",
                                          (thread_doc, *after, 201)).fetchall()
                    if len(page) <= 200:
                        return
                    after = (page[199]["created_at"], page[199]["id"])

            async def http_listing(session) -> Latencies:
                latencies: list[float] = []
                deadline = time.monotonic() + args.seconds
                for _ in range(MAX_REQUESTS):
                    if time.monotonic() >= deadline:
                        break
                    started = time.perf_counter()
                    await all_pages(session)
                    latencies.append(time.perf_counter() - started)
                return Latencies.of(latencies)

            async with aiohttp.ClientSession() as session:
                counted = await all_pages(session)
                listing = [("http", await http_listing(session)), ("sqlite3", sqlite_phase(list_sqlite, [None], args.seconds))]
            reader.close()
            print(f"listing {counted[0]} threads with {counted[1]} replies (all pages of 200):")
            print("| listing | listings | p50 ms | p99 ms |")
            for label, r in listing:
                print(f"| {label} | {r.count} | {r.p50_ms:.1f} | {r.p99_ms:.1f} |")
            print(f"ratio http / sqlite3: p50 {listing[0][1].p50_ms / listing[1][1].p50_ms:.2f}")

        # -- 2. index maintenance per projection write (server stopped: the file is quiet) -------
        for low, high in ((1, 10), (50, 100)):
            if high > args.max_kb:
                low, high = max(args.min_kb, args.max_kb // 2), args.max_kb
            costs = projection_writes(db_path, Path(tmp), args.writes, low, high)
            with_index, without = costs["with index"], costs["without index"]
            print(f"projection write of a {low}–{high} KB document: with the index p50 {with_index.p50_ms:.2f} ms"
                  f" (p99 {with_index.p99_ms:.2f}), without {without.p50_ms:.2f} ms (p99 {without.p99_ms:.2f}):"
                  f" the index adds {with_index.p50_ms - without.p50_ms:.2f} ms,"
                  f" ×{with_index.p50_ms / without.p50_ms:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--min-kb", type=int, default=1)
    parser.add_argument("--max-kb", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    asyncio.run(main(parser.parse_args()))

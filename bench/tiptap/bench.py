"""Bench: TipTap documents as markdown, the server (Python) beside @tiptap/markdown + y-prosemirror
(Node, tests/interop's pinned packages) doing the same work on the same markdown, in one run.

Measures, on ~1 MB of markdown (the tests' corpus repeated: headings, lists, tasks, tables, code,
marks, inline HTML):
  1. write: markdown → an empty `XmlFragment('default')` (Python: parse + build = the
     deterministic seed; Node: MarkdownManager.parse + prosemirrorJSONToYXmlFragment);
  2. render: the fragment → markdown (Python: read + render from the state; Node:
     yXmlFragmentToProsemirrorJSON + MarkdownManager.serialize);
  3. one paragraph changed: the edited markdown written into the 1 MB document (Python: what a
     PUT does on a copy of the state: read the blocks, parse the changed middle, block diff; Node:
     parse + y-prosemirror's updateYFragment, what the editor binding does), time and update bytes;
  4. through a real `mdsync serve`: PUT of the 1 MB markdown into an empty tiptap document, GET
     content, and a one-paragraph PUT with the current ETag (time and the bytes of the Yjs update
     it made, read back with GET …/yjs?sv=).
Ratios are Python / Node (above 1: the server is slower). The machine is shared with other jobs:
the load average is printed with the numbers.

Usage: .venv/bin/python bench/tiptap/bench.py [--rounds 3] [--kib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(ROOT))

from benchserver import BenchServer  # noqa: E402
from pycrdt import Doc  # noqa: E402

from mdsync.tiptap import blockdiff  # noqa: E402
from mdsync.tiptap.content import diff_update, render_state  # noqa: E402
from mdsync.tiptap.parse import parse  # noqa: E402

INTEROP = ROOT / "tests" / "interop"
CORPUS = ROOT / "tests" / "tiptap_corpus"
MiB = 1024 * 1024


def corpus_markdown(size: int) -> str:
    parts = [p.read_text() for p in sorted(CORPUS.glob("*.md")) if p.name not in ("frontmatter.md", "crlf.md")]
    out, i = [], 0
    total = 0
    while total < size:
        for part in parts:
            chunk = part.replace("# ", f"# Part {i} ", 1).strip("\n") + "\n\n"
            out.append(chunk)
            total += len(chunk.encode())
            i += 1
    return "".join(out)


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - started) * 1000, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def python_side(markdown: str, edited: str, rounds: int) -> dict:
    write, render, edit, parse_only = [], [], [], []
    state = b""
    rendered = ""
    edit_bytes = 0
    for _ in range(rounds):
        ms, _blocks = timed(parse, markdown)
        parse_only.append(ms)
        ms, state = timed(blockdiff.seed_update, markdown)
        write.append(ms)
        ms, (rendered, _unknown) = timed(render_state, state)
        render.append(ms)
        # what a PUT of `edited` does once the room's state is copied: parse + block diff on the fork
        ms, update = timed(diff_update, state, edited, None)
        edit.append(ms)
        edit_bytes = len(update or b"")
    return {"write_ms": median(write), "parse_ms": median(parse_only), "render_ms": median(render),
            "edit_ms": median(edit), "state_bytes": len(state), "edit_update_bytes": edit_bytes,
            "rendered_bytes": len(rendered.encode())}


def node_side(markdown_path: Path, edited_path: Path, rounds: int) -> dict:
    script = (HERE / "node_side.mjs").read_text().replace("'./tiptap.mjs'", f"'{(INTEROP / 'tiptap.mjs').as_uri()}'")
    env = {**os.environ, "BENCH_INPUT": json.dumps({"markdown": str(markdown_path), "edited": str(edited_path),
                                                    "rounds": rounds})}
    out = subprocess.run(["node", "--input-type=module", "-"], input=script, text=True, capture_output=True,
                         cwd=INTEROP, env=env, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-4000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


async def server_side(markdown: str, edited_paragraph: tuple[str, str], rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with BenchServer.mdsync(Path(tmp) / "data", MDSYNC_LIMITS__MAX_BODY_BYTES=str(8 * MiB)) as server:
            api = server.base + "/api/v1"
            timeout = aiohttp.ClientTimeout(total=600)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                async with http.post(api + "/auth/register", json={"email": "bench@example.com",
                                                                    "password": "bench password", "name": "Bench"}) as r:
                    headers = {"Authorization": "Bearer " + (await r.json())["access_token"]}
                async with http.post(api + "/workspaces", json={"name": "Bench"}, headers=headers) as r:
                    ws = (await r.json())["id"]
                put_big, get_big, put_one, update_bytes = [], [], [], []
                for _ in range(rounds):
                    async with http.post(f"{api}/workspaces/{ws}/documents",
                                         json={"title": "Big", "content_model": "tiptap"}, headers=headers) as r:
                        doc = (await r.json())["id"]
                    body = {**headers, "Content-Type": "text/markdown"}
                    started = time.perf_counter()
                    async with http.put(f"{api}/documents/{doc}/content", data=markdown.encode(), headers=body) as r:
                        assert r.status == 200, await r.text()
                    put_big.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    async with http.get(f"{api}/documents/{doc}/content", headers=headers) as r:
                        text, etag = await r.text(), r.headers["ETag"]
                    get_big.append((time.perf_counter() - started) * 1000)
                    async with http.get(f"{api}/documents/{doc}/yjs", headers=headers) as r:
                        before = Doc()
                        before.apply_update(await r.read())
                    sv = base64.urlsafe_b64encode(before.get_state()).rstrip(b"=").decode()
                    old, new = edited_paragraph
                    assert old in text
                    started = time.perf_counter()
                    async with http.put(f"{api}/documents/{doc}/content", data=text.replace(old, new, 1).encode(),
                                        headers={**body, "If-Match": etag}) as r:
                        assert r.status == 200, await r.text()
                    put_one.append((time.perf_counter() - started) * 1000)
                    async with http.get(f"{api}/documents/{doc}/yjs?sv={sv}", headers=headers) as r:
                        update_bytes.append(len(await r.read()))
                return {"put_1mb_ms": median(put_big), "get_1mb_ms": median(get_big),
                        "put_one_paragraph_ms": median(put_one), "put_one_paragraph_update_bytes": median(update_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kib", type=int, default=1024)
    parser.add_argument("--node-rounds", type=int, default=1,
                        help="rounds of the Node side (its markdown parse of 1 MB takes minutes here)")
    args = parser.parse_args()
    markdown = corpus_markdown(args.kib * 1024)
    old, new = "Next meeting: 2024-05-20, 10:00 CET.", "Next meeting: 2024-05-27, 11:00 CET (moved)."
    with tempfile.TemporaryDirectory() as tmp:
        md_path, edited_path = Path(tmp) / "big.md", Path(tmp) / "edited.md"
        # both sides start from the markdown as the server writes it, and change one paragraph
        canonical = render_state(blockdiff.seed_update(markdown))[0]
        md_path.write_text(canonical)
        edited_path.write_text(canonical.replace(old, new, 1))
        load_before = os.getloadavg()
        py = python_side(canonical, canonical.replace(old, new, 1), args.rounds)
        node = node_side(md_path, edited_path, args.node_rounds)
        server = asyncio.run(server_side(canonical, (old, new), args.rounds))
        load_after = os.getloadavg()
    size = len(canonical.encode())
    print(f"\n{size / MiB:.2f} MiB of markdown, {len(canonical.splitlines()):,} lines; medians of {args.rounds} rounds"
          f" ({args.node_rounds} for Node);"
          f" load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (2 cores, shared)\n")
    print("| step | server (Python) ms | @tiptap/markdown + y-prosemirror (Node) ms | ratio |")
    print("|---|---:|---:|---:|")
    for label, key in (("write 1 MB into an empty fragment", "write_ms"), ("render 1 MB to markdown", "render_ms"),
                       ("one paragraph changed, written into the 1 MB document", "edit_ms")):
        print(f"| {label} | {py[key]:,.0f} | {node[key]:,.0f} | {py[key] / node[key]:.1f} |")
    print(f"| (of the write: markdown-it parse alone) | {py['parse_ms']:,.0f} | | |")
    print(f"\nYjs state of the document: server {py['state_bytes']:,} B, Node {node['state_bytes']:,} B;"
          f" update of the one-paragraph change: server {py['edit_update_bytes']:,} B,"
          f" Node (updateYFragment) {node['edit_update_bytes']:,} B")
    print("\nThrough a real `mdsync serve` (HTTP on 127.0.0.1):\n")
    print("| request | ms |")
    print("|---|---:|")
    print(f"| PUT 1 MB into an empty tiptap document | {server['put_1mb_ms']:,.0f} |")
    print(f"| GET content of it | {server['get_1mb_ms']:,.0f} |")
    print(f"| PUT with one paragraph changed (current ETag) | {server['put_one_paragraph_ms']:,.0f} |")
    print(f"\nYjs update made by that PUT: {server['put_one_paragraph_update_bytes']:,.0f} bytes")


if __name__ == "__main__":
    main()

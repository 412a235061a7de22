"""The unified diff of two markdowns, as shown to people (`GET /documents/{id}/diff`).

The answer is exactly `difflib.unified_diff` of the two texts' lines (ends kept, 3 lines of
context). The matching itself runs in C (cdifflib's `CSequenceMatcher`, a drop-in for difflib's
`SequenceMatcher` giving the same opcodes): pure-Python difflib takes ~10 s on two unrelated 1 MB
texts, the C matcher ~1 s. The C matcher holds the GIL while it works, so big diffs go to a small
process pool (`run`), never a thread: the event loop stays free meanwhile. (The edit a restore
applies is the content backend's minimal diff: mdsync.collab.content.)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from difflib import _format_range_unified  # the hunk-range format of unified_diff itself
from typing import NamedTuple

from cdifflib import CSequenceMatcher

# Texts above this many characters (both together) are diffed in the process pool.
POOL_ABOVE_CHARS = 64 * 1024


class Diff(NamedTuple):
    unified: str
    added: int
    removed: int


def unified(old: str, new: str, fromfile: str, tofile: str) -> Diff:
    """The unified diff and the counts of added and removed lines."""
    added = removed = 0
    out = []
    for line in _unified_lines(old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile, tofile):
        out.append(line)
        if line[0] == "+" and len(out) > 2:
            added += 1
        elif line[0] == "-" and len(out) > 2:
            removed += 1
    return Diff("".join(out), added, removed)


def _unified_lines(a: list[str], b: list[str], fromfile: str, tofile: str, n: int = 3) -> Iterator[str]:
    """difflib.unified_diff(a, b, fromfile, tofile, n=n), with the C sequence matcher."""
    started = False
    for group in CSequenceMatcher(None, a, b).get_grouped_opcodes(n):
        if not started:
            started = True
            yield f"--- {fromfile}\n"
            yield f"+++ {tofile}\n"
        first, last = group[0], group[-1]
        yield f"@@ -{_format_range_unified(first[1], last[2])} +{_format_range_unified(first[3], last[4])} @@\n"
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                for line in a[i1:i2]:
                    yield " " + line
                continue
            if tag in ("replace", "delete"):
                for line in a[i1:i2]:
                    yield "-" + line
            if tag in ("replace", "insert"):
                for line in b[j1:j2]:
                    yield "+" + line


_pool = None  # a ProcessPoolExecutor, made on the first big diff (its imports cost server start time)


def _executor():
    global _pool
    if _pool is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forkserver: workers are forked from a clean helper process, never from this one with
        # its database and event-loop threads
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # workers start with this module imported
        _pool = ProcessPoolExecutor(max_workers=min(2, os.cpu_count() or 1), mp_context=context)
    return _pool


async def run(old: str, new: str, fromfile: str, tofile: str) -> Diff:
    """`unified(...)`, in the process pool when the texts are big."""
    if len(old) + len(new) <= POOL_ABOVE_CHARS:
        return unified(old, new, fromfile, tofile)
    # submitted from a thread: the first submit starts the fork server and a worker (~100 ms)
    future = await asyncio.to_thread(_executor().submit, unified, old, new, fromfile, tofile)
    return await asyncio.wrap_future(future)


def shutdown() -> None:
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None

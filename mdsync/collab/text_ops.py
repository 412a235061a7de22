"""Minimal text diff -> Y.Text operations: how a REST write of whole markdown becomes an edit
that editors see (a few deletes and inserts, not the whole text replaced).

Google's diff-match-patch (C++ via fast-diff-match-patch): Myers' diff with common prefix/suffix
trimming, line mode for long texts, a time bound, and a semantic cleanup so that a replaced
word is one delete + one insert rather than interleaved letters. It releases the GIL, so long
texts are diffed in a worker thread and the event loop goes on meanwhile.
"""

from __future__ import annotations

import asyncio

import fast_diff_match_patch
from pycrdt import Text

DIFF_TIME_LIMIT = 1.0      # seconds before the diff settles for a coarser (still correct) answer
THREAD_ABOVE_CHARS = 20000  # diff texts longer than this off the event loop


def text_ops(old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits turning `old` into `new`: (start, end, insert) in code-point offsets of `old`,
    ascending and non-overlapping."""
    if old == new:
        return []
    ops: list[tuple[int, int, str]] = []
    i = j = 0
    for op, length in fast_diff_match_patch.diff(old, new, timelimit=DIFF_TIME_LIMIT, checklines=True,
                                                cleanup="Semantic", counts_only=True):
        if op == "=":
            i += length
            j += length
        elif op == "-":
            if ops and ops[-1][1] == i:  # a replace: extend the previous insert's span
                start, _, insert = ops[-1]
                ops[-1] = (start, i + length, insert)
            else:
                ops.append((i, i + length, ""))
            i += length
        else:
            if ops and ops[-1][1] == i:
                start, end, insert = ops[-1]
                ops[-1] = (start, end, insert + new[j:j + length])
            else:
                ops.append((i, i, new[j:j + length]))
            j += length
    return ops


async def text_ops_async(old: str, new: str) -> list[tuple[int, int, str]]:
    if len(old) + len(new) <= THREAD_ABOVE_CHARS:
        return text_ops(old, new)
    return await asyncio.get_running_loop().run_in_executor(None, text_ops, old, new)


def apply_text_diff(text: Text, new: str, old: str | None = None,
                    ops: list[tuple[int, int, str]] | None = None) -> int:
    """Turn `text` into `new` with a minimal set of deletes and inserts (call inside one
    transaction). `ops` computed beforehand from `old` are used when the text is still `old`.
    pycrdt offsets are UTF-8 bytes: code-point offsets are converted on the way.
    Returns the number of operations."""
    current = str(text)
    if ops is None or old != current:
        ops = text_ops(current, new)
    old = current
    if not ops:
        return 0
    if old.isascii():
        byte_ops = ops
    else:
        byte_ops, at, pos = [], 0, 0
        for start, end, insert in ops:
            at += len(old[pos:start].encode("utf-8"))
            span = len(old[start:end].encode("utf-8"))
            byte_ops.append((at, at + span, insert))
            at += span
            pos = end
    for start, end, insert in reversed(byte_ops):  # from the end: earlier offsets stay valid
        if end > start:
            del text[start:end]
        if insert:
            text.insert(start, insert)
    return len(ops)

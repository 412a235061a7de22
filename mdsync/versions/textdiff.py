"""The unified diff of two markdowns, as shown to people (`GET /documents/{id}/diff`).

A plain function on strings, so the service can run it in an executor for large documents. (The
edit a restore applies is the content backend's minimal diff: mdsync.collab.content.)
"""

from __future__ import annotations

import difflib
from typing import NamedTuple


class Diff(NamedTuple):
    unified: str
    added: int
    removed: int


def unified(old: str, new: str, fromfile: str, tofile: str) -> Diff:
    """`difflib.unified_diff` of the two texts' lines (kept ends, 3 lines of context), joined,
    with the counts of added and removed lines."""
    lines = list(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                      fromfile=fromfile, tofile=tofile))
    added = removed = 0
    for line in lines[2:]:  # the first two are the ---/+++ headers; hunk lines carry one prefix char
        if line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
    return Diff("".join(lines), added, removed)

"""Text differences between two markdowns: the unified diff shown to people, and the minimal
edit that turns one text into the other (what a restore applies to the live document).

Both are plain functions on strings, so the service can run them in an executor for large
documents. pycrdt's Y.Text indexes by UTF-8 byte, so `edits` answers byte offsets.
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


class Edit(NamedTuple):
    start: int   # UTF-8 byte offset in the old text
    end: int     # exclusive
    insert: str  # what replaces old[start:end]


# Inside a changed run of lines, refine to characters only when the run is this small: keeps
# a restore from touching the unchanged words of a paragraph (a collaborator's cursor there
# stays put) without quadratic work on a big rewrite.
REFINE_CHARS = 4000


def edits(old: str, new: str) -> list[Edit]:
    """Edits that turn `old` into `new`, ascending and non-overlapping: apply them from the
    last to the first (each leaves the offsets before it valid)."""
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    char_edits: list[tuple[int, int, str]] = []
    a_pos = [0]
    for line in a:
        a_pos.append(a_pos[-1] + len(line))
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
        if tag == "equal":
            continue
        start, end = a_pos[i1], a_pos[i2]
        replacement = "".join(b[j1:j2])
        if tag == "replace" and end - start + len(replacement) <= REFINE_CHARS:
            piece = old[start:end]
            for t, c1, c2, d1, d2 in difflib.SequenceMatcher(None, piece, replacement, autojunk=False).get_opcodes():
                if t != "equal":
                    char_edits.append((start + c1, start + c2, replacement[d1:d2]))
        else:
            char_edits.append((start, end, replacement))
    # character offsets -> UTF-8 byte offsets, walking the old text once
    out: list[Edit] = []
    char_at, byte_at = 0, 0
    for start, end, text in char_edits:
        byte_at += len(old[char_at:start].encode("utf-8"))
        byte_start = byte_at
        byte_at += len(old[start:end].encode("utf-8"))
        char_at = end
        out.append(Edit(byte_start, byte_at, text))
    return out


def apply(text, changes: list[Edit]) -> None:
    """Apply `edits(...)` to a pycrdt Text (inside the caller's transaction), last first."""
    for change in reversed(changes):
        if change.end > change.start:
            del text[change.start:change.end]
        if change.insert:
            text.insert(change.start, change.insert)

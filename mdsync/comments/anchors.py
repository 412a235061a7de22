"""Where a thread sits in its document: the anchor stored with it.

An anchor is the quote the author selected (with optional `prefix`/`suffix` to pick among
repeats, as a W3C TextQuoteSelector) plus two Yjs relative positions, `yjs_start` and `yjs_end`,
that every client resolves in its own Y.Doc; they follow every later edit, from anyone, because
they name CRDT items rather than offsets. A client that has the selection in its Y.Doc sends the
positions itself. Given a quote alone, the server places it on the live document (loading the
room if nobody has it open): the occurrence whose surroundings best match `prefix`/`suffix`, the
first one on a tie. The start sticks to the quote's first character, the end to its last, so
text typed right before or right after the quote stays outside.

In a `text` document the quote is sought in Y.Text('markdown'), the markdown itself. In a
`tiptap` document it is sought in the text the editor shows: the Y.XmlText runs of
Y.XmlFragment('default') in document order, a line break between runs (no markdown syntax), and
each position is made in the XmlText it falls in, as `Y.createRelativePositionFromTypeIndex(
xmlText, offset)` makes it in the editor (y-prosemirror resolves such positions).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pycrdt import Doc, Text, XmlElement, XmlFragment, XmlText

from mdsync.api.errors import ValidationFailed
from mdsync.collab import positions
from mdsync.collab.room import TEXT_NAME
from mdsync.collab.rooms import ROOMS
from mdsync.comments.models import AnchorIn, encode_position
from mdsync.tiptap.yxml import FRAGMENT_NAME

MAX_OCCURRENCES = 10_000  # a quote found more often than this is placed among the first ones


def find_quote(text: str, quote: str, prefix: str | None, suffix: str | None) -> int | None:
    """The code point index of the occurrence of `quote` in `text` that best fits its context,
    or None when it does not occur."""
    best, best_fit = None, -1
    at = text.find(quote)
    for _ in range(MAX_OCCURRENCES):
        if at < 0:
            break
        fit = 0
        if prefix:
            fit += _common_suffix(text[max(0, at - len(prefix)):at], prefix)
        if suffix:
            end = at + len(quote)
            fit += _common_prefix(text[end:end + len(suffix)], suffix)
        if fit > best_fit:
            best, best_fit = at, fit
        at = text.find(quote, at + 1)
    return best


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _common_suffix(a: str, b: str) -> int:
    return _common_prefix(a[::-1], b[::-1])


async def anchor_for(app: web.Application, document: Any, anchor: AnchorIn) -> dict:
    """The anchor to store: as written, with positions placed from the quote when none came."""
    stored = anchor.model_dump(include={"quote", "prefix", "suffix", "yjs_start", "yjs_end"})
    if anchor.yjs_start is not None:
        return stored
    place = {"text": _place_in_markdown, "tiptap": _place_in_runs}.get(document["content_model"])
    if place is None:
        raise ValidationFailed.field("anchor", "positions are not placed from a quote in this content model;"
                                               " send yjs_start and yjs_end")
    async with app[ROOMS].use(document["id"]) as room:
        # the text and the positions of one instant: nothing awaits from here to the return
        placed = place(room.doc, anchor)
    if placed is None:
        raise ValidationFailed.field("anchor", "the quote does not occur in the document;"
                                               " send yjs_start and yjs_end to anchor it anyway")
    stored["yjs_start"], stored["yjs_end"] = (encode_position(raw) for raw in placed)
    return stored


def _place_in_markdown(doc: Doc, anchor: AnchorIn) -> tuple[bytes, bytes] | None:
    text = str(doc.get(TEXT_NAME, type=Text))
    at = find_quote(text, anchor.quote, anchor.prefix, anchor.suffix)
    if at is None:
        return None
    shadow = positions.Shadow(doc)
    start = positions.utf16_index(text, at)
    end = start + positions.utf16_index(anchor.quote, len(anchor.quote))
    return shadow.position(start, positions.AFTER), shadow.position(end, positions.BEFORE)


def _place_in_runs(doc: Doc, anchor: AnchorIn) -> tuple[bytes, bytes] | None:
    runs = _runs_in_order(doc)
    shadows = positions.XmlTextShadows(doc)
    # which XmlText item is which run: by their text, in document order (runs of equal text are
    # interchangeable for the quote they hold)
    unclaimed: dict[str, list] = {}
    for item_id in shadows.ids:
        unclaimed.setdefault(shadows.texts[item_id], []).append(item_id)
    ids = [unclaimed[run].pop(0) if unclaimed.get(run) else None for run in runs]
    text = "\n".join(runs)
    at = find_quote(text, anchor.quote, anchor.prefix, anchor.suffix)
    if at is None:
        return None

    def position(char: int, assoc: int) -> bytes | None:
        for run, item_id in zip(runs, ids):
            if char <= len(run) and item_id is not None:
                return shadows.positions(item_id).position(positions.utf16_index(run, char), assoc)
            char -= len(run) + 1
        return None

    start, end = position(at, positions.AFTER), position(at + len(anchor.quote), positions.BEFORE)
    return None if start is None or end is None else (start, end)


def _runs_in_order(doc: Doc) -> list[str]:
    """The text of every Y.XmlText of the TipTap fragment, depth first (the editor's order)."""
    runs: list[str] = []

    def walk(node) -> None:
        for child in node.children:
            if isinstance(child, XmlText):
                runs.append("".join(part for part, _ in child.diff() if isinstance(part, str)))
            elif isinstance(child, XmlElement):
                walk(child)

    walk(doc.get(FRAGMENT_NAME, type=XmlFragment))
    return runs

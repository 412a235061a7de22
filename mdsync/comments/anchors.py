"""Where a thread sits in its document: the anchor stored with it.

An anchor is the quote the author selected (with optional `prefix`/`suffix` to pick among
repeats, as a W3C TextQuoteSelector) plus two Yjs relative positions, `yjs_start` and `yjs_end`,
that every client resolves in its own Y.Doc; they follow every later edit, from anyone, because
they name CRDT items rather than offsets. A client that has the selection in its Y.Doc sends the
positions itself. Given a quote alone, the server places it on the live document (loading the
room if nobody has it open): the occurrence whose surroundings best match `prefix`/`suffix`, the
first one on a tie. The start sticks to the quote's first character, the end to its last, so
text typed right before or right after the quote stays outside.

Positions are made for content model `text` (Y.Text('markdown'), whose text is the markdown).
For `tiptap` documents the quote lives in rendered markdown that does not map to positions in
Y.XmlFragment('default') here: such anchors must carry their positions (a limitation, 422).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mdsync.api.errors import ValidationFailed
from mdsync.collab import positions
from mdsync.collab.rooms import ROOMS
from mdsync.comments.models import AnchorIn, encode_position

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
    if document["content_model"] != "text":
        raise ValidationFailed.field("anchor", "positions are placed from a quote only in text documents;"
                                               " send yjs_start and yjs_end")
    async with app[ROOMS].use(document["id"]) as room:
        # the text and the positions of one instant: nothing awaits from here to the return
        text = room.text()
        at = find_quote(text, anchor.quote, anchor.prefix, anchor.suffix)
        if at is None:
            raise ValidationFailed.field("anchor", "the quote does not occur in the document;"
                                                   " send yjs_start and yjs_end to anchor it anyway")
        shadow = positions.Shadow(room.doc)
        start = positions.utf16_index(text, at)
        end = start + positions.utf16_index(anchor.quote, len(anchor.quote))
        stored["yjs_start"] = encode_position(shadow.position(start, positions.AFTER))
        stored["yjs_end"] = encode_position(shadow.position(end, positions.BEFORE))
    return stored

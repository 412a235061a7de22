"""Content model `tiptap` on top of Yjs: `YjsTipTapContent`, the `ContentBackend`
(documents/content.py) of documents whose content is TipTap's `Y.XmlFragment('default')`, read
and written as markdown.

Everything but writing is `collab.content.YjsContent`'s (ETags of the Yjs state, served states
for merges, the markdown projection, versions), with `TipTapInYjs` saying how the markdown is
made: the fragment rendered by render.py. Large documents are rendered in a worker thread from a
copy of the state taken on the event loop (a Doc is never shared between threads).

Writing (`PUT …/content`, version restores): the body is parsed (parse.py), then the block diff
(blockdiff.py) is applied to a private fork of the state the write is based on, in a worker
thread for large documents, and the fork's update is merged into the live room like any
client's:
- no `If-Match`, `*`, or the live state's ETag: the fork is the live state now;
- an older served ETag: the fork is the state served under it (states.py), editing as a client id
  derived from the ETag and the body (a retried PUT yields the same Yjs items, not a second copy);
  what others typed since survives, as for `text` documents. Unknown or expired ETag: 412.
A body that changes nothing changes no Yjs state. Markdown nested deeper than parse.py's limit
is refused with 422.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pycrdt import Doc

from mdsync.api.errors import PreconditionFailed, TooLarge, ValidationFailed
from mdsync.collab.content import YjsContent, merge_client_id
from mdsync.collab.etags import state_etag
from mdsync.collab.room import DocumentTooLarge, decode_state_vector
from mdsync.collab.yjs_markdown import nul_free
from mdsync.documents.content import if_match_etags, quote
from mdsync.tiptap import blockdiff, parse, yxml
from mdsync.tiptap.render import render
from mdsync.tiptap.schema import DEFAULT_SCHEMA, Guard, Schema, Unknown

# below these sizes the work is done on the event loop (a worker thread's hand-off costs more)
INLINE_STATE_BYTES = 32 * 1024
INLINE_MARKDOWN_CHARS = 8 * 1024


def render_state(state: bytes, schema: Schema = DEFAULT_SCHEMA) -> tuple[str, Unknown]:
    """The markdown of a TipTap document's Yjs state, and the names outside the schema met."""
    doc = Doc()
    doc.apply_update(state)
    unknown = Unknown()
    return render(yxml.read_blocks(yxml.fragment(doc), schema, unknown), schema, unknown), unknown


def diff_update(base: bytes, markdown: str, client_id: int | None, schema: Schema = DEFAULT_SCHEMA) -> bytes | None:
    """The Yjs update that turns the TipTap document `base` (a state) into `markdown`, made as
    `client_id` (any unused id when None or already editing `base`); None when nothing changes.
    Raises parse.TooDeep."""
    fork = Doc()
    fork.apply_update(base)
    if client_id is not None and client_id not in decode_state_vector(fork.get_state()):
        fork = Doc(client_id=client_id)
        fork.apply_update(base)
    captured: list[bytes] = []
    subscription = fork.observe(lambda event: captured.append(event.update))
    try:
        with fork.transaction(origin="mdsync-write"):
            blockdiff.write_markdown(yxml.fragment(fork), markdown, schema)
    finally:
        fork.unobserve(subscription)
    return captured[0] if captured else None


async def _off_loop(inline: bool, fn, *args):
    if inline:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class TipTapInYjs:
    """`collab.yjs_markdown.YjsMarkdown` of content model `tiptap`."""

    name = "tiptap"

    def __init__(self, schema: Schema = DEFAULT_SCHEMA, guard: Guard | None = None):
        self.schema = schema
        self.guard = guard or Guard()

    def snapshot(self, doc: Doc, size: int = 0) -> tuple[list[dict], Unknown] | bytes:
        """A small document read now (its blocks: reading is cheap, a copy of the state would
        cost more); a large one's whole state, a copy the worker thread renders from."""
        if size < INLINE_STATE_BYTES:
            unknown = Unknown()
            return yxml.read_blocks(yxml.fragment(doc), self.schema, unknown), unknown
        return doc.get_update()

    async def render(self, snapshot: tuple[list[dict], Unknown] | bytes, document_id: str | None = None) -> str:
        if isinstance(snapshot, bytes):
            markdown, unknown = await _off_loop(len(snapshot) < INLINE_STATE_BYTES, render_state, snapshot, self.schema)
        else:
            blocks, unknown = snapshot
            markdown = render(blocks, self.schema, unknown)
        if document_id is not None:
            self.guard.report(document_id, unknown)
        return nul_free(markdown)

    async def seed(self, markdown: str) -> bytes:
        return await _off_loop(len(markdown) < INLINE_MARKDOWN_CHARS, blockdiff.seed_update, markdown)

    def check(self, markdown: str) -> None:
        """ValidationFailed (422) for a body nesting deeper than the limit (a linear scan: before
        anything is parsed or loaded)."""
        try:
            parse.check_depth(parse.normalize_newlines(markdown))
        except parse.TooDeep as exc:
            raise ValidationFailed.field("body", str(exc)) from None

    async def diff(self, base: bytes, markdown: str, client_id: int | None) -> bytes | None:
        try:
            return await _off_loop(len(base) < INLINE_STATE_BYTES and len(markdown) < INLINE_MARKDOWN_CHARS,
                                   diff_update, base, markdown, client_id, self.schema)
        except parse.TooDeep as exc:
            raise ValidationFailed.field("body", str(exc)) from None


class YjsTipTapContent(YjsContent):
    """`ContentBackend` of content model `tiptap`."""

    model: TipTapInYjs

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        document_id = doc["id"]
        user_id = access.user_id if access is not None else None
        self.model.check(markdown)
        wanted = if_match_etags(if_match) if if_match is not None else []
        async with self.rooms.use(document_id) as room:
            try:
                if not wanted or "*" in wanted or state_etag(room.doc) in wanted:
                    base, client_id, result = room.encode_state(), None, "diff"
                else:
                    base = client_id = None
                    for etag in wanted:
                        rebuilt = await self.states.rebuild(document_id, etag)
                        if rebuilt is not None:
                            base, client_id = rebuilt.get_update(), merge_client_id(etag, markdown)
                            break
                    if base is None:
                        self.on_result("refused")
                        raise PreconditionFailed("that ETag is unknown or older than the retention window;"
                                                 " GET the content again")
                    result = "merge"
                update = await self.model.diff(base, markdown, client_id)
                if update is not None:
                    room.apply_update(update, user_id)
                self.on_result(result)
            except DocumentTooLarge as exc:
                raise TooLarge(str(exc)) from None
            await room.drain()
            if self.projector is not None:
                projected = await self.projector.project_now(room)
                # answer what the projection rendered, when it is still the state to serve (a
                # large document is rendered once, not twice)
                if projected is not None:
                    text, etag = projected
                    if await self.states.record(document_id, room.doc, room.size) == etag:
                        return text, quote(etag)
            return await self._serve(room)

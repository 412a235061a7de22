"""Content models on top of Yjs: `YjsContent`, what every Yjs-backed `ContentBackend`
(documents/content.py) shares, and `YjsTextContent`, the backend of documents whose markdown lives
in `Y.Text('markdown')` (TipTap's is tiptap/content.py). How a model keeps its markdown in the
Yjs document: yjs_markdown.py.

- ETag: `etags.state_etag` of the CRDT state, the same from `etag` (document metadata) and
  `read`; a document never opened is served as the deterministic seed state its room will load.
- `read`: the live text when the room is loaded; else the stored projection, but only when it is
  known to be exact (content_heads says it was made from the very update-log seq the database
  holds, and its ETag's state is retained); otherwise the room is loaded and read. A document with
  CRDT state is never answered from a projection that trails it. What is served is recorded in
  `states.States`, so that a later If-Match on it can be merged.
- `write`: the new markdown becomes a minimal text diff (`text_ops`: delete/insert ops in one
  transaction) on the live Y.Text, so editors see an edit. With a stale `If-Match` the state
  served under that ETag is rebuilt, the client's base→body diff is replayed on a fork of it, and
  the fork's update is merged into the live document: both sides' edits survive. Unknown or
  expired ETag: 412.
- A stale-base merge edits as a client id derived from the ETag and the body, so a retried PUT
  yields the very same Yjs items (ignored the second time) instead of a second copy of its text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pycrdt import Doc, Text

from mdsync.api.errors import PreconditionFailed, TooLarge
from mdsync.collab import store
from mdsync.collab.etags import state_etag
from mdsync.collab.room import TEXT_NAME, DocumentTooLarge, Room, decode_state_vector
from mdsync.collab.rooms import RoomManager
from mdsync.collab.states import States
from mdsync.collab.text_ops import apply_text_diff, text_ops_async
from mdsync.collab.yjs_markdown import TEXT, YjsMarkdown
from mdsync.db import Database
from mdsync.documents.content import if_match_etags, quote

if TYPE_CHECKING:
    from mdsync.collab.projection import Heads, Projector

def merge_client_id(etag: str, markdown: str) -> int:
    """The Yjs client id a stale-base merge edits as: derived from the base and the body, so a
    retried PUT produces the very same items (Yjs ignores items it has) instead of a second copy."""
    digest = hashlib.sha256(etag.encode() + b"\0" + markdown.encode("utf-8", "surrogatepass")).digest()
    return (int.from_bytes(digest[:4], "big") & 0x7FFFFFFF) or 1


class YjsContent:
    """What every Yjs-backed `ContentBackend` shares (ETags, reads, served states, projection,
    versions); `model` says how the markdown lives in the Yjs document. Subclasses write."""

    def __init__(self, db: Database, rooms: RoomManager, states: States, heads: Heads, model: YjsMarkdown,
                 on_result: Callable[[str], None] | None = None):
        self.db = db
        self.rooms = rooms
        self.states = states
        self.heads = heads  # the ETags of stored projections (projection.py)
        self.model = model
        self.on_result = on_result or (lambda kind: None)  # metrics: "diff" · "merge" · "refused"
        self.projector: Projector | None = None  # REST writes store their projection at once

    # -- ContentBackend ----------------------------------------------------------------------
    async def etag(self, doc: Any) -> str:
        """The ETag `read` would answer now, its state retained like every served state, so an
        If-Match on it merges (one scheme for both routes). Without reading the markdown when the
        live room or a retained head knows it."""
        document_id = doc["id"]
        room = self.rooms.loaded(document_id)
        if room is not None:
            return quote(await self.states.record(document_id, room.doc, room.size, self.model))
        head = self.heads.get(document_id)
        if head is not None and await self.states.touch(document_id, head):
            return quote(head)
        return (await self.read(doc))[1]

    async def read(self, doc: Any) -> tuple[str, str]:
        document_id = doc["id"]
        room = self.rooms.loaded(document_id)
        if room is None:
            stored = await self._exact_projection(document_id)
            if stored is not None:
                markdown, etag = stored
                if await self.states.touch(document_id, etag):
                    return markdown, quote(etag)
            elif (seeded := await self._serve_seed(document_id)) is not None:
                return seeded
        async with self.rooms.use(document_id) as room:
            return await self._serve(room)

    async def markdown(self, doc: Any) -> str:
        room = self.rooms.loaded(doc["id"])
        if room is None:
            stored = await self._exact_projection(doc["id"])
            if stored is not None:
                return stored[0]
        async with self.rooms.use(doc["id"]) as room:
            return await self.room_markdown(room)

    async def room_markdown(self, room: Room) -> str:
        snapshot = self.model.snapshot(room.doc, room.size)  # before any await: the caller's instant
        return await self.model.render(snapshot, room.document_id)

    async def state(self, room: Room) -> tuple[str, bytes]:
        snapshot, state = self.model.snapshot(room.doc, room.size), room.encode_state()
        return await self.model.render(snapshot, room.document_id), state

    # -- the parts ---------------------------------------------------------------------------
    async def _written(self, room: Room) -> tuple[str, str]:
        """The end of every write: its edit committed, its projection stored at once, and the
        content served (its ETag retained for later merges)."""
        await room.drain()
        if self.projector is not None:
            await self.projector.project_now(room)
        return await self._serve(room)

    async def _serve(self, room: Room) -> tuple[str, str]:
        text, etag = await self.states.serve(room.document_id, room.doc, room.size, self.model)
        return text, quote(etag)

    async def _serve_seed(self, document_id: str) -> tuple[str, str] | None:
        """A document that has no CRDT state yet (never opened) holds exactly the deterministic
        seed of its markdown (`model.seed`), the state its room will load: serve that state
        without loading the room. None when the document has CRDT state."""
        markdown = await self.db.value(
            "SELECT markdown FROM documents d WHERE id = ?1 AND content_model = ?2"
            " AND NOT EXISTS (SELECT 1 FROM doc_snapshots WHERE document_id = ?1)"
            " AND NOT EXISTS (SELECT 1 FROM doc_updates WHERE document_id = ?1)", (document_id, self.model.name))
        if markdown is None:
            return None
        seed = Doc()
        seed.apply_update(await self.model.seed(markdown))
        text, etag = await self.states.serve(document_id, seed, len(markdown), self.model)
        if self.rooms.loaded(document_id) is None and self.heads.get(document_id) is None:
            self.heads.note(document_id, etag)  # its projection (the markdown) is exactly that state
        return text, quote(etag)

    async def _exact_projection(self, document_id: str) -> tuple[str, str] | None:
        """(markdown, etag) of the stored projection when it is exactly the stored CRDT state and
        that state is retained; None when the room must be loaded to know."""
        row = await self.db.one(
            f"SELECT d.markdown, h.etag, h.crdt_seq, {store.stored_seq(self.db.engine, 'd.id')} AS crdt_now,"
            " (SELECT served_at FROM content_states s WHERE s.document_id = d.id AND s.etag = h.etag) AS served_at"
            " FROM documents d JOIN content_heads h ON h.document_id = d.id WHERE d.id = ?", (document_id,))
        if (row is None or row["crdt_now"] == 0 or row["crdt_now"] != row["crdt_seq"]
                or row["served_at"] is None or row["served_at"] < self.states.cutoff()):
            return None
        self.heads.note(document_id, row["etag"])
        return row["markdown"], row["etag"]


class YjsTextContent(YjsContent):
    """`ContentBackend` of content model `text`."""

    def __init__(self, db: Database, rooms: RoomManager, states: States, heads: Heads,
                 on_result: Callable[[str], None] | None = None):
        super().__init__(db, rooms, states, heads, TEXT, on_result)

    async def write(self, doc: Any, markdown: str, if_match: str | None, access: Any) -> tuple[str, str]:
        document_id = doc["id"]
        user_id = access.user_id if access is not None else None
        async with self.rooms.use(document_id) as room:
            wanted = if_match_etags(if_match) if if_match is not None else []
            try:
                if not wanted or "*" in wanted:
                    # no base named: a diff against the text as it is when applied
                    old = room.text()
                    ops = await text_ops_async(old, markdown)
                    room.edit(lambda text: apply_text_diff(text, markdown, old, ops), user_id)
                    self.on_result("diff")
                elif not await self._apply_if_current(room, wanted, markdown, user_id):
                    base = None
                    for etag in wanted:
                        base = await self.states.rebuild(document_id, etag, merge_client_id(etag, markdown))
                        if base is not None:
                            break
                    if base is None:
                        self.on_result("refused")
                        raise PreconditionFailed("that ETag is unknown or older than the retention window;"
                                                 " GET the content again")
                    await self._merge(room, base, markdown, user_id)
                    self.on_result("merge")
            except DocumentTooLarge as exc:
                raise TooLarge(str(exc)) from None
            return await self._written(room)

    async def _apply_if_current(self, room: Room, wanted: list[str], markdown: str, user_id: str | None) -> bool:
        """The If-Match names the live state: apply base→markdown as a diff, unless the room moved
        on while the diff was computed (then False: the caller merges from the named base)."""
        if state_etag(room.doc) not in wanted:
            return False
        seq, old = room.seq, room.text()
        ops = await text_ops_async(old, markdown)
        if room.seq != seq:
            return False
        room.edit(lambda text: apply_text_diff(text, markdown, old, ops), user_id)
        self.on_result("diff")
        return True

    @staticmethod
    async def _merge(room: Room, base: Doc, markdown: str, user_id: str | None) -> None:
        """Replay base→markdown on `base` (a private fork at the served state, editing as the
        client id `merge_client_id` derived) and apply what the live document lacks of it. The
        live state vector is read at the instant the update is applied."""
        if base.client_id in decode_state_vector(base.get_state()):
            # the derived id already edits the base (a 1 in 2^31 chance): any unused id will do
            fresh = Doc()
            fresh.apply_update(base.get_update())
            base = fresh
        text = base.get(TEXT_NAME, type=Text)
        old = str(text)
        ops = await text_ops_async(old, markdown)
        if not ops:
            return  # the body is the base: nothing of the client's to merge
        with base.transaction(origin="mdsync-merge"):
            apply_text_diff(text, markdown, old, ops)
        update = base.get_update(room.doc.get_state())
        room.apply_update(update, user_id)

"""The markdown projection of a Yjs-backed content model: the markdown its backend derives from
a room (`ContentBackend.room_markdown`; for `text`, Y.Text('markdown')) copied into
documents.markdown (with size, updated_at, a content revision and a change-feed upsert, in one
transaction: `documents.content.store_markdown`) for REST reads, search, versions and export.
One `Projector` per such content model; it ignores rooms of other models.

When: an idle debounce after the last update (`collab.projection_debounce`), but never later than
`collab.projection_max_delay` after the first update not yet projected, even while typing goes
on (docs/api.md "Document content": REST reads reflect an edit within 2 s). Also when a room
closes (grace period or SIGTERM: a room close hook, awaited before the room unloads).

Off the hot path: the update listener only notes the time (one dict lookup); a timer re-checks
when the wait is over and starts the work in a task. The work itself reads the text once (about
10 ms for a heavily edited 120 KB document, measured: no cheaper read exists in pycrdt, and the
debounce bounds it to a few per second per document) and hands the write to the database writer.
Along with the markdown, content_heads records the ETag and update-log seq it was made from, so
REST reads of an unloaded document can tell whether the projection is exact (content.py);
`Heads` keeps those ETags in memory, so document metadata shows them without loading a room.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mdsync import clock
from mdsync.collab.etags import state_etag
from mdsync.collab.room import Room
from mdsync.collab.states import States
from mdsync.db import Database, Tx
from mdsync.documents.content import store_markdown

if TYPE_CHECKING:
    from mdsync.collab.content import YjsContent

log = logging.getLogger("mdsync.collab.projection")


@dataclass
class _Dirty:
    room: Room
    since: float          # loop time of the first update not yet projected
    last: float           # loop time of the latest update
    timer: asyncio.TimerHandle | None = None
    running: asyncio.Task | None = None
    waiters: list = field(default_factory=list)


class Heads:
    """document id -> the ETag of its stored projection, for the projections known to be exactly
    their document's stored CRDT state (filled at startup, as projections are stored and read)."""

    KEPT = 100000

    def __init__(self, db: Database):
        self.db = db
        self._etags: OrderedDict[str, str] = OrderedDict()

    def get(self, document_id: str) -> str | None:
        return self._etags.get(document_id)

    def note(self, document_id: str, etag: str) -> None:
        self._etags[document_id] = etag
        self._etags.move_to_end(document_id)
        while len(self._etags) > self.KEPT:
            self._etags.popitem(last=False)

    async def load(self) -> None:
        """At startup: the projections that are exactly their document's stored state."""
        rows = await self.db.all(
            "SELECT h.document_id, h.etag FROM content_heads h WHERE h.crdt_seq ="
            " max(coalesce((SELECT seq FROM doc_snapshots s WHERE s.document_id = h.document_id), 0),"
            "     coalesce((SELECT max(seq) FROM doc_updates u WHERE u.document_id = h.document_id), 0))")
        for row in rows[-self.KEPT:]:
            self.note(row["document_id"], row["etag"])


class Projector:
    def __init__(self, db: Database, model: str, backend: YjsContent, states: States, heads: Heads, *,
                 debounce: float, max_delay: float, observe_lag: Callable[[float], Any] | None = None):
        self.db = db
        self.model = model
        self.backend = backend
        self.states = states
        self.heads = heads
        self.debounce = debounce
        self.max_delay = max(max_delay, 0.0)
        self.observe_lag = observe_lag or (lambda seconds: None)
        self._dirty: dict[str, _Dirty] = {}
        self._running: dict[str, asyncio.Task] = {}
        self._models: dict[str, str] = {}  # document id -> content model (it never changes)

    # -- the hot path: the room_update hook ------------------------------------------------
    def on_update(self, room: Room, update: bytes, user_id: str | None) -> None:
        entry = self._dirty.get(room.document_id)
        if entry is None and self._models.get(room.document_id, self.model) != self.model:
            return  # a document of another content model: not projected here
        loop = asyncio.get_running_loop()
        now = loop.time()
        if entry is None:
            entry = self._dirty[room.document_id] = _Dirty(room, now, now)
            entry.timer = loop.call_later(min(self.debounce, self.max_delay), self._due, room.document_id)
        else:
            entry.last = now
            entry.room = room

    def _due(self, document_id: str) -> None:
        entry = self._dirty.get(document_id)
        if entry is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        when = min(entry.last + self.debounce, entry.since + self.max_delay)
        if now < when - 0.001 or document_id in self._running:
            # still typing (and not yet at the bound), or the previous projection is being stored
            entry.timer = loop.call_later(max(when - now, 0.01), self._due, document_id)
            return
        entry.timer = None
        del self._dirty[document_id]
        task = asyncio.ensure_future(self._project(entry.room, entry.since))
        self._running[document_id] = task
        task.add_done_callback(lambda _t: self._running.pop(document_id, None))

    # -- the work ----------------------------------------------------------------------------
    async def _project(self, room: Room, since: float | None) -> tuple[str, str] | None:
        if room.closing:
            return None  # the close hook stores the final projection
        try:
            stored = await self.store(room)
            if since is not None:
                self.observe_lag(asyncio.get_running_loop().time() - since)
            return stored
        except Exception:
            log.exception("could not store the markdown projection of %s", room.document_id)
            return None

    async def store(self, room: Room) -> tuple[str, str] | None:
        """Store the room's markdown now (text, ETag and log seq read at one instant); the
        (markdown, unquoted ETag) stored, or None."""
        if not await self.projects(room.document_id):
            return None
        etag, seq = state_etag(room.doc), room.seq
        text = await self.backend.room_markdown(room)  # reads the room before its first await: same instant
        if text is None:
            return None
        stored = await self.db.write(store_projection, room.document_id, text, etag, seq, clock.iso())
        if not stored:
            return None
        self.heads.note(room.document_id, etag)
        return text, etag

    async def _settle(self, room: Room) -> _Dirty | None:
        """Cancel the room's pending projection and wait for one being stored; returns what was
        pending (None when nothing was)."""
        entry = self._dirty.pop(room.document_id, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()
        running = self._running.get(room.document_id)
        if running is not None:
            await asyncio.gather(running, return_exceptions=True)
        return entry

    async def project_now(self, room: Room) -> tuple[str, str] | None:
        """Store the projection at once (after a REST write: the writer's next read of the tree,
        metadata or change feed shows it) instead of after the debounce; what was stored
        (markdown, unquoted ETag), or None."""
        entry = await self._settle(room)
        return await self._project(room, entry.since if entry is not None else None)

    async def on_close(self, room: Room) -> None:
        """Room close hook (grace period over, or SIGTERM): the final projection, stored before
        the room unloads; its state recorded so reads of the closed document need no load."""
        entry = await self._settle(room)
        if room.manager.rooms.get(room.document_id) is not room:
            return
        if not await self.projects(room.document_id):
            return
        try:
            await self.states.serve(room.document_id, room.doc, room.size, self.backend.model)
        except Exception:
            log.exception("could not record the final state of %s", room.document_id)
        await self.store(room)
        if entry is not None:
            self.observe_lag(asyncio.get_running_loop().time() - entry.since)

    async def projects(self, document_id: str) -> bool:
        """Whether the document is of this projector's content model."""
        model = self._models.get(document_id)
        if model is None:
            model = await self.db.value("SELECT content_model FROM documents WHERE id = ?", (document_id,))
            if model is None:
                return False
            if len(self._models) > 100000:
                self._models.clear()
            self._models[document_id] = model
        return model == self.model

    async def flush(self) -> None:
        """Store every pending projection now (tests, shutdown of the projector)."""
        for document_id, entry in list(self._dirty.items()):
            if entry.timer is not None:
                entry.timer.cancel()
            self._dirty.pop(document_id, None)
            await self._project(entry.room, entry.since)
        if self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)


def store_projection(tx: Tx, document_id: str, markdown: str, etag: str, crdt_seq: int, now: str) -> bool:
    """Write the projection and its provenance. The markdown, its size, updated_at, the content
    revision and a change-feed upsert only change when the markdown did. False when the document
    is gone."""
    row = tx.one("SELECT markdown = ? AS same FROM documents WHERE id = ?", (markdown, document_id))
    if row is None:
        return False
    if not row["same"]:
        store_markdown(tx, document_id, markdown, trashed=True)
    tx.execute("INSERT INTO content_heads (document_id, etag, crdt_seq, updated_at) VALUES (?, ?, ?, ?)"
               " ON CONFLICT (document_id) DO UPDATE SET etag = excluded.etag, crdt_seq = excluded.crdt_seq,"
               " updated_at = excluded.updated_at", (document_id, etag, crdt_seq, now))
    return True

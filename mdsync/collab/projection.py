"""The markdown projection of a Yjs-backed content model: the markdown its backend derives from
a room (`ContentBackend.room_markdown`; for `text`, Y.Text('markdown')) copied into
documents.markdown (with size, updated_at, a content revision and a change-feed upsert, in one
transaction: `documents.content.store_markdown`) for REST reads, search, versions and export.
One `Projector` per such content model; it ignores rooms of other models.

When: an idle debounce after the last update (`collab.projection_debounce`), but never later than
`collab.projection_max_delay` after the first update not yet projected, even while typing goes
on (docs/api.md "Document content": REST reads reflect an edit within 2 s). Also when a room
closes (grace period or SIGTERM: a room close hook, awaited before the room unloads).

Off the hot path: the update listener only notes the time (one dict lookup). One timer per
projector sweeps the waiting documents when the earliest is due, on a 0.1 s grid; the documents
due at a sweep are projected by one task and stored by one writer job (500 documents typed in at
once: a few commits per second, not 500 jobs, tasks and timers). The work itself reads the text once (about
10 ms for a heavily edited 120 KB document, measured: no cheaper read exists in pycrdt, and the
debounce bounds it to a few per second per document) and hands the write to the database writer.
Along with the markdown, content_heads records the ETag and update-log seq it was made from, so
REST reads of an unloaded document can tell whether the projection is exact (content.py);
`Heads` keeps those ETags in memory, so document metadata shows them without loading a room.

Several nodes (`clustered`): each node projects the edits of its own sockets, so two nodes may
project one document. A projection also records what state it was made from
(`content_heads.made_from`), and `store_projection` writes it under a per-document advisory lock
only when it is new: not the state stored already, not older than it (docs/architecture.md "The
projection and automatic versions across nodes"). A projection that lacks part of what was
stored (the relay has not brought it yet), or that met another node storing, goes again after the
debounce (at most `AGAIN` times in a row).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mdsync import clock
from mdsync.cluster import once
from mdsync.collab import store
from mdsync.collab.etags import state_etag
from mdsync.collab.room import Room
from mdsync.collab.states import States
from mdsync.collab.yjs_markdown import nul_free
from mdsync.db import Database, Tx
from mdsync.documents.content import CHUNK, store_changed_markdowns, store_markdown

if TYPE_CHECKING:
    from mdsync.collab.content import YjsContent

log = logging.getLogger("mdsync.collab.projection")

# Due documents are looked for on a grid of this many seconds: those due within one step are
# projected together (adds at most this much to the projection's lag; max_delay leaves room)
SWEEP = 0.1
# several nodes: how many times in a row a document is projected again after a PARTIAL or BUSY result
AGAIN = 20

# what store_projection did
STORED = "stored"      # the projection is this state's (written now, or already)
GONE = "gone"          # the document is gone
COVERED = "covered"    # several nodes: what is stored holds everything this state holds: nothing written
PARTIAL = "partial"    # several nodes: written, but what was stored held edits this state lacks
BUSY = "busy"          # several nodes: another node is storing this document's projection right now


@dataclass
class _Dirty:
    room: Room
    since: float          # loop time of the first update not yet projected
    last: float           # loop time of the latest update


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

    def forget(self, document_id: str) -> None:
        self._etags.pop(document_id, None)

    def on_change(self, payload: str) -> None:
        """Several nodes: a change-feed row committed by any node (PostgreSQL NOTIFY,
        db/notifications.py: "origin seq workspace entity id user"). Another node may have stored
        a newer projection of a document: what this node remembers of it goes (the next read
        asks the database)."""
        parts = payload.split(" ")
        if len(parts) >= 5 and parts[3] == "document":
            self.forget(parts[4])

    def clear(self) -> None:
        """Several nodes: notifications may have been missed (the LISTEN connection (re)connected)."""
        self._etags.clear()

    async def load(self) -> None:
        """At startup: the projections that are exactly their document's stored state."""
        rows = await self.db.all(
            "SELECT h.document_id, h.etag FROM content_heads h"
            f" WHERE h.crdt_seq = {store.stored_seq(self.db.engine, 'h.document_id')}")
        for row in rows[-self.KEPT:]:
            self.note(row["document_id"], row["etag"])


class Projector:
    def __init__(self, db: Database, model: str, backend: YjsContent, states: States, heads: Heads, *,
                 debounce: float, max_delay: float, observe_lag: Callable[[float], Any] | None = None,
                 clustered: bool = False):
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
        self.clustered = clustered
        self._again: dict[str, int] = {}   # several nodes: document -> projections made again in a row
        self._sweep: asyncio.TimerHandle | None = None   # the next look for due documents ...
        self._sweep_at: float | None = None              # ... and its loop time

    # -- the hot path: the room_update hook ------------------------------------------------
    def on_update(self, room: Room, update: bytes, user_id: str | None) -> None:
        entry = self._dirty.get(room.document_id)
        if entry is None and room.content_model != self.model:
            return  # a document of another content model: not projected here
        now = room.loop.time()
        if entry is None:
            self._dirty[room.document_id] = _Dirty(room, now, now)
            self._wake_at(now + min(self.debounce, self.max_delay))
        else:
            entry.last = now
            entry.room = room

    def _wake_at(self, when: float) -> None:
        """Sweep at `when`, rounded up to the SWEEP grid: documents due close together are
        projected together (one task, one writer job)."""
        when = math.ceil(when / SWEEP) * SWEEP
        if self._sweep_at is not None and self._sweep_at <= when:
            return
        if self._sweep is not None:
            self._sweep.cancel()
        loop = asyncio.get_running_loop()
        self._sweep_at = when
        self._sweep = loop.call_at(when, self._sweep_due)

    def _sweep_due(self) -> None:
        self._sweep = self._sweep_at = None
        now = asyncio.get_running_loop().time()
        due, next_at = [], None
        for document_id, entry in self._dirty.items():
            when = min(entry.last + self.debounce, entry.since + self.max_delay)
            if now < when - 0.001 or document_id in self._running:
                # still typing (and not yet at the bound), or the previous projection is being stored
                next_at = max(when, now + SWEEP) if next_at is None else min(next_at, max(when, now + SWEEP))
            else:
                due.append(entry)
        for entry in due:
            del self._dirty[entry.room.document_id]
        if next_at is not None:
            self._wake_at(next_at)
        if not due:
            return
        task = asyncio.ensure_future(self._project_many(due))
        ids = [entry.room.document_id for entry in due]
        for document_id in ids:
            self._running[document_id] = task

        def done(_task: asyncio.Task) -> None:
            for document_id in ids:
                if self._running.get(document_id) is task:
                    del self._running[document_id]

        task.add_done_callback(done)

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

    async def _project_many(self, entries: list[_Dirty]) -> None:
        """The projections of several documents, read one after the other and stored in one job."""
        rows = []
        try:
            for entry in entries:
                room = entry.room
                if room.closing or room.content_model != self.model:
                    continue  # a closing room's close hook stores the final projection
                etag, seq, made_from = state_etag(room.doc), room.crdt_seq(), self._made_from(room)
                text = await self.backend.room_markdown(room)  # reads the room before its first await
                if text is not None:
                    rows.append((room.document_id, text, etag, seq, made_from, entry))
            if not rows:
                return
            try:
                stored = await self.db.write(store_projections, [row[:5] for row in rows], clock.iso())
            except Exception:
                stored = await self._store_alone(rows)
        except Exception:
            log.exception("could not store the markdown projections of %d documents", len(entries))
            return
        now = asyncio.get_running_loop().time()
        for (document_id, _, etag, _, _, entry), result in zip(rows, stored):
            if result == STORED or result == PARTIAL:
                self.heads.note(document_id, etag)
            self._follow(entry.room, result)
            self.observe_lag(now - entry.since)

    def _made_from(self, room: Room) -> bytes | None:
        """Several nodes: the identity of the room's state (read with its ETag, at one instant)."""
        return once.identity(room.doc) if self.clustered else None

    def _follow(self, room: Room, result: str | None) -> None:
        """Several nodes: project the room again after the debounce when this projection lacked
        what another node had stored, or met that node storing."""
        if result != PARTIAL and result != BUSY:
            self._again.pop(room.document_id, None)
            return
        tries = self._again.get(room.document_id, 0) + 1
        if tries > AGAIN or room.closing:
            self._again.pop(room.document_id, None)
            return
        self._again[room.document_id] = tries
        self.on_update(room, b"", None)

    async def _store_alone(self, rows: list[tuple]) -> list[str | None]:
        """The shared job failed: each projection again as a job of its own, so that a document
        the database refuses (PostgreSQL holds no NUL character in text) fails alone."""
        now = clock.iso()
        results = await asyncio.gather(*[self.db.write(store_projection, document_id, text, etag, seq, now, made_from)
                                         for document_id, text, etag, seq, made_from, _ in rows],
                                       return_exceptions=True)
        for (document_id, *_), result in zip(rows, results):
            if isinstance(result, BaseException):
                log.error("could not store the markdown projection of %s: %s", document_id, result)
        return [None if isinstance(result, BaseException) else result for result in results]

    async def store(self, room: Room) -> tuple[str, str] | None:
        """Store the room's markdown now (text, ETag and log seq read at one instant); the
        (markdown, unquoted ETag) stored, or None."""
        result, text, etag = await self._write(room)
        return (text, etag) if result == STORED or result == PARTIAL else None

    async def _write(self, room: Room) -> tuple[str | None, str, str]:
        """(what `store_projection` did or None, markdown, ETag)."""
        if not await self.projects(room.document_id):
            return None, "", ""
        etag, seq, made_from = state_etag(room.doc), room.crdt_seq(), self._made_from(room)
        text = await self.backend.room_markdown(room)  # reads the room before its first await: same instant
        if text is None:
            return None, "", ""
        result = await self.db.write(store_projection, room.document_id, text, etag, seq, clock.iso(), made_from)
        self._follow(room, result)
        if result == STORED or result == PARTIAL:
            self.heads.note(room.document_id, etag)
        return result, text, etag

    async def _settle(self, room: Room) -> _Dirty | None:
        """Cancel the room's pending projection and wait for one being stored; returns what was
        pending (None when nothing was)."""
        entry = self._dirty.pop(room.document_id, None)
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
        for _ in range(20):  # several nodes: another node storing this document's projection is done soon
            result, _, _ = await self._write(room)
            if result != BUSY:
                break
            await asyncio.sleep(0.1)
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
        entries, self._dirty = list(self._dirty.values()), {}
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = self._sweep_at = None
        if entries:
            await self._project_many(entries)
        if self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)


def store_projections(tx: Tx, rows: list[tuple], now: str) -> list[str]:
    """`store_projection` for several documents: (document id, markdown, ETag, seq[, made_from]) rows.
    One node (no made_from), each document once: the same writes in a few statements for the
    whole job (`store_changed_markdowns`: one UPDATE and one change-feed insert per chunk of
    documents; the content_heads rows in one executemany), not four per document."""
    if any(len(row) > 4 and row[4] is not None for row in rows) or len({row[0] for row in rows}) < len(rows):
        return [store_projection(tx, *row[:4], now, *row[4:]) for row in rows]
    docs = [(row[0], nul_free(row[1])) for row in rows]
    written = store_changed_markdowns(tx, docs, now)
    unwritten = [doc_id for doc_id, _ in docs if doc_id not in written]
    gone = set(unwritten)
    for start in range(0, len(unwritten), CHUNK):  # written nothing: the same markdown, or gone
        chunk = unwritten[start:start + CHUNK]
        gone.difference_update(row[0] for row in tx.all(
            "SELECT id FROM documents WHERE id IN (" + ", ".join(["?"] * len(chunk)) + ")", chunk))
    heads = [(row[0], row[2], row[3], now, None) for row in rows if row[0] not in gone]
    if heads:
        tx.executemany(_HEADS, heads)
    return [GONE if row[0] in gone else STORED for row in rows]


_HEADS = ("INSERT INTO content_heads (document_id, etag, crdt_seq, updated_at, made_from) VALUES (?, ?, ?, ?, ?)"
          " ON CONFLICT (document_id) DO UPDATE SET etag = excluded.etag, crdt_seq = excluded.crdt_seq,"
          " updated_at = excluded.updated_at, made_from = excluded.made_from")


def store_projection(tx: Tx, document_id: str, markdown: str, etag: str, crdt_seq: int, now: str,
                     made_from: bytes | None = None) -> str:
    """Write the projection and its provenance. The markdown, its size, updated_at, the content
    revision and a change-feed upsert only change when the markdown did. STORED, or GONE when the
    document is gone.

    Several nodes (`made_from`, the identity of the state it was made from: mdsync/cluster/once.py):
    under the document's advisory lock (BUSY when another node holds it), nothing is written when
    the stored projection was made from this very state (STORED) or from one that holds all of
    it (COVERED); PARTIAL when it is written over one that held edits this state lacks."""
    markdown = nul_free(markdown)  # rendered so already; the stored text must be so on both engines
    result = STORED
    if made_from is not None:
        if not once.try_lock(tx, "projection", document_id):
            return BUSY
        head = tx.one("SELECT etag, made_from FROM content_heads WHERE document_id = ?", (document_id,))
        if head is not None and head["etag"] == etag:
            # the same state: only the log seq it ends at may be newer here (the other node
            # projected it before its last rows committed), which makes reads know it is exact
            tx.execute("UPDATE content_heads SET crdt_seq = ? WHERE document_id = ? AND crdt_seq < ?",
                       (crdt_seq, document_id, crdt_seq))
            return STORED if tx.value("SELECT 1 FROM documents WHERE id = ?", (document_id,)) else GONE
        if head is not None and head["made_from"] is not None:
            stored, ours = once.decode(bytes(head["made_from"])), once.decode(made_from)
            if once.covers(stored, ours):
                return COVERED
            if not once.covers(ours, stored):
                result = PARTIAL
    # one statement when the markdown changed (as it mostly has); a second only when it wrote nothing
    if store_markdown(tx, document_id, markdown, trashed=True, if_changed=True, now=now) is None:
        if tx.value("SELECT 1 FROM documents WHERE id = ?", (document_id,)) is None:
            return GONE
    tx.execute(_HEADS, (document_id, etag, crdt_seq, now, made_from))
    return result

"""The room manager: every open document of this process, loaded once, unloaded when idle.

`app[ROOMS]` is the entry point for other features:

    async with rooms.use(document_id) as room:     # get-or-load; stays loaded while used
        room.text(); room.state_vector(); room.encode_state(sv)
        room.apply_update(update, user_id)          # broadcast + persist (ValueError if garbage)
        room.edit(lambda text: text.insert(0, "# "), user_id)
        await room.drain()                          # wait until it is committed
    rooms.presence(document_id)                     # connected users, from tokens
    rooms.loaded(document_id)                       # the live Room or None (no loading)
    await rooms.reauthorize(user_id=…, workspace_id=…, document_id=…)  # after role/member changes

Other features follow the rooms through the `room_update` and `room_close` hooks (mdsync/hooks.py).

Design around the upstream defects listed in docs/architecture.md "Facts the code relies on": a
room is created and loaded by exactly one task per document (concurrent joiners await the same
load: no join race), loaded completely from snapshot + log before any client is served, unloaded
a grace period after its last user left (never while one is using it), and flushed on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pycrdt import Doc

from mdsync.collab import store
from mdsync.collab.connection import Connection, slim_access
from mdsync.collab.keepalive import Deadlines, Pings
from mdsync.collab.room import Room, missing_from, seed_update
from mdsync.db import Database
from mdsync.hooks import Hooks

if TYPE_CHECKING:
    from mdsync.collab.replication import Replication

log = logging.getLogger("mdsync.collab")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_RESTART = 1012


class CollabStats:
    """Counters for /metrics."""

    def __init__(self):
        self.updates = 0
        self.update_bytes = 0
        self.deliveries = 0
        self.readonly_dropped = 0
        self.garbage_frames = 0
        self.oversized_closed = 0
        self.slow_closed = 0
        self.flushes = 0
        self.flushed_updates = 0
        self.flush_errors = 0
        self.flush_seconds_total = 0.0
        self.compactions = 0
        self.remote_updates = 0  # rows committed by other nodes, applied here
        self.rooms_loaded = 0
        self.rooms_unloaded = 0
        self.connections_total = 0
        self.refused = 0


async def _seed_text(markdown: str) -> bytes:
    return seed_update(markdown)


@dataclass(frozen=True)
class ConnectionLimits:
    """How many sockets may be open (config `[collab]`; over a limit: 1013 on /ws/docs,
    PermissionDenied `too-many-connections` for a Hocuspocus document).

    One user holds far fewer connections on a document than the document allows
    (`per_user_per_document`), so no single account — a viewer multiplexing hundreds of
    Hocuspocus sessions — can fill it; share-link sockets count against their link
    (`per_share_link`); and the last `reserved_for_writers` places of a document are for
    connections that may write: read-only ones never starve the editors."""

    per_user: int = 5000
    per_document: int = 1000
    per_user_per_document: int = 32
    per_share_link: int = 200
    reserved_for_writers: int = 100


class RoomManager:
    def __init__(self, db: Database, *, grace_seconds: float = 10.0, snapshot_after_updates: int = 1000,
                 snapshot_after_bytes: int = 1 << 20, max_document_bytes: int = 16 << 20,
                 flush_delay: float = 0.05, access_recheck: Callable[[Any], Awaitable[Any]] | None = None,
                 limits: ConnectionLimits = ConnectionLimits(), hooks: Hooks, heartbeat_seconds: float = 30.0):
        self.db = db
        self.limits = limits
        self.hooks = hooks  # calls room_update after every accepted update, room_close
        self._per_holder: dict[tuple[str, str], int] = {}   # (user, document) -> sockets
        self._per_link: dict[str, int] = {}                 # share link -> sockets
        self.grace_seconds = grace_seconds
        self.snapshot_after_updates = snapshot_after_updates
        self.snapshot_after_bytes = snapshot_after_bytes
        self.max_document_bytes = max_document_bytes
        self.flush_delay = flush_delay
        self.rooms: dict[str, Room] = {}
        self._to_flush: list[Room] = []
        self._flush_handle: asyncio.Handle | None = None
        self._flush_now = False  # _flush_handle is for the next loop turn, not the end of the window
        self._log_writes = 0     # group flushes handed to the writer and not settled yet
        self._hurry = False      # someone waits for an acknowledgement: flush once the writer is free
        self._loading: dict[str, asyncio.Task] = {}
        self._unloading: set[asyncio.Task] = set()
        self.by_user: dict[str, set[Connection]] = {}
        self.by_document: dict[str, set[Connection]] = {}
        self.access_recheck = access_recheck
        # content model -> the deterministic first state of a document holding some markdown
        # (a document without CRDT state is seeded from documents.markdown when its room loads)
        self.seeders: dict[str, Callable[[str], Awaitable[bytes]]] = {"text": _seed_text}
        self.stats = CollabStats()
        self.shutting_down = False
        self.replication: Replication | None = None  # several nodes (`replicate`)
        # one timer each for every socket: pings, credential expiries (keepalive.py)
        self.pings = Pings(heartbeat_seconds)
        self.deadlines = Deadlines()

    def replicate(self, replication: Replication) -> None:
        """Several nodes: rows numbered at commit, published and read through `replication`."""
        self.replication = replication

    # the write jobs of the update log: rooms number their rows on one node; with several nodes
    # the jobs number them in the committing transaction
    @property
    def append(self) -> Callable[..., Any]:
        return store.append if self.replication is None else store.append_at_head

    @property
    def append_many(self) -> Callable[..., Any]:
        return store.append_many if self.replication is None else store.append_many_at_head

    # -- rooms -----------------------------------------------------------------------------
    def loaded(self, document_id: str) -> Room | None:
        room = self.rooms.get(document_id)
        return room if room is not None and not room.closing else None

    async def acquire(self, document_id: str) -> Room:
        """The document's room, loaded (once, whoever asks at the same time) and held: call
        `release(room)` when done (or use `use()`)."""
        while True:
            if self.shutting_down:
                raise RuntimeError("the server is shutting down")
            room = self.rooms.get(document_id)
            if room is not None:
                if not room.closing:
                    self._hold(room)
                    return room
                await room.closed.wait()
                continue
            task = self._loading.get(document_id)
            if task is None:
                # the load runs in its own task: a joiner that gives up does not cancel it for others
                task = asyncio.ensure_future(self._load(document_id))
                self._loading[document_id] = task
                task.add_done_callback(lambda _t, d=document_id: self._loading.pop(d, None))
            await asyncio.shield(task)

    def release(self, room: Room) -> None:
        room.holds -= 1
        if room.holds <= 0 and not room.closing:
            room.holds = 0
            self._arm_grace(room)

    @contextlib.asynccontextmanager
    async def use(self, document_id: str):
        room = await self.acquire(document_id)
        try:
            yield room
        finally:
            self.release(room)

    def _hold(self, room: Room) -> None:
        room.holds += 1
        if room.grace_timer is not None:
            room.grace_timer.cancel()
            room.grace_timer = None

    def _arm_grace(self, room: Room) -> None:
        if room.grace_timer is not None:
            room.grace_timer.cancel()
        room.grace_timer = asyncio.get_running_loop().call_later(self.grace_seconds, self._expire, room)

    def _expire(self, room: Room) -> None:
        room.grace_timer = None
        if room.holds == 0 and not room.closing and self.rooms.get(room.document_id) is room:
            task = asyncio.ensure_future(self._unload(room))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)

    async def _load(self, document_id: str) -> Room:
        stored = await store.load(self.db, document_id)
        doc = Doc()
        if stored.snapshot is not None:
            doc.apply_update(stored.snapshot)
        for update in stored.updates:
            doc.apply_update(update)
        if self.replication is not None and stored.updates:
            # several nodes: a retried append can log a row after one that depends on it (room.py
            # missing_from): apply such rows again until the Doc holds them (at most twice more)
            missing = missing_from(doc, stored.updates)
            for _ in range(2):
                if not missing:
                    break
                missing = missing_from(doc, missing, reapply=True)
        room = Room(self, document_id, doc, seq=stored.last_seq, snapshot_bytes=len(stored.snapshot or b""),
                    log_updates=stored.updates, content_model=stored.content_model)
        if stored.snapshot is None and not stored.updates:
            # never rebuild a document that has CRDT state from markdown: only a fresh one is seeded
            markdown = stored.seed_markdown
            seeder = self.seeders.get(stored.content_model)
            if markdown and seeder is not None:
                room.apply_update(await seeder(markdown), None)
                await room.drain()
        self.rooms[document_id] = room
        self.stats.rooms_loaded += 1
        if self.replication is not None:
            self.replication.watch(room)
        self._arm_grace(room)  # unloads unless a joiner holds it by then
        return room

    # -- the update log: one group flush for every room ------------------------------------
    def queue_flush(self, room: Room) -> None:
        """`room` has pending log rows: write them with every other room's at the end of the
        window (`flush_delay` after the first of them)."""
        self._to_flush.append(room)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self.flush_delay, self.flush_rooms)

    def hurry(self) -> None:
        """A client waits for the commit of pending rows (a Hocuspocus SyncStatus): flush now
        if the writer has no update-log write of ours in hand, else as soon as it settles. The
        window is for sockets nobody acknowledges (y-websocket); waiting it out would cap each
        acknowledged writer at one update per window. Under load the rows arriving while one
        flush commits make the next batch."""
        if not self._to_flush:
            return
        if self._log_writes:
            self._hurry = True
        elif not self._flush_now:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = asyncio.get_running_loop().call_soon(self.flush_rooms)
            self._flush_now = True

    def _log_written(self, _future: asyncio.Future) -> None:
        self._log_writes -= 1
        if self._hurry and not self._log_writes:
            self._hurry = False
            self.hurry()

    def flush_rooms(self) -> None:
        """Hand the pending rows of every queued room to the writer as one job (one savepoint and
        one future for all of them: with 500 documents typed in, the per-job cost was most of
        the cost of logging an update). Rooms past their compaction threshold compact."""
        self._flush_handle = None
        self._flush_now = False
        rooms, self._to_flush = self._to_flush, []
        batches = []
        for room in rooms:
            room.flush_queued = False
            rows = room.take_pending()
            if rows:
                batches.append((room, rows))
        if len(batches) == 1:
            room, rows = batches[0]
            future = self.db.submit(self.append, room.document_id, rows)
            room._track(future, rows)
        elif batches:
            future = self.db.submit(self.append_many, [(room.document_id, rows) for room, rows in batches])
            started = time.perf_counter()
            count = sum(len(rows) for _, rows in batches)

            def done(fut: asyncio.Future) -> None:
                if not fut.cancelled() and fut.exception() is None:
                    self.stats.flushes += 1
                    self.stats.flushed_updates += count
                    self.stats.flush_seconds_total += time.perf_counter() - started
                for room, rows in batches:
                    try:
                        room.settled(fut, rows)
                    except Exception:  # one room's trouble is not the others'
                        log.exception("settling the update log rows of %s failed", room.document_id)

            for room, rows in batches:
                room.written(future, rows)
            future.add_done_callback(done)
        if batches:
            self._log_writes += 1
            future.add_done_callback(self._log_written)
        for room in rooms:
            room.compact_if_due()

    def evict(self, document_id: str) -> None:
        """The document was purged (after its commit): its room goes at once, writing nothing —
        its sockets are closed (4403), whoever still holds it edits a Doc that goes nowhere, and
        the next `acquire` of that id loads afresh. A load under way is evicted when it ends."""
        task = self._loading.get(document_id)
        if task is not None:
            task.add_done_callback(lambda _t: self.evict(document_id))
        room = self.rooms.pop(document_id, None)
        if room is None or room.evicted:
            return
        for conn in list(room.conns):
            conn.read_only = True
            conn.close_soon(CLOSE_FORBIDDEN, "document deleted")
        room.evict()
        self.stats.rooms_unloaded += 1

    def evict_gone_soon(self) -> None:
        """Evict the loaded rooms whose documents no longer exist (after a workspace purge, which
        deletes documents in batches without naming them)."""
        if self.rooms:
            task = asyncio.ensure_future(self._evict_gone())
            self._unloading.add(task)  # keep a reference; shutdown waits for it too
            task.add_done_callback(self._unloading.discard)

    async def _evict_gone(self) -> None:
        ids = list(self.rooms)
        for start in range(0, len(ids), 500):
            batch = ids[start:start + 500]
            marks = ",".join("?" * len(batch))
            rows = await self.db.all(f"SELECT id FROM documents WHERE id IN ({marks})", tuple(batch))
            for document_id in set(batch) - {row["id"] for row in rows}:
                self.evict(document_id)

    async def _unload(self, room: Room) -> None:
        room.closing = True
        try:
            await self._close_room(room)
        finally:
            if self.rooms.get(room.document_id) is room:
                del self.rooms[room.document_id]
            self.stats.rooms_unloaded += 1
            room.closed.set()

    async def _close_room(self, room: Room) -> None:
        for hook in self.hooks.room_close:
            try:
                await hook(room)
            except Exception:
                log.exception("room close hook failed for %s", room.document_id)
        await room.close()

    # -- connections -----------------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        """Count a new socket (a Hocuspocus document: one per routing key) against the limits;
        False, and not counted, when over one. `ConnectionLimits` says which and why."""
        limits = self.limits
        doc_conns = self.by_document.get(conn.document_id)
        on_document = len(doc_conns) if doc_conns is not None else 0
        user_conns = self.by_user.get(conn.user_id) if conn.user_id else None
        holder = (conn.user_id, conn.document_id) if conn.user_id else None
        if (on_document >= (limits.per_document - limits.reserved_for_writers if conn.read_only
                            else limits.per_document)
                or (user_conns is not None and len(user_conns) >= limits.per_user)
                or (holder is not None and self._per_holder.get(holder, 0) >= limits.per_user_per_document)
                or (conn.share_link_id is not None
                    and self._per_link.get(conn.share_link_id, 0) >= limits.per_share_link)):
            self.stats.refused += 1
            return False
        if conn.user_id:
            self.by_user.setdefault(conn.user_id, set()).add(conn)
            self._per_holder[holder] = self._per_holder.get(holder, 0) + 1
        if conn.share_link_id is not None:
            self._per_link[conn.share_link_id] = self._per_link.get(conn.share_link_id, 0) + 1
        self.by_document.setdefault(conn.document_id, set()).add(conn)
        self.stats.connections_total += 1
        conn.arm_expiry(self.deadlines)
        return True

    def dismiss(self, conn: Connection) -> None:
        """Uncount a socket (safe to call for one never admitted, or twice)."""
        conn.disarm_expiry(self.deadlines)
        doc_conns = self.by_document.get(conn.document_id)
        if doc_conns is None or conn not in doc_conns:
            return
        for index, key in ((self.by_user, conn.user_id), (self.by_document, conn.document_id)):
            conns = index.get(key)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del index[key]
        for counts, key in ((self._per_holder, (conn.user_id, conn.document_id) if conn.user_id else None),
                            (self._per_link, conn.share_link_id)):
            if key is not None and key in counts:
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]

    def connections(self, document_id: str | None = None) -> list[Connection]:
        if document_id is None:
            return [c for conns in self.by_document.values() for c in conns]
        return list(self.by_document.get(document_id, ()))

    def presence(self, document_id: str) -> list[dict]:
        """Users connected to a document (identity from their tokens), one entry per user."""
        room = self.rooms.get(document_id)
        return room.users() if room is not None else []

    def on_sessions_revoked(self, user_id: str, session_ids: list[str] | None) -> None:
        """AuthService revocation listener: close the sockets of ended sessions with 4401
        (all the user's sockets when `session_ids` is None: user disabled, password changed)."""
        for conn in list(self.by_user.get(user_id, ())):
            # a socket opened with a personal access token ends when that token is deleted
            credential = conn.session_id or conn.token_id
            if session_ids is None or (credential is not None and credential in session_ids):
                conn.close_soon(CLOSE_UNAUTHENTICATED, "session revoked")

    def reauthorize_soon(self, **which: Any) -> None:
        """`reauthorize` from synchronous code (after-commit listeners)."""
        if not self.connections(which.get("document_id")):
            return
        task = asyncio.ensure_future(self.reauthorize(**which))
        self._unloading.add(task)  # keep a reference; shutdown waits for it too
        task.add_done_callback(self._unloading.discard)

    async def reauthorize(self, *, user_id: str | None = None, workspace_id: str | None = None,
                          document_id: str | None = None) -> None:
        """Re-check the access of matching live sockets (after a member removal, a role or grant
        change, a revoked share link, a trashed document): lost access closes with 4403, a
        lowered role makes the socket read-only at once, a raised one writable."""
        if self.access_recheck is None:
            return
        for conn in self.connections(document_id):
            if (user_id is not None and conn.user_id != user_id) or \
                    (workspace_id is not None and conn.workspace_id != workspace_id) or conn.closing:
                continue
            try:
                access = await self.access_recheck(conn.access)
            except Exception:
                log.exception("access re-check failed; closing the socket to be safe")
                access = None
            if access is None:
                conn.read_only = True  # no write may land while the close is on its way
                conn.close_soon(CLOSE_FORBIDDEN, "access revoked")
            else:
                conn.access = slim_access(access)
                conn.role = access.role
                conn.read_only = not can_write(access)

    # -- shutdown --------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """SIGTERM: close every socket with 1012 (clients reconnect to the next process), then
        flush every room (update log, close hooks) before the database closes."""
        self.shutting_down = True
        self.pings.stop()
        self.deadlines.stop()
        conns = self.connections()
        for conn in conns:
            conn.read_only = True
            conn.close_soon(CLOSE_RESTART, "server restarting", abort_after=2.0)
        if self._loading:
            await asyncio.gather(*self._loading.values(), return_exceptions=True)
        if self._unloading:
            await asyncio.gather(*self._unloading, return_exceptions=True)
        rooms = list(self.rooms.values())
        for room in rooms:
            if room.grace_timer is not None:
                room.grace_timer.cancel()
                room.grace_timer = None
        await asyncio.gather(*(self._unload(room) for room in rooms if not room.closing), return_exceptions=True)
        if self._flush_handle is not None:  # every room flushed its own on closing
            self._flush_handle.cancel()
            self._flush_handle = None
            self._flush_now = False


def readings(manager: RoomManager) -> list:
    """/metrics: the rooms, their sockets and their counters (`Metrics.read_at_scrape` rows)."""
    s = manager.stats
    return [
        ("gauge", "mdsync_collab_rooms", "Documents open in memory", lambda: len(manager.rooms)),
        ("gauge", "mdsync_collab_connections", "Open document sockets",
         lambda: sum(len(c) for c in manager.by_document.values())),
        ("counter", "mdsync_collab_updates", "Yjs updates accepted (sockets and server-side edits)", lambda: s.updates),
        ("counter", "mdsync_collab_update_bytes", "Bytes of accepted Yjs updates", lambda: s.update_bytes),
        ("counter", "mdsync_collab_deliveries", "Frames written to peers (updates and awareness)",
         lambda: s.deliveries),
        ("counter", "mdsync_collab_readonly_dropped", "Document updates dropped from read-only sockets",
         lambda: s.readonly_dropped),
        ("counter", "mdsync_collab_garbage_frames", "Malformed frames (the socket was closed)",
         lambda: s.garbage_frames),
        ("counter", "mdsync_collab_oversized_closed", "Sockets closed 1009 for an oversized message",
         lambda: s.oversized_closed),
        ("counter", "mdsync_collab_slow_closed", "Sockets closed 1013 for not reading fast enough",
         lambda: s.slow_closed),
        ("counter", "mdsync_collab_refused", "Sockets refused by the connection limits", lambda: s.refused),
        ("counter", "mdsync_collab_sockets_admitted", "Sockets admitted", lambda: s.connections_total),
        ("counter", "mdsync_collab_flushes", "Update-log appends committed (each one transaction)", lambda: s.flushes),
        ("counter", "mdsync_collab_flushed_updates", "Updates appended to the update log (÷ flushes: the batch size)",
         lambda: s.flushed_updates),
        ("counter", "mdsync_collab_flush_errors", "Update-log writes that failed", lambda: s.flush_errors),
        ("counter", "mdsync_collab_flush_seconds", "Time from handing updates to the writer to their commit",
         lambda: s.flush_seconds_total),
        ("counter", "mdsync_collab_compactions", "Update logs folded into snapshots", lambda: s.compactions),
        ("counter", "mdsync_collab_remote_updates", "Updates committed by other nodes and applied here",
         lambda: s.remote_updates),
        ("counter", "mdsync_collab_rooms_loaded", "Rooms loaded", lambda: s.rooms_loaded),
        ("counter", "mdsync_collab_rooms_unloaded", "Rooms unloaded", lambda: s.rooms_unloaded),
    ]


def can_write(access: Any) -> bool:
    from mdsync.workspaces.access import RANK
    return access.share_link_id is None and RANK[access.role] >= RANK["editor"]


ROOMS: web.AppKey[RoomManager] = web.AppKey("rooms", RoomManager)

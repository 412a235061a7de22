"""Several nodes: the rooms of one document open on several nodes stay one document.

PostgreSQL is the ordered, durable log: a node's rows get their seqs from the document's
`doc_heads` row in the committing transaction (store.append_at_head), so per document seqs become
visible in increasing order on every node. Redis carries notifications only:

- after a commit, `publish` XADDs each row to the stream `mdsync:doc:{document_id}` (capped at
  about STREAM_MAXLEN entries) with the fields `seq`, `node` and `update` (not for an update
  over STREAM_UPDATE_MAX: the readers take that one from PostgreSQL);
- one reader task per node XREADs the streams of the rooms open here (re-evaluated every turn:
  rooms open and close; blocking at most BLOCK_MS so a room opened meanwhile is read soon) and
  hands each row to its room (`Room.apply_remote`), after the update gate's check (Redis is not
  the log: an entry that fails it is read from PostgreSQL instead): applied when the Doc lacks
  it, sent to this node's sockets, never logged again, never passed to the room_update hook;
- a row past a gap (a seq missing before it) still missing GAP_WAIT_SECONDS later, Redis
  answering again after an error, and a head check of every open room against `doc_heads` each
  HEAD_CHECK_SECONDS (rows committed by the previous check, or by now while Redis fails, and
  still missing) lead to a catch-up: the rows after the room's `known` read back from PostgreSQL
  (the snapshot too when another node compacted past it). So a Redis that is stopped, flushed
  or down costs latency (at most about two head checks), never data.

Every Redis call is guarded: an error is logged (once per outage) and costs nothing but the
notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from mdsync.collab import store, updates
from mdsync.collab.protocol import ProtocolError

if TYPE_CHECKING:
    from mdsync.cluster import Cluster
    from mdsync.collab.room import Room
    from mdsync.collab.rooms import RoomManager

log = logging.getLogger("mdsync.collab.replication")

STREAM_MAXLEN = 2000          # entries kept per document stream (approximately: MAXLEN ~)
STREAM_TTL_SECONDS = 86400    # a stream nobody writes to for a day goes
STREAM_UPDATE_MAX = 64 << 10  # a larger update goes as its seq alone: the readers fetch it from PostgreSQL
BLOCK_MS = 250                # the longest XREAD wait: rooms opened meanwhile join the next one
READ_COUNT = 1000             # entries per stream per XREAD
HEAD_CHECK_SECONDS = 1.0      # every open room's head against PostgreSQL, Redis or not
GAP_WAIT_SECONDS = 0.2        # a gap usually closes through the stream by itself within this
OUTBOX_LIMIT = 20000          # rows waiting to be published; older ones go (readers catch up)
START_BACK_MS = 2000          # a newly watched stream is read from this long before the load


class Replication:
    def __init__(self, cluster: Cluster, manager: RoomManager):
        self.cluster = cluster
        self.redis = cluster.redis
        self.node = cluster.node_id.encode()
        self.manager = manager
        self._ids: dict[str, bytes] = {}        # document id -> last stream entry id read
        self._outbox: list[tuple[str, list[tuple[int, bytes]]]] = []
        self._outbox_rows = 0
        self._publish_wake = asyncio.Event()
        self._catching: dict[str, asyncio.Task] = {}
        self._again: set[str] = set()           # documents to catch up once more after the current one
        self._gap_timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task] = []
        self._redis_ok = True
        self._last_heads: dict[str, int] = {}   # the head check's previous reading
        self._expires: dict[str, float] = {}     # stream key -> when to renew its TTL (monotonic)
        self.stats = {"published": 0, "read": 0, "refused": 0, "catch_ups": 0, "redis_errors": 0}

    def readings(self) -> list:
        """/metrics rows (`Metrics.read_at_scrape`)."""
        s = self.stats
        return [
            ("counter", "mdsync_cluster_updates_published", "Committed updates sent to the document streams",
             lambda: s["published"]),
            ("counter", "mdsync_cluster_updates_read", "Updates of other nodes read from the document streams",
             lambda: s["read"]),
            ("counter", "mdsync_cluster_updates_refused", "Stream entries that failed the update gate (read"
             " from PostgreSQL instead)", lambda: s["refused"]),
            ("counter", "mdsync_cluster_catch_ups", "Rooms caught up from PostgreSQL (a gap, a missed"
             " notification, Redis back)", lambda: s["catch_ups"]),
            ("counter", "mdsync_cluster_redis_errors", "Redis calls of the document streams that failed",
             lambda: s["redis_errors"]),
        ]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._reader()), asyncio.ensure_future(self._publisher()),
                       asyncio.ensure_future(self._head_checker())]

    async def stop(self) -> None:
        """After the rooms closed: publish what is left (briefly), then stop every task."""
        if self._outbox:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._publish_now(), 2.0)
        for handle in self._gap_timers.values():
            handle.cancel()
        self._gap_timers.clear()
        tasks = self._tasks + list(self._catching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    # -- rooms -------------------------------------------------------------------------------
    def stream(self, document_id: str) -> str:
        return self.cluster.key("doc", document_id)

    def watch(self, room: Room) -> None:
        """A room just loaded (its `known` from PostgreSQL): read its stream from a little before
        the load, so that nothing published during the load is missed (rows at or below `known`
        are skipped)."""
        # the wall clock, not mdsync.clock: stream entry ids are Redis's milliseconds since 1970
        self._ids[room.document_id] = f"{int(time.time() * 1000) - START_BACK_MS}-0".encode()

    def gap_seen(self, room: Room) -> None:
        """A row past a gap: the missing ones usually come through the stream at once (two nodes'
        commits published in the other order); if not within GAP_WAIT_SECONDS, read PostgreSQL."""
        document_id = room.document_id
        if document_id in self._gap_timers or document_id in self._catching:
            return
        loop = asyncio.get_running_loop()
        self._gap_timers[document_id] = loop.call_later(GAP_WAIT_SECONDS, self._gap_due, document_id)

    def _gap_due(self, document_id: str) -> None:
        self._gap_timers.pop(document_id, None)
        room = self.manager.rooms.get(document_id)
        if room is not None and room.gap():
            self.catch_up_soon(room)

    def catch_up_soon(self, room: Room) -> None:
        """Read what `room` lacks from PostgreSQL (one read per room at a time; asked again
        meanwhile: once more after it)."""
        document_id = room.document_id
        if document_id in self._catching:
            self._again.add(document_id)
            return
        task = asyncio.ensure_future(self._catch_up(document_id))
        self._catching[document_id] = task
        task.add_done_callback(lambda _t: self._caught_up(document_id))

    def _caught_up(self, document_id: str) -> None:
        self._catching.pop(document_id, None)
        if document_id in self._again:
            self._again.discard(document_id)
            room = self.manager.rooms.get(document_id)
            if room is not None and not room.evicted:
                self.catch_up_soon(room)

    async def _catch_up(self, document_id: str) -> None:
        room = self.manager.rooms.get(document_id)
        if room is None or room.evicted:
            return
        self.stats["catch_ups"] += 1
        try:
            found = await store.since(self.manager.db, document_id, room.known)
        except Exception as exc:
            log.error("could not read the log of %s after seq %d: %s", document_id, room.known, exc)
            return
        if self.manager.rooms.get(document_id) is room:
            room.apply_stored(found)

    # -- publishing --------------------------------------------------------------------------
    def publish(self, document_id: str, rows: list[tuple[int, bytes]]) -> None:
        """This node's rows of a document, just committed: to its stream, by the publisher task
        (one pipeline per turn, in commit order; never awaited by a room)."""
        self._outbox.append((document_id, rows))
        self._outbox_rows += len(rows)
        while self._outbox_rows > OUTBOX_LIMIT and len(self._outbox) > 1:
            _, dropped = self._outbox.pop(0)   # Redis is not keeping up: the others catch up from PostgreSQL
            self._outbox_rows -= len(dropped)
        self._publish_wake.set()

    async def _publisher(self) -> None:
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            await self._publish_now()

    async def _publish_now(self) -> None:
        batch, self._outbox, self._outbox_rows = self._outbox, [], 0
        if not batch:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            streams = set()
            count = 0
            for document_id, rows in batch:
                key = self.stream(document_id)
                streams.add(key)
                for seq, update in rows:
                    fields = {"seq": seq, "node": self.node}
                    if len(update) <= STREAM_UPDATE_MAX:
                        fields["update"] = update
                    pipe.xadd(key, fields, maxlen=STREAM_MAXLEN, approximate=True)
                    count += 1
            now = time.monotonic()
            if len(self._expires) > 10000:
                self._expires = {k: t for k, t in self._expires.items() if t > now}
            for key in streams:
                if self._expires.get(key, 0.0) <= now:   # the TTL renewed once a minute, not per update
                    pipe.expire(key, STREAM_TTL_SECONDS)
                    self._expires[key] = now + 60
            await pipe.execute()
            self.stats["published"] += count
            self._redis_back()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._expires.clear()   # Redis may have lost them: set them again
            self._redis_failed("publishing", exc)

    # -- reading -----------------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
            rooms = self.manager.rooms
            ids = self._ids
            for document_id in [d for d in ids if d not in rooms]:
                del ids[document_id]
            for document_id, room in rooms.items():
                if document_id not in ids:
                    self.watch(room)
            if not ids:
                await asyncio.sleep(BLOCK_MS / 1000)
                continue
            streams = {self.stream(document_id): last for document_id, last in ids.items()}
            try:
                reply = await self.redis.xread(streams, count=READ_COUNT, block=BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._redis_failed("reading", exc)
                await asyncio.sleep(1.0)
                continue
            if not self._redis_ok:
                self._redis_back()
            prefix = len(self.stream(""))
            for key, entries in reply or ():
                document_id = (key.decode() if isinstance(key, bytes) else key)[prefix:]
                if document_id not in ids:
                    continue
                ids[document_id] = entries[-1][0] if entries else ids[document_id]
                room = rooms.get(document_id)
                if room is None or room.evicted:
                    continue
                for _, fields in entries:
                    if fields.get(b"node") == self.node:
                        continue
                    try:
                        seq, update = int(fields[b"seq"]), fields.get(b"update")
                    except (KeyError, ValueError):
                        continue
                    self.stats["read"] += 1
                    if update is not None and not self._passes_gate(document_id, update):
                        update = None   # what PostgreSQL holds at that seq is read instead
                    if update is not None:
                        room.apply_remote(seq, update)
                    elif seq > room.known:
                        self.catch_up_soon(room)   # a large update: announced, read from PostgreSQL

    def _passes_gate(self, document_id: str, update: bytes) -> bool:
        """The gate's check (mdsync/collab/updates.py) on a stream entry's bytes: the node that
        accepted the update checked it, but the bytes here come from Redis, and whatever can write
        there must not be able to crash this node's yrs. PostgreSQL's rows are not checked again."""
        try:
            updates.check(update)
        except ProtocolError as exc:
            self.stats["refused"] += 1
            log.error("a stream entry of document %s failed the update gate (%s): reading PostgreSQL"
                      " instead; is something else writing to this cluster's Redis?", document_id, exc)
            return False
        return True

    # -- the head check ----------------------------------------------------------------------
    async def _head_checker(self) -> None:
        """Every HEAD_CHECK_SECONDS: each open room's head in PostgreSQL against what its Doc
        holds; behind -> catch up. What makes a lost, paused or flushed Redis cost latency only."""
        while True:
            await asyncio.sleep(HEAD_CHECK_SECONDS)
            try:
                await self.check_heads()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("the head check of the open rooms failed: %s", exc)

    async def check_heads(self) -> None:
        """Rows committed a check ago (or now, while Redis fails) and still not in the room: read
        them. Rows committed just now are usually on their way through the stream."""
        rooms = self.manager.rooms
        if not rooms:
            self._last_heads = {}
            return
        heads = await store.heads(self.manager.db, list(rooms))
        before = heads if not self._redis_ok else self._last_heads
        self._last_heads = heads
        for document_id, head in before.items():
            room = rooms.get(document_id)
            if room is not None and not room.evicted and room.missing_up_to(head):
                self.catch_up_soon(room)

    # -- Redis trouble -----------------------------------------------------------------------
    def _redis_failed(self, doing: str, exc: Exception) -> None:
        self.stats["redis_errors"] += 1
        if self._redis_ok:
            self._redis_ok = False
            log.warning("cluster: Redis failed while %s (%s); rooms follow PostgreSQL until it answers again",
                        doing, exc or type(exc).__name__)

    def _redis_back(self) -> None:
        if self._redis_ok:
            return
        self._redis_ok = True
        log.warning("cluster: Redis answers again; catching every open room up from PostgreSQL")
        for room in list(self.manager.rooms.values()):
            if not room.evicted:
                self.catch_up_soon(room)

"""Awareness across nodes: cursors, names and selections of sockets on other nodes.

Redis pub/sub, one channel per document (`mdsync:awareness:{document}`): pub/sub may drop a
message, and that is fine here, because clients renew their awareness every ~15 s (updates never
travel this way: they go through PostgreSQL and the room streams). Each message is this node's id,
a NUL byte, then
- `a` + an awareness message (y-protocols type 1) that this node's sockets sent: the nodes with the
  room open apply it to their room (`mdsync.collab.room.Room.receive_remote_awareness`: kept for
  late joiners, sent to their sockets), removals ("null" states of a leaving socket) alike;
- `q`: a node just opened the room (or reconnected to Redis): the others answer with the states of
  their own sockets (`mdsync.collab.room.Room.local_awareness`), so its joiners see everyone at
  once instead of at the next renewal. Its own sockets' states go with it: two nodes that open a
  room at once may each have published them before the other listened.

Sending never awaits on the room's path (`on_awareness` queues; one task publishes, a pipeline
per batch; past `MAX_QUEUED` messages are dropped). One task listens: it subscribes to the rooms
open here every `TICK`, applies what arrives, and removes states another node stopped renewing
(killed: its sockets' states go `STALE` seconds after their last renewal). Redis down: the
listener reconnects every second and queries again; nothing else waits for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from mdsync.collab import protocol as p

if TYPE_CHECKING:
    from mdsync.cluster import Cluster
    from mdsync.collab.room import Room
    from mdsync.collab.rooms import RoomManager

log = logging.getLogger("mdsync.cluster")

TICK = 0.25          # seconds between looks at which rooms are open here
STALE = 40.0         # a remote state not renewed for this long is removed (clients renew every ~15 s)
MAX_QUEUED = 10000   # awareness messages waiting for Redis; more are dropped (clients renew)
SEND_TIMEOUT = 2.0


class AwarenessRelay:
    def __init__(self, cluster: Cluster, rooms: RoomManager):
        self.cluster = cluster
        self.rooms = rooms
        self.prefix = cluster.key("awareness", "")
        self.me = cluster.node_id.encode() + b"\0"
        self._out: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._subscribed: set[str] = set()
        # document -> client id -> time its state last came from another node
        self._remote: dict[str, dict[int, float]] = {}
        self.sent = 0        # messages published (ours, answers and questions)
        self.received = 0    # awareness messages of other nodes applied to a room here
        self.dropped = 0     # not published: the queue was full or Redis failed
        self._failing: set[str] = set()   # "send", "listen": what is failing now (logged once)

    # -- out: the room_awareness hook --------------------------------------------------------
    def on_awareness(self, room: Room, message: bytes) -> None:
        self._send(room.document_id, b"a" + message)

    def _send(self, document_id: str, body: bytes) -> None:
        if len(self._out) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._out.append((self.prefix + document_id, self.me + body))
        self._wake.set()

    async def sender(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._out = self._out, collections.deque()
            if not batch:
                continue
            pipe = self.cluster.redis.pipeline(transaction=False)
            for channel, data in batch:
                pipe.publish(channel, data)
            try:
                await asyncio.wait_for(pipe.execute(), SEND_TIMEOUT)
                self.sent += len(batch)
                self._recovered("send")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.dropped += len(batch)
                self._trouble("send", "cannot publish awareness", exc)  # dropped: clients renew it

    # -- in -----------------------------------------------------------------------------------
    async def listener(self) -> None:
        while True:
            pubsub = self.cluster.redis.pubsub(ignore_subscribe_messages=True)
            self._subscribed = set()
            try:
                next_look = 0.0
                while True:
                    now = time.monotonic()
                    if now >= next_look:
                        await self._follow_rooms(pubsub)
                        self._forget_stale()
                        next_look = now + TICK
                    if not self._subscribed:
                        await asyncio.sleep(TICK)
                        continue
                    message = await pubsub.get_message(timeout=TICK)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message)
                    self._recovered("listen")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._trouble("listen", "awareness relay lost Redis", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), 1.0)

    async def _follow_rooms(self, pubsub) -> None:
        """Subscribe to the rooms opened here since the last look (and ask the other nodes for
        their sockets' states), unsubscribe from the rooms closed."""
        open_now = {document_id for document_id, room in self.rooms.rooms.items() if not room.closing}
        new = open_now - self._subscribed
        gone = self._subscribed - open_now
        if new:
            await pubsub.subscribe(*(self.prefix + document_id for document_id in new))
            self._subscribed |= new
            for document_id in new:
                # what our sockets set before we listened was sent to nobody who had subscribed
                # yet: send it again (nodes that subscribe later ask for it themselves)
                room = self.rooms.loaded(document_id)
                mine = room.local_awareness() if room is not None else None
                if mine is not None:
                    self._send(document_id, b"a" + mine)
                self._send(document_id, b"q")
        if gone:
            await pubsub.unsubscribe(*(self.prefix + document_id for document_id in gone))
            self._subscribed -= gone
            for document_id in gone:
                self._remote.pop(document_id, None)

    def _deliver(self, message: dict) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        data = message["data"]
        if not isinstance(data, bytes) or data.startswith(self.me):
            return  # our own
        _node, sep, body = data.partition(b"\0")
        room = self.rooms.loaded(channel[len(self.prefix):])
        if not sep or not body or room is None:
            return
        if body[:1] == b"q":
            answer = room.local_awareness()
            if answer is not None:
                self._send(room.document_id, b"a" + answer)
            return
        try:
            entries = room.receive_remote_awareness(body[1:])
        except ValueError:  # ProtocolError: not from a node of ours
            log.warning("awareness relay: a message for %s does not parse", room.document_id)
            return
        self.received += 1
        seen = self._remote.setdefault(room.document_id, {})
        now = time.monotonic()
        for client_id, _clock, state in entries:
            if state == p.NULL_STATE:
                seen.pop(client_id, None)
            else:
                seen[client_id] = now

    def _forget_stale(self) -> None:
        """Remove the states of remote clients nobody renewed (their node was killed)."""
        cutoff = time.monotonic() - STALE
        for document_id, seen in list(self._remote.items()):
            old = [client_id for client_id, at in seen.items() if at < cutoff]
            if not old:
                continue
            room = self.rooms.loaded(document_id)
            for client_id in old:
                del seen[client_id]
            if room is None:
                continue
            # a client that reconnected here keeps its id: its state is this node's now
            here = {cid for conn in room.conns for cid in conn.awareness_ids}
            gone = [(cid, room.awareness[cid][0] + 1, p.NULL_STATE) for cid in old
                    if cid in room.awareness and cid not in here]
            if gone:
                room.receive_remote_awareness(p.awareness_message(gone))

    def _trouble(self, part: str, what: str, exc: Exception) -> None:
        if part not in self._failing:
            log.warning("%s (%s): awareness stays on this node until it is back", what, type(exc).__name__)
            self._failing.add(part)

    def _recovered(self, part: str) -> None:
        if part in self._failing:
            log.info("awareness relay: Redis answers again")
            self._failing.discard(part)


def install(app: web.Application, rooms: RoomManager) -> None:
    """The relay on the room_awareness hook, and its two tasks (clustered nodes only)."""
    from mdsync.cluster import CLUSTER
    from mdsync.hooks import HOOKS
    from mdsync.ops.metrics import METRICS

    relay = AwarenessRelay(app[CLUSTER], rooms)
    app[HOOKS].room_awareness.append(relay.on_awareness)
    app[METRICS].read_at_scrape([
        ("counter", "mdsync_cluster_awareness_sent", "Awareness messages published to the other nodes",
         lambda: relay.sent),
        ("counter", "mdsync_cluster_awareness_received", "Awareness messages of other nodes applied to rooms here",
         lambda: relay.received),
        ("counter", "mdsync_cluster_awareness_dropped",
         "Awareness messages not published (queue full or Redis failing: clients renew theirs)",
         lambda: relay.dropped),
    ])

    async def tasks(app: web.Application):
        running = [asyncio.create_task(relay.sender()), asyncio.create_task(relay.listener())]
        yield
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    app.cleanup_ctx.append(tasks)

"""Presence across nodes: who is connected to a document on any node (docs/api.md "Yjs over HTTP and presence").

Each node publishes the users of its open rooms to one Redis hash per document,
`mdsync:presence:{document}`, one field per node: `{"until": epoch seconds, "users": [...]}`.
A publisher task compares its rooms' users with what it last published every `TICK` and writes
what changed (a join or a leave shows on other nodes within about a second), refreshes each entry
every `REFRESH`, and removes the field when the room has nobody left (or at shutdown). A node
killed without a goodbye stops refreshing: readers ignore a field past its `until` (`TTL`) and the
whole key expires once no node refreshes it.

Reading (`GET …/presence`) merges this node's own users (from its rooms, always fresh) with the
other nodes' live fields: connections summed per user (or share link), writable if any of its
sockets is. Redis down or slow: this node's users alone, never an error, after at most
`READ_TIMEOUT` — and at once for the next `PAUSE` seconds (the publisher asking again meanwhile
ends the pause when Redis answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from mdsync.cluster import Cluster
    from mdsync.collab.rooms import RoomManager

log = logging.getLogger("mdsync.cluster")

TICK = 0.5            # seconds between looks at this node's rooms
REFRESH = 5.0         # an unchanged entry is written again this often ...
TTL = 15.0            # ... and read as gone this long after its last write (a killed node)
READ_TIMEOUT = 1.0    # a request waits this long for Redis before answering with local users ...
PAUSE = 5.0           # ... and after it did not answer, requests do not ask it for this long


def _entries(users: list[dict]) -> list[dict]:
    """What other nodes need of `Room.users()`: who (user, or share link for anonymous holders),
    their name, their sockets here, whether any of them may write."""
    return [{"user_id": u["user_id"], "share_link_id": u.get("share_link_id"), "name": u["name"],
             "connections": u["connections"], "can_write": u["can_write"]} for u in users]


def merge(lists: list[list[dict]]) -> list[dict]:
    """One entry per user (per share link for holders without an account), connections summed,
    writable when any node's sockets are; in order of first appearance (this node's first)."""
    by_key: dict[str, dict] = {}
    for users in lists:
        for user in users:
            key = user["user_id"] or f"share:{user.get('share_link_id')}"
            entry = by_key.get(key)
            if entry is None:
                by_key[key] = dict(user)
            else:
                entry["connections"] += user["connections"]
                entry["can_write"] = entry["can_write"] or user["can_write"]
    return list(by_key.values())


class Presence:
    """This node's publisher and the merged read (`app[PRESENCE]`, on clustered nodes only)."""

    def __init__(self, cluster: Cluster, rooms: RoomManager):
        self.cluster = cluster
        self.rooms = rooms
        self._published: dict[str, tuple[str, float]] = {}  # document -> (users JSON, time written)
        self._failing = False
        self._pause_until = 0.0   # monotonic: until then reads do not ask Redis

    def key(self, document_id: str) -> str:
        return self.cluster.key("presence", document_id)

    async def users(self, document_id: str) -> list[dict]:
        """Everyone connected to the document on any node (this node's alone when Redis fails)."""
        local = _entries(self.rooms.presence(document_id))
        if time.monotonic() < self._pause_until:
            return local
        try:
            fields = await asyncio.wait_for(self.cluster.redis.hgetall(self.key(document_id)), READ_TIMEOUT)
        except Exception as exc:
            self._pause_until = time.monotonic() + PAUSE
            if not self._failing:
                log.warning("presence: Redis did not answer (%s); this node's users only", type(exc).__name__)
                self._failing = True  # said once per outage (the publisher says when it is back)
            return local
        now = time.time()
        others = []
        for node, raw in fields.items():
            node = node.decode() if isinstance(node, bytes) else node
            if node == self.cluster.node_id:
                continue  # this node's own entry may lag its rooms: they were read above
            try:
                value = json.loads(raw)
                if value["until"] > now:
                    others.append(value["users"])
            except (ValueError, KeyError, TypeError):
                continue
        return merge([local, *others])

    async def publish(self) -> bool:
        """Write what changed since the last successful publish (one pipeline); False when there
        was nothing to write."""
        now = time.time()
        current: dict[str, str] = {}
        for document_id in list(self.rooms.rooms):
            users = self.rooms.presence(document_id)
            if users:
                current[document_id] = json.dumps(_entries(users), sort_keys=True)
        node = self.cluster.node_id
        writes: dict[str, str] = {}
        pipe = self.cluster.redis.pipeline(transaction=False)
        for document_id, users in current.items():
            last = self._published.get(document_id)
            if last is None or last[0] != users or now - last[1] >= REFRESH:
                writes[document_id] = users
                key = self.key(document_id)
                pipe.hset(key, node, f'{{"until": {now + TTL:.3f}, "users": {users}}}')
                pipe.expire(key, int(TTL) + 1)
        gone = [document_id for document_id in self._published if document_id not in current]
        for document_id in gone:
            pipe.hdel(self.key(document_id), node)
        if not writes and not gone:
            return False
        await asyncio.wait_for(pipe.execute(), READ_TIMEOUT * 5)
        for document_id, users in writes.items():
            self._published[document_id] = (users, now)
        for document_id in gone:
            del self._published[document_id]
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                if await self.publish():
                    self._pause_until = 0.0  # Redis answered
                if self._failing:
                    log.info("presence: Redis answers again")
                    self._failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # nothing is marked published: the next tick writes it all again
                if not self._failing:
                    log.warning("presence: cannot publish to Redis (%s); retrying", type(exc).__name__)
                    self._failing = True

    async def withdraw(self) -> None:
        """At shutdown: this node's entries go at once (not after TTL)."""
        if not self._published:
            return
        pipe = self.cluster.redis.pipeline(transaction=False)
        for document_id in self._published:
            pipe.hdel(self.key(document_id), self.cluster.node_id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pipe.execute(), READ_TIMEOUT)
        self._published.clear()


PRESENCE: web.AppKey[Presence] = web.AppKey("cluster_presence", Presence)


def install(app: web.Application, rooms: RoomManager) -> None:
    """app[PRESENCE] and its publisher task (clustered nodes only)."""
    from mdsync.cluster import CLUSTER

    presence = app[PRESENCE] = Presence(app[CLUSTER], rooms)

    async def publisher(app: web.Application):
        task = asyncio.create_task(presence.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await presence.withdraw()

    app.cleanup_ctx.append(publisher)

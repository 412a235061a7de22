"""Sliding-window counters for login, registration and refresh throttling.

`Window` counts in this process's memory: on one node (one `mdsync serve`) that is the whole
server; a restart forgets it. `SharedWindow` (several nodes, `cluster.redis_url`) counts in Redis,
so that requests spread over the nodes meet one limit: one small Lua script drops the events
older than the window, counts the rest and adds the new one if there is room, atomically in
Redis, with the same semantics as `Window` (docs/operations.md "Limits and tickets on several
nodes").

When Redis does not answer, a `SharedWindow` counts on the node alone (its `Window`, which also
saw every event this node let through): a Redis outage must not lock everyone out of signing in,
and each node still holds its own limit, so at most (nodes × limit) attempts pass in a window
while Redis is down. Every attempt also costs an argon2 hash, which bounds guessing further.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
import weakref
from collections import deque

from mdsync import clock

log = logging.getLogger("mdsync.auth")

# How long a node counts alone after a Redis error before it asks Redis again: a stopped Redis
# (no answer until the socket timeout) must not hold every sign-in for seconds.
REDIS_RETRY_SECONDS = 5.0
# One throttle check waits at most this long for Redis before counting alone.
REDIS_TIMEOUT_SECONDS = 1.0


class Window:
    """At most `limit` events per key within `seconds`."""

    def __init__(self, limit: int, seconds: float, max_keys: int = 100_000):
        self.limit, self.seconds, self.max_keys = limit, seconds, max_keys
        self._events: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self.max_keys:
                self._sweep()
            events = self._events[key] = deque()
        horizon = clock.timestamp() - self.seconds
        while events and events[0] <= horizon:
            events.popleft()
        return events

    def retry_after(self, key: str) -> float | None:
        """Seconds until one more event is allowed, or None if it is allowed now."""
        events = self._recent(key)
        if len(events) < self.limit:
            return None
        return events[0] + self.seconds - clock.timestamp()

    def hit(self, key: str) -> None:
        self._recent(key).append(clock.timestamp())

    def take(self, key: str) -> float | None:
        """Count one event if allowed; else the seconds to wait (the event is not counted)."""
        wait = self.retry_after(key)
        if wait is None:
            self.hit(key)
        return wait

    async def take_async(self, key: str) -> float | None:
        """`take`, with the signature of `SharedWindow.take_async` (the caller need not know which)."""
        return self.take(key)

    def clear(self, key: str) -> None:
        self._events.pop(key, None)

    async def clear_async(self, key: str) -> None:
        self.clear(key)

    def _sweep(self) -> None:
        horizon = clock.timestamp() - self.seconds
        for key in [k for k, v in self._events.items() if not v or v[-1] <= horizon]:
            del self._events[key]
        if len(self._events) >= self.max_keys:  # still full: forget the oldest half
            for key in list(self._events)[: self.max_keys // 2]:
                del self._events[key]


# KEYS[1]: the key's sorted set (member: one event, score: its time). ARGV: now, horizon (now -
# seconds: events at or before it are out, as in Window._recent), limit, the window in ms, a
# unique member. Returns nil when the event is counted, else the seconds to wait (as text: Lua
# numbers become integers on the way out).
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
    return false
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(tonumber(oldest[2]) - tonumber(ARGV[2]))
"""


class RedisHealth:
    """Whether the throttles of one node ask Redis: after a failure they leave it alone for
    REDIS_RETRY_SECONDS (one failure is enough for all of them: a sign-in checks three windows)."""

    def __init__(self):
        self.after = 0.0  # time.monotonic() before which Redis is not asked

    def usable(self) -> bool:
        return time.monotonic() >= self.after

    def failed(self, exc: BaseException) -> None:
        if self.usable():
            log.warning("throttles: Redis did not answer (%s); this node counts alone for %.0f s",
                        exc.__class__.__name__, REDIS_RETRY_SECONDS)
        self.after = time.monotonic() + REDIS_RETRY_SECONDS


class SharedWindow:
    """A `Window` counted in Redis for all nodes, `name` telling the windows apart; the node's own
    `Window` takes over while Redis does not answer (see the module's docstring)."""

    _events = itertools.count()

    def __init__(self, cluster, name: str, limit: int, seconds: float, health: RedisHealth):
        self.cluster = cluster
        self.name = name
        self.limit, self.seconds = limit, seconds
        self.local = Window(limit, seconds)
        self.health = health
        self._script = cluster.redis.register_script(_TAKE)

    def _key(self, key: str) -> str:
        # keys are addresses and email addresses: hashed, so Redis holds no one's email
        return self.cluster.key("throttle", self.name, hashlib.sha256(key.encode()).hexdigest()[:32])

    async def take_async(self, key: str) -> float | None:
        """Count one event for every node if allowed; else the seconds to wait (not counted)."""
        if self.health.usable():
            now = clock.timestamp()
            member = f"{now!r}:{self.cluster.node_id}:{next(self._events)}"
            try:
                wait = await _bounded(self._script(keys=[self._key(key)], args=[
                    repr(now), repr(now - self.seconds), self.limit, int(self.seconds * 1000) + 1, member]))
            except Exception as exc:  # Redis down, slow or refusing: count on this node
                self.health.failed(exc)
            else:
                if wait is None:
                    self.local.hit(key)  # so that this node's count is ready if Redis goes away
                    return None
                return max(0.0, float(wait))
        return self.local.take(key)

    async def clear_async(self, key: str) -> None:
        self.local.clear(key)
        if self.health.usable():
            try:
                await _bounded(self.cluster.redis.delete(self._key(key)))
            except Exception as exc:
                self.health.failed(exc)


async def _bounded(call):
    return await asyncio.wait_for(call, REDIS_TIMEOUT_SECONDS)


_health: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # app[CLUSTER] -> its RedisHealth


def window(cluster, name: str, limit: int, seconds: float) -> Window | SharedWindow:
    """The throttle window for this server: in Redis when several nodes run, else in memory."""
    if cluster is not None and cluster.enabled:
        health = _health.get(cluster)
        if health is None:
            health = _health[cluster] = RedisHealth()
        return SharedWindow(cluster, name, limit, seconds, health)
    return Window(limit, seconds)

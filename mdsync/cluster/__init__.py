"""Several nodes behind one name: what a node shares with the others through Redis.

With `cluster.redis_url` set, N `mdsync serve` processes share one PostgreSQL database (the
durable, ordered record of everything) and one Redis (a latency path only: notifications,
presence, counters that must hold across nodes). Losing Redis costs latency, never data: every
feature that listens on Redis also re-reads PostgreSQL on a gap, a reconnect or a timer.

`app[CLUSTER]` is always there: `Cluster.enabled` is False on a single node (no Redis client,
`node_id` still names this process in logs). Features check `enabled` and fall back to their
in-process behaviour.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

from aiohttp import web

from mdsync.config import Settings

log = logging.getLogger("mdsync.cluster")

# every key this server writes in Redis starts with this (one Redis may serve other programs)
PREFIX = "mdsync:"


class Cluster:
    """This node's identity and its Redis client (None on a single node)."""

    def __init__(self, settings: Settings):
        self.enabled = settings.clustered
        # unique per process start: a node that restarts is a new node to the others
        self.node_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.redis = None
        if self.enabled:
            import redis.asyncio as aioredis  # only a cluster needs it

            # short timeouts: a stopped Redis must not hold up a request or a room; callers treat
            # every Redis error as "no notification this time" and fall back to PostgreSQL
            self.redis = aioredis.Redis.from_url(
                settings.cluster.redis_url, socket_connect_timeout=2.0, socket_timeout=5.0,
                health_check_interval=10, retry_on_timeout=False)

    def key(self, *parts: str) -> str:
        """A Redis key of this server's: `mdsync:` + the parts joined by `:`."""
        return PREFIX + ":".join(parts)

    async def redis_up(self) -> bool:
        if self.redis is None:
            return False
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)


def install(app: web.Application, settings: Settings) -> None:
    """app[CLUSTER], its Redis connection's lifecycle, this node's heartbeat in the database, and its
    line on /readyz. A Redis that is down at start is reported, not fatal: the nodes work on
    (slower) from PostgreSQL alone."""
    from mdsync.appkeys import READINESS

    cluster = app[CLUSTER] = Cluster(settings)
    if not cluster.enabled:
        return

    from mdsync.appkeys import DB
    from mdsync.cluster.nodes import Heartbeat

    heartbeat = Heartbeat(app[DB], cluster.node_id)   # which nodes are alive (cluster/nodes.py)

    async def lifecycle(app: web.Application):
        if not await cluster.redis_up():
            log.warning("cluster: Redis at %s does not answer; working from PostgreSQL alone until it does",
                        _safe_url(settings.cluster.redis_url))
        await heartbeat.start()
        yield
        await heartbeat.stop()
        await cluster.close()

    async def readiness() -> dict:
        # Redis down does not make a node unready: it still serves everything, only slower
        return {"ok": True, "node": cluster.node_id, "redis": "up" if await cluster.redis_up() else "down"}

    app.cleanup_ctx.append(lifecycle)
    app[READINESS]["cluster"] = readiness


def _safe_url(url: str | None) -> str:
    """The Redis URL without a password, for logs."""
    if not url or "@" not in url:
        return url or ""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[1]}"

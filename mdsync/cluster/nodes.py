"""Which nodes are alive: each node's heartbeat row in the `nodes` table of the shared database.

For work one node started and only that node can finish — an AI call it reserved budget for
(mdsync/ai/ledger.py) — the other nodes must tell a live node's work from a dead node's. A node
(with `cluster.redis_url`) writes its row at start, refreshes `seen_at` every `HEARTBEAT_SECONDS`
and deletes it at a clean stop; it counts as alive while its row is younger than `LEASE_SECONDS`,
so the work of a node killed with `kill -9` is taken over by the others within about a lease.
The database rather than Redis: this must hold while Redis is away or flushed. Times come from
`mdsync.clock` on each node: keep the nodes' clocks in sync (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging

from mdsync import clock
from mdsync.db import Database, Tx

log = logging.getLogger("mdsync.cluster")

HEARTBEAT_SECONDS = 5.0
LEASE_SECONDS = 30.0       # a node whose row is older is dead (six heartbeats missed)
FORGET_SECONDS = 86400.0   # rows of nodes dead this long are deleted


def alive_after() -> float:
    """The `seen_at` a live node's row is newer than."""
    return clock.timestamp() - LEASE_SECONDS


def _beat(tx: Tx, node_id: str, now: float) -> None:
    tx.execute("INSERT INTO nodes (id, started_at, seen_at) VALUES (?, ?, ?)"
               " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at", (node_id, clock.iso(), now))
    tx.execute("DELETE FROM nodes WHERE seen_at < ?", (now - FORGET_SECONDS,))


def _leave(tx: Tx, node_id: str) -> None:
    tx.execute("DELETE FROM nodes WHERE id = ?", (node_id,))


class Heartbeat:
    """This node's row in `nodes`, kept fresh while the node runs."""

    def __init__(self, db: Database, node_id: str):
        self.db = db
        self.node_id = node_id
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.db.write(_beat, self.node_id, clock.timestamp())
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.db.write(_beat, self.node_id, clock.timestamp())
            except Exception as exc:   # the database away: the next beat tries again
                log.warning("heartbeat failed: %s", exc)

    async def stop(self) -> None:
        """A clean stop: the node is gone at once (its abandoned work need not wait for the lease)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await self.db.write(_leave, self.node_id)
        except Exception as exc:
            log.warning("could not remove this node's heartbeat: %s", exc)

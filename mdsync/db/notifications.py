"""PostgreSQL LISTEN/NOTIFY: how a process hears at once of what other writers committed.

Other writers are the other nodes of a cluster and `mdsync` CLI commands run beside a server.
Their writes that someone may be waiting for NOTIFY in the statement that makes them, inside the
committing transaction (`sync/changes.py` record, `auth/revocations.py`): PostgreSQL delivers a
notification only once its transaction has committed — so the listener's next read sees the row —
and drops those of a rolled-back savepoint or transaction. Each payload starts with `ORIGIN`, the
writing process, so a process skips its own (it woke its waiters at commit already).

Each `PostgresDatabase` opens one more connection, only for LISTEN, when a feature first asks
(`Database.listen`); SQLite has none (one process serves a data dir; features keep their polls).
The connection is re-made after a loss with a growing, jittered delay (0.1 s to 5 s), and an idle
one is pinged every `PING_EVERY` seconds so a dead link is noticed. While it is down
`Listener.connected` is False and the features look for themselves (the feed's head query, the
revocations poll); after every (re)connect each subscriber's `on_connect` runs, to catch up with
what was said while nobody listened.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mdsync.db")

ORIGIN = secrets.token_hex(8)   # this process, at the head of every payload it sends
CHANGES = "mdsync_changes"          # one per change-feed row: "origin seq workspace entity entity_id user|-"
REVOCATIONS = "mdsync_revocations"  # one per revocations row: "origin seq"
CHANNELS = (CHANGES, REVOCATIONS)

PING_EVERY = 10.0        # seconds without a notification before the connection is checked
PING_TIMEOUT = 5.0
BACKOFF_FIRST = 0.1      # seconds before the first reconnect; doubled each failure up to BACKOFF_MAX
BACKOFF_MAX = 5.0


class Listener:
    """One LISTEN connection of one database: hands each notification's payload to the callbacks
    subscribed to its channel (on the event loop), reconnecting for as long as it runs."""

    def __init__(self, connect: Callable[[], Any]):
        self._connect = connect          # -> awaitable of an autocommit psycopg AsyncConnection
        self.connected = False
        self.connects = 0                # successful (re)connects: tests and logs
        self._on_notify: dict[str, list[Callable[[str], Any]]] = {channel: [] for channel in CHANNELS}
        self._on_connect: list[Callable[[], Any]] = []
        self._task: asyncio.Task | None = None
        self._conn: Any = None

    def subscribe(self, channel: str, on_notify: Callable[[str], Any],
                  on_connect: Callable[[], Any] | None = None) -> None:
        """`on_notify(payload)` for each notification on `channel`; `on_connect()` after every
        (re)connect (the first one too: commits between the subscriber's start and LISTEN)."""
        self._on_notify[channel].append(on_notify)
        if on_connect is not None:
            self._on_connect.append(on_connect)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="mdsync-listen")

    def unsubscribe(self, on_notify: Callable[[str], Any], on_connect: Callable[[], Any] | None = None) -> None:
        for callbacks in self._on_notify.values():
            if on_notify in callbacks:
                callbacks.remove(on_notify)
        if on_connect in self._on_connect:
            self._on_connect.remove(on_connect)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.connected = False

    async def _run(self) -> None:
        delay = BACKOFF_FIRST
        first = True
        while True:
            try:
                async with await self._connect() as conn:
                    self._conn = conn
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    self.connected = True
                    self.connects += 1
                    delay = BACKOFF_FIRST
                    if not first:
                        log.warning("listening for other writers' commits again")
                    first = False
                    # what was committed before LISTEN took effect was told to nobody
                    for callback in list(self._on_connect):
                        _call(callback)
                    await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.connected or first:
                    log.warning("the LISTEN connection is lost (%s): other writers' commits are looked for"
                                " by polling until it is back", exc)
                first = False   # the subscribers polled meanwhile: catch up at the next connect
            finally:
                self.connected = False
                self._conn = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _listen(self, conn: Any) -> None:
        while True:
            async for notify in conn.notifies(timeout=PING_EVERY):
                for callback in self._on_notify.get(notify.channel, ()):
                    _call(callback, notify.payload)
            await asyncio.wait_for(conn.execute("SELECT 1"), PING_TIMEOUT)   # idle: is the link alive?


def _call(callback: Callable[..., Any], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        log.exception("a notification's callback failed")

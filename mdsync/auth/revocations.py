"""Revocations reach live connections, whichever process makes them.

A revocation is a row in `revocations`, written by the statement that ends a credential or
shrinks someone's access, in that statement's transaction:

    credentials_ended(tx, user_id, [session or token ids] | None)   # None: every credential
    access_changed(tx, workspace_id, user_id | None, document_id | None)

A server acts on every row of its database: the rows it commits itself at once (an after-commit
wake-up, as the change feed gets), the rows of other processes — the other nodes of a cluster,
the admin CLI writing to the database of a running server (`mdsync users disable`,
`workspaces remove-member`, …) — on PostgreSQL at their commit too (the row's statement NOTIFYs,
db/notifications.py, and the watcher reads the new rows when it hears it), and in any case within
`POLL_SECONDS`: one small read (`db.lookup`: how many rows past the last one acted on) per poll,
and the new rows are read only when it moved. `Watcher` hands each row to the same listeners an
HTTP change calls (the `sessions_revoked` hooks: sockets close 4401, SSE streams end,
tickets go; the `access_changed` hooks: sockets re-check their access, 4403 or
read-only), so a change from the CLI or another node reaches sockets, streams and tickets exactly
as one made over HTTP. Rows older than `KEEP_SECONDS` are deleted by the server.

On PostgreSQL a row's seq comes from an identity, handed out before its transaction commits: with
two writers, seq 12 can be visible while 11 is still to commit. So the watcher does not just read
past the newest seq it saw: it keeps the seqs it acted on above a floor, reads every row past the
floor, and moves the floor only over seqs it saw `GAP_WAIT` seconds ago (a number still missing
then was rolled back). On SQLite one writer commits seqs in order: the floor follows at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from aiohttp import web

from mdsync import clock
from mdsync.db import Database, Tx
from mdsync.db.notifications import ORIGIN, REVOCATIONS
from mdsync.sync.changes import DATABASE_KEY, database_key

log = logging.getLogger("mdsync.auth")

POLL_SECONDS = 0.5     # how often a server looks for revocations written by another process
KEEP_SECONDS = 600.0   # rows are deleted after this long (every server has long acted on them)
TRIM_EVERY = 60.0
GAP_WAIT = 60.0        # PostgreSQL: how long a missing seq below a seen one may still commit

# `ORIGIN` (db/notifications.py), this process: a server skips its own rows (it acted on them at commit)


class Revocation(NamedTuple):
    database: str
    seq: int
    origin: str
    kind: str                         # "credentials" or "access"
    user_id: str | None
    workspace_id: str | None
    document_id: str | None
    credentials: list[str] | None


# After-commit wake-ups of the watchers in this process (one per app), like changes.listeners.
listeners: set[Callable[[Revocation], None]] = set()


def _wake(revocation: Revocation) -> None:
    for listener in list(listeners):
        listener(revocation)


def _record(tx: Tx, kind: str, user_id: str | None, workspace_id: str | None, document_id: str | None,
            credentials: list[str] | None) -> None:
    seq = tx.value(_RECORD[tx.engine], (clock.iso(), ORIGIN, kind, user_id, workspace_id, document_id,
                                        None if credentials is None else json.dumps(credentials)))
    tx.after_commit(partial(_wake, Revocation(database_key(tx.conn), seq, ORIGIN, kind, user_id, workspace_id,
                                              document_id, credentials)))


_INSERT = ("INSERT INTO revocations (at, origin, kind, user_id, workspace_id, document_id, credentials)"
           " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq")
_RECORD = {
    "sqlite": _INSERT,
    # other processes' watchers hear of it at commit ("origin seq")
    "postgresql": _INSERT + ", pg_notify('" + REVOCATIONS + "', concat_ws(' ', origin, seq))",
}


def credentials_ended(tx: Tx, user_id: str, credential_ids: list[str] | None) -> None:
    """Sessions or personal access tokens of `user_id` ended (None: all of them — the user was
    disabled or deleted). Their sockets close with 4401, their streams end, their tickets go."""
    if credential_ids is not None and not credential_ids:
        return
    _record(tx, "credentials", user_id, None, None, credential_ids)


def access_changed(tx: Tx, workspace_id: str, user_id: str | None = None, document_id: str | None = None) -> None:
    """Someone's access in a workspace may have changed (None: everyone's / every document):
    matching sockets re-check it (lost: 4403; lowered: read-only; raised: writable)."""
    _record(tx, "access", user_id, workspace_id, document_id, None)


class Watcher:
    """Hands this database's revocations to the app's listeners: its own at commit, other
    processes' when their NOTIFY is heard (PostgreSQL) or from a poll."""

    def __init__(self, db: Database, on_credentials: Callable[[str, list[str] | None], Any],
                 on_access: Callable[[str, str | None, str | None], Any]):
        self.db = db
        self.on_credentials = on_credentials
        self.on_access = on_access
        self.database: str | None = None
        self.seen = 0            # the floor: every row up to it was looked at
        self.recent: dict[int, float] = {}   # seqs above the floor looked at -> when first seen
        self.gap_wait = 0.0 if db.engine == "sqlite" else GAP_WAIT
        self.heard = 0           # other processes' notifications (PostgreSQL)
        self._task: asyncio.Task | None = None
        self._reading: asyncio.Task | None = None
        self._again = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self.listener = None

    async def start(self) -> None:
        self.database = await self.db.value(DATABASE_KEY[self.db.engine])
        self.seen = await self._newest()   # older rows concern connections of an earlier run
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        listeners.add(self.on_commit)
        self.listener = self.db.listener()
        if self.listener is not None:
            self.listener.subscribe(REVOCATIONS, self.on_notify, self._read_soon)
        self._task = self._loop.create_task(self._poll())

    async def stop(self) -> None:
        listeners.discard(self.on_commit)
        if self.listener is not None:
            self.listener.unsubscribe(self.on_notify, self._read_soon)
        for task in (self._task, self._reading):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._task = self._reading = None

    def on_notify(self, payload: str) -> None:
        """Another process committed a revocation (PostgreSQL NOTIFY): read the new rows now."""
        if payload.split(" ", 1)[0] == ORIGIN:
            return
        self.heard += 1
        self._read_soon()

    def _read_soon(self) -> None:
        """One reader at a time; a call while it reads makes it read once more."""
        if self._reading is not None and not self._reading.done():
            self._again = True
            return
        self._reading = self._loop.create_task(self._read_until_quiet())

    async def _read_until_quiet(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                await self._read_new()
            except Exception:   # a closing database: the poll (or cleanup) settles it
                log.debug("reading revocations failed", exc_info=True)

    def on_commit(self, revocation: Revocation) -> None:
        if revocation.database != self.database:
            return
        if threading.get_ident() == self._thread:
            self._act(revocation)
        else:   # an offline job run in a thread of this process: act on the server's loop
            self._loop.call_soon_threadsafe(self._act, revocation)

    def _act(self, r: Revocation) -> None:
        try:
            if r.kind == "credentials":
                self.on_credentials(r.user_id, r.credentials)
            elif r.workspace_id is not None:
                self.on_access(r.workspace_id, r.user_id, r.document_id)
        except Exception:
            log.exception("acting on a revocation failed")

    async def _newest(self) -> int:
        row = await self.db.lookup("SELECT coalesce(max(seq), 0) FROM revocations")
        return row[0]

    async def _unread(self) -> bool:
        """Whether a row past the floor is not looked at yet (one small read)."""
        row = await self.db.lookup("SELECT count(*) FROM revocations WHERE seq > ?", (self.seen,))
        return row[0] != len(self.recent)

    async def _poll(self) -> None:
        trimmed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                if await self._unread():
                    self._read_soon()
                elif self.recent:
                    self._settle(self._loop.time())
                now = asyncio.get_running_loop().time()
                if now - trimmed >= TRIM_EVERY:
                    trimmed = now
                    await self.db.write(_trim, clock.iso_in(-KEEP_SECONDS))
            except asyncio.CancelledError:
                raise
            except Exception:   # a closing database: the next round (or cleanup) settles it
                log.debug("revocation poll failed", exc_info=True)

    async def _read_new(self) -> None:
        rows = await self.db.all(
            "SELECT seq, origin, kind, user_id, workspace_id, document_id, credentials FROM revocations"
            " WHERE seq > ? ORDER BY seq", (self.seen,))
        now = self._loop.time()
        for row in rows:
            if row["seq"] <= self.seen or row["seq"] in self.recent:
                continue   # looked at already (the floor may have moved during the read)
            self.recent[row["seq"]] = now
            if row["origin"] == ORIGIN:
                continue   # written by this process: acted on at its commit
            credentials = None if row["credentials"] is None else json.loads(row["credentials"])
            self._act(Revocation(self.database, row["seq"], row["origin"], row["kind"], row["user_id"],
                                 row["workspace_id"], row["document_id"], credentials))
        self._settle(now)

    def _settle(self, now: float) -> None:
        """Move the floor over the seqs seen long enough ago that any number below them still
        missing was rolled back (SQLite: at once)."""
        settled = [seq for seq, seen_at in self.recent.items() if now - seen_at >= self.gap_wait]
        if settled:
            self.seen = max(self.seen, *settled)
            self.recent = {seq: at for seq, at in self.recent.items() if seq > self.seen}


def _trim(tx: Tx, before: str) -> None:
    tx.execute("DELETE FROM revocations WHERE at < ?", (before,))


WATCHER: web.AppKey[Watcher] = web.AppKey("revocations", Watcher)


def install(app, db: Database, on_credentials: Callable[[str, list[str] | None], Any],
            on_access: Callable[[str, str | None, str | None], Any]) -> Watcher:
    """Watch the app's database once it is open (add after the database's cleanup context)."""
    watcher = app[WATCHER] = Watcher(db, on_credentials, on_access)

    async def watch(app):
        await watcher.start()
        yield
        await watcher.stop()

    app.cleanup_ctx.append(watch)
    return watcher

"""Revocations reach live connections, whichever process makes them.

A revocation is a row in `revocations`, written by the statement that ends a credential or
shrinks someone's access, in that statement's transaction:

    credentials_ended(tx, user_id, [session or token ids] | None)   # None: every credential
    access_changed(tx, workspace_id, user_id | None, document_id | None)

A server acts on every row of its database: the rows it commits itself at once (an after-commit
wake-up, as the change feed gets), the rows of other processes — the admin CLI writing to the
data dir of a running server (`mdsync users disable`, `workspaces remove-member`, …) — within
`POLL_SECONDS`: one primary-key read on the event loop (`db.lookup` of the newest seq) per poll,
and the new rows are read only when it moved. `Watcher` hands each row to the same listeners an
HTTP change calls (the `sessions_revoked` hooks: sockets close 4401, SSE streams end,
tickets go; the `access_changed` hooks: sockets re-check their access, 4403 or
read-only), so a change from the CLI reaches sockets, streams and tickets exactly as one made
over HTTP. Rows older than `KEEP_SECONDS` are deleted by the server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

from mdsync import clock
from mdsync.db import Database, Tx
from mdsync.sync.changes import DATABASE_KEY, database_key

log = logging.getLogger("mdsync.auth")

POLL_SECONDS = 0.5     # how often a server looks for revocations written by another process
KEEP_SECONDS = 600.0   # rows are deleted after this long (every server has long acted on them)
TRIM_EVERY = 60.0

# this process: a server skips its own rows when it polls (it acted on them at commit)
ORIGIN = secrets.token_hex(8)


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
    seq = tx.value(
        "INSERT INTO revocations (at, origin, kind, user_id, workspace_id, document_id, credentials)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        (clock.iso(), ORIGIN, kind, user_id, workspace_id, document_id,
         None if credentials is None else json.dumps(credentials)))
    tx.after_commit(partial(_wake, Revocation(database_key(tx.conn), seq, ORIGIN, kind, user_id, workspace_id,
                                              document_id, credentials)))


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
    processes' from a poll."""

    def __init__(self, db: Database, on_credentials: Callable[[str, list[str] | None], Any],
                 on_access: Callable[[str, str | None, str | None], Any]):
        self.db = db
        self.on_credentials = on_credentials
        self.on_access = on_access
        self.database: str | None = None
        self.seen = 0            # newest seq looked at
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    async def start(self) -> None:
        self.database = await self.db.value(DATABASE_KEY[self.db.engine])
        self.seen = await self._newest()   # older rows concern connections of an earlier run
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        listeners.add(self.on_commit)
        self._task = self._loop.create_task(self._poll())

    async def stop(self) -> None:
        listeners.discard(self.on_commit)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

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

    async def _poll(self) -> None:
        trimmed = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            try:
                if await self._newest() > self.seen:
                    await self._read_new()
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
        for row in rows:
            self.seen = max(self.seen, row["seq"])
            if row["origin"] == ORIGIN:
                continue   # written by this process: acted on at its commit
            credentials = None if row["credentials"] is None else json.loads(row["credentials"])
            self._act(Revocation(self.database, row["seq"], row["origin"], row["kind"], row["user_id"],
                                 row["workspace_id"], row["document_id"], credentials))


def _trim(tx: Tx, before: str) -> None:
    tx.execute("DELETE FROM revocations WHERE at < ?", (before,))


def install(app, db: Database, on_credentials: Callable[[str, list[str] | None], Any],
            on_access: Callable[[str, str | None, str | None], Any]) -> Watcher:
    """Watch the app's database once it is open (add after the database's cleanup context)."""
    watcher = Watcher(db, on_credentials, on_access)

    async def watch(app):
        await watcher.start()
        yield
        await watcher.stop()

    app.cleanup_ctx.append(watch)
    return watcher

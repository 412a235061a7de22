"""Writing the change feed. Every feature calls `record(tx, ...)` inside the transaction that
makes the change, so the feed is never rebuilt from guesses. Readers waiting on the feed are
woken after the commit (`mdsync/sync/feed.py` reads it); on PostgreSQL the same statement NOTIFYs
other processes' feeds (db/notifications.py).

The seq of a change is its position in the feed, and feed cursors rely on one rule: seqs become
visible in increasing order, never a smaller one after a larger one. On SQLite AUTOINCREMENT
numbers them and the one writer commits them in order. On PostgreSQL an identity sequence is
not enough: it hands out numbers outside transactions, so a reader could see the sequence (the
feed's head) move before the row it numbers is committed. There the seq is taken from the one
row of `changes_head`, updated in the same statement as the insert: it moves with the commit,
and its row lock makes any other writer wait until this transaction ends (docs/architecture.md
"Databases": the change feed). So rows enter `changes` through `record` (or `record_many`, which is a loop of it there) only: on PostgreSQL a row
inserted otherwise takes a number from the column's identity, which the head knows nothing of
(readers would not see it, and a later `record` could clash with it). This costs ~40 µs more
per change than the identity would (one statement either way; 140 against 100 µs, fsync off).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import partial
from typing import Any, Literal, NamedTuple

from mdsync import clock
from mdsync.db import Tx
from mdsync.db.notifications import CHANGES, ORIGIN

Entity = Literal["document", "folder", "comment", "attachment", "member", "workspace", "version"]
Op = Literal["upsert", "delete"]


class Wake(NamedTuple):
    """What a committed change tells the waiting readers: enough to decide who should look again
    without a query of their own."""

    database: str    # changes.database_key: several apps, each with its own database, can share a process
    seq: int
    workspace_id: str
    entity: str
    entity_id: str
    user_id: str | None


# Wake-up callbacks of the feeds served in this process (one per app), called on the event loop
# with one `Wake` per committed change. Each app's feed registers at startup and unregisters at
# cleanup. A change rolled back with its job never calls them.
listeners: set[Callable[[Wake], None]] = set()


# Which database a connection reaches, as a string the writer's and the readers' connections
# both give (several apps, each with its own database, can share a process: tests do).
DATABASE_KEY = {
    "sqlite": "SELECT file FROM pragma_database_list WHERE name = 'main'",
    "postgresql": "SELECT concat_ws('/', inet_server_addr(), inet_server_port(), current_database())",
}

# writer connections -> their database key, asked once per connection. sqlite3 connections cannot
# be weakly referenced: the few most recent are held (the entry keeps its id from being reused).
_keys: dict[int, tuple[Any, str]] = {}
_KEYS_KEPT = 32


def database_key(conn: Any) -> str:
    """The database the writer's connection `conn` (either engine's) writes to, as `DATABASE_KEY`
    names it: a feed compares it with the key its readers give."""
    entry = _keys.get(id(conn))
    if entry is None or entry[0] is not conn:
        if len(_keys) >= _KEYS_KEPT:
            _keys.pop(next(iter(_keys)))
        sql = DATABASE_KEY["sqlite" if isinstance(conn, sqlite3.Connection) else "postgresql"]
        entry = _keys[id(conn)] = (conn, conn.execute(sql).fetchone()[0])
    return entry[1]



def _wake(change: Wake) -> None:
    for listener in list(listeners):
        listener(change)


def record(tx: Tx, workspace_id: str, entity: Entity, entity_id: str, op: Op, *,
           user_id: str | None = None, at: str | None = None) -> None:
    """Add one change. `user_id`: only that user sees it (None: every member of the workspace).
    `at`: its time, when the caller has taken it already (default: the clock's now)."""
    params = (workspace_id, entity, entity_id, op, at or clock.iso(), user_id)
    if tx.engine == "postgresql":
        # all(): the statement runs to its end
        seq = tx.all(_RECORD[tx.engine], params + (ORIGIN,))[0][0]
    else:
        # the AUTOINCREMENT rowid is the seq: no RETURNING (~3 µs less per change)
        seq = tx.execute(_RECORD[tx.engine], params).lastrowid
    tx.after_commit(partial(_wake, Wake(database_key(tx.conn), seq, workspace_id, entity, entity_id, user_id)))


def record_many(tx: Tx, rows: list[tuple[str, Entity, str, Op]], *, at: str | None = None) -> None:
    """`record` for several changes (workspace id, entity, entity id, op; seen by every member),
    each its own row and seq, in this order. On SQLite one statement: the one writer numbers the
    rows consecutively (AUTOINCREMENT), the last one is `last_insert_rowid()`."""
    if not rows:
        return
    at = at or clock.iso()
    if tx.engine != "sqlite":
        for workspace_id, entity, entity_id, op in rows:
            record(tx, workspace_id, entity, entity_id, op, at=at)
        return
    params: list[Any] = []
    for workspace_id, entity, entity_id, op in rows:
        params += (workspace_id, entity, entity_id, op, at)
    tx.execute("INSERT INTO changes (workspace_id, entity, entity_id, op, at) VALUES "
               + ", ".join(["(?, ?, ?, ?, ?)"] * len(rows)), params)
    first = tx.value("SELECT last_insert_rowid()") - len(rows) + 1
    key = database_key(tx.conn)
    for seq, (workspace_id, entity, entity_id, _) in enumerate(rows, first):
        tx.after_commit(partial(_wake, Wake(key, seq, workspace_id, entity, entity_id, None)))


_RECORD = {
    "sqlite": "INSERT INTO changes (workspace_id, entity, entity_id, op, at, user_id) VALUES (?, ?, ?, ?, ?, ?)",
    # the seq from changes_head, in the same statement (see the module's docstring); other
    # processes' feeds hear of it at commit (db/notifications.py: "origin seq workspace entity id user")
    "postgresql": "WITH head AS (UPDATE changes_head SET seq = seq + 1 RETURNING seq)"
                  " INSERT INTO changes (seq, workspace_id, entity, entity_id, op, at, user_id)"
                  " SELECT seq, ?, ?, ?, ?, ?, ? FROM head RETURNING seq, pg_notify('" + CHANGES + "',"
                  " concat_ws(' ', ?::text, seq, workspace_id, entity, entity_id, coalesce(user_id, '-')))",
}


def workspace_purged(tx: Tx, workspace_id: str) -> None:
    """Purge hook (runs before the workspace row and its members go). The workspace's rows go with
    it, except the deletes addressed to members removed earlier; every member still in it gets a
    `workspace delete` addressed to them: once the members rows are gone nothing else of it is
    visible, and a device that slept through the grace period must still learn it."""
    tx.execute("DELETE FROM changes WHERE workspace_id = ? AND (user_id IS NULL OR op = 'upsert')", (workspace_id,))
    for row in tx.all("SELECT user_id FROM members WHERE workspace_id = ?", (workspace_id,)):
        record(tx, workspace_id, "workspace", workspace_id, "delete", user_id=row[0])


# The retention sweep deletes at most this many rows per writer job (the writer also commits live
# edits: no job may hold it long), oldest first.
TRIM_BATCH = 5000


def trim(tx: Tx, cutoff: str) -> int:
    """One job of the retention sweep: delete the oldest rows recorded before `cutoff` (at most
    TRIM_BATCH), and remember the newest seq deleted (feed.py refuses older cursors with 410).
    Returns how many went; 0 when none is left to go."""
    row = tx.one("SELECT count(*) AS n, max(seq) AS through FROM changes"
                 " WHERE seq IN (SELECT seq FROM changes ORDER BY seq LIMIT ?) AND at < ?", (TRIM_BATCH, cutoff))
    if not row["n"]:
        return 0
    tx.execute("DELETE FROM changes WHERE seq <= ? AND at < ?", (row["through"], cutoff))
    tx.execute("INSERT INTO changes_trimmed (id, through_seq) VALUES (1, ?) ON CONFLICT (id) DO UPDATE"
               " SET through_seq = CASE WHEN excluded.through_seq > changes_trimmed.through_seq"
               " THEN excluded.through_seq ELSE changes_trimmed.through_seq END", (row["through"],))
    return row["n"]


async def trim_old(db, retention_days: float) -> int:
    """Delete the change-feed rows older than `retention_days` (0: keep them all), job by job."""
    if retention_days <= 0:
        return 0
    cutoff = clock.iso_in(-retention_days * 86400)
    total = 0
    for _ in range(1_000_000):  # bounded by the rows there are: each job deletes one at least
        done = await db.write(trim, cutoff)
        if not done:
            break
        total += done
    return total

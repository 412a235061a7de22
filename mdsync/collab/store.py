"""SQL of the Yjs update log (`doc_updates`) and snapshots (`doc_snapshots`).

Write jobs (`append`, `compact`, `purge`) run in the database writer thread through
`db.submit`/`db.write`; `load` reads through the reader pool. A document's state is its snapshot
plus every logged update after the snapshot's seq.

On one node the room numbers its rows (`append`, `compact`). With several nodes (PostgreSQL) the
seqs are taken from the document's `doc_heads` row in the committing transaction
(`append_at_head`, `append_many_at_head`), a compaction runs under the document's advisory lock
(`compact_locked`), and a node that missed rows reads them back with `since`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdsync import clock
from mdsync.db import Database, Tx
from mdsync.db.base import locks_first


@dataclass
class Stored:
    snapshot: bytes | None
    snapshot_seq: int
    updates: list[bytes]
    last_seq: int
    seed_markdown: str | None = None  # documents.markdown, only when there is no CRDT state
    content_model: str = "text"       # the document's content model


async def load(db: Database, document_id: str) -> Stored:
    """The stored CRDT state, plus the markdown to seed from when there is none.

    A document without log rows after its snapshot (a fresh one, or one compacted when its room
    unloaded: most loads) is one primary-key read on the loop (`db.lookup`): a reader thread's
    three hops cost more than the read, and each reader connection would cache its own copy of
    the pages (measured with the bench's S2, 500 rooms: −17 % CPU and −3 KB RSS per socket).
    Only a document with log rows is read through a reader."""
    head = await db.lookup(
        "SELECT s.seq, s.state,"
        " EXISTS (SELECT 1 FROM doc_updates u WHERE u.document_id = x.id AND u.seq > COALESCE(s.seq, 0)),"
        " CASE WHEN s.seq IS NULL AND NOT EXISTS (SELECT 1 FROM doc_updates u WHERE u.document_id = x.id)"
        "  THEN (SELECT markdown FROM documents WHERE id = x.id) END,"
        " (SELECT content_model FROM documents WHERE id = x.id)"
        " FROM (SELECT CAST(? AS TEXT) AS id) x LEFT JOIN doc_snapshots s ON s.document_id = x.id", (document_id,))
    if head is not None and not head[2]:
        seq = head[0] or 0
        return Stored(snapshot=head[1], snapshot_seq=seq, updates=[], last_seq=seq,
                      seed_markdown=head[3], content_model=head[4] or "text")
    rows = await db.all(
        # bytes in `data`, text in `text` (PostgreSQL keeps one type per column of a UNION)
        "WITH snap AS (SELECT seq, state FROM doc_snapshots WHERE document_id = ?1)"
        " SELECT 0 AS kind, seq, state AS data, CAST(NULL AS TEXT) AS text FROM snap"
        " UNION ALL SELECT 1, seq, data, NULL FROM doc_updates"
        "  WHERE document_id = ?1 AND seq > COALESCE((SELECT seq FROM snap), 0)"
        " UNION ALL SELECT 2, 0, NULL, markdown FROM documents WHERE id = ?1"
        "  AND NOT EXISTS (SELECT 1 FROM snap)"
        "  AND NOT EXISTS (SELECT 1 FROM doc_updates WHERE document_id = ?1)"
        " UNION ALL SELECT 3, 0, NULL, content_model FROM documents WHERE id = ?1"
        " ORDER BY kind, seq", (document_id,))
    snapshot, snapshot_seq, updates, last_seq, seed, model = None, 0, [], 0, None, "text"
    for row in rows:
        if row["kind"] == 0:
            snapshot, snapshot_seq = row["data"], row["seq"]
            last_seq = snapshot_seq
        elif row["kind"] == 1:
            updates.append(row["data"])
            last_seq = row["seq"]
        elif row["kind"] == 2:
            seed = row["text"]
        else:
            model = row["text"]
    return Stored(snapshot=snapshot, snapshot_seq=snapshot_seq, updates=updates, last_seq=last_seq,
                  seed_markdown=seed, content_model=model)


def stored_seq(engine: str, document: str) -> str:
    """SQL for the seq the stored CRDT state of document `document` (an SQL expression: a column)
    ends at: its snapshot's or its last logged update's, whichever is later (0: none)."""
    greatest = "greatest" if engine == "postgresql" else "max"  # SQLite's scalar max()
    return (f"{greatest}(coalesce((SELECT seq FROM doc_snapshots WHERE document_id = {document}), 0),"
            f" coalesce((SELECT max(seq) FROM doc_updates WHERE document_id = {document}), 0))")


def append(tx: Tx, document_id: str, rows: list[tuple[int, bytes, str | None]]) -> None:
    """Append updates (seq, data, user id). Conflicting seqs are a bug upstream: let it raise."""
    now = clock.iso()
    tx.executemany(
        "INSERT INTO doc_updates (document_id, seq, data, user_id, created_at) VALUES (?, ?, ?, ?, ?)",
        [(document_id, seq, data, user_id, now) for seq, data, user_id in rows],
    )


def append_many(tx: Tx, batches: list[tuple[str, list[tuple[int, bytes, str | None]]]]) -> None:
    """`append` for several documents in one statement: (document id, rows) pairs."""
    now = clock.iso()
    tx.executemany(
        "INSERT INTO doc_updates (document_id, seq, data, user_id, created_at) VALUES (?, ?, ?, ?, ?)",
        [(document_id, seq, data, user_id, now) for document_id, rows in batches for seq, data, user_id in rows],
    )


def compact(tx: Tx, document_id: str, seq: int, state: bytes) -> None:
    """Replace the log up to `seq` by one snapshot, in one transaction (the job's savepoint)."""
    tx.execute(
        "INSERT INTO doc_snapshots (document_id, seq, state, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (document_id) DO UPDATE SET seq = excluded.seq, state = excluded.state, "
        "updated_at = excluded.updated_at WHERE excluded.seq >= doc_snapshots.seq",
        (document_id, seq, state, clock.iso()),
    )
    tx.execute("DELETE FROM doc_updates WHERE document_id = ? AND seq <= ?", (document_id, seq))


def purge(tx: Tx, document_id: str) -> None:
    """Forget a document's CRDT state (for a document being deleted for good)."""
    tx.execute("DELETE FROM doc_updates WHERE document_id = ?", (document_id,))
    tx.execute("DELETE FROM doc_snapshots WHERE document_id = ?", (document_id,))


async def has_state(db: Database, document_id: str) -> bool:
    row = await db.one(
        "SELECT EXISTS (SELECT 1 FROM doc_snapshots WHERE document_id = ?) "
        "OR EXISTS (SELECT 1 FROM doc_updates WHERE document_id = ?)", (document_id, document_id))
    return bool(row[0])


# -- several nodes (PostgreSQL only) ----------------------------------------------------------------
# pg_try_advisory_xact_lock(COMPACTION_LOCK, hashtext(document id)): one compaction of a document
# at a time across the nodes (the first key keeps these locks apart from any other feature's)
COMPACTION_LOCK = 0x6D640001


def _take_head(engine: str) -> str:
    """SQL moving document ?1's head row on by ?2 seqs (made at the stored seq + ?2 if missing, or
    moved there if behind it), locking it to COMMIT; returns the new head."""
    return (f"INSERT INTO doc_heads (document_id, seq) VALUES (?1, {stored_seq(engine, '?1')} + ?2)"
            " ON CONFLICT (document_id) DO UPDATE SET seq = greatest(doc_heads.seq + ?2, excluded.seq)"
            " RETURNING seq")


def lock_heads(tx: Tx, document_ids: list[str]) -> None:
    """Lock the `doc_heads` rows of `document_ids`, in this order, for the writer ahead of a batch
    of appends (`locks_first`): a batch's head rows are locked in document-id order, across its
    jobs too, and before the change feed's head row (`changes_head`) that other jobs of the batch
    take; so two nodes' batches never wait for each other's rows in opposite orders. Moving a
    head on by 0 seqs leaves the appends' numbering as it was."""
    sql = _take_head(tx.engine)
    for document_id in document_ids:
        tx.value(sql, (document_id, 0))


@locks_first(lock_heads, lambda document_id, rows: (document_id,))
def append_at_head(tx: Tx, document_id: str, rows: list[tuple[int, bytes, str | None]]) -> int:
    """`append` with the seqs taken from the document's head row in this transaction (the rows'
    own seqs, the room's local numbering, are ignored); the first seq given (the rest follow).

    The head row stays locked until COMMIT, so another node appending to the same document waits
    for this commit and numbers after it: per document, commits are in seq order. A head behind
    the stored log (a document written by one node before the cluster, or never by a cluster)
    starts from the stored seq."""
    last = tx.value(_take_head(tx.engine), (document_id, len(rows)))
    first = last - len(rows) + 1
    now = clock.iso()
    tx.executemany(
        "INSERT INTO doc_updates (document_id, seq, data, user_id, created_at) VALUES (?, ?, ?, ?, ?)",
        [(document_id, first + i, data, user_id, now) for i, (_, data, user_id) in enumerate(rows)])
    return first


@locks_first(lock_heads, lambda batches: [document_id for document_id, _ in batches])
def append_many_at_head(tx: Tx, batches: list[tuple[str, list[tuple[int, bytes, str | None]]]]) -> dict[str, int]:
    """`append_at_head` for several documents: {document id: first seq}. The head rows are locked
    in document-id order (the writer has locked them ahead already: `lock_heads`)."""
    firsts = {}
    now = clock.iso()
    values = []
    sql = _take_head(tx.engine)
    for document_id, rows in sorted(batches, key=lambda batch: batch[0]):
        last = tx.value(sql, (document_id, len(rows)))
        first = firsts[document_id] = last - len(rows) + 1
        values.extend((document_id, first + i, data, user_id, now) for i, (_, data, user_id) in enumerate(rows))
    tx.executemany(
        "INSERT INTO doc_updates (document_id, seq, data, user_id, created_at) VALUES (?, ?, ?, ?, ?)", values)
    return firsts


def compact_locked(tx: Tx, document_id: str, seq: int, state: bytes) -> bool:
    """`compact` under the document's advisory lock (held to COMMIT); False, nothing done, when
    another node holds it (it is compacting: this one skips this time). `seq` is the highest seq
    up to which this node's Doc holds every row, so only rows it has integrated are deleted; a
    snapshot no newer than the stored one is not written."""
    if not tx.value("SELECT pg_try_advisory_xact_lock(?, hashtext(?))", (COMPACTION_LOCK, document_id)):
        return False
    stored = tx.value("SELECT seq FROM doc_snapshots WHERE document_id = ?", (document_id,))
    if stored is not None and stored >= seq:
        return False  # another node's snapshot holds as much already
    compact(tx, document_id, seq, state)
    return True


@dataclass
class Since:
    snapshot: bytes | None   # the stored snapshot when its seq is past the one asked for
    snapshot_seq: int
    rows: list[tuple[int, bytes]]   # (seq, update) after the one asked for, in seq order


async def since(db: Database, document_id: str, seq: int) -> Since:
    """What was committed after `seq` (one statement: one consistent view): the rows, and the
    snapshot too when a compaction folded rows past `seq` into it."""
    rows = await db.all(
        "SELECT 0 AS kind, seq, state AS data FROM doc_snapshots WHERE document_id = ?1 AND seq > ?2"
        " UNION ALL SELECT 1, seq, data FROM doc_updates WHERE document_id = ?1 AND seq > ?2"
        " ORDER BY kind, seq", (document_id, seq))
    found = Since(None, 0, [])
    for row in rows:
        if row["kind"] == 0:
            found.snapshot, found.snapshot_seq = bytes(row["data"]), row["seq"]
        elif row["seq"] > found.snapshot_seq:
            found.rows.append((row["seq"], bytes(row["data"])))
    return found


async def heads(db: Database, document_ids: list[str]) -> dict[str, int]:
    """{document id: its head seq} for those of `document_ids` that have a head row."""
    found = {}
    for start in range(0, len(document_ids), 500):
        batch = document_ids[start:start + 500]
        marks = ",".join("?" * len(batch))
        for row in await db.all(f"SELECT document_id, seq FROM doc_heads WHERE document_id IN ({marks})",
                                tuple(batch)):
            found[row["document_id"]] = row["seq"]
    return found

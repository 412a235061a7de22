"""SQL of the Yjs update log (`doc_updates`) and snapshots (`doc_snapshots`).

Write jobs (`append`, `compact`, `purge`) run in the database writer thread through
`db.submit`/`db.write`; `load` reads through the reader pool. A document's state is its snapshot
plus every logged update after the snapshot's seq.
"""

from __future__ import annotations

from dataclasses import dataclass

from mdsync import clock
from mdsync.db import Database, Tx


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

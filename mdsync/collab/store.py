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
    log_bytes: int


async def load(db: Database, document_id: str) -> Stored:
    snap = await db.one("SELECT seq, state FROM doc_snapshots WHERE document_id = ?", (document_id,))
    snapshot_seq = snap["seq"] if snap else 0
    rows = await db.all(
        "SELECT seq, data FROM doc_updates WHERE document_id = ? AND seq > ? ORDER BY seq",
        (document_id, snapshot_seq),
    )
    updates = [row["data"] for row in rows]
    return Stored(
        snapshot=snap["state"] if snap else None,
        snapshot_seq=snapshot_seq,
        updates=updates,
        last_seq=rows[-1]["seq"] if rows else snapshot_seq,
        log_bytes=sum(len(u) for u in updates),
    )


def append(tx: Tx, document_id: str, rows: list[tuple[int, bytes, str | None]]) -> None:
    """Append updates (seq, data, user id). Conflicting seqs are a bug upstream: let it raise."""
    now = clock.iso()
    tx.executemany(
        "INSERT INTO doc_updates (document_id, seq, data, user_id, created_at) VALUES (?, ?, ?, ?, ?)",
        [(document_id, seq, data, user_id, now) for seq, data, user_id in rows],
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

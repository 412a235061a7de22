"""SQL of the versions table. Writes are jobs for the database writer (`fn(tx, ...)`); reads
take the Database. Every insert and delete writes its change-feed row in the same transaction."""

from __future__ import annotations

import json
from typing import Any

from mdsync import clock
from mdsync.db import Database, Tx, new_id
from mdsync.sync import changes

META = "id, document_id, workspace_id, created_at, kind, label, authors, created_by, size"


def insert(tx: Tx, document_id: str, kind: str, label: str | None, author_ids: list[str],
           created_by: str | None, markdown: str, state: bytes) -> dict[str, Any] | None:
    """Add a version of a live document; None when the document is gone (purged meanwhile)."""
    workspace_id = tx.value("SELECT workspace_id FROM documents WHERE id = ?", (document_id,))
    if workspace_id is None:
        return None
    authors = _authors(tx, author_ids)
    row = tx.one(
        f"INSERT INTO versions (id, document_id, workspace_id, created_at, kind, label, authors, created_by,"
        f" size, markdown, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {META}",
        (new_id(), document_id, workspace_id, clock.iso(), kind, label, json.dumps(authors),
         created_by, len(markdown.encode("utf-8")), markdown, state))
    changes.record(tx, workspace_id, "version", row["id"], "upsert")
    return meta_json(row)


def insert_auto_once(tx: Tx, document_id: str, author_ids: list[str], markdown: str, state: bytes,
                     burst_began: str | None, continuing: bool) -> tuple[str, dict[str, Any] | None]:
    """Several nodes: an automatic version unless another node made it (docs/architecture.md "The
    projection and automatic versions across nodes"): ("busy", None) when another node is
    recording one of this document right now; ("joined", meta) when the newest automatic version
    was taken during this burst (`burst_began` on) by another node and holds all of `state`, or
    editing goes on (`continuing`: the burst is due by max_interval_seconds, not idle) — this
    burst's authors are added to it; ("same", None) when the newest version has this markdown;
    else ("inserted", meta) or ("gone", None)."""
    from mdsync.cluster import once

    if not once.try_lock(tx, "versions", document_id):
        return "busy", None
    if burst_began is not None:
        auto = tx.one(f"SELECT {META}, state FROM versions WHERE document_id = ? AND kind = 'auto' AND created_at >= ?"
                      " ORDER BY created_at DESC, id DESC LIMIT 1", (document_id, burst_began))
        if auto is not None and (continuing or once.covers(once.of_state(bytes(auto["state"])), once.of_state(state))):
            meta = meta_json(auto)
            known = {author["id"] for author in meta["authors"]}
            added = [user_id for user_id in author_ids if user_id not in known]
            if added:
                meta["authors"] += _authors(tx, added)
                tx.execute("UPDATE versions SET authors = ? WHERE id = ?", (json.dumps(meta["authors"]), meta["id"]))
                changes.record(tx, meta["workspace_id"], "version", meta["id"], "upsert")
            return "joined", meta
    newest = tx.one("SELECT markdown FROM versions WHERE document_id = ? ORDER BY created_at DESC, id DESC LIMIT 1",
                    (document_id,))
    if newest is not None and newest["markdown"] == markdown:
        return "same", None
    version = insert(tx, document_id, "auto", None, author_ids, None, markdown, state)
    return ("inserted", version) if version is not None else ("gone", None)


def _authors(tx: Tx, user_ids: list[str]) -> list[dict[str, str]]:
    """[{id, name}] in the order given (names as they are now; a deleted account keeps its id)."""
    if not user_ids:
        return []
    marks = ",".join("?" * len(user_ids))
    names = {row["id"]: row["name"] for row in tx.all(f"SELECT id, name FROM users WHERE id IN ({marks})", user_ids)}
    return [{"id": user_id, "name": names.get(user_id)} for user_id in user_ids]


def meta_json(row: Any) -> dict[str, Any]:
    authors = row["authors"]
    return {"id": row["id"], "document_id": row["document_id"], "workspace_id": row["workspace_id"],
            "created_at": row["created_at"], "kind": row["kind"], "label": row["label"],
            "authors": json.loads(authors) if isinstance(authors, str) else authors,
            "created_by": row["created_by"], "size": row["size"]}


async def page(db: Database, document_id: str, after: list | None, limit: int) -> list[Any]:
    """One page of a document's versions, newest first; `after` is the (created_at, id) of the
    last one served."""
    if after is None:
        return await db.all(f"SELECT {META} FROM versions WHERE document_id = ?"
                            " ORDER BY created_at DESC, id DESC LIMIT ?", (document_id, limit))
    return await db.all(f"SELECT {META} FROM versions WHERE document_id = ? AND (created_at, id) < (?, ?)"
                        " ORDER BY created_at DESC, id DESC LIMIT ?", (document_id, after[0], after[1], limit))


async def get(db: Database, version_id: str, *, with_markdown: bool = False) -> Any:
    columns = META + (", markdown" if with_markdown else "")
    return await db.one(f"SELECT {columns} FROM versions WHERE id = ?", (version_id,))


async def latest_markdown(db: Database, document_id: str) -> str | None:
    return await db.value("SELECT markdown FROM versions WHERE document_id = ?"
                          " ORDER BY created_at DESC, id DESC LIMIT 1", (document_id,))


AUTO_VERSIONS_BEFORE = ("SELECT id, document_id, workspace_id, created_at FROM versions WHERE kind = 'auto'"
                        " AND created_at < ? ORDER BY document_id, created_at, id")


def auto_versions_before(tx: Tx, before: str) -> list[Any]:
    """The automatic versions created before `before`, by document, oldest first."""
    return tx.all(AUTO_VERSIONS_BEFORE, (before,))


def delete(tx: Tx, rows: list[Any]) -> None:
    """Delete these versions (rows with id and workspace_id), each a `delete` in the change feed."""
    for row in rows:
        tx.execute("DELETE FROM versions WHERE id = ? AND kind = 'auto'", (row["id"],))
        changes.record(tx, row["workspace_id"], "version", row["id"], "delete")


def remove(tx: Tx, version_id: str) -> None:
    """Delete one version of any kind (a restore version whose restore was refused)."""
    row = tx.one("DELETE FROM versions WHERE id = ? RETURNING workspace_id", (version_id,))
    if row is not None:
        changes.record(tx, row["workspace_id"], "version", version_id, "delete")

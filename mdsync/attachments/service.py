"""Attachments: uploads (spooled, limited, hashed, sniffed, then stored), reads, deletes, purge
hooks and the share-link filter. The SQL of the feature lives here.

Order of an upload: spool to a temp file (413 past limits.max_upload_bytes, the temp file goes) →
`storage.put` under the new id → insert the row, its change-feed row and its audit row in one
transaction; if that transaction fails, the stored file is deleted again. Deletes and purges
remove files after their transaction commits, so a rolled-back delete never loses a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from mdsync import audit, clock
from mdsync.api.errors import NotFound, TooLarge
from mdsync.attachments import links
from mdsync.attachments import sniff as sniffing
from mdsync.attachments.signing import Signer
from mdsync.attachments.storage import Storage, incoming_dir
from mdsync.config import Settings
from mdsync.db import Database, Tx, new_id
from mdsync.sync import changes

log = logging.getLogger("mdsync.attachments")

COLUMNS = "id, workspace_id, document_id, name, content_type, size, sha256, storage_key, created_by, created_at, deleted_at"
# documents longer than this have their links read and rewritten in a worker thread
THREAD_ABOVE_CHARS = 64 * 1024


def reduce_name(name: str | None) -> str:
    """The client's file name reduced to its last component (`/` and `\\` both separate);
    nothing, `.` or `..` becomes `file`."""
    last = re.split(r"[/\\]", name or "")[-1]
    last = re.sub(r"[\x00-\x1f\x7f]", "", last).strip()[:255]
    return "file" if last in ("", ".", "..") else last


@dataclass
class Spooled:
    path: Path
    size: int
    sha256: str
    head: bytes

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class Attachments:
    def __init__(self, db: Database, settings: Settings, storage: Storage, signer: Signer):
        self.db = db
        self.settings = settings
        self.storage = storage
        self.signer = signer
        self.limit = settings.limits.max_upload_bytes

    # -- uploads -----------------------------------------------------------------------------
    async def spool(self, chunks: AsyncIterable[bytes]) -> Spooled:
        """Write the chunks to a temp file under data_dir/incoming (413 past the limit)."""
        directory = await asyncio.to_thread(incoming_dir, self.settings)
        path = directory / uuid.uuid4().hex
        digest, size, head = hashlib.sha256(), 0, bytearray()
        f = await asyncio.to_thread(open, path, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.limit:
                    raise TooLarge(f"the file is larger than limits.max_upload_bytes ({self.limit} bytes)")
                digest.update(chunk)
                if len(head) < sniffing.SNIFF_BYTES:
                    head += chunk[:sniffing.SNIFF_BYTES - len(head)]
                await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(f.close)
        except BaseException:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return Spooled(path, size, digest.hexdigest(), bytes(head))

    async def store(self, spooled: Spooled, name: str) -> dict:
        """Put a spooled file into storage under a new id (no row yet): the fields of its row."""
        attachment_id = new_id()
        name = reduce_name(name)
        try:
            await self.storage.put(attachment_id, spooled.path)
        finally:
            spooled.discard()
        return {"id": attachment_id, "name": name, "content_type": sniffing.sniff(spooled.head, name),
                "size": spooled.size, "sha256": spooled.sha256, "storage_key": attachment_id}

    async def create(self, workspace_id: str, user_id: str | None, spooled: Spooled, name: str,
                     document_id: str | None) -> dict:
        fields = await self.store(spooled, name)

        def insert(tx: Tx):
            if document_id is not None and tx.value(
                    "SELECT 1 FROM documents WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                    (document_id, workspace_id)) is None:
                raise NotFound("no such document")
            insert_row(tx, workspace_id, document_id, user_id, fields)
            return tx.one(f"SELECT {COLUMNS} FROM attachments WHERE id = ?", (fields["id"],))

        try:
            row = await self.db.write(insert)
        except BaseException:
            await self.remove_files([fields["storage_key"]])
            raise
        return self.meta(row)

    # -- reads -------------------------------------------------------------------------------
    async def find(self, attachment_id: str) -> Any:
        """A live attachment (not deleted, its workspace not deleted), or None."""
        return await self.db.one(
            f"SELECT {', '.join('a.' + c for c in COLUMNS.split(', '))} FROM attachments a"
            " JOIN workspaces w ON w.id = a.workspace_id AND w.deleted_at IS NULL"
            " WHERE a.id = ? AND a.deleted_at IS NULL", (attachment_id,))

    async def of_document(self, document_id: str, after: Any, limit: int) -> list[Any]:
        created, last = (after if isinstance(after, list) and len(after) == 2 else ["", ""])
        return await self.db.all(
            f"SELECT {COLUMNS} FROM attachments WHERE document_id = ? AND deleted_at IS NULL"
            " AND (created_at, id) > (?, ?) ORDER BY created_at, id LIMIT ?",
            (document_id, str(created), str(last), limit))

    def meta(self, row: Any) -> dict:
        return {"id": row["id"], "name": row["name"], "content_type": row["content_type"], "size": row["size"],
                "sha256": row["sha256"], "document_id": row["document_id"], "created_at": row["created_at"],
                "url": self.signer.url(row["id"])}

    # -- deletes -----------------------------------------------------------------------------
    async def delete(self, row: Any, user_id: str | None) -> None:
        def delete(tx: Tx):
            done = tx.execute("UPDATE attachments SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL",
                              (clock.iso(), row["id"])).rowcount
            if not done:
                raise NotFound("no such attachment")
            changes.record(tx, row["workspace_id"], "attachment", row["id"], "delete")
            audit.record(tx, "attachment.delete", actor_id=user_id, target_type="attachment", target_id=row["id"],
                         workspace_id=row["workspace_id"])

        await self.db.write(delete)
        await self.remove_files([row["storage_key"]])  # committed: the file goes before the answer

    async def remove_files(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await self.storage.delete(key)
            except Exception:  # the row is gone either way; a stray file is logged, not fatal
                log.exception("could not delete stored attachment file %s", key)

    def _remove_after_commit(self, tx: Tx, keys: list[str]) -> None:
        if keys:
            tx.after_commit(lambda: asyncio.ensure_future(self.remove_files(keys)))

    # purge hooks: fn(tx, id) inside the purge transaction; the files go after it commits
    def workspace_purged(self, tx: Tx, workspace_id: str) -> None:
        keys = [r["storage_key"] for r in tx.all("SELECT storage_key FROM attachments WHERE workspace_id = ?"
                                                  " AND deleted_at IS NULL", (workspace_id,))]
        tx.execute("DELETE FROM attachments WHERE workspace_id = ?", (workspace_id,))
        self._remove_after_commit(tx, keys)

    def document_purged(self, tx: Tx, document_id: str) -> None:
        rows = tx.all("SELECT id, workspace_id, storage_key FROM attachments WHERE document_id = ?"
                      " AND deleted_at IS NULL", (document_id,))
        now = clock.iso()
        for r in rows:
            tx.execute("UPDATE attachments SET deleted_at = ?, document_id = NULL WHERE id = ?", (now, r["id"]))
            changes.record(tx, r["workspace_id"], "attachment", r["id"], "delete")
        self._remove_after_commit(tx, [r["storage_key"] for r in rows])

    # -- share links -------------------------------------------------------------------------
    async def share_filter(self, markdown: str, document: Any) -> str:
        """`GET /share/{token}`: links to this workspace's live attachments get a signed URL (the
        anonymous reader has no token); ids of anything else stay as written, unsigned. Reading
        the links is linear in the document (links.py); a long document is read off the loop."""
        big = len(markdown) > THREAD_ABOVE_CHARS
        ids = await asyncio.to_thread(links.ids, markdown) if big else links.ids(markdown)
        if not ids:
            return markdown
        marks = ",".join("?" * len(ids))
        rows = await self.db.all(f"SELECT id FROM attachments WHERE workspace_id = ? AND deleted_at IS NULL"
                                 f" AND id IN ({marks})", (document["workspace_id"], *ids))
        live = {r["id"] for r in rows}

        def sign(attachment_id: str, written: str) -> str | None:
            return self.signer.url(attachment_id) if attachment_id in live else None

        if big:
            return await asyncio.to_thread(links.rewrite, markdown, sign)
        return links.rewrite(markdown, sign)


def insert_row(tx: Tx, workspace_id: str, document_id: str | None, user_id: str | None, fields: dict,
               created_at: str | None = None) -> None:
    """One attachment row (storage already holds its file) with its change-feed and audit rows."""
    tx.execute(f"INSERT INTO attachments ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
               (fields["id"], workspace_id, document_id, fields["name"], fields["content_type"], fields["size"],
                fields["sha256"], fields["storage_key"], user_id, created_at or clock.iso()))
    changes.record(tx, workspace_id, "attachment", fields["id"], "upsert")
    audit.record(tx, "attachment.create", actor_id=user_id, target_type="attachment", target_id=fields["id"],
                 workspace_id=workspace_id, detail={"size": fields["size"], "document_id": document_id})


ATTACHMENTS: web.AppKey[Attachments] = web.AppKey("attachments", Attachments)

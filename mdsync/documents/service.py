"""Folders and documents: create, rename, move, reorder, the tree, the trash.

Deleting a folder moves it, every folder below it and every document in them to the trash;
restoring a document also brings back the trashed folders above it, so it lands where it was.
Purging removes the document row (features keyed on documents cascade). Every change writes
its change-feed row in its own transaction: folders `upsert`/`delete`, documents `upsert`
(also for trash and restore, with `deleted_at` set or cleared) and `delete` on purge.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections import OrderedDict
from datetime import UTC
from typing import Any

from aiohttp import web

from mdsync import audit, clock
from mdsync.api.errors import Conflict, NotFound, TooLarge, ValidationFailed
from mdsync.appkeys import SETTINGS
from mdsync.db import Database, Tx, new_id
from mdsync.documents.content import CONTENT
from mdsync.hooks import HOOKS
from mdsync.sync import changes
from mdsync.workspaces.access import DOC_COLUMNS, Access
from mdsync.workspaces.service import WORKSPACES, keyset
from mdsync.tiptap.parse import TooDeep, check_depth

DOC_FIELDS = DOC_COLUMNS.replace("d.", "")
TREE_CACHE_ENTRIES = 16  # trees kept in memory (a 10 000-document tree is ~2 MB)
UNSET: Any = object()  # a PATCH field that was not sent (None means "set to null")


def folder_json(row) -> dict:
    return {"id": row["id"], "workspace_id": row["workspace_id"], "parent_id": row["parent_id"], "name": row["name"],
            "position": row["position"], "created_at": row["created_at"], "updated_at": row["updated_at"],
            "deleted_at": row["deleted_at"]}


_PLACEHOLDER = re.compile(r"\{\{(title|date|author)\}\}")


def _fill_template(markdown: str, title: str, author: str) -> str:
    """`{{title}}`, `{{date}}` (today, UTC) and `{{author}}` filled in one pass: a title or name
    that itself reads `{{date}}` stays as typed; other `{{…}}` are left as written."""
    values = {"title": title, "date": clock.now().astimezone(UTC).strftime("%Y-%m-%d"), "author": author}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], markdown)


class Documents:
    def __init__(self, app: web.Application, db: Database):
        self.app = app
        self.db = db
        # workspace id -> [change seq, tree JSON, gzipped tree JSON or None], least recently used first
        self._tree_cache: OrderedDict[str, list] = OrderedDict()

    def _notify(self, tx: Tx, workspace_id: str, document_id: str | None) -> None:
        self.app[WORKSPACES].access_changed(tx, workspace_id, None, document_id)

    async def document_json(self, row) -> dict:
        """A document's metadata; its `etag` is the content backend's (the one GET …/content
        answers, good for If-Match on PUT …/content)."""
        return self._shape(row, await self.app[CONTENT].etag(row))

    async def documents_json(self, rows: list[Any]) -> list[dict]:
        content = self.app[CONTENT]
        return [self._shape(row, await content.etag(row)) for row in rows]

    @staticmethod
    def _shape(row, etag: str) -> dict:
        return {"id": row["id"], "workspace_id": row["workspace_id"], "folder_id": row["folder_id"],
                "title": row["title"], "kind": row["kind"], "content_model": row["content_model"],
                "position": row["position"], "created_by": row["created_by"], "created_at": row["created_at"],
                "updated_at": row["updated_at"], "deleted_at": row["deleted_at"], "size": row["size"],
                "etag": etag}

    # -- shared checks (inside a Tx) -------------------------------------------------------
    @staticmethod
    def _live_folder(tx: Tx, workspace_id: str, folder_id: str, field: str) -> Any:
        row = tx.one("SELECT id, parent_id FROM folders WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL",
                     (folder_id, workspace_id))
        if row is None:
            raise ValidationFailed.field(field, "no such folder in this workspace")
        return row

    @staticmethod
    def _next_position(tx: Tx, table: str, column: str, workspace_id: str, parent: str | None) -> float:
        # table/column come from the two call sites below, never from input
        value = tx.value(f"SELECT max(position) FROM {table} WHERE workspace_id = ? AND {column} IS NOT DISTINCT FROM ?"
                         " AND deleted_at IS NULL", (workspace_id, parent))
        return 0.0 if value is None else float(value) + 1

    # -- folders ---------------------------------------------------------------------------
    async def create_folder(self, access: Access, name: str, parent_id: str | None, position: float | None) -> dict:
        ws = access.workspace_id

        def create(tx: Tx):
            if parent_id is not None:
                self._live_folder(tx, ws, parent_id, "parent_id")
            pos = position if position is not None else self._next_position(tx, "folders", "parent_id", ws, parent_id)
            folder_id, now = new_id(), clock.iso()
            tx.execute("INSERT INTO folders (id, workspace_id, parent_id, name, position, created_by, created_at, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (folder_id, ws, parent_id, name, pos, access.user_id, now, now))
            changes.record(tx, ws, "folder", folder_id, "upsert")
            return tx.one("SELECT * FROM folders WHERE id = ?", (folder_id,))

        return folder_json(await self.db.write(create))

    async def update_folder(self, access: Access, folder_id: str, name: str | None, parent_id: Any,
                            position: float | None) -> dict:
        ws = access.workspace_id

        def update(tx: Tx):
            row = tx.one("SELECT * FROM folders WHERE id = ? AND workspace_id = ?", (folder_id, ws))
            if row is None or row["deleted_at"]:
                raise NotFound("no such folder")
            new_parent, new_position = row["parent_id"], position
            if parent_id is not UNSET and parent_id != row["parent_id"]:
                new_parent = parent_id
                if parent_id is not None:
                    self._live_folder(tx, ws, parent_id, "parent_id")
                    if self._is_within(tx, parent_id, folder_id):
                        raise Conflict("a folder cannot move under itself or below itself")
                if new_position is None:
                    new_position = self._next_position(tx, "folders", "parent_id", ws, parent_id)
            tx.execute("UPDATE folders SET name = ?, parent_id = ?, position = ?, updated_at = ? WHERE id = ?",
                       (name if name is not None else row["name"], new_parent,
                        new_position if new_position is not None else row["position"], clock.iso(), folder_id))
            changes.record(tx, ws, "folder", folder_id, "upsert")
            return tx.one("SELECT * FROM folders WHERE id = ?", (folder_id,))

        return folder_json(await self.db.write(update))

    @staticmethod
    def _is_within(tx: Tx, candidate: str, ancestor: str) -> bool:
        """Is `candidate` the folder `ancestor` or anywhere below it?"""
        return bool(tx.value(
            "WITH RECURSIVE up(id, parent_id) AS (SELECT id, parent_id FROM folders WHERE id = ?"
            " UNION SELECT f.id, f.parent_id FROM folders f JOIN up ON f.id = up.parent_id)"
            " SELECT 1 FROM up WHERE id = ?", (candidate, ancestor)))

    async def delete_folder(self, access: Access, folder_id: str) -> None:
        ws = access.workspace_id

        def delete(tx: Tx):
            subtree = [r["id"] for r in tx.all(
                "WITH RECURSIVE down(id) AS (SELECT id FROM folders WHERE id = ? AND workspace_id = ? AND deleted_at IS NULL"
                " UNION SELECT f.id FROM folders f JOIN down ON f.parent_id = down.id WHERE f.deleted_at IS NULL)"
                " SELECT id FROM down", (folder_id, ws))]
            if not subtree:
                raise NotFound("no such folder")
            now = clock.iso()
            marks = ",".join("?" * len(subtree))
            docs = [r["id"] for r in tx.all(
                f"SELECT id FROM documents WHERE folder_id IN ({marks}) AND deleted_at IS NULL", subtree)]
            tx.execute(f"UPDATE folders SET deleted_at = ?, updated_at = ? WHERE id IN ({marks})", (now, now, *subtree))
            if docs:
                dmarks = ",".join("?" * len(docs))
                tx.execute(f"UPDATE documents SET deleted_at = ?, updated_at = ? WHERE id IN ({dmarks})", (now, now, *docs))
            for doc_id in docs:
                changes.record(tx, ws, "document", doc_id, "upsert")
                self._notify(tx, ws, doc_id)
            for fid in subtree:
                changes.record(tx, ws, "folder", fid, "delete")
            audit.record(tx, "folder.delete", actor_id=access.user_id, target_type="folder", target_id=folder_id,
                         workspace_id=ws, detail={"folders": len(subtree), "documents": len(docs)})

        await self.db.write(delete)

    # -- documents -------------------------------------------------------------------------
    async def create_document(self, access: Access, author_name: str, title: str, folder_id: str | None,
                              kind: str, content_model: str, markdown: str | None, template_id: str | None) -> dict:
        ws = access.workspace_id
        if template_id is not None:
            template = await self.db.one(f"SELECT {DOC_FIELDS} FROM documents WHERE id = ? AND workspace_id = ?"
                                         " AND deleted_at IS NULL", (template_id, ws))
            if template is None:
                raise ValidationFailed.field("template_id", "no such document in this workspace")
            source = await self.app[CONTENT].markdown(template)
            markdown = _fill_template(source, title, author_name)
        markdown = markdown or ""
        limit = self.app[SETTINGS].limits.max_document_bytes
        size = len(markdown.encode("utf-8"))
        if size > limit:
            raise TooLarge(f"the markdown is larger than {limit} bytes")
        if content_model == "tiptap":
            try:
                check_depth(markdown)  # what the editor's document could not hold
            except TooDeep as exc:
                raise ValidationFailed.field("template_id" if template_id else "markdown", str(exc)) from None

        def create(tx: Tx):
            if folder_id is not None:
                self._live_folder(tx, ws, folder_id, "folder_id")
            pos = self._next_position(tx, "documents", "folder_id", ws, folder_id)
            doc_id, now = new_id(), clock.iso()
            tx.execute("INSERT INTO documents (id, workspace_id, folder_id, title, kind, content_model, markdown, size,"
                       " position, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (doc_id, ws, folder_id, title, kind, content_model, markdown, size, pos, access.user_id, now, now))
            changes.record(tx, ws, "document", doc_id, "upsert")
            return tx.one(f"SELECT {DOC_FIELDS} FROM documents WHERE id = ?", (doc_id,))

        return await self.document_json(await self.db.write(create))

    async def list_documents(self, workspace_id: str, after, limit: int, kind: str | None,
                             folder_id: str | None) -> list[Any]:
        created, last_id = keyset(after)
        return await self.db.all(
            f"SELECT {DOC_FIELDS} FROM documents WHERE workspace_id = ? AND deleted_at IS NULL"
            " AND (CAST(? AS TEXT) IS NULL OR kind = ?) AND (CAST(? AS TEXT) IS NULL OR folder_id = ?)"
            " AND (created_at, id) > (?, ?)"
            " ORDER BY created_at, id LIMIT ?", (workspace_id, kind, kind, folder_id, folder_id, created, last_id, limit))

    async def list_trash(self, workspace_id: str, after, limit: int) -> list[Any]:
        deleted, last_id = keyset(after)
        return await self.db.all(
            f"SELECT {DOC_FIELDS} FROM documents WHERE workspace_id = ? AND deleted_at IS NOT NULL"
            " AND (deleted_at, id) > (?, ?) ORDER BY deleted_at, id LIMIT ?", (workspace_id, deleted, last_id, limit))

    async def update_document(self, access: Access, title: str | None, folder_id: Any, position: float | None,
                              kind: str | None) -> dict:
        ws, doc_id = access.workspace_id, access.document_id

        def update(tx: Tx):
            row = tx.one("SELECT folder_id, deleted_at FROM documents WHERE id = ?", (doc_id,))
            if row is None or row["deleted_at"]:
                raise NotFound("no such document")
            sets: dict[str, Any] = {}
            if title is not None:
                sets["title"] = title
            if kind is not None:
                sets["kind"] = kind
            if folder_id is not UNSET and folder_id != row["folder_id"]:
                if folder_id is not None:
                    self._live_folder(tx, ws, folder_id, "folder_id")
                sets["folder_id"] = folder_id
                if position is None:
                    sets["position"] = self._next_position(tx, "documents", "folder_id", ws, folder_id)
            if position is not None:
                sets["position"] = position
            sets["updated_at"] = clock.iso()
            assignments = ", ".join(f"{column} = ?" for column in sets)  # columns named above, not input
            tx.execute(f"UPDATE documents SET {assignments} WHERE id = ?", (*sets.values(), doc_id))
            changes.record(tx, ws, "document", doc_id, "upsert")
            return tx.one(f"SELECT {DOC_FIELDS} FROM documents WHERE id = ?", (doc_id,))

        return await self.document_json(await self.db.write(update))

    async def trash(self, access: Access) -> None:
        ws, doc_id = access.workspace_id, access.document_id

        def trash(tx: Tx):
            now = clock.iso()
            done = tx.execute("UPDATE documents SET deleted_at = ?, updated_at = ? WHERE id = ? AND deleted_at IS NULL",
                              (now, now, doc_id)).rowcount
            if not done:
                raise NotFound("no such document")
            changes.record(tx, ws, "document", doc_id, "upsert")
            audit.record(tx, "document.trash", actor_id=access.user_id, target_type="document", target_id=doc_id,
                         workspace_id=ws)
            self._notify(tx, ws, doc_id)

        await self.db.write(trash)

    async def restore(self, access: Access) -> dict:
        ws, doc_id = access.workspace_id, access.document_id

        def restore(tx: Tx):
            row = tx.one("SELECT folder_id, deleted_at FROM documents WHERE id = ?", (doc_id,))
            if row is None:
                raise NotFound("no such document")
            if row["deleted_at"] is not None:
                now = clock.iso()
                # bring back the trashed folders above it, so the document returns to its place
                trashed_above = tx.all(
                    "WITH RECURSIVE up(id, parent_id, deleted_at) AS ("
                    " SELECT id, parent_id, deleted_at FROM folders WHERE id = ?"
                    " UNION SELECT f.id, f.parent_id, f.deleted_at FROM folders f JOIN up ON f.id = up.parent_id)"
                    " SELECT id FROM up WHERE deleted_at IS NOT NULL", (row["folder_id"],))
                for folder in trashed_above:
                    tx.execute("UPDATE folders SET deleted_at = NULL, updated_at = ? WHERE id = ?", (now, folder["id"]))
                    changes.record(tx, ws, "folder", folder["id"], "upsert")
                tx.execute("UPDATE documents SET deleted_at = NULL, updated_at = ? WHERE id = ?", (now, doc_id))
                changes.record(tx, ws, "document", doc_id, "upsert")
                audit.record(tx, "document.restore", actor_id=access.user_id, target_type="document",
                             target_id=doc_id, workspace_id=ws)
            return tx.one(f"SELECT {DOC_FIELDS} FROM documents WHERE id = ?", (doc_id,))

        return await self.document_json(await self.db.write(restore))

    async def purge(self, access: Access) -> None:
        await self.db.write(self._purge, access.workspace_id, access.document_id, access.user_id, None)

    def _purge(self, tx: Tx, ws: str, doc_id: str, actor_id: str | None, detail: dict | None) -> None:
        """The one purge of a document (DELETE ?permanent=true, and the trash retention sweep)."""
        for hook in self.app[HOOKS].document_purge:
            hook(tx, doc_id)
        if not tx.execute("DELETE FROM documents WHERE id = ?", (doc_id,)).rowcount:
            raise NotFound("no such document")
        changes.record(tx, ws, "document", doc_id, "delete")
        audit.record(tx, "document.purge", actor_id=actor_id, target_type="document", target_id=doc_id,
                     workspace_id=ws, detail=detail)
        self._notify(tx, ws, doc_id)

    # -- the trash: retention, folders -------------------------------------------------------
    async def purge_trash(self, retention_days: float) -> int:
        """Purge what has been in the trash longer than `retention_days` (0: keep it): each
        document as DELETE ?permanent=true would (a `delete` in the change feed), one per writer
        job, then the trashed folders left empty. Returns how many documents went."""
        if retention_days <= 0:
            return 0
        cutoff = clock.iso_in(-retention_days * 86400)
        purged = 0

        def purge_one(tx: Tx, doc_id: str) -> int:
            row = tx.one("SELECT workspace_id FROM documents WHERE id = ? AND deleted_at < ?", (doc_id, cutoff))
            if row is None:
                return 0  # restored (or purged) meanwhile
            self._purge(tx, row["workspace_id"], doc_id, None, {"reason": "trash retention",
                                                                "retention_days": retention_days})
            return 1

        for _ in range(100_000):  # bounded: each pass takes a page of what is due, or ends
            due = await self.db.all("SELECT id FROM documents WHERE deleted_at < ? ORDER BY deleted_at LIMIT 500",
                                    (cutoff,))
            if not due:
                break
            for row in due:
                purged += await self.db.write(purge_one, row["id"])

        def purge_empty_folders(tx: Tx) -> int:
            # trashed long enough, holding no document and no folder (whatever their state): leaves
            # first, so a deep empty tree goes over a few passes
            return tx.execute(
                "DELETE FROM folders WHERE id IN (SELECT f.id FROM folders f WHERE f.deleted_at < ?"
                " AND NOT EXISTS (SELECT 1 FROM documents d WHERE d.folder_id = f.id)"
                " AND NOT EXISTS (SELECT 1 FROM folders c WHERE c.parent_id = f.id) LIMIT 500)", (cutoff,)).rowcount

        for _ in range(10_000):  # bounded by the depth and number of trashed folders
            if not await self.db.write(purge_empty_folders):
                break
        return purged

    async def restore_folder(self, access: Access, folder_id: str) -> dict:
        """Bring a folder back from the trash, with what its delete trashed along with it (its
        subfolders and documents trashed at that same moment) and the trashed folders above it,
        so it returns where it was. An empty folder comes back too."""
        ws = access.workspace_id

        def restore(tx: Tx):
            row = tx.one("SELECT parent_id, deleted_at FROM folders WHERE id = ? AND workspace_id = ?", (folder_id, ws))
            if row is None:
                raise NotFound("no such folder")
            if row["deleted_at"] is not None:
                now, when = clock.iso(), row["deleted_at"]
                above = [r["id"] for r in tx.all(
                    "WITH RECURSIVE up(id, parent_id, deleted_at) AS ("
                    " SELECT id, parent_id, deleted_at FROM folders WHERE id = ?"
                    " UNION SELECT f.id, f.parent_id, f.deleted_at FROM folders f JOIN up ON f.id = up.parent_id)"
                    " SELECT id FROM up WHERE deleted_at IS NOT NULL", (row["parent_id"],))]
                below = [r["id"] for r in tx.all(
                    "WITH RECURSIVE down(id) AS (SELECT ?"
                    " UNION SELECT f.id FROM folders f JOIN down ON f.parent_id = down.id WHERE f.deleted_at = ?)"
                    " SELECT id FROM down", (folder_id, when))]
                marks = ",".join("?" * len(below))
                docs = [r["id"] for r in tx.all(
                    f"SELECT id FROM documents WHERE folder_id IN ({marks}) AND deleted_at = ?", (*below, when))]
                for fid in above + below:
                    tx.execute("UPDATE folders SET deleted_at = NULL, updated_at = ? WHERE id = ?", (now, fid))
                    changes.record(tx, ws, "folder", fid, "upsert")
                for doc_id in docs:
                    tx.execute("UPDATE documents SET deleted_at = NULL, updated_at = ? WHERE id = ?", (now, doc_id))
                    changes.record(tx, ws, "document", doc_id, "upsert")
                audit.record(tx, "folder.restore", actor_id=access.user_id, target_type="folder", target_id=folder_id,
                             workspace_id=ws, detail={"folders": len(above) + len(below), "documents": len(docs)})
            return tx.one("SELECT * FROM folders WHERE id = ?", (folder_id,))

        return folder_json(await self.db.write(restore))

    async def list_trashed_folders(self, workspace_id: str, after, limit: int) -> list[Any]:
        deleted, last_id = keyset(after)
        return await self.db.all(
            "SELECT * FROM folders WHERE workspace_id = ? AND deleted_at IS NOT NULL"
            " AND (deleted_at, id) > (?, ?) ORDER BY deleted_at, id LIMIT ?", (workspace_id, deleted, last_id, limit))

    # -- the tree --------------------------------------------------------------------------
    async def tree(self, workspace_id: str, gzip_ok: bool) -> tuple[bytes, str, bool]:
        """The whole tree as JSON: (body, etag, gzipped).

        Built by the database in one query per table, then cached per workspace under the workspace's
        newest change-feed seq: every change to its folders and documents writes a change in the
        same transaction, so a newer seq means "rebuild". Reading the seq is one index probe.
        """
        seq = (await self.db.lookup("SELECT coalesce(max(seq), 0) FROM changes WHERE workspace_id = ?", (workspace_id,)))[0]
        etag = f'"tree-{seq}"'
        cached = self._tree_cache.get(workspace_id)
        if cached is None or cached[0] != seq:
            cached = [seq, (await self._tree_json(workspace_id)).encode("utf-8"), None]
            self._tree_cache[workspace_id] = cached
            while len(self._tree_cache) > TREE_CACHE_ENTRIES:
                self._tree_cache.popitem(last=False)
        else:
            self._tree_cache.move_to_end(workspace_id)
        if not gzip_ok or len(cached[1]) < 1024:
            return cached[1], etag, False
        if cached[2] is None:
            cached[2] = await asyncio.to_thread(gzip.compress, cached[1], 5)
        return cached[2], etag, True

    async def _tree_json(self, workspace_id: str) -> str:
        folders = await self.db.value(_TREE_FOLDERS[self.db.engine], (workspace_id,))
        documents = await self.db.value(_TREE_DOCUMENTS[self.db.engine], (workspace_id,))
        return f'{{"workspace_id":{json.dumps(workspace_id)},"folders":{folders},"documents":{documents}}}'


# The tree's two arrays, built as JSON text by the database. Folders at the top (parent_id NULL)
# and loose documents (folder_id NULL) come first, names in byte order, on both engines.
_TREE_FOLDERS = {
    "sqlite": "SELECT json_group_array(json(obj)) FROM (SELECT json_object('id', id, 'name', name, 'parent_id',"
              " parent_id, 'position', position, 'updated_at', updated_at) AS obj FROM folders"
              " WHERE workspace_id = ? AND deleted_at IS NULL ORDER BY parent_id, position, name)",
    "postgresql": "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name, 'parent_id', parent_id,"
                  " 'position', position, 'updated_at', updated_at) ORDER BY parent_id NULLS FIRST, position, name COLLATE \"C\"),"
                  " '[]')::text FROM folders WHERE workspace_id = ? AND deleted_at IS NULL",
}
_TREE_DOCUMENTS = {
    "sqlite": "SELECT json_group_array(json(obj)) FROM (SELECT json_object('id', id, 'title', title, 'folder_id',"
              " folder_id, 'position', position, 'kind', kind, 'updated_at', updated_at) AS obj FROM documents"
              " WHERE workspace_id = ? AND deleted_at IS NULL ORDER BY folder_id, position, title)",
    "postgresql": "SELECT coalesce(json_agg(json_build_object('id', id, 'title', title, 'folder_id', folder_id,"
                  " 'position', position, 'kind', kind, 'updated_at', updated_at)"
                  " ORDER BY folder_id NULLS FIRST, position, title COLLATE \"C\"), '[]')::text"
                  " FROM documents WHERE workspace_id = ? AND deleted_at IS NULL",
}


DOCUMENTS: web.AppKey[Documents] = web.AppKey("documents", Documents)

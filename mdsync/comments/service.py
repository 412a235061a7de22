"""Comments: threads and replies on a document, with the rules of who may do what to whom.

Rules beyond the role check of the route (commenter and up writes, viewers read): only the author
edits a comment's body; the author (still commenter or up there) or a workspace admin/owner
deletes it; a reply answers a thread of the same document (one level: never a reply to a reply)
and has no anchor of its own; resolving or reopening any comment of a thread changes the thread.

Every create, edit, delete, resolve and reopen writes its `comment` change in the same
transaction (deleting a thread: one `delete` for it and one for each reply, which go with it),
and an audit row where an admin deletes someone else's comment.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from mdsync import audit, clock
from mdsync.api.errors import Forbidden, NotFound, ValidationFailed
from mdsync.db import Database, Tx, new_id
from mdsync.sync import changes
from mdsync.workspaces.access import Access
from mdsync.workspaces.service import keyset

STATUS = {"open": "c.resolved_at IS NULL", "resolved": "c.resolved_at IS NOT NULL", "all": "TRUE"}


def _json_of(c: str, u: str, replies: str) -> str:
    """SQLite's SQL for the JSON of comment `c` (its author's row `u`): the API shape."""
    return (f"json_object('id', {c}.id, 'document_id', {c}.document_id, 'parent_id', {c}.parent_id,"
            f" 'author_id', {c}.author_id, 'author_name', {u}.name, 'body', {c}.body, 'anchor', json({c}.anchor),"
            f" 'resolved', json(CASE WHEN {c}.resolved_at IS NULL THEN 'false' ELSE 'true' END),"
            f" 'resolved_at', {c}.resolved_at, 'resolved_by', {c}.resolved_by, 'created_at', {c}.created_at,"
            f" 'updated_at', {c}.updated_at, 'replies', json({replies}))")


def _pg_json_of(c: str, u: str, replies: str) -> str:
    """PostgreSQL's SQL for the same JSON (json_build_object; the anchor's text cast to json)."""
    return (f"json_build_object('id', {c}.id, 'document_id', {c}.document_id, 'parent_id', {c}.parent_id,"
            f" 'author_id', {c}.author_id, 'author_name', {u}.name, 'body', {c}.body, 'anchor', {c}.anchor::json,"
            f" 'resolved', {c}.resolved_at IS NOT NULL,"
            f" 'resolved_at', {c}.resolved_at, 'resolved_by', {c}.resolved_by, 'created_at', {c}.created_at,"
            f" 'updated_at', {c}.updated_at, 'replies', {replies})")


# a thread with its replies (oldest first), or a reply (no replies of its own), as one JSON text
# built by the database (PostgreSQL's cast to text, so both engines answer a str)
COMMENT_JSON = {
    "sqlite": _json_of("c", "u", (
        "(SELECT coalesce(json_group_array(json(obj)), '[]') FROM (SELECT " + _json_of("r", "ru", "'[]'") + " AS obj"
        " FROM comments r LEFT JOIN users ru ON ru.id = r.author_id WHERE r.parent_id = c.id"
        " ORDER BY r.created_at, r.id))")),
    "postgresql": _pg_json_of("c", "u", (
        "(SELECT coalesce(json_agg(obj ORDER BY created_at, id), '[]'::json) FROM (SELECT "
        + _pg_json_of("r", "ru", "'[]'::json") + " AS obj, r.created_at, r.id"
        " FROM comments r LEFT JOIN users ru ON ru.id = r.author_id WHERE r.parent_id = c.id) replies)")) + "::text",
}
SELECT = {engine: f"SELECT c.id, c.created_at, {json_sql} AS json FROM comments c LEFT JOIN users u ON u.id = c.author_id"
          for engine, json_sql in COMMENT_JSON.items()}


class Comments:
    def __init__(self, db: Database):
        self.db = db
        self.select = SELECT[db.engine]

    # -- reads -----------------------------------------------------------------------------
    async def document_of(self, comment_id: str) -> str:
        """The document a comment is on (NotFound when there is no such comment): routes on
        /comments/{id} authorize on it before anything else is read."""
        row = await self.db.lookup("SELECT document_id FROM comments WHERE id = ?", (comment_id,))
        if row is None:
            raise NotFound("no such comment")
        return row["document_id"]

    async def threads(self, document_id: str, status: str, after, limit: int) -> list[Any]:
        """A page of threads (`limit` rows, cursor `after`), oldest first: rows of (id, created_at,
        json), the JSON of each thread holding its replies."""
        created, last_id = keyset(after)
        return await self.db.all(
            f"{self.select} WHERE c.document_id = ? AND c.parent_id IS NULL AND {STATUS[status]}"
            " AND (c.created_at, c.id) > (?, ?) ORDER BY c.created_at, c.id LIMIT ?",
            (document_id, created, last_id, limit))

    async def get_json(self, comment_id: str) -> str:
        """A comment as JSON text; a thread with its replies."""
        row = await self.db.one(f"{self.select} WHERE c.id = ?", (comment_id,))
        if row is None:
            raise NotFound("no such comment")
        return row["json"]

    async def get(self, comment_id: str) -> dict:
        return json.loads(await self.get_json(comment_id))

    # -- writes ----------------------------------------------------------------------------
    async def create(self, access: Access, body: str, anchor: dict | None, parent_id: str | None) -> dict:
        ws, doc_id = access.workspace_id, access.document_id

        def create(tx: Tx) -> str:
            if parent_id is not None:
                parent = tx.one("SELECT document_id, parent_id FROM comments WHERE id = ?", (parent_id,))
                if parent is None or parent["document_id"] != doc_id:
                    raise ValidationFailed.field("parent_id", "no such comment on this document")
                if parent["parent_id"] is not None:
                    raise ValidationFailed.field("parent_id", "is a reply: reply to its thread instead")
            comment_id, now = new_id(), clock.iso()
            tx.execute("INSERT INTO comments (id, document_id, workspace_id, parent_id, author_id, body, anchor,"
                       " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (comment_id, doc_id, ws, parent_id, access.user_id, body,
                        json.dumps(anchor, ensure_ascii=False) if anchor is not None else None, now, now))
            changes.record(tx, ws, "comment", comment_id, "upsert")
            return comment_id

        return await self.get(await self.db.write(create))

    async def edit(self, access: Access, comment_id: str, body: str) -> dict:
        def edit(tx: Tx) -> None:
            row = _row(tx, comment_id, access)
            if row["author_id"] is None or row["author_id"] != access.user_id:
                raise Forbidden("only its author can edit a comment")
            tx.execute("UPDATE comments SET body = ?, updated_at = ? WHERE id = ?", (body, clock.iso(), comment_id))
            changes.record(tx, access.workspace_id, "comment", comment_id, "upsert")

        await self.db.write(edit)
        return await self.get(comment_id)

    async def delete(self, access: Access, comment_id: str) -> None:
        def delete(tx: Tx) -> None:
            row = _row(tx, comment_id, access)
            own = row["author_id"] is not None and row["author_id"] == access.user_id
            if not (own and access.at_least("commenter")) and not access.at_least("admin"):
                raise Forbidden("only its author or a workspace admin can delete a comment")
            replies = [r[0] for r in tx.all("SELECT id FROM comments WHERE parent_id = ?", (comment_id,))]
            tx.execute("DELETE FROM comments WHERE id = ?", (comment_id,))  # its replies cascade
            for gone in (comment_id, *replies):
                changes.record(tx, access.workspace_id, "comment", gone, "delete")
            if not own:
                audit.record(tx, "comment.delete", actor_id=access.user_id, target_type="comment",
                             target_id=comment_id, workspace_id=access.workspace_id,
                             detail={"document_id": row["document_id"], "author_id": row["author_id"],
                                     "replies": len(replies)})

        await self.db.write(delete)

    async def set_resolved(self, access: Access, comment_id: str, resolved: bool) -> dict:
        """Resolve or reopen the thread of `comment_id`; answers the thread."""
        def change(tx: Tx) -> str:
            row = _row(tx, comment_id, access)
            thread_id = row["parent_id"] or row["id"]
            if tx.value("SELECT resolved_at IS NOT NULL FROM comments WHERE id = ?", (thread_id,)) != resolved:
                now = clock.iso()
                tx.execute("UPDATE comments SET resolved_at = ?, resolved_by = ?, updated_at = ? WHERE id = ?",
                           (now if resolved else None, access.user_id if resolved else None, now, thread_id))
                changes.record(tx, access.workspace_id, "comment", thread_id, "upsert")
            return thread_id

        return await self.get(await self.db.write(change))


def _row(tx: Tx, comment_id: str, access: Access) -> Any:
    """The comment, inside the write (it may have gone since the route looked it up)."""
    row = tx.one("SELECT * FROM comments WHERE id = ?", (comment_id,))
    if row is None or row["document_id"] != access.document_id:
        raise NotFound("no such comment")
    return row


COMMENTS: web.AppKey[Comments] = web.AppKey("comments", Comments)

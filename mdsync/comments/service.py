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
from mdsync.db import Database, Tx
from mdsync.sync import changes
from mdsync.workspaces.access import Access
from mdsync.workspaces.service import keyset, new_id

SELECT = ("SELECT c.id, c.document_id, c.workspace_id, c.parent_id, c.author_id, u.name AS author_name, c.body,"
          " c.anchor, c.resolved_at, c.resolved_by, c.created_at, c.updated_at"
          " FROM comments c LEFT JOIN users u ON u.id = c.author_id")
STATUS = {"open": "c.resolved_at IS NULL", "resolved": "c.resolved_at IS NOT NULL", "all": "1"}


def comment_json(row, replies: list | None = None) -> dict:
    return {"id": row["id"], "document_id": row["document_id"], "parent_id": row["parent_id"],
            "author_id": row["author_id"], "author_name": row["author_name"], "body": row["body"],
            "anchor": json.loads(row["anchor"]) if row["anchor"] else None,
            "resolved": row["resolved_at"] is not None, "resolved_at": row["resolved_at"],
            "resolved_by": row["resolved_by"], "created_at": row["created_at"], "updated_at": row["updated_at"],
            "replies": [comment_json(r) for r in replies or ()]}


class Comments:
    def __init__(self, db: Database):
        self.db = db

    # -- reads -----------------------------------------------------------------------------
    async def document_of(self, comment_id: str) -> str:
        """The document a comment is on (NotFound when there is no such comment): routes on
        /comments/{id} authorize on it before anything else is read."""
        row = await self.db.lookup("SELECT document_id FROM comments WHERE id = ?", (comment_id,))
        if row is None:
            raise NotFound("no such comment")
        return row["document_id"]

    async def threads(self, document_id: str, status: str, after, limit: int) -> list[dict]:
        """A page of threads (`limit` rows, cursor `after`), oldest first, each with its replies."""
        created, last_id = keyset(after)
        rows = await self.db.all(
            f"{SELECT} WHERE c.document_id = ? AND c.parent_id IS NULL AND {STATUS[status]}"
            " AND (c.created_at, c.id) > (?, ?) ORDER BY c.created_at, c.id LIMIT ?",
            (document_id, created, last_id, limit))
        return await self._with_replies(rows)

    async def _with_replies(self, threads: list) -> list[dict]:
        replies: dict[str, list] = {row["id"]: [] for row in threads}
        ids = list(replies)
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            for row in await self.db.all(f"{SELECT} WHERE c.parent_id IN ({','.join('?' * len(chunk))})"
                                         " ORDER BY c.created_at, c.id", chunk):
                replies[row["parent_id"]].append(row)
        return [comment_json(row, replies[row["id"]]) for row in threads]

    async def get(self, comment_id: str) -> dict:
        """A comment; a thread with its replies."""
        row = await self.db.one(f"{SELECT} WHERE c.id = ?", (comment_id,))
        if row is None:
            raise NotFound("no such comment")
        if row["parent_id"] is not None:
            return comment_json(row)
        return (await self._with_replies([row]))[0]

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

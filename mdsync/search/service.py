"""Full-text search over the documents a user may read (SQL inside).

One statement: the FTS5 index (migration 0012) in bm25 order (`rank`, with the title weighed
10×), each match joined to its document and kept only when the caller may read it
(`access.READABLE_DOCUMENTS`), the first `limit` taken. FTS5 hands its matches over already in
rank order (no sort of its output), so the statement stops at `limit` readable rows. `score` is
-bm25: higher is better. Snippets are cut from the rows' markdown by query.Highlighter, in a
worker thread when the rows are large.
"""

from __future__ import annotations

import asyncio
import sqlite3

from aiohttp import web

from mdsync.api.errors import ValidationFailed
from mdsync.db import Database
from mdsync.search.query import Highlighter
from mdsync.workspaces.access import READABLE_DOCUMENTS

THREAD_ABOVE_CHARS = 256 * 1024  # snippets of more markdown than this are cut off the event loop

SEARCH = (
    "SELECT d.id, d.workspace_id, d.title, d.markdown, -rank AS score"
    " FROM docs_fts CROSS JOIN documents d ON d.rowid = docs_fts.rowid "
    f"{READABLE_DOCUMENTS}"
    " WHERE docs_fts MATCH ? AND d.deleted_at IS NULL AND (? IS NULL OR d.workspace_id = ?)"
    " ORDER BY rank LIMIT ?")


class Search:
    def __init__(self, db: Database):
        self.db = db

    async def query(self, user_id: str, q: str, expression: str, workspace_id: str | None, limit: int) -> list[dict]:
        try:
            rows = await self.db.all(SEARCH, (user_id, expression, workspace_id, workspace_id, limit))
        except sqlite3.OperationalError as exc:  # a query FTS5 refuses after all: the caller's input
            raise ValidationFailed.field("q", f"cannot be searched for: {exc}") from None
        highlighter = Highlighter(q)

        def shape() -> list[dict]:
            return [{"document_id": r["id"], "workspace_id": r["workspace_id"], "title": r["title"],
                     "snippet": highlighter.snippet(r["markdown"]), "score": r["score"]} for r in rows]

        if sum(len(r["markdown"]) for r in rows) > THREAD_ABOVE_CHARS:
            return await asyncio.to_thread(shape)
        return shape()


SEARCH_SERVICE: web.AppKey[Search] = web.AppKey("search", Search)

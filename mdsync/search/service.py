"""Full-text search over the documents a user may read (SQL inside, one statement per engine).

One statement: the engine's index (migration 0012) matched by query.match_expression (SQLite)
or query.tsquery_expression (PostgreSQL), each match joined to its document and kept only when
the caller may read it (`access.READABLE_DOCUMENTS`), best first, the first `limit` taken. Both
weigh a title match 10× a body one; `score` is higher-is-better on both (SQLite: -bm25;
PostgreSQL: ts_rank with weights D=0.1 for the markdown, A=1.0 for the title), comparable only
within one engine. SQLite's FTS5 hands its matches over already in rank order, so the statement
stops at `limit` readable rows; PostgreSQL ranks the readable matches, then sorts. Snippets are
cut from the rows' markdown by query.Highlighter, in a worker thread when the rows are large.

What PostgreSQL's statement costs grows with the caller's readable matches, each ranked (ts_rank
reads its tsvector): measured on 50 000 documents of ~3 KB in 100 workspaces, a user in 10 of them
(5 000 readable), the worst query — one letter, matching nearly all of them — took 50-100 ms,
a rarer prefix or one workspace 10-20 ms; ranking only the top ids before reading the rows' text
gained nothing measurable. `database.statement_timeout` (30 s) is so far off that a search that
reaches it waited for a lock or an overloaded server; that, like any statement cancelled at the
timeout, is 503 `database-timeout` (the error middleware), never 500.
"""

from __future__ import annotations

import asyncio
import sqlite3

from aiohttp import web

from mdsync.api.errors import ValidationFailed
from mdsync.db import Database
from mdsync.search.query import Highlighter, match_expression, tsquery_expression
from mdsync.workspaces.access import READABLE_DOCUMENTS

THREAD_ABOVE_CHARS = 256 * 1024  # snippets of more markdown than this are cut off the event loop

# Both take (user_id, expression, workspace_id, workspace_id, limit).
STATEMENTS = {
    "sqlite": (
        "SELECT d.id, d.workspace_id, d.title, d.markdown, -rank AS score"
        " FROM docs_fts CROSS JOIN documents d ON d.rowid = docs_fts.rowid "
        f"{READABLE_DOCUMENTS}"
        " WHERE docs_fts MATCH ? AND d.deleted_at IS NULL AND (? IS NULL OR d.workspace_id = ?)"
        " ORDER BY rank LIMIT ?"),
    # the query in FROM (after the membership join, whose `?` comes first) so that both the match
    # and ts_rank use it; `?::text`: PostgreSQL cannot type a bare NULL parameter
    "postgresql": (
        "SELECT d.id, d.workspace_id, d.title, d.markdown,"
        " ts_rank('{0.1, 0.2, 0.4, 1.0}', s.terms, q.query)::float8 AS score"
        " FROM docs_search s JOIN documents d ON d.id = s.document_id "
        f"{READABLE_DOCUMENTS}"
        " CROSS JOIN to_tsquery('mdsync_search', ?) AS q(query)"
        " WHERE s.terms @@ q.query AND d.deleted_at IS NULL AND (?::text IS NULL OR d.workspace_id = ?)"
        " ORDER BY score DESC, d.id LIMIT ?"),
}
SEARCH = STATEMENTS["sqlite"]
EXPRESSIONS = {"sqlite": match_expression, "postgresql": tsquery_expression}


class Search:
    def __init__(self, db: Database):
        self.db = db
        self.statement = STATEMENTS[db.engine]
        self.expression = EXPRESSIONS[db.engine]

    async def query(self, user_id: str, q: str, workspace_id: str | None, limit: int) -> list[dict]:
        expression = self.expression(q)
        if expression is None:  # no letter or digit in any word: nothing can match
            return []
        try:
            rows = await self.db.all(self.statement, (user_id, expression, workspace_id, workspace_id, limit))
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

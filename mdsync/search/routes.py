"""HTTP route of search (docs/api.md "Search"): parse → `require` (when one workspace is asked for) →
service → respond."""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from mdsync.api.models import Body, Out
from mdsync.api.pagination import parse_limit
from mdsync.api.routing import PRINCIPAL, Routes
from mdsync.search.query import words
from mdsync.search.service import SEARCH_SERVICE
from mdsync.workspaces.access import require

routes = Routes("search")


class SearchQuery(Body):
    q: str | None = Field(None, description="words, each matched by prefix (search as you type)")
    workspace_id: str | None = Field(None, max_length=100, description="only this workspace (default: all of yours)")
    limit: str | None = None


class SearchHit(Out):
    document_id: str
    workspace_id: str
    title: str
    snippet: str = Field(description="plain text around the matches, HTML-escaped, matches in <mark>…</mark>")
    score: float = Field(description="higher is better; items come in descending score")


class SearchOut(Out):
    items: list[SearchHit]


@routes.get("/api/v1/search", "Full-text search of the documents you may read (title and markdown)",
            query=SearchQuery, response=SearchOut)
async def search(request: web.Request, query: SearchQuery) -> web.Response:
    words(query.q)  # 422 for a missing, empty or too long q, before anything else
    limit = parse_limit(query.limit)
    if query.workspace_id is not None:
        await require(request, "viewer", workspace_id=query.workspace_id)
    items = await request.app[SEARCH_SERVICE].query(request[PRINCIPAL].user_id, query.q, query.workspace_id, limit)
    return web.json_response({"items": items})

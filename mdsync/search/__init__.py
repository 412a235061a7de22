"""Full-text search (docs/api.md "Search") over the title and markdown of documents: SQLite FTS5, or
a PostgreSQL tsvector with a GIN index.

The index itself is kept by triggers on `documents` (migration 0012_search.sql of each engine),
in the same transaction as every change to what it holds; this package only reads it.

query.py     the search box's words as an FTS5 or a tsquery query; snippets as escaped HTML with <mark>
service.py   the search statement of each engine, limited to the documents the caller may read
routes.py    GET /api/v1/search
"""

from __future__ import annotations

from aiohttp import web

from mdsync.appkeys import DB
from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The search service at app[SEARCH_SERVICE] and its route."""
    from mdsync.api.routing import add_routes
    from mdsync.search.routes import routes
    from mdsync.search.service import SEARCH_SERVICE, Search

    app[SEARCH_SERVICE] = Search(app[DB])
    add_routes(app, routes)

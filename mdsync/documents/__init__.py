"""Folders, documents, grants, share links, the tree, the trash, and document content."""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """Folders and documents (app[DOCUMENTS]), grants and share links (app[SHARING]), and their
    routes with the content routes. The content backends are chosen in app.py (app[CONTENT])."""
    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB
    from mdsync.documents import content_routes, routes
    from mdsync.documents.service import DOCUMENTS, Documents
    from mdsync.documents.sharing import SHARING, Sharing

    app[DOCUMENTS] = Documents(app, app[DB])
    app[SHARING] = Sharing(app, app[DB], settings.public_url)
    add_routes(app, routes.routes, content_routes.routes)

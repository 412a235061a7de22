"""Comments (docs/api.md "Comments"): threads and replies on a document, anchored to its text.

models.py    request and response bodies (the anchor: a quote and two Yjs relative positions)
anchors.py   placing a quote on the live document as Yjs relative positions
service.py   threads, replies, edit/delete/resolve rules, change-feed and audit rows (SQL inside)
routes.py    the HTTP routes
"""

from __future__ import annotations

from aiohttp import web

from mdsync.appkeys import DB
from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """The comments service at app[COMMENTS] and its routes."""
    from mdsync.api.routing import add_routes
    from mdsync.comments.routes import routes
    from mdsync.comments.service import COMMENTS, Comments

    app[COMMENTS] = Comments(app[DB])
    add_routes(app, routes)

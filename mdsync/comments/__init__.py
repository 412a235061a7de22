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
    """The comments service (its routes are registered with the other route tables)."""
    from mdsync.comments.service import COMMENTS, Comments

    app[COMMENTS] = Comments(app[DB])

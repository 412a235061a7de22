"""create_app(settings) -> aiohttp Application: wires the features together, nothing else.

Each feature package has one `install(app, settings)` (in its `__init__.py`) that makes its
services and adds its routes, hooks and lifecycle; they are called below in one visible order,
each after the features whose services it uses. Calls between features go through the typed hook
lists of `mdsync/hooks.py` (app[HOOKS]). The content backend of each content model is chosen
here, once (documents/content.py).
"""

from __future__ import annotations

from aiohttp import web

from mdsync import (ai, attachments, auth, cluster, collab, comments, documents, ops, search, sync, tiptap,
                    transfer, versions, workspaces)
from mdsync.api import middleware
from mdsync.api.routing import BODY_LIMIT
from mdsync.appkeys import DB, READINESS, ROUTE_TABLES, SETTINGS
from mdsync.config import Settings
from mdsync.db import database_for
from mdsync.documents.content import CONTENT, ContentModels
from mdsync.hooks import HOOKS, Hooks
from mdsync.ops import backup
from mdsync.ops.metrics import METRICS, Metrics


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics(settings.metrics.token)
    app = web.Application(
        # one middleware: request id, CORS preflights, errors as problem+json, metrics of every answer
        middlewares=[middleware.build(settings.cors.origins, observe=metrics.observe_request)],
        # handlers read bodies through routing.read_body with their own limit; this is the ceiling
        client_max_size=max(settings.limits.max_body_bytes, settings.limits.max_document_bytes) + 1024,
    )
    app.on_response_prepare.append(middleware.on_prepare(hsts=settings.public_url.startswith("https://")))
    app[SETTINGS] = settings
    app[BODY_LIMIT] = settings.limits.max_body_bytes
    app[READINESS] = {}
    app[METRICS] = metrics
    app[HOOKS] = Hooks()
    app[ROUTE_TABLES] = []
    db = app[DB] = database_for(settings)

    async def database(app: web.Application):
        await db.open()  # applies pending migrations
        yield
        await db.close()

    if settings.server.backup_before_migrate:
        app.cleanup_ctx.append(backup.before_migrate_ctx)  # before the database opens and migrates
    # every feature below starts once the database is open and stops before it closes
    app.cleanup_ctx.append(database)

    cluster.install(app, settings)  # app[CLUSTER]: this node, and Redis when several nodes run
    ops.install(app, settings)
    auth.install(app, settings)
    workspaces.install(app, settings)
    documents.install(app, settings)
    attachments.install(app, settings)
    comments.install(app, settings)
    search.install(app, settings)
    collab.install(app, settings)
    app[CONTENT] = ContentModels({"text": collab.text_content(app, settings),
                                  "tiptap": tiptap.content_backend(app, settings, db)})
    versions.install(app, settings)
    transfer.install(app, settings)
    sync.install(app, settings)
    ai.install(app, settings)
    return app

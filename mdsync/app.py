"""create_app(settings) -> aiohttp Application: wires the features together, nothing else."""

from __future__ import annotations

from aiohttp import web

from mdsync import ai
from mdsync.api import middleware
from mdsync.api.routing import AUTHENTICATOR, BODY_LIMIT
from mdsync.attachments import routes as attachment_routes
from mdsync.appkeys import DB, READINESS, ROUTE_TABLES, SETTINGS
from mdsync.auth import revocations
from mdsync.auth import routes as auth_routes
from mdsync.auth.service import AuthService
from mdsync.collab import routes as collab_routes
from mdsync.collab import http_routes as collab_http
from mdsync import comments
from mdsync.comments import routes as comment_routes
from mdsync.config import Settings, ensure_secret
from mdsync.db import Database
from mdsync.ops import backup as ops_backup
from mdsync.documents import content_routes
from mdsync.documents import routes as document_routes
from mdsync.documents.content import CONTENT, ContentModels
from mdsync.documents.service import DOCUMENTS, Documents
from mdsync.documents.sharing import SHARING, Sharing
from mdsync.ops import health
from mdsync.ops import metrics as ops_metrics
from mdsync.ops import replica as ops_replica
from mdsync.ops import retention
from mdsync import search
from mdsync.search import routes as search_routes
from mdsync.sync import routes as sync_routes
from mdsync import tiptap
from mdsync.transfer import routes as transfer_routes
from mdsync.versions import routes as versions_routes
from mdsync.workspaces import routes as workspace_routes
from mdsync.workspaces.invitations import Invitations, registration_hook
from mdsync.workspaces.service import WORKSPACES, WorkspaceService


def create_app(settings: Settings) -> web.Application:
    metrics = ops_metrics.Metrics()
    app = web.Application(
        # the metrics middleware is outermost: it sees every answer, including mapped errors
        middlewares=[ops_metrics.middleware(metrics),
                     *middleware.build(settings.cors.origins)],
        # handlers read bodies through routing.read_body with their own limit; this is the ceiling
        client_max_size=max(settings.limits.max_body_bytes, settings.limits.max_document_bytes) + 1024,
    )
    app.on_response_prepare.append(middleware.on_prepare(hsts=settings.public_url.startswith("https://")))
    app[SETTINGS] = settings
    app[BODY_LIMIT] = settings.limits.max_body_bytes
    app[READINESS] = {}
    db = Database(settings.db_path, autocheckpoint=settings.replica.url is None)
    app[DB] = db
    ops_metrics.setup(app, settings, db, metrics)  # before features, which add their own metrics
    ops_replica.setup(app, settings)
    auth = AuthService(db, settings, ensure_secret(settings))
    app[auth_routes.AUTH] = auth
    app[AUTHENTICATOR] = auth
    workspaces = WorkspaceService(db, settings.workspaces.purge_grace_seconds)
    app[WORKSPACES] = workspaces
    app[workspace_routes.INVITATIONS] = Invitations(db, workspaces, settings.public_url)
    auth.accept_invitation = registration_hook
    app[DOCUMENTS] = Documents(app, db)
    app[SHARING] = Sharing(app, db, settings.public_url)
    attachment_routes.install(app)  # after documents, sharing and workspaces: it hooks into them
    comments.install(app, settings)
    search.install(app, settings)

    tables = [health.routes, ops_metrics.routes, auth_routes.routes, sync_routes.routes, collab_routes.routes,
              workspace_routes.routes, document_routes.routes, content_routes.routes,
              transfer_routes.routes]
    tables.append(versions_routes.routes)
    tables.append(collab_http.routes)
    tables.append(attachment_routes.routes)
    tables.append(comment_routes.routes)
    tables.append(ai.routes)
    tables.append(search_routes.routes)
    for table in tables:
        table.register(app)
    app[ROUTE_TABLES] = tables
    health.install(app)

    async def database(app: web.Application):
        await db.open()
        yield
        await db.close()
        auth.close()

    if settings.server.backup_before_migrate:
        app.cleanup_ctx.append(ops_backup.before_migrate_ctx)
    app.cleanup_ctx.append(database)
    # credentials ended and access changed, by this process or another (the admin CLI), reach
    # the live sockets, streams and tickets through the same listeners
    revocations.install(app, db, auth.notify_revoked, workspaces.notify_access_changed)

    retention.install(app, settings)  # deleted workspaces, the trash, old change-feed rows
    collab_routes.install(app, settings, db, auth)
    # the content backend of each content model (documents/content.py), after the room manager
    app[CONTENT] = ContentModels({"text": collab_http.text_content(app, settings, db),
                                  "tiptap": tiptap.content_backend(app, settings, db)})
    versions_routes.install(app, settings)  # after collab: it listens to the rooms
    sync_routes.install(app, db, auth)  # after the database: the feed starts once it is open
    ai.install(app, settings)  # after the database: it releases reservations a stopped process held
    return app

"""create_app(settings) -> aiohttp Application: wires the features together, nothing else."""

from __future__ import annotations

from aiohttp import web

from mdsync.api import middleware
from mdsync.api.routing import AUTHENTICATOR, BODY_LIMIT
from mdsync.appkeys import DB, READINESS, ROUTE_TABLES, SETTINGS
from mdsync.auth import routes as auth_routes
from mdsync.auth.service import AuthService
from mdsync.config import Settings, ensure_secret
from mdsync.db import Database
from mdsync.ops import health


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=middleware.build(settings.cors.origins, hsts=settings.public_url.startswith("https://")),
        # handlers read bodies through routing.read_body with their own limit; this is the ceiling
        client_max_size=max(settings.limits.max_body_bytes, settings.limits.max_document_bytes) + 1024,
    )
    app[SETTINGS] = settings
    app[BODY_LIMIT] = settings.limits.max_body_bytes
    app[READINESS] = {}
    db = Database(settings.db_path, autocheckpoint=settings.replica.url is None)
    app[DB] = db
    auth = AuthService(db, settings, ensure_secret(settings))
    app[auth_routes.AUTH] = auth
    app[AUTHENTICATOR] = auth

    tables = [health.routes, auth_routes.routes]
    for table in tables:
        table.register(app)
    app[ROUTE_TABLES] = tables

    async def database(app: web.Application):
        await db.open()
        yield
        await db.close()
        auth.close()

    app.cleanup_ctx.append(database)
    return app

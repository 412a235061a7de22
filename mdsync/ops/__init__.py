"""Operations: health, readiness, the OpenAPI document, metrics, backups and replication."""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """/healthz, /readyz, the OpenAPI document and /metrics (into app[METRICS], which app.py made
    for the middleware), the database's metrics, the litestream replica, and the retention sweep
    (ops/retention.py). After the database's cleanup context: the sweep runs while it is open."""
    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB
    from mdsync.ops import health, metrics, replica, retention

    app[health.OPENAPI_CACHE] = {}
    app[metrics.METRICS].read_at_scrape(metrics.database_readings(app[DB]))
    replica.install(app, settings)
    retention.install(app, settings)
    add_routes(app, health.routes, metrics.routes)

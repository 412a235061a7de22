"""`/healthz` (the process answers), `/readyz` (the database takes writes) and the OpenAPI document."""

from __future__ import annotations

import time

from aiohttp import web

from mdsync.api import openapi
from mdsync.api.routing import Routes
from mdsync.appkeys import DB, ROUTE_TABLES, SETTINGS, READINESS

routes = Routes("ops")


@routes.get("/healthz", "The process is alive", auth="none")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def _probe(tx) -> None:
    tx.execute("CREATE TEMP TABLE IF NOT EXISTS readyz_probe (x INTEGER)")
    tx.execute("DELETE FROM readyz_probe")


@routes.get("/readyz", "The database is writable and every dependency is reachable", auth="none")
async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, dict] = {}
    started = time.perf_counter()
    try:
        db = request.app[DB]
        await db.write(_probe)
        checks["database"] = {"ok": True, "engine": db.engine,
                              "write_ms": round((time.perf_counter() - started) * 1000, 2)}
    except Exception as exc:  # report, never raise: readiness is an answer, not an error
        checks["database"] = {"ok": False, "error": exc.__class__.__name__}
    for name, check in request.app[READINESS].items():
        try:
            checks[name] = await check()
        except Exception as exc:
            checks[name] = {"ok": False, "error": exc.__class__.__name__}
    ok = all(c.get("ok") for c in checks.values())
    return web.json_response({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


@routes.get("/api/v1/openapi.json", "This API as OpenAPI 3.1", auth="none")
async def openapi_document(request: web.Request) -> web.Response:
    # built once per app, on first request: the route tables are complete by then
    cache = request.app[OPENAPI_CACHE]
    if "document" not in cache:
        specs = [spec for table in request.app[ROUTE_TABLES] for spec in table.specs]
        cache["document"] = openapi.build(specs, server_url=request.app[SETTINGS].public_url)
    return web.json_response(cache["document"])


OPENAPI_CACHE: web.AppKey[dict] = web.AppKey("openapi_cache", dict)


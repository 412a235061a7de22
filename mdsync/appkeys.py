"""Typed keys for what the application holds: settings, the database, the route tables, and
the readiness checks features add. Feature services keep their own key beside their routes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from mdsync.config import Settings
from mdsync.db import Database

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
DB: web.AppKey[Database] = web.AppKey("db", Database)
ROUTE_TABLES: web.AppKey[list] = web.AppKey("route_tables", list)
READINESS: web.AppKey[dict[str, Callable[[], Awaitable[dict]]]] = web.AppKey("readiness", dict)

"""Typed keys for what the application holds: settings, the database, the route tables, and
the readiness checks features add. Each feature's services have their own key beside the
service (e.g. `workspaces/service.py` WORKSPACES); the hooks are `hooks.HOOKS`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from mdsync.config import Settings
from mdsync.db import Database

if TYPE_CHECKING:
    from mdsync.api.routing import Routes

SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
DB: web.AppKey[Database] = web.AppKey("db", Database)
ROUTE_TABLES: web.AppKey[list[Routes]] = web.AppKey("route_tables", list)
READINESS: web.AppKey[dict[str, Callable[[], Awaitable[dict]]]] = web.AppKey("readiness", dict)

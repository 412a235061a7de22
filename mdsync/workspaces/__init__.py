"""Workspaces, members, invitations and the one permission check (access.py)."""

from __future__ import annotations

from aiohttp import web

from mdsync.config import Settings


def install(app: web.Application, settings: Settings) -> None:
    """Workspaces and members (app[WORKSPACES]), invitations (app[INVITATIONS], also the
    `accept_invitation` hook of registration), the routes. Deleted workspaces are purged by the
    retention sweep (ops/retention.py)."""
    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB
    from mdsync.hooks import HOOKS
    from mdsync.workspaces.invitations import Invitations, registration_hook
    from mdsync.workspaces.routes import INVITATIONS, routes
    from mdsync.workspaces.service import WORKSPACES, WorkspaceService

    hooks = app[HOOKS]
    workspaces = WorkspaceService(app[DB], settings.workspaces.purge_grace_seconds, hooks)
    app[WORKSPACES] = workspaces
    app[INVITATIONS] = Invitations(app[DB], workspaces, settings.public_url)
    hooks.accept_invitation = registration_hook
    add_routes(app, routes)

"""Routes of real-time collaboration: the document socket and its tickets; `install` wires the
room manager into the app (revocation listener, SIGTERM flush)."""

from __future__ import annotations

from aiohttp import web

from mdsync.api.models import Out
from mdsync.api.routing import PRINCIPAL, Routes
from mdsync.collab import hocuspocus, socket
from mdsync.collab.rooms import ROOMS, CollabCollector, ConnectionLimits, RoomManager
from mdsync.collab.tickets import Tickets
from mdsync.config import Settings
from mdsync.db import Database
from mdsync.workspaces import access
from mdsync.workspaces.service import WORKSPACES

routes = Routes("collab")


class TicketOut(Out):
    ticket: str
    expires_in: int


@routes.get("/ws/docs/{document_id}",
            "Real-time editing over the y-websocket protocol (upgrade; token in ?token=)", auth="none")
async def document_socket(request: web.Request) -> web.StreamResponse:
    return await socket.websocket(request)


@routes.get("/ws/hocuspocus",
            "Real-time editing over the Hocuspocus provider protocol, many documents per socket"
            " (upgrade; each document's token in its Auth message)", auth="none")
async def hocuspocus_socket(request: web.Request) -> web.StreamResponse:
    return await hocuspocus.websocket(request)


@routes.post("/api/v1/documents/{document_id}/ws-ticket",
             "A single-use, 60 s ticket to open this document's socket without a token in the URL",
             response=TicketOut, status=201, write_scope=False)
async def ws_ticket(request: web.Request) -> web.Response:
    document_id = request.match_info["document_id"]
    await access.require(request, "viewer", document_id=document_id)
    tickets = request.app[socket.TICKETS]
    ticket = tickets.issue(request[PRINCIPAL], document_id)
    return web.json_response({"ticket": ticket, "expires_in": int(tickets.ttl)}, status=201)


def install(app: web.Application, settings: Settings, db: Database, auth) -> RoomManager:
    cfg = settings.collab
    manager = RoomManager(
        db, grace_seconds=cfg.room_grace_seconds, snapshot_after_updates=cfg.snapshot_after_updates,
        snapshot_after_bytes=cfg.snapshot_after_bytes, max_document_bytes=settings.limits.max_document_bytes,
        flush_delay=cfg.flush_delay_seconds,
        access_recheck=lambda a: access.recheck(db, a),
        limits=ConnectionLimits(
            per_user=cfg.max_connections_per_user, per_document=cfg.max_connections_per_document,
            per_user_per_document=cfg.max_connections_per_user_per_document,
            per_share_link=cfg.max_connections_per_share_link,
            reserved_for_writers=cfg.reserved_writer_connections),
    )
    app[ROOMS] = manager
    tickets = app[socket.TICKETS] = Tickets()
    app[hocuspocus.PREFIXES] = hocuspocus.Prefixes()
    auth.revocation_listeners.append(manager.on_sessions_revoked)
    auth.revocation_listeners.append(tickets.revoke)
    workspaces = app.get(WORKSPACES)
    if workspaces is not None:
        # member removed, role lowered, grant or share link revoked, document trashed: re-check
        # the matching live sockets at once (close 4403 or make them read-only)
        workspaces.access_listeners.append(
            lambda workspace_id, user_id, document_id: manager.reauthorize_soon(
                workspace_id=workspace_id, user_id=user_id, document_id=document_id))

    async def flush_rooms(app: web.Application) -> None:
        await manager.shutdown()

    # on_shutdown runs before the cleanup contexts: every room is flushed while the database is open
    app.on_shutdown.append(flush_rooms)
    try:
        from mdsync.ops.metrics import METRICS
        if METRICS in app:
            app[METRICS].register(CollabCollector(manager))
    except ImportError:
        pass
    return manager

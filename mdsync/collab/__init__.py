"""Real-time collaboration: Yjs rooms over the y-websocket protocol, their update log and snapshots.

protocol.py (wire format) · connection.py (one socket, direct frame writes) · room.py (one open
document: relay, awareness, persistence) · rooms.py (the manager: load/unload, presence, access
changes, shutdown; `app[ROOMS]` is the API other features use) · socket.py (the aiohttp adapter)
· store.py (SQL) · replication.py (several nodes: rows committed elsewhere, through Redis
streams and PostgreSQL) · tickets.py (single-use socket tickets) · routes.py (the socket and ticket
routes) · `install` below (the room manager and its hooks).

Content model `text` as markdown over REST: content.py (`YjsTextContent`, the ContentBackend of
documents/content.py) · etags.py (the ETag of a Yjs state) · text_ops.py (markdown diff → Y.Text
edits) · states.py (the states behind served ETags, for merges) · projection.py (markdown copied
into documents.markdown) · http_routes.py (Yjs over HTTP, presence) · `yjs_content` below
(builds a Yjs backend with its projection: `text_content` here, tiptap's in mdsync/tiptap).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from mdsync.config import Settings

if TYPE_CHECKING:
    from mdsync.collab.content import YjsContent, YjsTextContent
    from mdsync.collab.projection import Heads, Projector
    from mdsync.collab.states import States


def install(app: web.Application, settings: Settings) -> None:
    """The room manager at app[ROOMS] with socket tickets, the socket and Yjs-over-HTTP routes;
    live sockets re-checked when sessions end or access changes; rooms flushed at shutdown."""
    from mdsync.api.routing import add_routes
    from mdsync.appkeys import DB
    from mdsync.cluster import CLUSTER
    from mdsync.collab import http_routes, hocuspocus, routes, socket
    from mdsync.collab.rooms import ROOMS, ConnectionLimits, RoomManager, readings
    from mdsync.collab.tickets import SharedTickets, Tickets
    from mdsync.hooks import HOOKS
    from mdsync.ops.metrics import METRICS
    from mdsync.workspaces import access

    cfg, db, hooks = settings.collab, app[DB], app[HOOKS]
    manager = RoomManager(
        db, grace_seconds=cfg.room_grace_seconds, snapshot_after_updates=cfg.snapshot_after_updates,
        snapshot_after_bytes=cfg.snapshot_after_bytes, max_document_bytes=settings.limits.max_document_bytes,
        flush_delay=cfg.flush_delay(settings.clustered), access_recheck=lambda a: access.recheck(db, a), hooks=hooks,
        heartbeat_seconds=cfg.heartbeat_seconds,
        limits=ConnectionLimits(
            per_user=cfg.max_connections_per_user, per_document=cfg.max_connections_per_document,
            per_user_per_document=cfg.max_connections_per_user_per_document,
            per_share_link=cfg.max_connections_per_share_link,
            reserved_for_writers=cfg.reserved_writer_connections),
    )
    app[ROOMS] = manager
    _replicate(app, manager)
    # several nodes: a ticket asked for on one node is spent on another (collab/tickets.py)
    tickets = app[socket.TICKETS] = SharedTickets(db) if settings.clustered else Tickets()
    app[hocuspocus.PREFIXES] = hocuspocus.Prefixes()
    hooks.sessions_revoked.append(manager.on_sessions_revoked)
    hooks.sessions_revoked.append(tickets.revoke)
    # member removed, role lowered, grant or share link revoked, document trashed: re-check the
    # matching live sockets at once (close 4403 or make them read-only)
    hooks.access_changed.append(
        lambda workspace_id, user_id, document_id: manager.reauthorize_soon(
            workspace_id=workspace_id, user_id=user_id, document_id=document_id))
    # a document purged for good: its room goes at once, before anything could meet it again
    hooks.document_purge.append(lambda tx, document_id: tx.after_commit(partial(manager.evict, document_id)))
    hooks.workspace_purge.append(lambda tx, workspace_id: tx.after_commit(manager.evict_gone_soon))
    app[METRICS].read_at_scrape(readings(manager))
    if app[CLUSTER].enabled:
        # several nodes: presence and awareness of every node's sockets (mdsync/cluster)
        from mdsync.cluster import awareness, presence
        presence.install(app, manager)
        awareness.install(app, manager)
    app[YJS_PARTS] = _yjs_parts(app, settings)
    add_routes(app, routes.routes, http_routes.routes)

    async def flush_rooms(app: web.Application) -> None:
        await manager.shutdown()

    # on_shutdown runs before the cleanup contexts: every room is flushed while the database is open
    app.on_shutdown.append(flush_rooms)


def _replicate(app: web.Application, manager) -> None:
    """Several nodes: rows numbered at commit, published to Redis and read from the other nodes
    (replication.py), started with the app and stopped after the rooms flushed at shutdown."""
    from mdsync.cluster import CLUSTER
    from mdsync.collab.replication import Replication
    from mdsync.ops.metrics import METRICS

    cluster = app[CLUSTER]
    if not cluster.enabled:
        return
    replication = Replication(cluster, manager)
    manager.replicate(replication)
    app[METRICS].read_at_scrape(replication.readings())

    async def replicating(app: web.Application):
        replication.start()
        yield
        await replication.stop()

    app.cleanup_ctx.append(replicating)


class YjsParts:
    """What every Yjs content model shares (made by `install`): the states behind served ETags,
    the projection heads, the content-write and projection-lag metrics, and the projectors."""

    def __init__(self, states: States, heads: Heads, on_result: Callable[[str], None],
                 observe_lag: Callable[[float], None]):
        self.states = states
        self.heads = heads
        self.on_result = on_result
        self.observe_lag = observe_lag
        self.projectors: list[Projector] = []


YJS_PARTS: web.AppKey[YjsParts] = web.AppKey("yjs_parts", YjsParts)
C = TypeVar("C", bound="YjsContent")


def _yjs_parts(app: web.Application, settings: Settings) -> YjsParts:
    """The shared parts, and their lifecycle: heads loaded at start, states collected hourly,
    every projection stored at shutdown."""
    import asyncio
    import contextlib
    import logging

    from mdsync.appkeys import DB
    from mdsync.cluster import CLUSTER
    from mdsync.collab.projection import Heads
    from mdsync.collab.states import STATES, States
    from mdsync.db.notifications import CHANGES
    from mdsync.ops.metrics import METRICS

    log = logging.getLogger("mdsync.collab")
    db, metrics = app[DB], app[METRICS]
    states = States(db, settings.sync.etag_retention_days * 86400)
    heads = Heads(db)
    writes = metrics.counter("mdsync_content_writes_total",
                             "REST content writes on Yjs documents: applied as a diff, merged from a stale"
                             " ETag, or refused (unknown or expired ETag)", ["result"])
    lag = metrics.histogram("mdsync_collab_projection_lag_seconds",
                            "Time from the first unprojected edit to its markdown projection being stored",
                            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0))
    parts = YjsParts(states, heads, lambda kind: writes.labels(kind).inc(), lag.observe)
    app[STATES] = states

    async def collector(app: web.Application):
        await heads.load()  # document metadata shows content ETags from the first request on
        listener = db.listener() if app[CLUSTER].enabled else None
        if listener is not None:
            # several nodes: a projection another node stores makes this node's memory of it stale
            listener.subscribe(CHANGES, heads.on_change, heads.clear)

        async def sweep():
            while True:
                try:
                    await states.collect()
                except Exception:
                    log.exception("content state collection failed")
                await asyncio.sleep(3600)

        task = asyncio.create_task(sweep())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if listener is not None:
            listener.unsubscribe(heads.on_change, heads.clear)
        for projector in parts.projectors:
            await projector.flush()  # rooms closed at shutdown have stored theirs; anything left goes now

    app.cleanup_ctx.append(collector)
    return parts


def yjs_content(app: web.Application, settings: Settings, make: Callable[[States, Heads, Callable[[str], None]], C]) -> C:
    """A Yjs-backed ContentBackend built by `make(states, heads, on_result)` (content.py: `text`;
    tiptap/content.py: `tiptap`), with its markdown projection following every room of its model
    and its seed used when such a room loads fresh. After `install`."""
    from mdsync.appkeys import DB
    from mdsync.cluster import CLUSTER
    from mdsync.collab.projection import Projector
    from mdsync.collab.rooms import ROOMS
    from mdsync.hooks import HOOKS

    parts, hooks = app[YJS_PARTS], app[HOOKS]
    content = make(parts.states, parts.heads, parts.on_result)
    model = content.model.name
    projector = Projector(app[DB], model, content, parts.states, parts.heads,
                          debounce=settings.collab.projection_debounce,
                          max_delay=settings.collab.projection_max_delay, observe_lag=parts.observe_lag,
                          clustered=app[CLUSTER].enabled)
    parts.projectors.append(projector)
    content.projector = projector
    hooks.room_update.append(projector.on_update)
    hooks.room_close.append(projector.on_close)
    app[ROOMS].seeders[model] = content.model.seed
    return content


def text_content(app: web.Application, settings: Settings) -> YjsTextContent:
    """The ContentBackend of content model `text` (app.py puts it in app[CONTENT])."""
    from mdsync.appkeys import DB
    from mdsync.collab.content import YjsTextContent
    from mdsync.collab.rooms import ROOMS

    return yjs_content(app, settings, lambda states, heads, on_result: YjsTextContent(
        app[DB], app[ROOMS], states, heads, on_result=on_result))

"""HTTP routes of collaboration beside the socket: Yjs over HTTP (state vector in, missing update
out; update in) and presence; `yjs_content` builds a Yjs content backend (content.py: `text`;
tiptap/content.py: `tiptap`) and wires its markdown projection (projection.py) and its seed into
the room manager.

Every route goes through the live room (`rooms.use`), so what HTTP clients read and write is
what socket clients see, at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from mdsync.api.errors import TooLarge, ValidationFailed
from mdsync.api.models import Out
from mdsync.api.routing import Routes, read_body
from mdsync.appkeys import SETTINGS
from mdsync.api.models import Body
from mdsync.collab.content import YjsContent, YjsTextContent
from mdsync.collab.projection import Heads, Projector
from mdsync.collab.room import DocumentTooLarge
from mdsync.collab.rooms import ROOMS
from mdsync.collab.states import States
from mdsync.config import Settings
from mdsync.db import Database
from mdsync.workspaces.access import require

log = logging.getLogger("mdsync.collab")
routes = Routes("collab-http")
OCTETS = "application/octet-stream"
PROJECTOR: web.AppKey[Projector] = web.AppKey("projector", Projector)
STATES: web.AppKey[States] = web.AppKey("content_states", States)
C = TypeVar("C", bound=YjsContent)


class YjsQuery(Body):
    sv: str | None = None


class PresenceItem(Out):
    user_id: str | None
    name: str | None
    connections: int
    read_only: bool


class PresenceOut(Out):
    items: list[PresenceItem]


def _state_vector(raw: str | None) -> bytes | None:
    if raw is None or raw == "":
        return None
    try:
        return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise ValidationFailed.field("sv", "must be a base64url-encoded Yjs state vector") from None


@routes.get("/api/v1/documents/{doc}/yjs", "The Yjs update the caller lacks (the whole state without ?sv=)",
            query=YjsQuery, raw_response=OCTETS)
async def get_yjs(request: web.Request, query: YjsQuery) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"], share=True)
    sv = _state_vector(query.sv)
    async with request.app[ROOMS].use(access.document_id) as room:
        try:
            update = room.encode_state(sv)
        except ValueError:
            raise ValidationFailed.field("sv", "is not a Yjs state vector") from None
    return web.Response(body=update, headers={"Content-Type": OCTETS, "Cache-Control": "no-store"})


@routes.post("/api/v1/documents/{doc}/yjs", "Apply a Yjs update (editor): persisted and sent to live editors",
             raw_body=OCTETS, status=204)
async def post_yjs(request: web.Request) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    update = await read_body(request, request.app[SETTINGS].limits.max_document_bytes)
    if not update:
        raise ValidationFailed.field("body", "must be a Yjs update (v1 encoding)")
    async with request.app[ROOMS].use(access.document_id) as room:
        try:
            room.apply_update(update, access.user_id)
        except DocumentTooLarge as exc:
            raise TooLarge(str(exc)) from None
        except ValueError as exc:  # refused by the gate (collab/updates.py): it says why
            raise ValidationFailed.field("body", f"is not a Yjs update (v1 encoding) the server accepts: {exc}") from None
        await room.drain()
    return web.Response(status=204)


@routes.get("/api/v1/documents/{doc}/presence", "Who is connected to the document now (from their tokens)",
            response=PresenceOut)
async def presence(request: web.Request) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"], share=True)
    items = [{"user_id": u["user_id"], "name": u["name"], "connections": u["connections"],
              "read_only": not u["can_write"]} for u in request.app[ROOMS].presence(access.document_id)]
    return web.json_response({"items": items})


def text_content(app: web.Application, settings: Settings, db: Database) -> YjsTextContent:
    """The `ContentBackend` of content model `text` (app.py puts it in `app[CONTENT]`)."""
    return yjs_content(app, settings, db, lambda states, heads, on_result: YjsTextContent(
        db, app[ROOMS], states, heads, on_result=on_result))


def yjs_content(app: web.Application, settings: Settings, db: Database,
                make: Callable[[States, Heads, Callable[[str], None] | None], C]) -> C:
    """A Yjs-backed `ContentBackend` built by `make(states, heads, on_result)`, with its markdown
    projection listening to every room and its seed used when a room of its model loads fresh.
    The retained states, projection heads and metrics are shared by every Yjs content model
    (made by the first call). Call after the room manager is installed."""
    shared = app.get(_SHARED)
    if shared is None:
        shared = app[_SHARED] = _shared(app, settings, db)
    content = make(shared.states, shared.heads, shared.on_result)
    model = content.model.name
    rooms = app[ROOMS]
    projector = Projector(db, model, content, shared.states, shared.heads,
                          debounce=settings.collab.projection_debounce,
                          max_delay=settings.collab.projection_max_delay, observe_lag=shared.observe_lag)
    shared.projectors.append(projector)
    if model == "text":
        app[PROJECTOR] = projector
    content.projector = projector
    rooms.update_listeners.append(projector.on_update)
    rooms.close_hooks.append(projector.on_close)
    rooms.seeders[model] = content.model.seed
    return content


class _Shared:
    def __init__(self, states: States, heads: Heads, on_result, observe_lag):
        self.states = states
        self.heads = heads
        self.on_result = on_result
        self.observe_lag = observe_lag
        self.projectors: list[Projector] = []


def _shared(app: web.Application, settings: Settings, db: Database) -> _Shared:
    from mdsync.ops.metrics import METRICS

    states = States(db, settings.sync.etag_retention_days * 86400)
    heads = Heads(db)
    metrics = app.get(METRICS)
    writes = metrics.counter("mdsync_content_writes_total",
                             "REST content writes on Yjs documents: applied as a diff, merged from a stale"
                             " ETag, or refused (unknown or expired ETag)", ["result"]) if metrics else None
    lag = metrics.histogram("mdsync_collab_projection_lag_seconds",
                            "Time from the first unprojected edit to its markdown projection being stored",
                            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)) if metrics else None
    shared = _Shared(states, heads, (lambda kind: writes.labels(kind).inc()) if writes else None,
                     lag.observe if lag else None)
    app[STATES] = states

    async def collector(app: web.Application):
        await heads.load()  # document metadata shows content ETags from the first request on

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
        for projector in shared.projectors:
            await projector.flush()  # rooms closed at shutdown have stored theirs; anything left goes now

    app.cleanup_ctx.append(collector)
    return shared


_SHARED: web.AppKey[_Shared] = web.AppKey("yjs_content_shared", _Shared)

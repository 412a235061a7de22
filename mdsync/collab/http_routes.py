"""HTTP routes of collaboration beside the socket: Yjs over HTTP (state vector in, missing update
out; update in) and presence.

Every route goes through the live room (`rooms.use`), so what HTTP clients read and write is
what socket clients see, at once.
"""

from __future__ import annotations

import base64
import binascii
import logging

from aiohttp import web

from mdsync.api.errors import TooLarge, ValidationFailed
from mdsync.api.models import Out
from mdsync.api.routing import Routes, read_body
from mdsync.appkeys import SETTINGS
from mdsync.api.models import Body
from mdsync.collab.room import DocumentTooLarge
from mdsync.cluster.presence import PRESENCE
from mdsync.collab.rooms import ROOMS
from mdsync.workspaces.access import require

log = logging.getLogger("mdsync.collab")
routes = Routes("collab-http")
OCTETS = "application/octet-stream"


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
    across = request.app.get(PRESENCE)  # several nodes: every node's users (mdsync/cluster/presence.py)
    users = await across.users(access.document_id) if across else request.app[ROOMS].presence(access.document_id)
    items = [{"user_id": u["user_id"], "name": u["name"], "connections": u["connections"],
              "read_only": not u["can_write"]} for u in users]
    return web.json_response({"items": items})

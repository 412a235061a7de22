"""Routes of real-time collaboration: the document socket and its tickets; `install` wires the
room manager into the app (revocation listener, SIGTERM flush)."""

from __future__ import annotations

from aiohttp import web

from mdsync.api.models import Out
from mdsync.api.routing import PRINCIPAL, Routes
from mdsync.collab import hocuspocus, socket
from mdsync.workspaces import access

routes = Routes("collab")


class TicketOut(Out):
    ticket: str
    expires_in: int


# the socket handlers themselves, not wrappers awaiting them: a handler's coroutine frame lives as
# long as its socket (hours), one per connection
routes.get("/ws/docs/{document_id}",
           "Real-time editing over the y-websocket protocol (upgrade; token in ?token=)",
           auth="none")(socket.document_socket)
routes.get("/ws/hocuspocus",
           "Real-time editing over the Hocuspocus provider protocol, many documents per socket"
           " (upgrade; each document's token in its Auth message)", auth="none")(hocuspocus.hocuspocus_socket)


@routes.post("/api/v1/documents/{document_id}/ws-ticket",
             "A single-use, 60 s ticket to open this document's socket without a token in the URL",
             response=TicketOut, status=201, write_scope=False)
async def ws_ticket(request: web.Request) -> web.Response:
    document_id = request.match_info["document_id"]
    await access.require(request, "viewer", document_id=document_id)
    tickets = request.app[socket.TICKETS]
    ticket = await tickets.issue(request[PRINCIPAL], document_id)
    return web.json_response({"ticket": ticket, "expires_in": int(tickets.ttl)}, status=201)

"""The aiohttp WebSocket adapter: `GET /ws/docs/{document_id}` speaking the y-websocket protocol.

Order of a connection: accept the upgrade first (y-websocket retries a refused upgrade forever),
then authenticate (`?token=` access JWT, PAT or single-use ticket; or `?share=` share-link token)
and authorize, closing with 4401 (no or bad token, revoked session) / 4404 (no such document, or
one the caller cannot see) / 4403 (lost access) — y-websocket stops reconnecting on 44xx. Then
the room is acquired (loaded before anything is served), the socket joins it, and each frame is
handed to the room. Leaving is synchronous, so a cancelled handler still cleans up.

Tokens travel in the query string: nothing here logs the URL or its query.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import WSMsgType, web, web_ws
from aiohttp._websocket.reader import WebSocketDataQueue

from mdsync import clock
from mdsync.api.errors import NotFound
from mdsync.appkeys import DB, SETTINGS
from mdsync.auth import store as auth_store
from mdsync.collab.connection import Connection
from mdsync.collab.protocol import ProtocolError
from mdsync.collab.room import DocumentTooLarge
from mdsync.collab.rooms import CLOSE_FORBIDDEN, CLOSE_RESTART, CLOSE_UNAUTHENTICATED, ROOMS, can_write
from mdsync.collab.tickets import TICKET_PREFIX, Tickets
from mdsync.workspaces import access as access_mod

log = logging.getLogger("mdsync.collab")

CLOSE_NOT_FOUND = 4404
CLOSE_PROTOCOL = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013

# Tickets on one node, SharedTickets (same methods) with several
TICKETS: web.AppKey[Tickets] = web.AppKey("ws_tickets", Tickets)


class Refused(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def authorize(request: web.Request, document_id: str) -> tuple[Any, Any]:
    """(principal or None for a share link, Access) of the socket, or Refused with its close code."""
    from mdsync.auth.routes import AUTH

    app = request.app
    db = app[DB]
    token = request.query.get("token")
    share = request.query.get("share")
    principal = None
    if token:
        if token.startswith(TICKET_PREFIX):
            principal = await app[TICKETS].redeem(token, document_id)
            if principal is not None and principal.session_id is not None:
                row = await auth_store.session_state(db, principal.session_id)
                if row is None or row["revoked_at"] or row["disabled_at"]:
                    principal = None
            elif principal is not None and principal.token_id is not None:
                # a ticket traded for a personal access token dies with that token
                row = await auth_store.api_token_by_id(db, principal.token_id)
                if row is None or row["disabled_at"] or (row["expires_at"] and row["expires_at"] <= clock.iso()):
                    principal = None
        else:
            principal = await app[AUTH].principal_from_token(token)
        if principal is None:
            raise Refused(CLOSE_UNAUTHENTICATED, "invalid, expired or revoked token")
    elif not share:
        raise Refused(CLOSE_UNAUTHENTICATED, "no token")
    try:
        if principal is None:
            raise NotFound("no such document")
        return principal, await access_mod.resolve(db, principal, document_id=document_id)
    except NotFound:
        if not share:
            raise Refused(CLOSE_NOT_FOUND, "no such document") from None
    try:
        return principal, await access_mod.resolve_share(db, share, principal, document_id=document_id)
    except NotFound:
        raise Refused(CLOSE_UNAUTHENTICATED if principal is None else CLOSE_NOT_FOUND,
                      "invalid share link") from None


class FrameQueue(WebSocketDataQueue):
    """aiohttp's queue of the messages read from one socket, with a short cut: once the handler
    sets `direct`, each binary message goes to `direct(owner, data)` at once, from the
    protocol's `data_received`, instead of waiting in the queue for the handler's task to wake up
    and read it (a future, a task step through five coroutine frames and a loop turn per
    message). Every message marks the socket's `pulse` heard. Other messages (close, ping, pong,
    text, errors) are queued for the handler as before, and so is everything before the handler
    sets `direct` (`go_direct`: only with nothing queued, so order holds). `direct` must not
    raise: it runs inside aiohttp's frame reader."""

    __slots__ = ("direct", "owner", "pulse")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.direct: Any = None
        self.owner: Any = None
        self.pulse: Any = None

    def feed_data(self, data: Any, size: int) -> None:
        pulse = self.pulse
        if pulse is not None:
            pulse.quiet = 0
        direct = self.direct
        if direct is not None and data.type is WSMsgType.BINARY:
            direct(self.owner, data.data)
        else:
            WebSocketDataQueue.feed_data(self, data, size)


class Socket(web.WebSocketResponse):
    """A server WebSocket whose messages arrive through a `FrameQueue`."""

    def _post_start(self, request: web.BaseRequest, protocol: Any, writer: Any) -> None:
        # aiohttp makes the queue here, by the module's name for the class: that name is
        # FrameQueue for the length of this synchronous call (if aiohttp ever makes it some other
        # way, `frames_of` finds no FrameQueue and the handlers read every message themselves)
        web_ws.WebSocketDataQueue = FrameQueue
        try:
            super()._post_start(request, protocol, writer)
        finally:
            web_ws.WebSocketDataQueue = WebSocketDataQueue


def frames_of(ws: web.WebSocketResponse) -> FrameQueue | None:
    reader = getattr(ws, "_reader", None)
    return reader if isinstance(reader, FrameQueue) else None


def go_direct(queue: FrameQueue | None, direct: Any, owner: Any) -> None:
    """From now on binary messages go to `direct(owner, data)` as they are read, once nothing
    read before is still queued (call again after handling each queued message)."""
    if queue is not None and queue.direct is None and not queue._buffer:  # noqa: SLF001
        queue.owner = owner
        queue.direct = direct


async def accept(request: web.Request) -> web.WebSocketResponse:
    """The upgrade both socket kinds share (/ws/docs here, /ws/hocuspocus in hocuspocus.py): the
    message size limit, no compression; a request that is not an upgrade is 400. While the server
    shuts down the socket is closed at once with 1012: check `ws.closed`.

    Pings are the handler's: the manager's `Pings` (keepalive.py) pings quiet sockets, and
    the handler answers the client's pings (`answered_ping`) and marks every message heard."""
    settings = request.app[SETTINGS]
    ws = Socket(
        max_msg_size=settings.limits.max_ws_message_bytes,
        compress=False,  # frames are built once for all peers; deflate would cost a compression per peer
        heartbeat=None,  # keepalive.Pings: one timer for every socket, not one each
        autoping=False,  # pongs reach the handler: they are what shows a quiet client is there
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="expected a WebSocket upgrade")
    await ws.prepare(request)
    # the 101's headers are on the wire: nothing reads them again, and they would stay with
    # the socket for its lifetime (~1.7 KB of the security headers, serialized and parsed)
    ws.headers.clear()
    if request.app[ROOMS].shutting_down:
        await ws.close(code=CLOSE_RESTART, message=b"server restarting")
    return ws


async def answered_ping(ws: web.WebSocketResponse, msg) -> bool:
    """Whether `msg` was a ping (answered now) or a pong: nothing more to do with it."""
    if msg.type == WSMsgType.PING:
        try:
            await ws.pong(msg.data)
        except ConnectionResetError:
            pass  # the peer is gone: the next read ends the handler
        return True
    return msg.type == WSMsgType.PONG


def oversized(ws: web.WebSocketResponse, msg) -> bool:
    """An ERROR message that is aiohttp refusing a frame over max_ws_message_bytes (it closed
    the socket with 1009)."""
    return getattr(msg.data, "code", None) == CLOSE_TOO_BIG or ws.close_code == CLOSE_TOO_BIG


def _binary(conn: Connection, data: bytes) -> tuple[int, str] | None:
    """Hand a binary message to the socket's room; the close (code, reason) it calls for."""
    try:
        conn.room.receive(conn, data)
    except ProtocolError as exc:
        conn.room.manager.stats.garbage_frames += 1
        log.warning("malformed frame on document %s from user %s: %s; closing that socket",
                    conn.document_id, conn.user_id, exc)
        return CLOSE_PROTOCOL, "malformed message"
    except DocumentTooLarge as exc:
        return CLOSE_TOO_BIG, str(exc)
    return None


def _direct_frame(conn: Connection, data: bytes) -> None:
    """A binary message straight from the socket's reader (FrameQueue.direct)."""
    if conn.closing:
        return
    try:
        close = _binary(conn, data)
    except Exception:
        if conn.room.manager.shutting_down:
            close = CLOSE_RESTART, "server restarting"
        else:
            log.exception("socket on document %s failed", conn.document_id)
            close = 1011, "internal error"
    if close is not None:
        conn.close_soon(close[0], close[1], abort_after=2.0)


async def document_socket(request: web.Request) -> web.StreamResponse:
    cfg = request.app[SETTINGS].collab
    manager = request.app[ROOMS]
    document_id = request.match_info["document_id"]
    ws = await accept(request)
    if ws.closed:
        return ws
    try:
        principal, access = await authorize(request, document_id)
    except Refused as refused:
        await ws.close(code=refused.code, message=refused.reason.encode())
        return ws

    writable = can_write(access) and (principal is None or principal.can_write)
    conn = Connection(ws, principal, access, read_only=not writable,
                      slow_peer_bytes=cfg.slow_peer_bytes, slow_peer_seconds=cfg.slow_peer_seconds)
    # the connection keeps what it needs of them; this frame lives as long as the socket, and the
    # full access (the document's row) and principal would stay with it (~1.5 KB per socket)
    del principal, access
    if not manager.admit(conn):
        await ws.close(code=CLOSE_TRY_LATER, message=b"too many connections")
        return ws
    room = None
    pulse = manager.pings.watch(ws)
    try:
        room = await manager.acquire(document_id)  # loaded from snapshot + log before serving
        conn.room = room
        room.join(conn)
        stats = manager.stats
        queue = frames_of(ws)
        if queue is not None:
            queue.pulse = pulse
        go_direct(queue, _direct_frame, conn)
        async for msg in ws:
            pulse.quiet = 0
            if conn.closing:
                continue  # revoked or closing: nothing more lands
            if msg.type == WSMsgType.BINARY:
                close = _binary(conn, msg.data)
                if close is not None:
                    await ws.close(code=close[0], message=close[1].encode()[:120])
                    break
                go_direct(queue, _direct_frame, conn)
            elif msg.type == WSMsgType.TEXT:
                stats.garbage_frames += 1
                log.warning("text frame on document %s from user %s; closing that socket", document_id, conn.user_id)
                await ws.close(code=CLOSE_UNSUPPORTED, message=b"binary frames only")
                break
            elif await answered_ping(ws, msg):
                go_direct(queue, _direct_frame, conn)
            elif msg.type == WSMsgType.ERROR:
                if oversized(ws, msg):
                    stats.oversized_closed += 1
                    log.warning("oversized message on document %s from user %s; closed with 1009",
                                document_id, conn.user_id)
                break
    except Exception:
        if manager.shutting_down:
            await ws.close(code=CLOSE_RESTART, message=b"server restarting")
        else:
            log.exception("socket on document %s failed", document_id)
            await ws.close(code=1011, message=b"internal error")
    finally:
        # synchronous on purpose: runs completely even when aiohttp cancels this handler
        conn.closing = True
        manager.pings.forget(pulse)
        if room is not None:
            room.leave(conn)
            manager.release(room)
        manager.dismiss(conn)
    return ws


__all__ = ["document_socket", "authorize", "TICKETS", "CLOSE_FORBIDDEN"]

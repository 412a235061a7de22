"""One client socket in a room: who it is (from its token), what it may do, and how frames reach it.

`send(framed)` writes an already-framed WebSocket message straight to the socket's transport
(`write_frame`): the room frames an update once and hands the same bytes to every peer — at the
end of the loop turn, all the turn's frames for a peer in one write (`Room._fanout`), so `send`
first writes out what the room still holds for this turn, and frames keep their order. A peer
whose write buffer stays over `slow_peer_bytes` for `slow_peer_seconds` (or grows past four times
that at once) is closed with 1013: one slow client never stalls the room, and it reconnects and
resyncs instead of silently missing updates.

A socket opened with an expiring credential (an access JWT, a personal access token with an
expiry, a ticket traded for either, or a share link with an expiry) ends when it does: the
manager's `Deadlines` (keepalive.py: one timer for every socket, armed when the manager admits
it) closes it with 4401 at that moment, and the client reconnects with a fresh token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mdsync import clock

if TYPE_CHECKING:
    from mdsync.collab.keepalive import Deadlines

log = logging.getLogger("mdsync.collab")

CLOSE_SLOW = 1013
CLOSE_EXPIRED = 4401  # the credential's exp passed (rooms.CLOSE_UNAUTHENTICATED)


def transport_of(ws: web.WebSocketResponse) -> asyncio.Transport | None:
    """The transport an uncompressed server socket writes to, or None when frames must go
    through `ws.send_bytes` (compression negotiated, or aiohttp internals not as expected).
    aiohttp has no public API for writing pre-built frames; this is the one place that reaches in."""
    writer = getattr(ws, "_writer", None)
    if writer is None or getattr(writer, "compress", 1) or getattr(writer, "use_mask", True):
        return None
    if not hasattr(writer, "_closing") or not hasattr(ws, "_closed"):  # what write_frame reads
        return None
    transport = getattr(writer, "transport", None)
    if transport is None or not hasattr(transport, "get_write_buffer_size"):
        return None
    return transport


# plain stream transports (uvloop's, asyncio's) whose socket holds exactly the bytes written to them
_PLAIN_TRANSPORTS = frozenset({"TCPTransport", "UnixTransport", "_SelectorSocketTransport"})


def socket_fd(transport: asyncio.Transport | None) -> int | None:
    """The file descriptor `Connection.write` may write frames to itself, in one system call, when
    the transport holds nothing: a plain TCP or Unix stream's, never one under TLS. None: always
    through the transport."""
    if (transport is None or type(transport).__name__ not in _PLAIN_TRANSPORTS
            or transport.get_extra_info("sslcontext") is not None):
        return None
    sock = transport.get_extra_info("socket")
    return None if sock is None else sock.fileno()


def write_frame(ws: web.WebSocketResponse, transport: asyncio.Transport, framed: bytes) -> int:
    """Write pre-built frames (protocol.ws_frame, one or several joined) to the socket; the
    write-buffer size after them, or -1 when the socket is closing (nothing written)."""
    if ws._closed or transport.is_closing() or ws._writer._closing:  # noqa: SLF001 (transport_of checked them)
        return -1
    transport.write(framed)
    return transport.get_write_buffer_size()


def slim_access(access: Any) -> Any:
    """The Access a socket keeps for its lifetime: the document's id only, not its whole row
    (~1.5 KB per socket of strings nothing reads again; `access.recheck` needs only the id)."""
    document = getattr(access, "document", None)
    if document is None or len(document) == 1 or not dataclasses.is_dataclass(access):
        return access
    return dataclasses.replace(access, document={"id": document["id"]})


class Connection:
    # no principal kept: the fields below are all a socket needs of it (and the rest would be
    # held per socket for hours)
    __slots__ = ("ws", "transport", "access", "user_id", "name", "session_id", "token_id",
                 "share_link_id", "workspace_id", "document_id", "role", "read_only", "awareness_ids",
                 "connected_at", "closing", "_slow_timer", "_bound", "_slow_seconds", "room", "_fallback",
                 "expires_at", "_expiry", "joins", "fd")

    # frames for this socket may be joined into one write (False: each goes through `send`)
    JOINS_FRAMES = True

    def __init__(self, ws: web.WebSocketResponse, principal: Any, access: Any, *, read_only: bool,
                 slow_peer_bytes: int, slow_peer_seconds: float):
        self.ws = ws
        self.transport = transport_of(ws)
        self.fd = socket_fd(self.transport)
        access = slim_access(access)
        self.access = access
        self.user_id: str | None = getattr(principal, "user_id", None)
        self.name: str | None = getattr(principal, "name", None)
        self.session_id: str | None = getattr(principal, "session_id", None)
        self.token_id: str | None = getattr(principal, "token_id", None)
        self.share_link_id: str | None = getattr(access, "share_link_id", None)
        self.expires_at: float | None = getattr(principal, "expires_at", None)
        link_expires = getattr(access, "expires_at", None)   # opened with an expiring share link
        if link_expires:
            at = clock.parse(link_expires).timestamp()
            self.expires_at = at if self.expires_at is None else min(self.expires_at, at)
        self._expiry: int | None = None   # its key in the manager's Deadlines
        self.workspace_id: str = access.workspace_id
        self.document_id: str = access.document_id
        self.role: str = access.role
        self.read_only = read_only
        self.awareness_ids: set[int] = set()
        self.connected_at = time.time()
        self.closing = False
        self.room = None
        self._slow_timer: asyncio.TimerHandle | None = None
        self._bound = slow_peer_bytes
        self._slow_seconds = slow_peer_seconds
        self._fallback: list[asyncio.Task] | None = None if self.transport is not None else []
        # the room writes the turn's frames for this socket joined, through `write` (Room._fanout)
        self.joins = self.transport is not None and self.JOINS_FRAMES

    def arm_expiry(self, deadlines: Deadlines) -> None:
        """Close with 4401 when the credential expires (called once the socket is admitted)."""
        if self.expires_at is None or self.closing:
            return
        self._expiry = deadlines.add(self, self.expires_at, clock.timestamp())

    def disarm_expiry(self, deadlines: Deadlines) -> None:
        if self._expiry is not None:
            deadlines.remove(self._expiry)
            self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        self.read_only = True  # nothing more lands while the close is on its way
        self.close_soon(CLOSE_EXPIRED, "token expired")

    def send(self, framed: bytes) -> None:
        """Queue a pre-built frame for this peer; never raises, never waits. What the room
        still holds for this turn goes first."""
        if self.closing:
            return
        room = self.room
        if room is not None and room.outbox:
            room.flush_outbox()
        if self.transport is None:
            self._send_fallback(framed)
        else:
            self.write(framed)

    def write(self, framed: bytes) -> None:
        """Write pre-built frames (one or several joined) to a socket with a transport, then the
        slow-peer check: the whole per-peer cost of a delivery.

        When the transport holds nothing (the usual case: the kernel takes every frame), the
        frames go to the socket in one `os.write`, past the event loop's write machinery (its
        buffer list and write context cost more than the system call's Python side); whatever
        the kernel does not take, and every frame while the transport holds something, goes
        through the transport, so bytes keep their order and the slow-peer bound still counts
        them. An error (the peer gone) is left to the transport to meet and close on."""
        transport = self.transport
        ws = self.ws
        # write_frame inlined: this runs once per peer per loop turn of a busy room. A closing
        # transport is never written to: its fd may be closed, even reused by another socket, soon
        if self.closing or ws._closed or transport.is_closing() or ws._writer._closing:  # noqa: SLF001
            return
        fd = self.fd
        if fd is not None and not transport.get_write_buffer_size():
            try:
                sent = os.write(fd, framed)
            except OSError:   # EAGAIN (nothing taken), or the peer gone: the transport's to meet
                sent = 0
            if sent == len(framed):
                return        # nothing held back: under any slow-peer bound
            framed = framed[sent:]
        transport.write(framed)
        size = transport.get_write_buffer_size()
        if size > self._bound:
            self._over_bound(size)

    def _send_fallback(self, framed: bytes) -> None:
        # the payload behind the frame header (protocol.ws_frame)
        n = framed[1] & 0x7F
        payload = framed[2:] if n < 126 else framed[4:] if n == 126 else framed[10:]
        task = asyncio.ensure_future(self._send_bytes(payload))
        self._fallback.append(task)
        task.add_done_callback(self._fallback.remove)

    async def _send_bytes(self, payload: bytes) -> None:
        try:
            await self.ws.send_bytes(payload)
        except Exception:  # a failing peer must never affect the others
            self.close_soon(1011, "send failed")

    def _over_bound(self, size: int) -> None:
        if size > 4 * self._bound:
            self._slow()
        elif self._slow_timer is None:
            self._slow_timer = asyncio.get_running_loop().call_later(self._slow_seconds, self._recheck)

    def _recheck(self) -> None:
        self._slow_timer = None
        if self.transport is not None and not self.closing and self.transport.get_write_buffer_size() > self._bound:
            self._slow()

    def _slow(self) -> None:
        log.warning("closing a slow peer of document %s (write buffer over %d bytes)", self.document_id, self._bound)
        if self.room is not None:
            self.room.manager.stats.slow_closed += 1
        self.close_soon(CLOSE_SLOW, "slow consumer", abort_after=2.0)

    def close_soon(self, code: int, reason: str = "", abort_after: float = 5.0) -> None:
        """Close from outside the socket's own handler (revocation, shutdown, slow peer): stop
        sending at once, send the close frame, drop the transport if the peer does not answer."""
        if self.closing:
            return
        room = self.room
        if room is not None and room.outbox:
            room.flush_outbox()  # what the room sent before this decision still goes out first
        self.closing = True   # an expiry due now passes it by (keepalive.Deadlines)
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        asyncio.ensure_future(self._close(code, reason, abort_after))

    async def _close(self, code: int, reason: str, abort_after: float) -> None:
        await close_websocket(self.ws, self.transport, code, reason, abort_after)


async def close_websocket(ws: web.WebSocketResponse, transport: asyncio.Transport | None, code: int, reason: str,
                          abort_after: float) -> None:
    """Send the close frame (waiting at most `abort_after` s), then drop the connection if the peer
    has not closed it: a socket we close never lingers on a peer that stopped reading."""
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason.encode()[:120], drain=False), abort_after)
    except (Exception, asyncio.CancelledError):
        pass
    if transport is None and ws._req is not None:  # noqa: SLF001
        transport = ws._req.transport  # noqa: SLF001
    if transport is not None and not transport.is_closing():
        transport.abort()

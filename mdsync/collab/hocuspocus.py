"""`GET /ws/hocuspocus`: the Hocuspocus provider protocol (as `@hocuspocus/provider` 4 speaks it)
on top of the same rooms as the y-websocket socket.

One socket carries many documents. Every frame starts with a routing key (varstring): the
document id, or `id + "\\0" + session` when the provider multiplexes with `sessionAwareness`.
Then a varuint message type and its payload:

    0 Sync (y-protocols: step 1 / step 2 / update)   1 Awareness   3 QueryAwareness
    2 Auth: client → server  [0 Token][token][provider version]
            server → client  [1 PermissionDenied][reason] or [2 Authenticated][scope]
    5 Stateless [string] (no server hooks here: accepted and ignored)
    7 Close (client → server: detach this document; server → client: [reason], the provider
      stops using the document)
    8 SyncStatus [varint 1|0] (server → client: the ack of one step 2 / update, 1 = applied;
      the provider counts its unsynced changes down with it, and an editor shows "saved" at 0:
      so it is sent only once the update is committed — `Session.ack`)
    9 Ping / 10 Pong: a one-byte frame without routing key (provider 4 answers a ping). The
      provider reconnects after 30 s without any message. Hocuspocus itself never pings (the
      echo of each provider's 15 s awareness renewal keeps sockets alive, as here); a socket
      that has sent nothing for `collab.hocuspocus_ping_seconds` (20 s; a provider without
      awareness) is pinged, so clients that renew awareness never see a ping they might not
      understand.

Checked against @hocuspocus/provider 4.8 and @hocuspocus/server 4.7: replies go as type 0 (the
provider has no SyncReply 4: it would log an unknown type); a client step 1 is answered with
step 2 and then a step 1 of ours, whose answer the server acks, which brings the provider's
`unsyncedChanges` (set to 1 when it starts syncing, +1 per update sent) back to 0 — so exactly
one server step 1 per client step 1, or a spare ack would hide a pending change. A read-only
client's step 2 is acked 1 when it holds nothing new, its updates always 0.

A document's frames wait (bounded) until its Auth message has been checked — the token is an
access JWT, a PAT or a ticket, checked exactly as `/ws/docs` checks `?token=` (socket.authorize).
Refusals are per document (PermissionDenied `unauthenticated` / `forbidden` / `not-found`; an
id of another workspace is `not-found`; over a connection limit: `too-many-connections`), the
socket's other documents go on. Garbage (a frame
that does not parse) closes the whole socket with 1002, like /ws/docs.

Each accepted (socket, document) is a `DocumentConnection`: a `Connection` of the document's
Room like any y-websocket socket, so fan-out, read-only, limits, revocation and shutdown work
unchanged. The room hands it the y-websocket frame it built once for every peer; the connection
re-frames it with its routing key through a `_Prefix` shared by every socket using that key,
which builds the prefixed frame once per broadcast (identity cache), not once per peer.
A lost access (4403) or an ended session (4401) refuses only that document (PermissionDenied);
a slow socket (1013) or a restart (1012) closes the socket, and so does a document's token
reaching its `exp` (4401): the provider reconnects and sends fresh tokens.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from aiohttp import WSMsgType, web

from mdsync.appkeys import SETTINGS
from mdsync.collab import protocol as p
from mdsync.collab import socket as y_socket
from mdsync.collab.connection import Connection, close_websocket, transport_of, write_frame
from mdsync.collab.protocol import ProtocolError
from mdsync.collab.room import DocumentTooLarge
from mdsync.collab.rooms import CLOSE_FORBIDDEN, CLOSE_RESTART, CLOSE_UNAUTHENTICATED, ROOMS, can_write
from mdsync.collab import updates

log = logging.getLogger("mdsync.collab")

MSG_SYNC_REPLY = 4
MSG_STATELESS = 5
MSG_BROADCAST_STATELESS = 6
MSG_CLOSE = 7
MSG_SYNC_STATUS = 8
MSG_PING = 9
MSG_PONG = 10

AUTH_TOKEN = 0
AUTH_DENIED = 1
AUTH_OK = 2

SCOPE_WRITE = "read-write"
SCOPE_READ = "readonly"

REASONS = {CLOSE_UNAUTHENTICATED: "unauthenticated", CLOSE_FORBIDDEN: "forbidden",
           y_socket.CLOSE_NOT_FOUND: "not-found"}
TOO_MANY = "too-many-connections"

PING_FRAME = p.ws_frame(bytes((MSG_PING,)))
PONG = bytes((MSG_PONG,))
# bounds per socket: documents attached or being authorized, frames waiting for their Auth check
MAX_DOCUMENTS = 256
MAX_WAITING_FRAMES = 1024
MAX_WAITING_BYTES = 32 * 1024 * 1024
MAX_STATELESS_BYTES = 64 * 1024
ROUTING_SEPARATOR = "\0"


def _payload(framed: bytes) -> bytes:
    """The payload of a frame built by protocol.ws_frame (unmasked, final, binary)."""
    n = framed[1] & 0x7F
    return framed[2:] if n < 126 else framed[4:] if n == 126 else framed[10:]


class _Prefix:
    """The routing-key prefix of one document key, shared by every socket using that key: a room
    broadcast hands the same frame object to each peer, so the prefixed frame is built once."""

    __slots__ = ("key", "head", "users", "_src", "_out")

    def __init__(self, key: str):
        self.key = key
        self.head = p.varbytes(key.encode("utf-8"))
        self.users = 0
        self._src: bytes | None = None
        self._out = b""

    def frame(self, framed: bytes) -> bytes:
        if framed is self._src:
            return self._out
        out = p.ws_frame(self.head + _payload(framed))
        self._src, self._out = framed, out
        return out

    def message(self, body: bytes) -> bytes:
        """A framed Hocuspocus message of this key (body: type + payload)."""
        return p.ws_frame(self.head + body)


class Prefixes:
    """Routing-key prefixes in use in this process (app[PREFIXES])."""

    def __init__(self):
        self.by_key: dict[str, _Prefix] = {}

    def take(self, key: str) -> _Prefix:
        prefix = self.by_key.get(key)
        if prefix is None:
            prefix = self.by_key[key] = _Prefix(key)
        prefix.users += 1
        return prefix

    def give_back(self, prefix: _Prefix) -> None:
        prefix.users -= 1
        if prefix.users <= 0 and self.by_key.get(prefix.key) is prefix:
            del self.by_key[prefix.key]


PREFIXES: web.AppKey[Prefixes] = web.AppKey("hocuspocus_prefixes", Prefixes)


def auth_denied(reason: str) -> bytes:
    return bytes((p.MSG_AUTH, AUTH_DENIED)) + p.varbytes(reason.encode())


def authenticated(read_only: bool) -> bytes:
    return bytes((p.MSG_AUTH, AUTH_OK)) + p.varbytes((SCOPE_READ if read_only else SCOPE_WRITE).encode())


def sync_status(applied: bool) -> bytes:
    return bytes((MSG_SYNC_STATUS, 1 if applied else 0))


def close_message(reason: str) -> bytes:
    return bytes((MSG_CLOSE,)) + p.varbytes(reason.encode()[:120])


class DocumentConnection(Connection):
    """One document of a Hocuspocus socket, seen by its Room as a Connection."""

    __slots__ = ("session", "key", "prefix", "step1_on_join")

    JOINS_FRAMES = False  # each frame of the room gets this document's routing key (send)

    def __init__(self, session: Session, key: str, prefix: _Prefix, principal: Any, access: Any, *,
                 read_only: bool, slow_peer_bytes: int, slow_peer_seconds: float):
        super().__init__(session.ws, principal, access, read_only=read_only,
                         slow_peer_bytes=slow_peer_bytes, slow_peer_seconds=slow_peer_seconds)
        self.session = session
        self.key = key
        self.prefix = prefix
        # Room.join sends writable sockets a step 1, so the first client step 1 needs no second
        # one (each step 1 of ours brings one ack: a spare ack would hide an unsynced change)
        self.step1_on_join = not read_only

    def send(self, framed: bytes) -> None:
        """A frame of the room (y-websocket message) → the same message behind this routing key."""
        if not self.closing:
            Connection.send(self, self.prefix.frame(framed))

    def send_message(self, body: bytes) -> None:
        """A Hocuspocus message of this document (type + payload)."""
        if not self.closing:
            Connection.send(self, self.prefix.message(body))

    def _expired(self) -> None:
        """The document's token expired: close the whole socket with 4401. The provider reconnects
        and sends each document's token again (a token function gives a fresh one); a refusal of
        this document alone would leave it stopped until the application re-sends a token."""
        self._expiry = None
        self.read_only = True
        self.session.close_soon(CLOSE_UNAUTHENTICATED, "token expired")

    def close_soon(self, code: int, reason: str = "", abort_after: float = 5.0) -> None:
        """Ended session (4401) or lost access (4403): refuse this document only; anything else
        (slow socket, restart, send failure) closes the socket with all its documents."""
        if code not in (CLOSE_UNAUTHENTICATED, CLOSE_FORBIDDEN):
            self.session.close_soon(code, reason, abort_after)
            return
        if self.closing:
            return
        self.read_only = True
        self.send_message(auth_denied(REASONS[code]))
        self.closing = True
        # never leave the room from inside its own fan-out loop (a slow-peer check runs there)
        asyncio.get_running_loop().call_soon(self.session.detach, self.key, self)


class Session:
    """One Hocuspocus socket: its documents, the Auth checks in flight, the frames waiting for them."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse):
        self.request = request
        self.app = request.app
        self.ws = ws
        self.manager = self.app[ROOMS]
        self.prefixes = self.app[PREFIXES]
        self.cfg = self.app[SETTINGS].collab
        self.docs: dict[str, DocumentConnection] = {}
        self.waiting: dict[str, list[bytes]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closing = False
        self.waiting_frames = 0
        self.waiting_bytes = 0
        self._ping: asyncio.TimerHandle | None = None
        self._ping_idle = self.cfg.hocuspocus_ping_seconds
        self.last_seen = 0.0  # loop time of the last frame received
        self.loop = asyncio.get_running_loop()
        self._transport = None

    # -- frames in ------------------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """One binary frame. Raises ProtocolError (close the socket) for garbage."""
        if len(data) == 1 and data[0] in (MSG_PONG, MSG_PING):
            return  # connection-level pong (or a client's ping; the provider never sends one)
        key, pos = p.read_varstring(data, 0)
        if not key or len(key) > 200:
            raise ProtocolError("bad document name")
        kind, body_at = p.read_varuint(data, pos)
        if kind == p.MSG_AUTH:
            sub, at = p.read_varuint(data, body_at)
            if sub == AUTH_TOKEN:
                token, _ = p.read_varstring(data, at)  # the provider version follows; not needed
                self.authenticate(key, token)
            return
        conn = self.docs.get(key)
        if conn is not None:
            self.handle(conn, kind, data, pos)
            return
        queue = self.waiting.get(key)
        if queue is not None:
            if self.waiting_frames >= MAX_WAITING_FRAMES or self.waiting_bytes + len(data) > MAX_WAITING_BYTES:
                raise ProtocolError("too many messages before authentication")
            queue.append(data)
            self.waiting_frames += 1
            self.waiting_bytes += len(data)
            return
        # a document without an accepted Auth (never sent, refused, closed): nothing lands
        if kind > MSG_PONG:
            raise ProtocolError(f"unknown message type {kind}")

    def handle(self, conn: DocumentConnection, kind: int, data: bytes, pos: int) -> None:
        if conn.closing:
            return
        room = conn.room
        if kind == p.MSG_SYNC or kind == MSG_SYNC_REPLY:
            message = data[pos:] if kind == p.MSG_SYNC else b"\x00" + data[pos + 1:]
            inner, payload, _ = p.sync_payload(message)
            if inner == p.SYNC_STEP1:
                room.receive(conn, message)  # answers with step 2
                if conn.step1_on_join:
                    conn.step1_on_join = False
                else:
                    # like Hocuspocus: a step 1 of ours after the step 2, so the client's answer
                    # (acked below) brings its unsynced-changes count back to 0
                    conn.send(p.ws_frame(p.sync_step1(room.state_vector())))
                return
            if conn.read_only:
                # as Hocuspocus: a read-only client's update is never applied (ack 0); its step 2
                # is acked as applied when it holds nothing new (the usual answer of a viewer)
                applied = inner == p.SYNC_STEP2 and self._contained(room, payload)
                room.receive(conn, message)  # dropped (and counted) by the room
                self.ack(conn.key, room, applied)
                return
            try:
                room.receive(conn, message)
            except DocumentTooLarge as exc:
                self.ack(conn.key, room, False, then=close_message(str(exc)))
                self.detach(conn.key, conn)
                return
            self.ack(conn.key, room, True)
        elif kind in (p.MSG_AWARENESS, p.MSG_QUERY_AWARENESS):
            room.receive(conn, data[pos:])
        elif kind == MSG_CLOSE:
            self.detach(conn.key, conn)
        elif kind == MSG_STATELESS or kind == MSG_BROADCAST_STATELESS:
            payload, _ = p.read_varbytes(data, pos + 1)
            if len(payload) > MAX_STATELESS_BYTES:
                raise ProtocolError("stateless message too large")
        elif kind in (MSG_SYNC_STATUS, MSG_PING, MSG_PONG):
            return
        else:
            raise ProtocolError(f"unknown message type {kind}")

    def ack(self, key: str, room, applied: bool, then: bytes | None = None) -> None:
        """SyncStatus for one step 2 / update of `key` (and `then`, a message to send after it),
        sent once everything the room accepted so far is committed: "saved" is never said before
        the commit that holds the update. Acks wait in the room's order, so each document's come
        in the order of its messages (in bursts, one per group commit); a socket that closes
        before the commit gets none, and its provider resends on reconnect."""
        room.when_saved(functools.partial(self._acked, key, applied, then))

    def _acked(self, key: str, applied: bool, then: bytes | None) -> None:
        self._send_raw(key, sync_status(applied))
        if then is not None:
            self._send_raw(key, then)

    @staticmethod
    def _contained(room, update: bytes) -> bool:
        """Whether a read-only client's update holds nothing the document lacks (Hocuspocus acks
        such an update as applied: the usual step 2 of a viewer). Work in proportion to the
        update, never to the document (Room.has_all): a viewer's frames are dropped cheaply."""
        if update == p.EMPTY_UPDATE:
            return True
        try:
            covered = updates.check(update)
        except ProtocolError:
            return False
        return room.has_all(covered)

    # -- authentication -------------------------------------------------------------------
    def authenticate(self, key: str, token: str) -> None:
        if self.closing or key in self.waiting:
            return  # an Auth for a document already being checked: the first one decides
        old = self.docs.get(key)
        if old is not None:
            self.detach(key, old)  # re-authentication: the new token decides from now on
        if len(self.docs) + len(self.waiting) >= MAX_DOCUMENTS:
            self._send_raw(key, auth_denied(TOO_MANY))
            return
        self.waiting[key] = []
        task = asyncio.ensure_future(self._authenticate(key, token))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _authenticate(self, key: str, token: str) -> None:
        document_id = key.split(ROUTING_SEPARATOR, 1)[0]
        manager, cfg = self.manager, self.cfg
        conn = None
        room = None
        try:
            try:
                principal, access = await y_socket.authorize(_TokenRequest(self.app, token), document_id)
            except y_socket.Refused as refused:
                self._refuse(key, REASONS.get(refused.code, "forbidden"))
                return
            if self.closing or key not in self.waiting:
                return
            writable = can_write(access) and (principal is None or principal.can_write)
            prefix = self.prefixes.take(key)
            conn = DocumentConnection(self, key, prefix, principal, access, read_only=not writable,
                                      slow_peer_bytes=cfg.slow_peer_bytes, slow_peer_seconds=cfg.slow_peer_seconds)
            if not manager.admit(conn):
                self.prefixes.give_back(prefix)
                conn = None
                self._refuse(key, TOO_MANY)
                return
            room = await manager.acquire(document_id)  # loaded from snapshot + log before serving
            if self.closing or key not in self.waiting:
                return
            conn.room = room
            self.docs[key] = conn
            conn.send_message(authenticated(conn.read_only))
            room.join(conn)
            frames = self.waiting.pop(key)
            self.waiting_frames -= len(frames)
            self.waiting_bytes -= sum(len(f) for f in frames)
            for data in frames:
                self.receive_now(data)
        except ProtocolError as exc:
            self.garbage(exc)
        except Exception:
            if manager.shutting_down:
                # manager.acquire refuses during shutdown: the socket is being closed with 1012
                self._refuse(key, None)
            else:
                log.exception("hocuspocus authentication of a document failed")
                self._refuse(key, "forbidden")
        finally:
            if conn is not None and self.docs.get(key) is not conn:
                # not attached after all (socket closed, Close sent, error): undo what was taken
                conn.closing = True
                if room is not None:
                    manager.release(room)
                manager.dismiss(conn)
                self.prefixes.give_back(conn.prefix)

    def receive_now(self, data: bytes) -> None:
        if self.closing:
            return
        key, pos = p.read_varstring(data, 0)
        kind, _ = p.read_varuint(data, pos)
        conn = self.docs.get(key)
        if conn is not None:
            self.handle(conn, kind, data, pos)

    def _refuse(self, key: str, reason: str | None) -> None:
        frames = self.waiting.pop(key, None)
        if frames is not None:
            self.waiting_frames -= len(frames)
            self.waiting_bytes -= sum(len(f) for f in frames)
            if reason is not None:
                self._send_raw(key, auth_denied(reason))

    def _send_raw(self, key: str, body: bytes) -> None:
        """A message for a document that has no connection (refusals)."""
        if self.closing:
            return
        framed = p.ws_frame(p.varbytes(key.encode("utf-8")) + body)
        self.write(framed)

    def write(self, framed: bytes) -> None:
        transport = self._transport
        if transport is not None:
            write_frame(self.ws, transport, framed)
        else:
            task = asyncio.ensure_future(self._send_bytes(_payload(framed)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send_bytes(self, payload: bytes) -> None:
        try:
            await self.ws.send_bytes(payload)
        except Exception:
            self.close_soon(1011, "send failed")

    # -- leaving --------------------------------------------------------------------------
    def detach(self, key: str, conn: DocumentConnection) -> None:
        """Take one document off this socket (Close message, refusal, too large)."""
        if self.docs.get(key) is not conn:
            return
        del self.docs[key]
        conn.closing = True
        self._leave(conn)

    def _leave(self, conn: DocumentConnection) -> None:
        if conn.room is not None:
            conn.room.leave(conn)
            self.manager.release(conn.room)
        self.manager.dismiss(conn)
        self.prefixes.give_back(conn.prefix)

    def detach_all(self) -> None:
        """Synchronous: runs completely even when aiohttp cancels the handler."""
        self.closing = True
        if self._ping is not None:
            self._ping.cancel()
            self._ping = None
        for task in list(self.tasks):
            task.cancel()
        docs, self.docs = self.docs, {}
        self.waiting.clear()
        for conn in docs.values():
            conn.closing = True
            self._leave(conn)

    def close_soon(self, code: int, reason: str = "", abort_after: float = 5.0) -> None:
        """Close the whole socket from outside its handler (slow consumer, restart)."""
        if self.closing:
            return
        self.closing = True
        for conn in self.docs.values():
            conn.closing = True
            conn.read_only = True
        asyncio.ensure_future(self._close(code, reason, abort_after))

    async def _close(self, code: int, reason: str, abort_after: float) -> None:
        await close_websocket(self.ws, self._transport, code, reason, abort_after)

    def garbage(self, exc: Exception) -> None:
        self.manager.stats.garbage_frames += 1
        log.warning("malformed hocuspocus frame: %s; closing that socket", exc)
        self.close_soon(y_socket.CLOSE_PROTOCOL, "malformed message", abort_after=2.0)

    # -- keep-alive -----------------------------------------------------------------------
    def start_pings(self) -> None:
        if not self._ping_idle:
            return
        loop = asyncio.get_running_loop()
        self.last_seen = loop.time()
        self._ping = loop.call_later(self._ping_idle / 4, self._check_idle)

    def _check_idle(self) -> None:
        if self.closing:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self.last_seen >= self._ping_idle:
            self.write(PING_FRAME)
            self.last_seen = loop.time()  # the next ping after another idle period
        self._ping = loop.call_later(self._ping_idle / 4, self._check_idle)


class _TokenRequest:
    """What socket.authorize reads of a request, with the token of an Auth message in place of
    `?token=`: the Hocuspocus socket checks tokens exactly as /ws/docs does."""

    __slots__ = ("app", "query")

    def __init__(self, app: web.Application, token: str):
        self.app = app
        self.query = {"token": token} if token else {}


def _direct_frame(session: Session, data: bytes) -> None:
    """A binary message straight from the socket's reader (socket.FrameQueue.direct)."""
    session.last_seen = session.loop.time()
    if session.closing:
        return
    try:
        session.receive(data)
    except ProtocolError as exc:
        session.garbage(exc)
    except Exception:
        if session.manager.shutting_down:
            session.close_soon(CLOSE_RESTART, "server restarting")
        else:
            log.exception("hocuspocus socket failed")
            session.close_soon(1011, "internal error")


async def hocuspocus_socket(request: web.Request) -> web.StreamResponse:
    manager = request.app[ROOMS]
    ws = await y_socket.accept(request)
    if ws.closed:
        return ws
    session = Session(request, ws)
    session._transport = transport_of(ws)  # noqa: SLF001
    stats = manager.stats
    pulse = manager.pings.watch(ws)
    queue = y_socket.frames_of(ws)
    if queue is not None:
        queue.pulse = pulse
    try:
        session.start_pings()
        loop = session.loop
        y_socket.go_direct(queue, _direct_frame, session)
        async for msg in ws:
            session.last_seen = loop.time()
            pulse.quiet = 0
            if session.closing:
                continue
            if msg.type == WSMsgType.BINARY:
                try:
                    session.receive(msg.data)
                except ProtocolError as exc:
                    session.garbage(exc)
                y_socket.go_direct(queue, _direct_frame, session)
            elif msg.type == WSMsgType.TEXT:
                stats.garbage_frames += 1
                log.warning("text frame on a hocuspocus socket; closing that socket")
                session.close_soon(y_socket.CLOSE_UNSUPPORTED, "binary frames only", abort_after=2.0)
            elif await y_socket.answered_ping(ws, msg):
                y_socket.go_direct(queue, _direct_frame, session)
            elif msg.type == WSMsgType.ERROR:
                if y_socket.oversized(ws, msg):
                    stats.oversized_closed += 1
                    log.warning("oversized message on a hocuspocus socket; closed with 1009")
                break
    except Exception:
        if manager.shutting_down:
            await ws.close(code=CLOSE_RESTART, message=b"server restarting")
        else:
            log.exception("hocuspocus socket failed")
            await ws.close(code=1011, message=b"internal error")
    finally:
        manager.pings.forget(pulse)
        session.detach_all()
    return ws

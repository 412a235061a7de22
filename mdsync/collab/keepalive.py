"""The timers of every open socket, two for all of them instead of two per socket.

- `Pings`: the WebSocket ping that finds vanished clients (and keeps idle proxies from
  dropping a quiet socket). One sweep every half `collab.heartbeat_seconds` looks at every
  socket: one silent (no message, no pong) since the sweep before last is sent a ping, one still
  silent at the next sweep is dropped. aiohttp's own heartbeat costs a timer per socket
  (~0.5 KB) and a loop callback per message received, to move that timer; here a message costs
  one attribute store (`Pulse.quiet = 0`, in the socket handlers).
- `Deadlines`: the moment each socket's credential expires (connection.py `expires_at`): a heap
  and one timer at the earliest, instead of a timer per socket (~0.5 KB each).

Both run on the event loop; nothing here awaits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from mdsync.collab.connection import transport_of, write_frame

if TYPE_CHECKING:
    from mdsync.collab.connection import Connection

log = logging.getLogger("mdsync.collab")

PING_FRAME = b"\x89\x00"   # FIN + ping, no payload, unmasked (server to client)


class Pulse:
    """One socket's keep-alive state: `quiet`, the sweeps since it was last heard from (the socket
    handler sets it to 0 on every message, pongs included)."""

    __slots__ = ("ws", "quiet")

    def __init__(self, ws: web.WebSocketResponse):
        self.ws = ws
        self.quiet = 0


class Pings:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self._pulses: set[Pulse] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0   # sockets dropped for answering nothing

    def watch(self, ws: web.WebSocketResponse) -> Pulse:
        """Watch a prepared socket from now on (`forget` it when its handler ends)."""
        pulse = Pulse(ws)
        if self.seconds:
            self._pulses.add(pulse)
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.seconds / 2, self._sweep)
        return pulse

    def forget(self, pulse: Pulse) -> None:
        self._pulses.discard(pulse)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        """Every half period: ping the sockets silent for one period (two sweeps), drop those
        still silent at the next sweep."""
        self._timer = None
        for pulse in list(self._pulses):
            pulse.quiet += 1
            if pulse.quiet == 2:
                _ping(pulse.ws)
            elif pulse.quiet > 2:
                self._pulses.discard(pulse)
                self.dropped += 1
                log.info("dropping a socket that answered no ping for %.0f s", self.seconds * 1.5)
                _drop(pulse.ws)
        if self._pulses:
            self._timer = asyncio.get_running_loop().call_later(self.seconds / 2, self._sweep)


def _ping(ws: web.WebSocketResponse) -> None:
    """A pre-built ping frame, written as the room writes its frames (through `ws.ping()` where
    frames cannot be written directly)."""
    if ws.closed:
        return
    transport = transport_of(ws)
    if transport is None:
        asyncio.ensure_future(_ping_through(ws))
    else:
        write_frame(ws, transport, PING_FRAME)   # nothing when the socket is closing


async def _ping_through(ws: web.WebSocketResponse) -> None:
    try:
        await ws.ping()
    except Exception:  # noqa: S110 - a socket going away: the next sweep drops it
        pass


def _drop(ws: web.WebSocketResponse) -> None:
    """Abort a socket whose peer is gone (nobody would read a close frame): its handler's read
    ends, and its cleanup runs as for any lost connection."""
    writer = ws._writer  # noqa: SLF001
    transport = writer.transport if writer is not None else None
    if transport is not None and not transport.is_closing():
        transport.abort()


class Deadlines:
    """When each socket's credential expires: `Connection._expired` is called at that moment."""

    def __init__(self):
        self._heap: list[tuple[float, int]] = []   # (loop time, key)
        self._conns: dict[int, Connection] = {}    # key -> connection still waiting
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def add(self, conn: Connection, wall_time: float, now_wall: float) -> int:
        """Call `conn._expired()` at `wall_time` (a Unix timestamp); the key `remove` takes."""
        loop = asyncio.get_running_loop()
        at = loop.time() + max(0.0, wall_time - now_wall)
        key = next(self._keys)
        self._conns[key] = conn
        heapq.heappush(self._heap, (at, key))
        if len(self._heap) > 64 and len(self._heap) > 2 * len(self._conns):
            # mostly sockets that closed before their expiry: rebuild without them
            self._heap = [entry for entry in self._heap if entry[1] in self._conns]
            heapq.heapify(self._heap)
        if self._timer_at is None or at < self._timer_at:
            self._arm(loop, at)
        return key

    def remove(self, key: int) -> None:
        self._conns.pop(key, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            conn = self._conns.pop(key, None)
            if conn is not None and not conn.closing:
                try:
                    conn._expired()  # noqa: SLF001
                except Exception:
                    log.exception("closing a socket whose credential expired failed")
        while heap and heap[0][1] not in self._conns:
            heapq.heappop(heap)
        if heap:
            self._arm(loop, heap[0][0])

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

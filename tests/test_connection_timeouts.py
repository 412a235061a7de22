"""Header and idle timeouts (issue 14 item 19): before, a connection trickling header bytes
(slowloris) or sending nothing at all was held for aiohttp's keep-alive timeout (an hour). Against
a real `mdsync serve` with `server.header_timeout = 1` and `server.idle_timeout = 3`: such
connections are closed by the server while the client is still at it; a slow request body, a
WebSocket and a long poll, each longer than both timeouts, go on as before."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import aiohttp
import pytest

from tests.builders import PASSWORD

pytestmark = pytest.mark.both_engines

ENV = {"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_SERVER__HEADER_TIMEOUT": "1",
       "MDSYNC_SERVER__IDLE_TIMEOUT": "3"}
BOUND = 15.0  # seconds a test waits at most for what should take one or three


@pytest.fixture
def server(server_process):
    return server_process(env=ENV)


def connect(server) -> socket.socket:
    host, port = server.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=BOUND)
    sock.settimeout(0.2)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (EOF or reset); False while it is open."""
    try:
        return sock.recv(65536) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionResetError:
        return True


def test_a_client_trickling_headers_is_cut_off(server):
    socks = [connect(server) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    deadline = time.monotonic() + BOUND
    open_ = set(range(len(socks)))
    while open_ and time.monotonic() < deadline:
        for i in list(open_):
            try:
                socks[i].sendall(b"X-Slow: 1\r\n")  # a header line now and then, never the end
            except OSError:
                open_.discard(i)
                continue
            if closed_by_server(socks[i]):
                open_.discard(i)
        time.sleep(0.1)
    assert not open_, f"{len(open_)} of {len(socks)} trickling connections still open after {BOUND} s"
    for sock in socks:
        sock.close()
    # the server goes on
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    sock.settimeout(BOUND)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()


def test_a_connection_that_sends_nothing_is_closed(server):
    sock = connect(server)
    deadline = time.monotonic() + BOUND
    while not closed_by_server(sock) and time.monotonic() < deadline:
        pass
    assert time.monotonic() < deadline, "a silent connection was held"
    sock.close()


def test_a_kept_alive_connection_waits_its_idle_timeout_then_closes(server):
    sock = connect(server)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(BOUND)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.settimeout(0.2)
    started = time.monotonic()
    while not closed_by_server(sock) and time.monotonic() < started + BOUND:
        pass
    waited = time.monotonic() - started
    assert waited < BOUND, "the idle connection was never closed"
    # idle between requests is not a header in progress: it lasted the idle timeout, not the header one
    assert waited > 2.0, waited
    sock.close()


def test_a_slow_body_is_not_a_slow_head(server):
    sock = connect(server)
    body = json.dumps({"email": f"s{time.time_ns()}@example.com", "password": PASSWORD, "name": "S"}).encode()
    sock.sendall(b"POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:10])
    time.sleep(2.5)  # longer than the header timeout, mid-body
    sock.sendall(body[10:])
    sock.settimeout(BOUND)
    assert sock.recv(65536).startswith(b"HTTP/1.1 201")
    sock.close()


async def test_websockets_and_long_polls_outlive_both_timeouts(server):
    async with aiohttp.ClientSession(server.base) as http:
        resp = await http.post("/api/v1/auth/register",
                               json={"email": f"w{time.time_ns()}@example.com", "password": PASSWORD, "name": "W"})
        token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        resp = await http.post("/api/v1/workspaces", json={"name": "W"}, headers=headers)
        ws_id = (await resp.json())["id"]
        resp = await http.post(f"/api/v1/workspaces/{ws_id}/documents", json={"title": "D"}, headers=headers)
        doc = (await resp.json())["id"]
        resp = await http.get("/api/v1/sync/changes?since=now", headers=headers)
        cursor = (await resp.json())["cursor"]

        async def long_poll() -> dict:
            resp = await http.get(f"/api/v1/sync/changes?since={cursor}&wait=30", headers=headers)
            assert resp.status == 200
            return await resp.json()

        poll = asyncio.ensure_future(long_poll())
        socket_ = await http.ws_connect(f"/ws/docs/{doc}?token={token}", heartbeat=None, autoping=True)
        await asyncio.sleep(4.5)  # past the header (1 s) and idle (3 s) timeouts
        assert not poll.done()
        assert not socket_.closed
        # the socket still carries messages, and the poll answers the next change
        await socket_.send_bytes(b"\x03")  # query awareness: the server answers with the states it has
        msg = await socket_.receive(timeout=BOUND)
        assert msg.type == aiohttp.WSMsgType.BINARY
        resp = await http.patch(f"/api/v1/documents/{doc}", json={"title": "renamed"}, headers=headers)
        assert resp.status == 200
        answered = await asyncio.wait_for(poll, BOUND)
        assert answered["changes"], answered
        await socket_.close()

"""Socket keep-alive and credential expiry, each one timer for every socket (collab/keepalive.py):
a client silent for `collab.heartbeat_seconds` is pinged, one that answers nothing is dropped
(its room forgets it), one that answers stays however long it is quiet, a client's own ping is
answered; sockets whose credentials expire at different moments each close at their own."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p
from mdsync.collab.rooms import ROOMS
from tests.builders import expiring_token, make_document, register
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

BEAT = 0.4  # collab.heartbeat_seconds in these tests
BOUND = 10.0


async def next_of(ws, kinds: set, timeout: float = BOUND):
    """The next message of one of `kinds` (others are read past)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type in kinds or msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE,
                                                 aiohttp.WSMsgType.ERROR):
                return msg


@pytest.mark.parametrize("path", ["/ws/docs/{doc}?token={token}", "/ws/hocuspocus"])
async def test_a_client_that_answers_no_ping_is_pinged_then_dropped(make_client, path):
    client = await make_client(collab__heartbeat_seconds=BEAT)
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id, markdown="quiet\n")
    silent = await client.ws_connect(path.format(doc=doc_id, token=alice.access_token),
                                     autoping=False, heartbeat=None)
    if path == "/ws/hocuspocus":   # a document opened on it, then silence
        await silent.send_bytes(p.varbytes(doc_id.encode()) + bytes((p.MSG_AUTH, hp.AUTH_TOKEN))
                                + p.varbytes(alice.access_token.encode()) + p.varbytes(b"4.8.0"))
        assert await eventually(lambda: len(app[ROOMS].connections(doc_id)) == 1, timeout=BOUND)
    # y-websocket: the server's sync step 1 comes first; then, the client saying nothing, a ping
    ping = await next_of(silent, {aiohttp.WSMsgType.PING})
    assert ping.type == aiohttp.WSMsgType.PING
    # unanswered: the server drops the socket, and the room forgets it
    end = await next_of(silent, set())
    assert end.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    assert await eventually(lambda: app[ROOMS].connections(doc_id) == [], timeout=BOUND)
    assert app[ROOMS].pings.dropped >= 1


async def test_a_quiet_client_that_answers_pings_stays_and_still_hears_edits(make_client):
    client = await make_client(collab__heartbeat_seconds=BEAT)
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id, markdown="calm\n")
    quiet = await YClient.connect(client, doc_id, alice.access_token)   # aiohttp answers pings itself
    await quiet.wait_synced()
    await asyncio.sleep(BEAT * 6)   # several heartbeat periods without a message from it
    assert quiet.close_code is None
    assert len(app[ROOMS].connections(doc_id)) == 1
    writer = await YClient.connect(client, doc_id, alice.access_token)
    await writer.wait_synced()
    writer.insert(0, "typed ")
    assert await eventually(lambda: str(quiet.text) == "typed calm\n", timeout=BOUND)
    await writer.close()
    await quiet.close()


async def test_the_server_answers_a_clients_ping(make_client):
    client = await make_client(collab__heartbeat_seconds=30)
    alice = await register(client)
    _, doc_id = await make_document(client.server.app, alice.id, markdown="ping\n")
    for path in (f"/ws/docs/{doc_id}?token={alice.access_token}", "/ws/hocuspocus"):
        ws = await client.ws_connect(path, autoping=False, heartbeat=None)
        await ws.ping(b"are you there")
        pong = await next_of(ws, {aiohttp.WSMsgType.PONG})
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
        await ws.close()


async def test_sockets_close_each_at_their_own_credentials_expiry(client):
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id, markdown="later\n")
    soon, later, gone = (await expiring_token(client, alice, 2), await expiring_token(client, alice, 5),
                         await expiring_token(client, alice, 1))
    first = await YClient.connect(client, doc_id, soon)
    second = await YClient.connect(client, doc_id, later)
    left = await YClient.connect(client, doc_id, gone)
    for sock in (first, second, left):
        await sock.wait_synced()
    await left.close()   # closed before its expiry: its deadline passes by without harm
    assert await first.wait_closed(timeout=15) == 4401
    assert second.close_code is None   # its own credential still runs
    assert await second.wait_closed(timeout=15) == 4401
    assert await eventually(lambda: app[ROOMS].connections(doc_id) == [])

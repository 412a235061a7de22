"""How long a live connection lives: a socket or SSE stream ends when its credential expires
(4401 at `exp`), the ws-ticket store stays bounded, and the connection caps keep one user (or one
share link) from locking a document.

Revocations made by another process (the admin CLI on a running server's data dir) are in
tests/test_admin_changes_live.py.
"""

from __future__ import annotations

import asyncio
import datetime

import pytest

from mdsync import clock
from mdsync.collab import hocuspocus as hp
from mdsync.collab.rooms import ROOMS
from mdsync.collab.socket import TICKETS
from tests.collab_helpers import HPClient, YClient, eventually, make_document
from tests.conftest import bearer, register

EVENTS = "/api/v1/sync/events"


async def ticket(client, doc_id: str, headers: dict) -> str:
    resp = await client.post(f"/api/v1/documents/{doc_id}/ws-ticket", headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["ticket"]


async def personal_token(client, account, seconds: float) -> str:
    expires = clock.now() + datetime.timedelta(seconds=seconds)
    resp = await client.post("/api/v1/me/tokens", json={"name": "short", "expires_at": expires.isoformat()},
                             headers=account.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


async def stream_ends(resp, timeout: float = 10.0) -> bool:
    """Read the SSE stream until it ends (True) or `timeout` passes (False)."""
    try:
        async with asyncio.timeout(timeout):
            while await resp.content.readline():
                pass
        return True
    except TimeoutError:
        return False


# -- item: a token that expires while its socket is open --------------------------------------
async def test_sockets_close_4401_when_their_access_token_expires(make_client):
    client = await make_client(auth__access_token_ttl=2)
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id, markdown="hello\n")
    direct = await YClient.connect(client, doc_id, alice.access_token)
    by_ticket = await YClient.connect(client, doc_id, await ticket(client, doc_id, alice.headers))
    hocus = await HPClient.connect(client)
    await hocus.open(doc_id, alice.access_token)
    await direct.wait_synced()
    await by_ticket.wait_synced()
    await hocus.until(lambda: hocus.auth(doc_id) == (hp.AUTH_OK, "read-write"), "auth")
    # nothing is sent after this: each socket ends on its own at the token's exp
    assert await direct.wait_closed(timeout=15) == 4401
    assert await by_ticket.wait_closed(timeout=15) == 4401  # a ticket lives no longer than its token
    await hocus.until(lambda: hocus._reader.done(), "close", timeout=15)
    assert hocus.close_code == 4401  # the whole socket: the provider reconnects with fresh tokens
    assert await eventually(lambda: app[ROOMS].connections(doc_id) == [])


async def test_expiring_personal_token_ends_its_socket_and_its_event_stream(client):
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id, markdown="pat\n")
    token = await personal_token(client, alice, 3)
    sock = await YClient.connect(client, doc_id, token)
    await sock.wait_synced()
    async with client.get(EVENTS, params={"since": "now"}, headers=bearer(token)) as resp:
        assert resp.status == 200
        assert await stream_ends(resp, timeout=15)
    assert await sock.wait_closed(timeout=15) == 4401
    # a token without expiry keeps its socket: only the expiring one was cut
    lasting = await YClient.connect(client, doc_id, alice.access_token)
    await lasting.wait_synced()
    assert lasting.close_code is None
    await lasting.close()


# -- item: the ws-ticket store is bounded -----------------------------------------------------
async def test_ws_tickets_are_capped_per_user_and_expire_without_piling_up(client):
    viewer, other = await register(client), await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, other.id, markdown="t\n", members={viewer.id: "viewer"})
    tickets = app[TICKETS]
    cap = tickets.per_user
    issued = [await ticket(client, doc_id, viewer.headers) for _ in range(cap + 40)]
    mine = await ticket(client, doc_id, other.headers)
    assert len(tickets) == cap + 1  # one viewer holds at most `cap`; the other user is untouched
    first = await YClient.connect(client, doc_id, issued[0])
    assert await first.wait_closed() == 4401  # the oldest went to make room
    last = await YClient.connect(client, doc_id, issued[-1])
    await last.wait_synced()
    await last.close()
    # expired tickets leave on the next issue
    clock.advance(61)
    await ticket(client, doc_id, other.headers)
    assert len(tickets) == 1
    stale = await YClient.connect(client, doc_id, mine)
    assert await stale.wait_closed() == 4401


async def test_signing_out_drops_the_sessions_unspent_tickets(client):
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id)
    for _ in range(3):
        await ticket(client, doc_id, alice.headers)
    assert len(app[TICKETS]) == 3
    resp = await client.post("/api/v1/auth/logout", headers=alice.headers)
    assert resp.status == 204
    assert len(app[TICKETS]) == 0

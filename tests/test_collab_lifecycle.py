"""How long a live connection lives: a socket or SSE stream ends when its credential expires
(4401 at `exp`), the ws-ticket store stays bounded, and the connection caps keep one user (or one
share link) from locking a document.

Revocations made by another process (the admin CLI on a running server's data dir) are in
tests/test_admin_changes_live.py.
"""

from __future__ import annotations

import asyncio

import pytest

from mdsync import clock
from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p
from mdsync.collab.rooms import ROOMS
from mdsync.collab.socket import TICKETS
from tests.builders import bearer, expiring_token, make_document, register
from tests.hpclient import HPClient
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

EVENTS = "/api/v1/sync/events"


async def ticket(client, doc_id: str, headers: dict) -> str:
    resp = await client.post(f"/api/v1/documents/{doc_id}/ws-ticket", headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["ticket"]


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
    token = await expiring_token(client, alice, 3)
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


# -- item: one viewer cannot lock a document ---------------------------------------------------
LIMITS = {"collab__max_connections_per_document": 12, "collab__max_connections_per_user_per_document": 4,
          "collab__max_connections_per_share_link": 3, "collab__reserved_writer_connections": 4}


async def share_token(client, doc_id: str, owner) -> str:
    resp = await client.post(f"/api/v1/documents/{doc_id}/share-links", json={"role": "viewer"}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


async def opens(client, doc_id: str, token: str | None = None, share: str | None = None) -> YClient:
    """A /ws/docs socket, synced, or closed (its close_code says why)."""
    query = "&".join(part for part in (f"token={token}" if token else "", f"share={share}" if share else "") if part)
    ws = await client.ws_connect(f"/ws/docs/{doc_id}?{query}")
    c = YClient(ws)
    await ws.send_bytes(p.sync_step1(c.doc.get_state()))
    try:
        await asyncio.wait_for(asyncio.shield(c.synced.wait()), 5)
    except TimeoutError:
        pass
    if not c.synced.is_set():
        await c.wait_closed()
    return c


async def test_one_viewer_multiplexing_hocuspocus_sessions_cannot_lock_a_document(make_client):
    client = await make_client(**LIMITS)
    app = client.server.app
    owner, viewer = await register(client), await register(client)
    _, doc_id = await make_document(app, owner.id, markdown="locked?\n", members={viewer.id: "viewer"})
    sockets = [await HPClient.connect(client) for _ in range(4)]
    keys = [(s, f"{doc_id}\0s{n}") for s in sockets for n in range(10)]   # 40 sessions of one viewer
    for s, key in keys:
        await s.open(key, viewer.access_token, sync=False)
    for s, key in keys:
        await s.until(lambda s=s, key=key: s.auth(key) is not None, "an answer")
    answers = [s.auth(key) for s, key in keys]
    assert answers.count((hp.AUTH_OK, "readonly")) == 4   # the viewer's share of the document
    assert answers.count((hp.AUTH_DENIED, "too-many-connections")) == 36
    # the document stays open to everyone else
    editor = await opens(client, doc_id, owner.access_token)
    assert editor.synced.is_set() and editor.close_code is None
    await editor.close()
    for s in sockets:
        await s.close()


async def test_share_link_sockets_count_per_link(make_client):
    client = await make_client(**LIMITS)
    app = client.server.app
    owner = await register(client)
    _, doc_id = await make_document(app, owner.id, markdown="shared\n")
    first, second = await share_token(client, doc_id, owner), await share_token(client, doc_id, owner)
    held = [await opens(client, doc_id, share=first) for _ in range(3)]
    assert all(c.synced.is_set() for c in held)
    refused = await opens(client, doc_id, share=first)
    assert refused.close_code == 1013
    other = await opens(client, doc_id, share=second)   # another link has its own count
    assert other.synced.is_set()
    await held[0].close()
    assert await eventually(lambda: len(app[ROOMS].connections(doc_id)) == 3)
    again = await opens(client, doc_id, share=first)    # a place of that link came free
    assert again.synced.is_set()
    for c in (*held[1:], other, again):
        await c.close()


async def test_read_only_connections_never_take_the_editors_places(make_client):
    client = await make_client(**LIMITS)
    app = client.server.app
    owner, editor = await register(client), await register(client)
    viewers = [await register(client) for _ in range(3)]
    _, doc_id = await make_document(app, owner.id, markdown="room\n",
                                    members={editor.id: "editor", **{v.id: "viewer" for v in viewers}})
    read_only = []
    for v in viewers:
        for _ in range(3):
            read_only.append(await opens(client, doc_id, v.access_token))
    # 12 places, the last 4 for writers: 8 viewers' sockets get in, the 9th does not
    assert [c.synced.is_set() for c in read_only] == [True] * 8 + [False]
    assert read_only[-1].close_code == 1013
    writers = [await opens(client, doc_id, editor.access_token) for _ in range(4)]
    assert all(c.synced.is_set() for c in writers)
    full = await opens(client, doc_id, owner.access_token)
    assert full.close_code == 1013   # the document's own cap still holds
    for c in (*read_only[:8], *writers):
        await c.close()


async def test_a_socket_opened_with_an_expiring_share_link_closes_when_the_link_expires(client):
    owner = await register(client)
    _, doc_id = await make_document(client.server.app, owner.id, markdown="for a while\n")
    resp = await client.post(f"/api/v1/documents/{doc_id}/share-links", json={"role": "viewer", "expires_in": 2},
                             headers=owner.headers)
    assert resp.status == 201, await resp.text()
    guest = await opens(client, doc_id, share=(await resp.json())["token"])
    assert guest.synced.is_set()
    assert await guest.wait_closed(timeout=15) == 4401

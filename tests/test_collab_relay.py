"""Real-time rooms over `/ws/docs/{id}` with an in-process server: relay, awareness, read-only,
persistence, auth close codes, limits, and the upstream defects docs/architecture.md lists (join race, rooms
served before loading, cleanup on cancellation, awareness for joiners and leavers, malformed
frames, large bursts)."""

from __future__ import annotations

import asyncio
import json

import pytest
from pycrdt import Doc, Text

from mdsync.appkeys import DB
from mdsync.collab import protocol as p
from mdsync.collab.room import seed_update
from mdsync.collab.rooms import ROOMS
from tests.builders import make_document, register
from tests.readers import doc_text_in_db
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines


@pytest.fixture
async def collab(make_client):
    """A client whose rooms unload quickly and compact often (small thresholds)."""
    return await make_client(collab__room_grace_seconds=0.2, collab__snapshot_after_updates=50)


async def test_two_writers_converge_and_updates_persist(collab):
    app = collab.server.app
    alice = await register(collab)
    bob = await register(collab)
    _, doc_id = await make_document(app, alice.id, members={bob.id: "editor"})
    a = await YClient.connect(collab, doc_id, alice.access_token)
    b = await YClient.connect(collab, doc_id, bob.access_token)
    await a.wait_synced()
    await b.wait_synced()
    for i in range(200):
        (a if i % 2 else b).insert(0, f"<{i}>")
        if i % 20 == 0:
            await asyncio.sleep(0)
    assert await eventually(lambda: str(a.text) == str(b.text) and len(str(a.text)) > 600)
    expected = str(a.text)
    room = app[ROOMS].loaded(doc_id)
    assert room.text() == expected
    await room.drain()
    assert await doc_text_in_db(app, doc_id) == expected
    await a.close()
    await b.close()
    # the room unloads after the grace period; a new client gets the same text from the database
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is None)
    c = await YClient.connect(collab, doc_id, alice.access_token)
    await c.wait_synced()
    assert await eventually(lambda: str(c.text) == expected)
    await c.close()


async def test_viewer_receives_everything_and_its_edits_go_nowhere(collab):
    app = collab.server.app
    alice = await register(collab)
    viewer = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="hello", members={viewer.id: "viewer"})
    w = await YClient.connect(collab, doc_id, alice.access_token)
    v = await YClient.connect(collab, doc_id, viewer.access_token)
    await w.wait_synced()
    await v.wait_synced()
    assert str(v.text) == "hello"
    w.insert(5, " world")
    assert await eventually(lambda: str(v.text) == "hello world")
    v.insert(0, "VIEWER ")
    await asyncio.sleep(0.3)
    dropped = app[ROOMS].stats.readonly_dropped
    assert dropped >= 1
    assert str(w.text) == "hello world"
    assert app[ROOMS].loaded(doc_id).text() == "hello world"
    await app[ROOMS].loaded(doc_id).drain()
    assert await doc_text_in_db(app, doc_id) == "hello world"
    # awareness of a viewer still flows
    await v.set_awareness(json.dumps({"user": {"name": "viewer"}}))
    assert await eventually(lambda: v.doc.client_id in w.awareness)
    await w.close()
    await v.close()


async def test_seed_is_deterministic_and_never_repeated():
    assert seed_update("# Title\n") == seed_update("# Title\n")
    one, two = Doc(), Doc()
    one.apply_update(seed_update("abc"))
    two.apply_update(seed_update("abc"))
    one.apply_update(two.get_update())
    assert str(one.get("markdown", type=Text)) == "abc"


async def test_markdown_seed_is_stored_once(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="# Seeded\n")
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    assert str(a.text) == "# Seeded\n"
    a.insert(9, "more")
    assert await eventually(lambda: app[ROOMS].loaded(doc_id).text() == "# Seeded\nmore")
    await a.close()
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is None)
    # the markdown column changing later must not re-seed a document that has CRDT state
    await app[DB].write(lambda tx: tx.execute("UPDATE documents SET markdown = 'other' WHERE id = ?", (doc_id,)))
    b = await YClient.connect(collab, doc_id, alice.access_token)
    await b.wait_synced()
    assert str(b.text) == "# Seeded\nmore"
    await b.close()


async def test_awareness_to_joiners_and_removed_on_leave(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    await a.set_awareness(json.dumps({"user": {"name": "Alice"}}))
    # echoed to the sender too (keeps lone y-websocket clients from reconnecting)
    assert await eventually(lambda: a.doc.client_id in a.awareness)
    late = await YClient.connect(collab, doc_id, alice.access_token)
    # the late joiner gets the current states at once, without Alice renewing hers
    assert await eventually(lambda: a.doc.client_id in late.awareness, timeout=2)
    assert json.loads(late.awareness[a.doc.client_id]) == {"user": {"name": "Alice"}}
    await a.close()
    assert await eventually(lambda: a.doc.client_id not in late.awareness, timeout=3)
    assert app[ROOMS].loaded(doc_id).awareness == {}
    # query-awareness is answered
    await late.send_raw(bytes([p.MSG_QUERY_AWARENESS]))
    await asyncio.sleep(0.1)
    await late.close()


async def test_join_race_many_clients_on_a_new_room_all_sync(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="start")
    clients = await asyncio.gather(*(YClient.connect(collab, doc_id, alice.access_token) for _ in range(20)))
    await asyncio.gather(*(c.wait_synced(10) for c in clients))
    assert all(str(c.text) == "start" for c in clients)
    assert len(app[ROOMS].loaded(doc_id).conns) == 20
    await asyncio.gather(*(c.close() for c in clients))


async def test_room_is_loaded_before_any_client_is_served(collab):
    """A client's first message is answered from the persisted state, never from an empty doc."""
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    a.insert(0, "persisted text")
    await eventually(lambda: app[ROOMS].loaded(doc_id).text() == "persisted text")
    await a.close()
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is None)
    clients = await asyncio.gather(*(YClient.connect(collab, doc_id, alice.access_token) for _ in range(5)))
    await asyncio.gather(*(c.wait_synced() for c in clients))
    assert [str(c.text) for c in clients] == ["persisted text"] * 5
    await asyncio.gather(*(c.close() for c in clients))


async def test_cancelled_handlers_still_leave_the_room(aiohttp_client, tmp_path):
    """With handler cancellation on (aiohttp cancels the handler of a dropped connection), the
    room still forgets the socket and its awareness, and unloads once empty."""
    from mdsync.app import create_app
    from tests.builders import make_settings

    settings = make_settings(tmp_path / "cancel", collab__room_grace_seconds=0.2)
    collab = await aiohttp_client(create_app(settings), server_kwargs={"handler_cancellation": True})
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    await a.set_awareness(json.dumps({"n": 1}))
    b = await YClient.connect(collab, doc_id, alice.access_token)
    await b.wait_synced()
    assert await eventually(lambda: a.doc.client_id in b.awareness)
    # drop a's TCP connection without a close handshake
    a.ws._response.connection.transport.abort()
    assert await eventually(lambda: len(app[ROOMS].loaded(doc_id).conns) == 1)
    assert await eventually(lambda: a.doc.client_id not in b.awareness)
    await b.close()
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is None)
    assert app[ROOMS].connections(doc_id) == []


async def test_quick_leave_loses_no_update(collab):
    """SQLiteYStore lost most updates of a client that left right after typing: here every one lands."""
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    for i in range(300):
        a.insert(len(a.text), f"{i};")
    expected = str(a.text)
    await asyncio.sleep(0.05)  # the sends leave the client
    await a.close()
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is None)
    assert await doc_text_in_db(app, doc_id) == expected


async def test_garbage_and_oversized_frames_close_only_that_socket(make_client):
    client = await make_client(limits__max_ws_message_bytes=64 * 1024)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id)
    good = await YClient.connect(client, doc_id, alice.access_token)
    await good.wait_synced()
    cases = [b"\x00\x02\xff\xff\xff", b"\x00\x02\x05abc", b"\x00\x02\x03\x01\x02\x03", b"\x07\x00",
             b"\x01\x05\x01\x01\x01\x01x", b""]
    for frame in cases:
        bad = await YClient.connect(client, doc_id, alice.access_token)
        await bad.wait_synced()
        await bad.send_raw(frame)
        assert await bad.wait_closed() == 1002, frame
    bad = await YClient.connect(client, doc_id, alice.access_token)
    await bad.ws.send_str("hello")
    assert await bad.wait_closed() == 1003
    big = await YClient.connect(client, doc_id, alice.access_token)
    await big.wait_synced()
    await big.send_raw(b"\x00\x02" + p.varbytes(b"x" * 100_000))
    assert await big.wait_closed() == 1009
    stats = app[ROOMS].stats
    assert stats.garbage_frames == len(cases) + 1
    assert stats.oversized_closed == 1
    # the room and the good client go on
    other = await YClient.connect(client, doc_id, alice.access_token)
    await other.wait_synced()
    good.insert(0, "still fine")
    assert await eventually(lambda: str(other.text) == "still fine")
    await good.close()
    await other.close()


async def test_large_burst_is_neither_dropped_nor_stalled(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(collab, doc_id, alice.access_token)
    b = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    await b.wait_synced()
    for i in range(3000):
        a.insert(len(a.text), "x")
    assert await eventually(lambda: len(str(b.text)) == 3000, timeout=20)
    room = app[ROOMS].loaded(doc_id)
    await room.drain()
    assert await doc_text_in_db(app, doc_id) == "x" * 3000
    await a.close()
    await b.close()


async def test_auth_close_codes(collab):
    app = collab.server.app
    alice = await register(collab)
    mallory = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    _, other_doc = await make_document(app, mallory.id)
    for token, document, code in [(None, doc_id, 4401), ("nonsense", doc_id, 4401),
                                  (mallory.access_token, doc_id, 4404),
                                  (alice.access_token, "00000000-0000-4000-8000-000000000000", 4404),
                                  (alice.access_token, other_doc, 4404)]:
        c = await YClient.connect(collab, document, token)
        assert await c.wait_closed() == code, (token, document)


async def test_revoked_session_is_closed_and_its_edits_never_land(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    # a second session of alice, which she signs out of
    resp = await collab.post("/api/v1/auth/login", json={"email": alice.email, "password": alice.password})
    other = (await resp.json())["access_token"]
    a = await YClient.connect(collab, doc_id, other)
    watcher = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    await watcher.wait_synced()
    resp = await collab.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {other}"})
    assert resp.status == 204
    assert await a.wait_closed() == 4401
    a.insert(0, "after revocation")
    await asyncio.sleep(0.2)
    assert str(watcher.text) == ""
    await watcher.close()


async def test_ticket_is_single_use(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="t")
    resp = await collab.post(f"/api/v1/documents/{doc_id}/ws-ticket", headers=alice.headers)
    assert resp.status == 201
    ticket = (await resp.json())["ticket"]
    c = await YClient.connect(collab, doc_id, ticket)
    await c.wait_synced()
    assert str(c.text) == "t"
    again = await YClient.connect(collab, doc_id, ticket)
    assert await again.wait_closed() == 4401
    await c.close()


async def test_server_side_edit_reaches_clients_and_log(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="abc")
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    async with app[ROOMS].use(doc_id) as room:
        room.edit(lambda text: text.insert(3, "def"), alice.id)
        assert room.text() == "abcdef"
        await room.drain()
    assert await eventually(lambda: str(a.text) == "abcdef")
    assert await doc_text_in_db(app, doc_id) == "abcdef"
    assert [u["user_id"] for u in app[ROOMS].presence(doc_id)] == [alice.id]
    await a.close()


async def test_connection_limits(make_client):
    client = await make_client(collab__max_connections_per_document=2)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(client, doc_id, alice.access_token)
    b = await YClient.connect(client, doc_id, alice.access_token)
    await a.wait_synced()
    await b.wait_synced()
    c = await YClient.connect(client, doc_id, alice.access_token)
    assert await c.wait_closed() == 1013
    await a.close()
    await b.close()


async def test_removed_member_is_closed_and_lowered_role_becomes_read_only(collab):
    app = collab.server.app
    owner = await register(collab)
    bob = await register(collab)
    carol = await register(collab)
    ws_id, doc_id = await make_document(app, owner.id, members={bob.id: "editor", carol.id: "editor"})
    watcher = await YClient.connect(collab, doc_id, owner.access_token)
    b = await YClient.connect(collab, doc_id, bob.access_token)
    c = await YClient.connect(collab, doc_id, carol.access_token)
    for x in (watcher, b, c):
        await x.wait_synced()
    resp = await collab.delete(f"/api/v1/workspaces/{ws_id}/members/{bob.id}", headers=owner.headers)
    assert resp.status == 204
    assert await b.wait_closed() == 4403
    b.insert(0, "bob after removal")
    # carol is lowered to viewer: her socket stays open but her edits stop landing
    resp = await collab.patch(f"/api/v1/workspaces/{ws_id}/members/{carol.id}", json={"role": "viewer"},
                              headers=owner.headers)
    assert resp.status == 200
    assert await eventually(lambda: all(conn.read_only for conn in app[ROOMS].connections(doc_id)
                                        if conn.user_id == carol.id))
    c.insert(0, "carol as viewer")
    await asyncio.sleep(0.3)
    assert str(watcher.text) == ""
    assert app[ROOMS].loaded(doc_id).text() == ""
    assert not c.ws.closed
    await watcher.close()
    await c.close()


async def test_metrics_show_rooms_and_updates(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()
    a.insert(0, "counted")
    await eventually(lambda: app[ROOMS].stats.updates >= 1)
    resp = await collab.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert "mdsync_collab_rooms 1.0" in text
    assert "mdsync_collab_connections 1.0" in text
    assert "mdsync_collab_updates_total 1.0" in text
    await a.close()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
async def test_prebuilt_frames_reach_the_client_intact(collab, size):
    """Connection.send writes protocol.ws_frame bytes straight to the transport: check the framing
    at every length boundary with a real WebSocket client."""
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    ws = await collab.ws_connect(f"/ws/docs/{doc_id}?token={alice.access_token}", max_msg_size=1 << 22)
    first = await ws.receive(timeout=5)  # the server's sync step 1
    assert first.data[:2] == b"\x00\x00"
    conn = app[ROOMS].connections(doc_id)[0]
    assert conn.transport is not None  # the direct path is in use, not the fallback
    payload = bytes(i % 251 for i in range(size))
    conn.send(p.ws_frame(payload))
    conn.send(p.ws_frame(b"after"))
    msg = await ws.receive(timeout=5)
    assert msg.type.name == "BINARY" and msg.data == payload
    assert (await ws.receive(timeout=5)).data == b"after"
    await ws.close()


async def test_frames_of_one_loop_turn_reach_each_peer_in_order_without_its_own(collab):
    """Updates accepted in one loop turn go out together at its end (one write per peer): each
    peer still gets every update but its own, in order, and a frame sent to it directly in the
    same turn comes after them."""
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id)
    sockets = []
    for _ in range(2):
        ws = await collab.ws_connect(f"/ws/docs/{doc_id}?token={alice.access_token}")
        assert (await ws.receive(timeout=5)).data[:2] == b"\x00\x00"  # the server's sync step 1
        sockets.append(ws)
    await eventually(lambda: len(app[ROOMS].connections(doc_id)) == 2)
    first, second = sorted(app[ROOMS].connections(doc_id), key=lambda c: c.connected_at)
    room = first.room
    source = Doc()
    text = source.get("markdown", type=Text)
    frames = []
    for word in ("one ", "two "):
        before = source.get_state()
        text += word
        frames.append(p.update_message(source.get_update(before)))
    # all in one turn: two updates from the first socket, one server edit, then a direct frame
    room.receive(first, frames[0])
    room.receive(first, frames[1])
    room.edit(lambda t: t.insert(len(str(t)), "four"))
    second.send(p.ws_frame(b"direct"))
    first.send(p.ws_frame(b"direct"))

    async def received(ws, n):
        return [(await ws.receive(timeout=5)).data for _ in range(n)]

    got_first = await received(sockets[0], 2)
    got_second = await received(sockets[1], 4)
    assert got_second[:2] == frames[:2] and got_second[3] == b"direct"
    assert got_first[1] == b"direct" and got_first[0] == got_second[2]  # the edit, not its own updates
    check = Doc()
    for message in got_second[:3]:
        check.apply_update(p.sync_payload(message)[1])
    assert str(check.get("markdown", type=Text)) == "one two four"
    for ws in sockets:
        await ws.close()


async def test_a_peer_that_reads_late_gets_every_frame_in_order(make_client):
    """Frames go to the socket directly while its transport holds nothing, through the transport
    once the kernel stops taking them (a peer that does not read): the peer, reading again, gets
    every frame in order and ends with the writer's text."""
    client = await make_client(collab__slow_peer_bytes=64 << 20, collab__slow_peer_seconds=60)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id)
    writer = await YClient.connect(client, doc_id, alice.access_token)
    late = await YClient.connect(client, doc_id, alice.access_token)
    await writer.wait_synced()
    await late.wait_synced()
    conns = app[ROOMS].loaded(doc_id).conns
    assert all(conn.fd is not None for conn in conns)  # the direct write is what is tested here
    late.ws._response.connection.transport.pause_reading()
    held, sent, more = 0, 0, 20
    while more and sent < 600:  # until the transport held some for a while (the kernel's buffers are full)
        writer.insert(len(str(writer.text)), f"<{sent}>" + "z" * 30_000)
        sent += 1
        await asyncio.sleep(0.002)
        held = max(held, max(conn.transport.get_write_buffer_size() for conn in conns))
        more -= held > 0
    assert held > 0
    late.ws._response.connection.transport.resume_reading()
    for _ in range(40):  # while the transport drains: the kernel takes bytes again, the transport holds some
        writer.insert(len(str(writer.text)), f"<{sent}>" + "z" * 30_000)
        sent += 1
        await asyncio.sleep(0)
    assert await eventually(lambda: str(late.text) == str(writer.text), timeout=30)
    assert all(f"<{i}>" in str(late.text) for i in range(sent))
    await writer.close()
    await late.close()


async def test_slow_peer_is_closed_and_the_room_goes_on(make_client):
    client = await make_client(collab__slow_peer_bytes=65536, collab__slow_peer_seconds=0.3)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id)
    writer = await YClient.connect(client, doc_id, alice.access_token)
    reader = await YClient.connect(client, doc_id, alice.access_token)
    await writer.wait_synced()
    await reader.wait_synced()
    # a peer that never reads: its socket buffers fill up
    stuck = await client.ws_connect(f"/ws/docs/{doc_id}?token={alice.access_token}")
    stuck._response.connection.transport.pause_reading()
    chunk = "y" * 20_000
    for i in range(400):
        writer.insert(0, chunk)
        if i % 10 == 0:
            await asyncio.sleep(0.01)
        if app[ROOMS].stats.slow_closed:
            break
    assert await eventually(lambda: app[ROOMS].stats.slow_closed == 1, timeout=10)
    assert await eventually(lambda: len(app[ROOMS].loaded(doc_id).conns) == 2, timeout=10)
    n = len(str(writer.text))
    assert await eventually(lambda: len(str(reader.text)) == n, timeout=20)
    stuck._response.connection.transport.abort()
    await writer.close()
    await reader.close()


async def test_share_link_socket_is_read_only_and_closed_when_revoked(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="shared text")
    resp = await collab.post(f"/api/v1/documents/{doc_id}/share-links", json={"role": "viewer"}, headers=alice.headers)
    assert resp.status == 201, await resp.text()
    link = await resp.json()
    ws = await collab.ws_connect(f"/ws/docs/{doc_id}?share={link['token']}")
    anon = YClient(ws)
    await ws.send_bytes(p.sync_step1(anon.doc.get_state()))
    await anon.wait_synced()
    assert str(anon.text) == "shared text"
    anon.insert(0, "anonymous ")
    await asyncio.sleep(0.2)
    assert app[ROOMS].loaded(doc_id).text() == "shared text"
    resp = await collab.delete(f"/api/v1/documents/{doc_id}/share-links/{link['id']}", headers=alice.headers)
    assert resp.status == 204
    assert await anon.wait_closed() == 4403
    bad = await collab.ws_connect(f"/ws/docs/{doc_id}?share=nonsense")
    msg = await bad.receive(timeout=5)
    assert bad.close_code == 4401, msg


async def test_personal_access_tokens_open_sockets_and_read_scope_is_read_only(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="pat")
    tokens = {}
    for scopes in (["read"], ["read", "write"]):
        resp = await collab.post("/api/v1/me/tokens", json={"name": "t", "scopes": scopes}, headers=alice.headers)
        assert resp.status == 201, await resp.text()
        tokens[len(scopes)] = (await resp.json())["token"]
    reader = await YClient.connect(collab, doc_id, tokens[1])
    writer = await YClient.connect(collab, doc_id, tokens[2])
    await reader.wait_synced()
    await writer.wait_synced()
    reader.insert(0, "read-scope ")
    writer.insert(3, "!")
    assert await eventually(lambda: str(reader.text) == "read-scope pat!")
    await asyncio.sleep(0.1)
    assert app[ROOMS].loaded(doc_id).text() == "pat!"
    await reader.close()
    await writer.close()


async def test_compaction_keeps_updates_waiting_for_their_dependencies(make_client):
    """yrs leaves updates with missing dependencies out of get_update(): compaction must carry them
    over, or a snapshot would silently drop them."""
    client = await make_client(collab__snapshot_after_updates=2, collab__room_grace_seconds=0.1,
                               collab__flush_delay_seconds=0)
    app = client.server.app
    alice = await register(client)
    _, doc_id = await make_document(app, alice.id)
    source = Doc()
    text = source.get("markdown", type=Text)
    updates = []
    source.observe(lambda event: updates.append(event.update))
    for word in ("one ", "two ", "three ", "four"):
        text.insert(len(text), word)
    async with app[ROOMS].use(doc_id) as room:
        room.apply_update(updates[0], alice.id)
        room.apply_update(updates[2], alice.id)  # needs updates[1]: waits inside the doc
        room.apply_update(updates[3], alice.id)
        await room.drain()
        assert room.text() == "one "
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is None)
    assert app[ROOMS].stats.compactions >= 1
    assert await app[DB].value("SELECT COUNT(*) FROM doc_snapshots WHERE document_id = ?", (doc_id,)) == 1
    async with app[ROOMS].use(doc_id) as room:
        room.apply_update(updates[1], alice.id)
        assert room.text() == "one two three four"


async def test_server_edit_that_raises_still_reaches_clients(collab):
    app = collab.server.app
    alice = await register(collab)
    _, doc_id = await make_document(app, alice.id, markdown="abc")
    a = await YClient.connect(collab, doc_id, alice.access_token)
    await a.wait_synced()

    def half_done(text):
        text.insert(0, "X")
        raise RuntimeError("failed halfway")

    async with app[ROOMS].use(doc_id) as room:
        with pytest.raises(RuntimeError):
            room.edit(half_done, alice.id)
        assert room.text() == "Xabc"
        assert room.edit(lambda text: None) is None
    assert await eventually(lambda: str(a.text) == "Xabc")
    await a.close()

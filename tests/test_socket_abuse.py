"""Abuse of `/ws/docs/{id}` beyond what tests/test_collab_relay.py covers (it has: a few garbage
frames → 1002, a text frame → 1003, one oversized message → 1009, the per-document connection
limit → 1013). Here: truncated varints at every position, seeded random frames, a huge awareness
state, an over-limit message and a valid Yjs update that would grow the document past
limits.max_document_bytes, bounded connect/disconnect loops, and more sockets from one user than
collab.max_connections_per_user allows.

In every case a writer and a second raw client stay in the room: only the offending socket
closes, the two keep syncing, the server keeps answering, and everything accepted before (and
after) is in the update log.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from pycrdt import Doc, Text

from mdsync.appkeys import SETTINGS
from mdsync.collab import protocol as p
from mdsync.collab.rooms import ROOMS
from tests.builders import make_document, register
from tests.readers import doc_text_in_db
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

KB = 1024
WS_LIMIT = 256 * KB
DOC_LIMIT = 64 * KB
ABUSE_CODES = {1002, 1003, 1009}  # malformed, unsupported, too big: never 1011 (internal error)


@pytest.fixture
async def room(make_client):
    """A server with small limits, a document, and two healthy clients in its room."""
    client = await make_client(limits__max_ws_message_bytes=WS_LIMIT, limits__max_document_bytes=DOC_LIMIT,
                               collab__max_connections_per_user=4, collab__room_grace_seconds=0.2)
    owner = await register(client)
    _, doc_id = await make_document(client.server.app, owner.id)
    writer = await YClient.connect(client, doc_id, owner.access_token)
    # the watcher is a second raw client of the same user: the per-user limit test counts both
    watcher = await YClient.connect(client, doc_id, owner.access_token)
    await writer.wait_synced()
    await watcher.wait_synced()
    state = Room(client, owner, doc_id, writer, watcher)
    yield state
    for c in (state.writer, state.watcher):
        await c.close()


class Room:
    def __init__(self, client, owner, doc_id, writer, watcher):
        self.client, self.owner, self.doc_id = client, owner, doc_id
        self.writer, self.watcher = writer, watcher
        self.typed: list[str] = []

    async def still_syncing(self, label: str) -> None:
        """The writer types; the watcher sees it; the server answers HTTP; the log has it all."""
        chunk = f"[{label}]"
        self.writer.insert(len(str(self.writer.text)), chunk)
        self.typed.append(chunk)
        expected = "".join(self.typed)
        assert await eventually(lambda: str(self.watcher.text) == expected), (label, str(self.watcher.text))
        assert self.writer.close_code is None and self.watcher.close_code is None, label
        assert (await self.client.get("/healthz")).status == 200
        app = self.client.server.app
        # committed, not only handed to the writer (a PostgreSQL commit takes a round trip longer)
        assert await eventually(lambda: app[ROOMS].rooms.get(self.doc_id) is None
                                or app[ROOMS].rooms[self.doc_id].saved_seq() >= app[ROOMS].rooms[self.doc_id].seq,
                                timeout=5)
        assert await doc_text_in_db(app, self.doc_id) == expected, label

    async def offender(self) -> YClient:
        c = await YClient.connect(self.client, self.doc_id, self.owner.access_token)
        await c.wait_synced()
        return c


def truncations(message: bytes) -> list[bytes]:
    return [message[:i] for i in range(1, len(message))]


async def test_truncated_messages_close_only_that_socket(room):
    await room.still_syncing("before")
    update = Doc()
    update.get("markdown", type=Text).insert(0, "never lands")
    messages = [
        p.update_message(update.get_update()),
        p.sync_step1(Doc().get_state()),
        p.awareness_message([(123456789, 3, json.dumps({"user": {"name": "x"}}))]),
    ]
    frames = {frame for m in messages for frame in truncations(m)}
    # varints cut in the middle of a continuation byte, at the type, inner type and length
    frames |= {b"\x80", b"\x00\x80", b"\x00\x02\x80", b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
               b"\x01\x80", b"\x01\x01\x80\x80", b"\x00\x00\xff"}
    closed = 0
    for frame in sorted(frames, key=len):
        bad = await room.offender()
        await bad.send_raw(frame)
        # a prefix may be a complete (if odd) message; then the socket may stay: never a 1011
        try:
            code = await bad.wait_closed(timeout=0.5)
        except TimeoutError:
            code = None
            await bad.close()
        assert code is None or code in ABUSE_CODES, (frame, code)
        closed += code is not None
    assert closed >= len(frames) - 3
    await room.still_syncing("after truncations")
    assert "never lands" not in await doc_text_in_db(room.client.server.app, room.doc_id)


async def test_seeded_random_frames_close_only_that_socket(room):
    rng = random.Random(20261129)
    for i in range(40):
        bad = await room.offender()
        kind = rng.choice([b"\x00", b"\x01", b"\x02", b"\x03", b""])
        frame = kind + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        await bad.send_raw(frame or b"\xff")
        try:
            code = await bad.wait_closed(timeout=0.3)
        except TimeoutError:
            code = None
            await bad.close()
        assert code is None or code in ABUSE_CODES, (frame, code)
    await room.still_syncing("after random frames")


async def test_text_frames_and_binary_after_close_are_harmless(room):
    bad = await room.offender()
    await bad.ws.send_str(json.dumps({"type": "sync", "data": "x" * 1000}))
    assert await bad.wait_closed() == 1003
    await room.still_syncing("after text")


async def test_huge_awareness_state_is_refused_and_not_relayed(room):
    """An awareness state is a user's name, colour and cursor: a few hundred bytes. One of
    100 KB (under the message limit) would be stored in the room and sent to every peer and
    every joiner: it closes that socket instead, and the peers never receive it."""
    await room.still_syncing("before")
    bad = await room.offender()
    huge = json.dumps({"user": {"name": "x" * (100 * KB)}})
    await bad.set_awareness(huge)
    assert await bad.wait_closed() in ABUSE_CODES
    await asyncio.sleep(0.1)
    assert all(len(s) < 10 * KB for s in room.watcher.awareness.values())
    joiner = await room.offender()
    await asyncio.sleep(0.1)
    assert all(len(s) < 10 * KB for s in joiner.awareness.values())
    await joiner.close()
    # an ordinary state still goes through
    await room.writer.set_awareness(json.dumps({"user": {"name": "Ada", "color": "#f00"}}))
    assert await eventually(lambda: room.writer.doc.client_id in room.watcher.awareness)
    await room.still_syncing("after awareness")


async def test_message_over_the_ws_limit_is_1009_and_the_room_goes_on(room):
    await room.still_syncing("before")
    bad = await room.offender()
    await bad.send_raw(b"\x00\x02" + p.varbytes(b"x" * (WS_LIMIT + 1)))
    assert await bad.wait_closed() == 1009
    await room.still_syncing("after oversized")


async def test_valid_update_past_the_document_limit_is_1009_and_not_stored(room):
    await room.still_syncing("before")
    bad = await room.offender()
    big = "y" * (DOC_LIMIT + KB)  # under the message limit, over the document limit
    bad.insert(0, big)
    assert await bad.wait_closed() == 1009
    await asyncio.sleep(0.2)
    assert "yyyy" not in str(room.watcher.text)
    await room.still_syncing("after too-large update")
    assert "yyyy" not in await doc_text_in_db(room.client.server.app, room.doc_id)


async def test_rapid_connect_disconnect_loses_nothing(room):
    await room.still_syncing("before")
    app = room.client.server.app
    for i in range(30):
        c = await YClient.connect(room.client, room.doc_id, room.owner.access_token)
        if i % 3 == 0:
            await c.ws.close()  # before the server's sync step 2
            continue
        await c.wait_synced()
        if i % 3 == 1:
            chunk = f"<{i}>"
            c.insert(len(str(c.text)), chunk)
            room.typed.append(chunk)
            # accepted = relayed to the watcher; then leave at once
            expected = "".join(room.typed)
            assert await eventually(lambda: str(room.watcher.text) == expected), i
        await c.ws.close()
    # every churned socket has left the room: only the writer and the watcher remain
    assert await eventually(lambda: len(app[ROOMS].rooms[room.doc_id].conns) == 2)
    await room.still_syncing("after churn")


async def test_sockets_beyond_the_per_user_limit_are_refused_alone(room):
    # the fixture's two clients are the owner's: the limit is 4, two more fit
    extra = [await room.offender() for _ in range(2)]
    refused = await YClient.connect(room.client, room.doc_id, room.owner.access_token)
    assert await refused.wait_closed() == 1013
    await room.still_syncing("at the limit")
    for c in extra:
        await c.close()
    # freed slots can be used again
    again = await room.offender()
    await room.still_syncing("after the limit")
    await again.close()


async def test_bad_tokens_are_4401_and_the_room_goes_on(room):
    """Every forged, expired, revoked or wrong-kind token on the socket: 4401 before anything is
    served, while the room's clients keep syncing."""
    from mdsync import clock
    from tests.builders import bad_tokens

    tokens = bad_tokens(room.owner)
    login = await (await room.client.post("/api/v1/auth/login", json={"email": room.owner.email,
                                                                      "password": room.owner.password})).json()
    assert (await room.client.post("/api/v1/auth/logout",
                                   headers={"Authorization": f"Bearer {login['access_token']}"})).status == 204
    tokens["logged out"] = login["access_token"]
    tokens["empty"] = ""
    for label, token in tokens.items():
        ws = await room.client.ws_connect(f"/ws/docs/{room.doc_id}?token={token}")
        msg = await ws.receive(timeout=10)
        assert msg.type.name in ("CLOSE", "CLOSED"), (label, msg)
        assert ws.close_code == 4401, (label, ws.close_code)
    await room.still_syncing("after bad tokens")
    # an access token past its exp: refused on connect
    clock.advance(room.client.server.app[SETTINGS].auth.access_token_ttl + 1)
    ws = await room.client.ws_connect(f"/ws/docs/{room.doc_id}?token={room.owner.access_token}")
    await ws.receive(timeout=10)
    assert ws.close_code == 4401


async def test_a_ticket_opens_only_its_document_and_only_within_60_s(room):
    from mdsync import clock

    app = room.client.server.app
    _, other_doc = await make_document(app, room.owner.id, markdown="other")

    async def ticket_for(doc_id: str) -> str:
        resp = await room.client.post(f"/api/v1/documents/{doc_id}/ws-ticket", headers=room.owner.headers)
        assert resp.status == 201
        return (await resp.json())["ticket"]

    for_other = await ticket_for(other_doc)
    wrong = await YClient.connect(room.client, room.doc_id, for_other)
    assert await wrong.wait_closed() == 4401
    stale = await ticket_for(room.doc_id)
    clock.advance(61)
    late = await YClient.connect(room.client, room.doc_id, stale)
    assert await late.wait_closed() == 4401
    await room.still_syncing("after ticket misuse")


async def test_hocuspocus_socket_garbage_closes_only_that_socket(room):
    """/ws/hocuspocus shares the rooms: garbage, truncations and oversized frames there close
    that socket (never 1011), and the room's y-websocket clients keep syncing."""
    rng = random.Random(7)
    doc = room.doc_id.encode()
    key = p.varbytes(doc)
    auth = key + b"\x02\x00" + p.varbytes(room.owner.access_token.encode()) + p.varbytes(b"4.0.0")
    frames = [b"", b"\x80", key, key + b"\x80", key + b"\x00", key + b"\x00\x02\x80", key + b"\x63",
              auth[: len(auth) // 2], p.varbytes(b"\xff\xfe") + b"\x00\x00\x00"]
    frames += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 80))) for _ in range(20)]
    frames.append(key + b"\x00\x02" + p.varbytes(b"x" * (WS_LIMIT + 1)))
    for frame in frames:
        ws = await room.client.ws_connect("/ws/hocuspocus", max_msg_size=1 << 22)
        await ws.send_bytes(auth)
        await ws.send_bytes(frame)
        try:
            while True:
                msg = await ws.receive(timeout=0.5)
                if msg.type.name in ("CLOSE", "CLOSED", "CLOSING", "ERROR"):
                    break
            code = ws.close_code
        except TimeoutError:
            # not closed (yet: a loaded machine): aiohttp's client marks its own receive timeout
            # 1006, which is not the server's doing
            code = None
        await ws.close()
        assert code in (None, *ABUSE_CODES), (frame[:40], code)
    await room.still_syncing("after hocuspocus garbage")

"""How the server reads a socket's messages (collab/socket.py `FrameQueue`): what a client sends
before the server has joined it to its room is handled first, in order, then every binary
message goes to the room as it is read (no task wake-up per message). Order, convergence and the
answers to garbage must be the same on both sides of that switch, for both socket kinds."""

from __future__ import annotations

import pytest
from pycrdt import Doc, Text

from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p
from mdsync.collab.rooms import ROOMS
from mdsync.collab.socket import FrameQueue
from tests.builders import make_document, register
from tests.hpclient import HPClient
from tests.readers import content
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines


def typed(doc: Doc, text: Text, chunks: list[str]) -> list[bytes]:
    """One Yjs update per chunk, each appended at the end."""
    out: list[bytes] = []
    sub = doc.observe(lambda event: out.append(event.update))
    for chunk in chunks:
        text.insert(len(text), chunk)
    doc.unobserve(sub)
    return out


async def test_messages_sent_before_and_after_the_room_joins_land_in_order(client):
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id)
    doc = Doc()
    text = doc.get("markdown", type=Text)
    early = typed(doc, text, [f"{i}," for i in range(30)])
    ws = await client.ws_connect(f"/ws/docs/{doc_id}?token={alice.access_token}")
    # all at once, while the server still authorizes and loads the room: they wait in the queue
    for update in early:
        await ws.send_bytes(p.update_message(update))
    late = typed(doc, text, [f"{i}." for i in range(30, 60)])
    for update in late:
        await ws.send_bytes(p.update_message(update))
    expected = str(text)
    assert await eventually(lambda: app[ROOMS].loaded(doc_id) is not None
                            and app[ROOMS].loaded(doc_id).text() == expected)
    # and the short cut is in effect from then on: a later message is read straight into the room
    (conn,) = app[ROOMS].connections(doc_id)
    queue = conn.ws._reader  # noqa: SLF001
    assert isinstance(queue, FrameQueue) and queue.direct is not None
    more = typed(doc, text, ["!"])
    await ws.send_bytes(p.update_message(more[0]))
    assert await eventually(lambda: app[ROOMS].loaded(doc_id).text() == expected + "!")
    await ws.close()
    markdown, _ = await content(client, alice, doc_id)
    assert markdown == expected + "!"


async def test_garbage_read_straight_into_the_room_closes_only_that_socket(client):
    alice = await register(client)
    app = client.server.app
    _, doc_id = await make_document(app, alice.id, markdown="calm\n")
    bad, good = (await YClient.connect(client, doc_id, alice.access_token),
                 await YClient.connect(client, doc_id, alice.access_token))
    await bad.wait_synced()
    await good.wait_synced()
    bad.insert(0, "ok ")   # a good update first, then garbage
    assert await eventually(lambda: str(good.text) == "ok calm\n")
    await bad.send_raw(bytes((p.MSG_SYNC, p.SYNC_UPDATE)) + p.varbytes(b"\xff\xff\xff\xff\xff"))
    assert await bad.wait_closed() == 1002
    good.insert(0, "still ")
    assert await eventually(lambda: app[ROOMS].loaded(doc_id).text() == "still ok calm\n")
    assert good.close_code is None
    await good.close()


async def test_hocuspocus_documents_opened_at_once_sync_and_relay(client):
    alice = await register(client)
    app = client.server.app
    ids = [(await make_document(app, alice.id, markdown=f"doc {i}\n"))[1] for i in range(3)]
    first, second = await HPClient.connect(client), await HPClient.connect(client)
    for hpc in (first, second):
        for doc_id in ids:   # no waiting between them: some arrive while others authenticate
            await hpc.open(doc_id, alice.access_token)
    for hpc in (first, second):
        for doc_id in ids:
            await hpc.until(lambda h=hpc, d=doc_id: h.auth(d) == (hp.AUTH_OK, "read-write"), "auth")
    for i, doc_id in enumerate(ids):
        await first.edit(doc_id, 0, f"{i}:")
    for i, doc_id in enumerate(ids):
        await second.until(lambda d=doc_id, i=i: str(second.text(d)) == f"{i}:doc {i}\n", "relay")

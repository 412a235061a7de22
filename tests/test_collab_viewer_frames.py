"""A read-only Hocuspocus client's updates are dropped at a cost in proportion to the message,
never to the document (issue 14 item 11: 100 sync step-2 frames of 47 bytes, a delete set only,
from one viewer froze a server holding a ~1 MB document for 3.6 s, the whole document encoded
and applied to a copy for each).

Measured as the bytes pycrdt encodes while the server handles those frames (no clock involved):
at most one read of the document's delete set, never a whole document per frame. The acks stay
as Hocuspocus gives them: 1 for a step 2 holding nothing new, 0 for anything else.
"""

from __future__ import annotations

import random

import pytest
from pycrdt import Doc, Text

from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p
from mdsync.collab import updates
from mdsync.collab.etags import state_etag
from mdsync.collab.room import SEED_CLIENT_ID, Room
from mdsync.collab.rooms import ROOMS
from tests.builders import make_document, register
from tests.hpclient import HPClient

pytestmark = pytest.mark.both_engines

LINE = "a line of the document, long enough to make it weigh something\n"


async def test_a_viewers_frames_cost_nothing_in_proportion_to_the_document(client, monkeypatch):
    app = client.server.app
    owner, viewer = await register(client), await register(client)
    markdown = LINE * (1_000_000 // len(LINE))
    _, doc_id = await make_document(app, owner.id, markdown=markdown, members={viewer.id: "viewer"})
    # deletions all over the document: its delete set is not empty, as in any edited document
    edited = "".join(line if i % 50 else "changed\n" for i, line in enumerate(markdown.splitlines(True)))
    resp = await client.put(f"/api/v1/documents/{doc_id}/content", data=edited,
                            headers={**owner.headers, "Content-Type": "text/markdown"})
    assert resp.status == 200, await resp.text()
    room = app[ROOMS].loaded(doc_id)
    size = len(room.encode_state())
    assert size > 900_000

    c = await HPClient.connect(client)
    await c.open(doc_id, viewer.access_token)
    await c.until(lambda: str(c.text(doc_id)) == edited and c.statuses(doc_id) == [1], "sync", timeout=30)
    assert c.auth(doc_id) == (hp.AUTH_OK, "readonly")

    encoded = []
    get_update = Doc.get_update

    def counting(self, state=None):
        out = get_update(self, state) if state is not None else get_update(self)
        encoded.append(len(out))
        return out

    deleted = delete_set(room.doc.get_update(room.doc.get_state()))[SEED_CLIENT_ID]
    alive = 0  # the first clock of the seed that the document has not deleted
    for start, end in sorted(deleted):
        if alive < start:
            break
        alive = max(alive, end)

    monkeypatch.setattr(Doc, "get_update", counting)
    # 100 step 2 frames of ~50 bytes: a delete set only, naming characters of the seed that the
    # document has not deleted
    for i in range(100):
        update = deletion(SEED_CLIENT_ID, alive)
        frame = p.varbytes(doc_id.encode()) + p.sync_step2(update)
        assert len(frame) < 64
        await c.ws.send_bytes(frame)
    await c.until(lambda: len(c.statuses(doc_id)) == 101, "100 acks", timeout=60)
    monkeypatch.undo()
    assert c.statuses(doc_id)[1:] == [0] * 100   # never applied: something new, refused
    assert sum(encoded) < size, f"{sum(encoded)} bytes encoded for {size} bytes of document"
    assert room.text() == edited

    # a viewer's usual step 2 (what it holds, all known) is still acked as applied
    await c.send(doc_id, p.sync_step2(c.docs[doc_id].get_update()))
    await c.until(lambda: len(c.statuses(doc_id)) == 102, "ack")
    assert c.statuses(doc_id)[-1] == 1
    # ... and a deletion it names that the document has made too
    await c.send(doc_id, p.sync_step2(deletion(SEED_CLIENT_ID, sorted(deleted)[0][0])))
    await c.until(lambda: len(c.statuses(doc_id)) == 103, "ack")
    assert c.statuses(doc_id)[-1] == 1
    await c.close()


def deletion(client: int, clock: int) -> bytes:
    """A v1 update without structs whose delete set names one item."""
    return p.varuint(0) + p.varuint(1) + p.varuint(client) + p.varuint(1) + p.varuint(clock) + p.varuint(1)


def delete_set(update: bytes) -> dict[int, list[tuple[int, int]]]:
    """The (start, end) ranges of an update that carries no structs (`get_update(own state)`)."""
    clients, pos = p.read_varuint(update, 0)
    assert clients == 0
    out = {}
    count, pos = p.read_varuint(update, pos)
    for _ in range(count):
        client, pos = p.read_varuint(update, pos)
        n, pos = p.read_varuint(update, pos)
        for _ in range(n):
            start, pos = p.read_varuint(update, pos)
            length, pos = p.read_varuint(update, pos)
            out.setdefault(client, []).append((start, start + length))
    return out


async def test_has_all_agrees_with_applying_the_update_to_a_copy():
    """Room.has_all (clocks and delete set, read once per change) says True exactly when applying
    the update to a copy of the document would change nothing, on random edits and deletions."""
    rand = random.Random(5)
    base = Doc(client_id=1)
    text = base.get("markdown", type=Text)
    text += "".join(rand.choice("abcdef \n") for _ in range(400))
    room = Room(None, "d", base, seq=0, snapshot_bytes=0, log_updates=[])
    peer = Doc(client_id=2)
    peer.apply_update(base.get_update())
    answers = set()
    for round_ in range(300):
        choice = rand.random()
        if choice < 0.3:  # the server's document moves on (deletions and inserts of its own)
            with base.transaction():
                at = rand.randrange(max(1, len(text) - 5))
                del text[at:at + rand.randint(1, 5)]
                text.insert(rand.randrange(len(text)), "x")
            room.seq += 1
            candidate = base.get_update()
        elif choice < 0.6:  # a peer's step 2: what it holds, known or not
            if rand.random() < 0.5:
                peer.apply_update(base.get_update(peer.get_state()))
            if rand.random() < 0.3:
                ptext = peer.get("markdown", type=Text)
                at = rand.randrange(max(1, len(ptext) - 3))
                del ptext[at:at + 2]
            candidate = peer.get_update(base.get_state())
        else:  # a bare delete set naming random items of the seed
            start = rand.randrange(400)
            candidate = p.varuint(0) + p.varuint(1) + p.varuint(1) + p.varuint(1) + p.varuint(start) \
                + p.varuint(rand.randint(1, 6))
        probe = Doc()
        probe.apply_update(base.get_update())
        before = state_etag(probe)
        probe.apply_update(candidate)
        expected = state_etag(probe) == before
        assert room.has_all(updates.check(candidate)) == expected, (round_, candidate.hex())
        answers.add(expected)
    assert answers == {True, False}

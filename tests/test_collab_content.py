"""Content model `text` over Yjs: REST content reads and writes against the live CRDT (minimal
diffs, stale-ETag merges, 412 for unknown or expired ETags), the markdown projection (debounce,
bound while typing, room close, change feed), and reading a document from its CRDT state rather
than a projection that trails it. In-process server, pycrdt socket clients; the npm-client
version of the merge is in test_collab_http.py (interop)."""

from __future__ import annotations

import asyncio
import random

import pytest
from pycrdt import Doc, Text

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.collab import projection, store
from mdsync.collab.etags import state_etag
from mdsync.collab.states import STATES
from mdsync.collab.rooms import ROOMS
from mdsync.collab.text_ops import apply_text_diff, text_ops
from tests.builders import document, join, make_document, make_workspace, owned_document, register
from tests.readers import content
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

API = "/api/v1"


@pytest.fixture
async def client(make_client):
    return await make_client(collab__room_grace_seconds=0.2)


async def put_content(client, who, doc_id, body, if_match=None):
    headers = {**who.headers, "Content-Type": "text/markdown"}
    if if_match is not None:
        headers["If-Match"] = if_match
    return await client.put(f"{API}/documents/{doc_id}/content", data=body if isinstance(body, bytes) else body.encode(),
                            headers=headers)


async def stored_markdown(client, doc_id) -> str:
    return await client.server.app[DB].value("SELECT markdown FROM documents WHERE id = ?", (doc_id,))


async def wait_unloaded(client, doc_id, timeout=10.0) -> None:
    rooms = client.server.app[ROOMS]
    assert await eventually(lambda: doc_id not in rooms.rooms, timeout), "the room did not unload"


# -- the diff -----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(40))
def test_text_diff_turns_any_text_into_any_other(seed):
    rand = random.Random(seed)
    alphabet = "ab c\n\n#é😀中-"
    old = "".join(rand.choice(alphabet) for _ in range(rand.randrange(0, 300)))
    new = list(old)
    for _ in range(rand.randrange(1, 8)):
        at = rand.randrange(len(new) + 1)
        if new and rand.random() < 0.5:
            del new[at:at + rand.randrange(1, 10)]
        else:
            new[at:at] = rand.choice(alphabet) * rand.randrange(1, 5)
    new = "".join(new)
    doc = Doc()
    text = doc.get("markdown", type=Text)
    text += old
    with doc.transaction():
        apply_text_diff(text, new)
    assert str(text) == new


def test_text_diff_is_minimal():
    old = "# Title\n\n" + "line of text\n" * 500 + "the end\n"
    new = old.replace("the end", "the very end").replace("# Title", "# Title!")
    ops = text_ops(old, new)
    assert sum(end - start for start, end, _ in ops) == 0  # only inserts
    assert "".join(insert for *_, insert in ops) == "!very "


# -- writes ------------------------------------------------------------------------------------
async def test_put_with_current_etag_is_a_small_edit_for_live_clients(client):
    owner, _, doc_id = await owned_document(client, "# Title\n\n" + "some text here\n" * 300 + "hello world\n")
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    deltas, updates = [], []
    live.text.observe(lambda event: deltas.append(event.delta))
    live.doc.observe(lambda event: updates.append(event.update))
    text, etag = await content(client, owner, doc_id)
    resp = await put_content(client, owner, doc_id, text.replace("hello world", "hello brave world"), etag)
    assert resp.status == 200, await resp.text()
    assert (await resp.text()).endswith("hello brave world\n")
    assert resp.headers["ETag"] != etag and resp.headers["ETag"].startswith('"')
    assert await eventually(lambda: str(live.text).endswith("hello brave world\n"))
    # the live editor saw one small insert, not the document deleted and written again
    assert len(deltas) == 1
    assert [op for op in deltas[0] if "retain" not in op] == [{"insert": "brave "}]
    assert len(updates) == 1 and len(updates[0]) < 100
    # the same ETag is now stale; the current one names the state just written
    assert (await content(client, owner, doc_id))[1] == resp.headers["ETag"]
    await live.close()


async def test_put_without_if_match_applies_a_diff_against_the_current_text(client):
    owner, _, doc_id = await owned_document(client, "alpha beta gamma\n")
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    deltas = []
    live.text.observe(lambda event: deltas.append(event.delta))
    resp = await put_content(client, owner, doc_id, "alpha gamma\n")
    assert resp.status == 200 and await resp.text() == "alpha gamma\n"
    assert await eventually(lambda: str(live.text) == "alpha gamma\n")
    assert [op for op in deltas[0] if "retain" not in op] == [{"delete": 5}]
    await live.close()


async def test_put_with_stale_etag_merges_with_a_live_edit(client):
    owner, _, doc_id = await owned_document(client, "# Title\n\nhello world\n")
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    base, etag = await content(client, owner, doc_id)
    live.insert(len(str(live.text)), "typed live\n")
    room = client.server.app[ROOMS].loaded(doc_id)
    assert await eventually(lambda: "typed live" in room.text())
    # the REST client edits the base it read: a new first line, a word replaced
    body = "Preface\n" + base.replace("hello world", "hello REST")
    resp = await put_content(client, owner, doc_id, body, etag)
    assert resp.status == 200, await resp.text()
    merged = await resp.text()
    assert merged == "Preface\n# Title\n\nhello REST\ntyped live\n"
    assert await eventually(lambda: str(live.text) == merged)
    assert (await content(client, owner, doc_id))[0] == merged
    # the same stale ETag again: replayed from the same base, nothing doubles
    resp = await put_content(client, owner, doc_id, body, etag)
    assert resp.status == 200 and await resp.text() == merged
    await live.close()


async def test_stale_etag_from_a_closed_room_still_merges(client):
    owner, _, doc_id = await owned_document(client, "one\ntwo\nthree\n")
    base, etag = await content(client, owner, doc_id)
    await wait_unloaded(client, doc_id)
    resp = await put_content(client, owner, doc_id, "one\ntwo\nthree\nfour\n")
    assert resp.status == 200
    await wait_unloaded(client, doc_id)
    # a new process would not know more than the database: a fresh States reads only tables
    client.server.app[STATES]._chains.clear()
    resp = await put_content(client, owner, doc_id, "zero\n" + base, etag)
    assert resp.status == 200, await resp.text()
    assert await resp.text() == "zero\none\ntwo\nthree\nfour\n"


async def test_unknown_and_expired_etags_are_412_and_change_nothing(make_client):
    client = await make_client(sync__etag_retention_days=0.001)  # 86.4 s
    owner, _, doc_id = await owned_document(client, "keep me\n")
    text, etag = await content(client, owner, doc_id)
    resp = await put_content(client, owner, doc_id, "lost", '"nonsense"')
    assert resp.status == 412
    assert (await resp.json())["type"] == "urn:mdsync:error:precondition-failed"
    resp = await put_content(client, owner, doc_id, "changed\n")  # makes `etag` stale
    assert resp.status == 200
    clock.advance(100)  # past the retention of `etag` (tokens live 900 s: still signed in)
    resp = await put_content(client, owner, doc_id, "lost", etag)
    assert resp.status == 412
    assert (await content(client, owner, doc_id))[0] == "changed\n"
    # and the expired states are collected; new ones keep working
    assert await client.server.app[STATES].collect() >= 1
    text, fresh = await content(client, owner, doc_id)
    live_edit = await put_content(client, owner, doc_id, "changed\nmore\n")
    assert live_edit.status == 200
    resp = await put_content(client, owner, doc_id, "first\n" + text, fresh)
    assert resp.status == 200 and await resp.text() == "first\nchanged\nmore\n"


async def test_bad_bodies_change_nothing(make_client):
    client = await make_client(limits__max_document_bytes=2000)
    owner, _, doc_id = await owned_document(client, "original\n")
    _, etag = await content(client, owner, doc_id)
    resp = await put_content(client, owner, doc_id, b"\xff\xfe not utf-8", etag)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "body"
    resp = await put_content(client, owner, doc_id, "x" * 3000, etag)
    assert resp.status == 413
    assert await content(client, owner, doc_id) == ("original\n", etag)


async def test_viewer_reads_but_cannot_write_and_other_workspaces_see_nothing(client):
    owner, ws, doc_id = await owned_document(client, "text\n")
    viewer = await join(client, owner, ws, "viewer")
    outsider = await register(client)
    text, etag = await content(client, viewer, doc_id)
    assert text == "text\n"
    assert (await put_content(client, viewer, doc_id, "no", etag)).status == 403
    resp = await client.get(f"{API}/documents/{doc_id}/content", headers=outsider.headers)
    assert resp.status == 404
    assert (await put_content(client, outsider, doc_id, "no")).status == 404
    assert (await content(client, owner, doc_id))[0] == "text\n"


# -- reads and the projection -----------------------------------------------------------------
async def test_document_with_crdt_state_is_read_from_it_not_from_a_trailing_projection(client):
    owner, _, doc_id = await owned_document(client, "first\n")
    assert (await put_content(client, owner, doc_id, "first\nsecond\n")).status == 200
    await wait_unloaded(client, doc_id)
    assert await stored_markdown(client, doc_id) == "first\nsecond\n"
    # an edit reached the update log but its projection never got stored (kill -9 in between)
    db = client.server.app[DB]
    stored = await store.load(db, doc_id)
    doc = Doc()
    for update in ([stored.snapshot] if stored.snapshot else []) + stored.updates:
        doc.apply_update(update)
    before = doc.get_state()
    doc.get("markdown", type=Text).insert(len(b"first\nsecond\n"), "third\n")
    await db.write(store.append, doc_id, [(stored.last_seq + 1, doc.get_update(before), owner.id)])
    assert await stored_markdown(client, doc_id) == "first\nsecond\n"
    text, etag = await content(client, owner, doc_id)
    assert text == "first\nsecond\nthird\n"
    assert etag == f'"{state_etag(doc)}"'
    # ... and once that room closes the projection catches up
    await wait_unloaded(client, doc_id)
    assert await stored_markdown(client, doc_id) == "first\nsecond\nthird\n"
    # now the projection is exact: read without loading the room, same ETag
    assert await content(client, owner, doc_id) == ("first\nsecond\nthird\n", etag)
    assert client.server.app[ROOMS].loaded(doc_id) is None


async def test_socket_edits_reach_rest_reads_and_the_change_feed(client):
    owner, ws, doc_id = await owned_document(client, "start\n")
    resp = await client.get(f"{API}/sync/changes", params={"since": "now"}, headers=owner.headers)
    cursor = (await resp.json())["cursor"]
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    live.insert(len("start\n"), "from the socket\n")
    seen = None
    for _ in range(100):  # bounded: about 5 s
        text, _ = await content(client, owner, doc_id)
        if "from the socket" in text:
            seen = text
            break
        await asyncio.sleep(0.05)
    assert seen == "start\nfrom the socket\n"
    upsert = None
    for _ in range(50):
        resp = await client.get(f"{API}/sync/changes", params={"since": cursor, "wait": "1"}, headers=owner.headers)
        page = await resp.json()
        cursor = page["cursor"]
        upsert = next((c for c in page["changes"] if c["entity"] == "document" and c["id"] == doc_id), None)
        if upsert:
            break
    assert upsert is not None and upsert["op"] == "upsert"
    assert await stored_markdown(client, doc_id) == "start\nfrom the socket\n"
    meta = await (await client.get(f"{API}/documents/{doc_id}", headers=owner.headers)).json()
    assert meta["size"] == len("start\nfrom the socket\n")
    await live.close()


async def test_projection_keeps_up_while_typing_goes_on(make_client):
    # typing every 50 ms never leaves the 0.5 s debounce idle: only the bound stores it meanwhile
    client = await make_client(collab__projection_debounce=0.5, collab__projection_max_delay=1.0)
    owner, _, doc_id = await owned_document(client, "")
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    projected_while_typing = set()
    for i in range(60):  # 3 s of typing
        live.insert(len(str(live.text)), f"k{i};")
        await asyncio.sleep(0.05)
        if i % 5 == 4:
            projected_while_typing.add(await stored_markdown(client, doc_id))
    projected_while_typing.discard("")
    assert projected_while_typing, "nothing was projected while typing went on"
    final = str(live.text)
    for _ in range(60):
        if await stored_markdown(client, doc_id) == final:
            break
        await asyncio.sleep(0.05)
    assert await stored_markdown(client, doc_id) == final
    await live.close()


async def test_projection_is_stored_when_the_room_closes(make_client):
    # a debounce far longer than the room's grace: only the close hook can have stored it
    client = await make_client(collab__room_grace_seconds=0.1, collab__projection_debounce=60,
                               collab__projection_max_delay=2.0)
    owner, _, doc_id = await owned_document(client, "")
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    live.insert(0, "typed then left\n")
    room = client.server.app[ROOMS].loaded(doc_id)
    assert await eventually(lambda: room.text() == "typed then left\n")
    await live.close()
    await wait_unloaded(client, doc_id, timeout=1.5)
    assert await stored_markdown(client, doc_id) == "typed then left\n"


async def test_metadata_etag_is_the_content_etag_also_after_a_restart(make_client, tmp_path):
    data_dir = tmp_path / "restart"
    client = await make_client(data_dir=data_dir, collab__room_grace_seconds=0.1)
    owner, _, doc_id = await owned_document(client, "v1\n")
    assert (await put_content(client, owner, doc_id, "v2\n")).status == 200
    await wait_unloaded(client, doc_id)
    text, etag = await content(client, owner, doc_id)
    meta = await (await client.get(f"{API}/documents/{doc_id}", headers=owner.headers)).json()
    assert (text, meta["etag"]) == ("v2\n", etag)
    await client.close()
    # a new process on the same data: same ETag, served from the exact projection (no room load)
    client = await make_client(data_dir=data_dir)
    meta = await (await client.get(f"{API}/documents/{doc_id}", headers=owner.headers)).json()
    assert meta["etag"] == etag
    assert await content(client, owner, doc_id) == ("v2\n", etag)
    assert client.server.app[ROOMS].loaded(doc_id) is None
    # and that ETag still merges in the new process
    resp = await put_content(client, owner, doc_id, "v0\nv2\n", etag)
    assert resp.status == 200 and await resp.text() == "v0\nv2\n"
    metrics = await (await client.get("/metrics")).text()
    assert 'mdsync_content_writes_total{result="diff"} 1.0' in metrics
    assert "mdsync_collab_projection_lag_seconds_count 1.0" in metrics


async def test_collection_keeps_the_chain_a_retained_etag_builds_on(make_client):
    client = await make_client(sync__etag_retention_days=0.001)  # 86.4 s
    owner, _, doc_id = await owned_document(client, "a\n")
    _, first = await content(client, owner, doc_id)            # a whole state
    assert (await put_content(client, owner, doc_id, "a\nb\n")).status == 200  # a delta after it
    clock.advance(100)
    assert (await put_content(client, owner, doc_id, "a\nb\nc\n")).status == 200
    base, recent = await content(client, owner, doc_id)        # a delta, still in the window
    states = client.server.app[STATES]
    await states.collect()
    db = client.server.app[DB]
    kept = await db.all("SELECT seq, \"full\" FROM content_states WHERE document_id = ? ORDER BY seq", (doc_id,))
    assert kept[0]["full"] == 1 and len(kept) >= 2  # the expired whole state stays: `recent` needs it
    assert (await put_content(client, owner, doc_id, "a\nb\nc\nd\n")).status == 200
    resp = await put_content(client, owner, doc_id, "0\n" + base, recent)
    assert resp.status == 200 and await resp.text() == "0\na\nb\nc\nd\n"
    assert (await put_content(client, owner, doc_id, "x", first)).status == 412
    # once nothing of a document is in the window, all of it goes
    clock.advance(100)
    await states.collect()
    assert await db.value("SELECT count(*) FROM content_states WHERE document_id = ?", (doc_id,)) == 0
    text, fresh = await content(client, owner, doc_id)
    assert (await put_content(client, owner, doc_id, "y\n")).status == 200
    resp = await put_content(client, owner, doc_id, text + "z\n", fresh)
    assert resp.status == 200 and await resp.text() == "y\nz\n"


# -- one ETag scheme, whichever route hands it out (issue 14, item 1) ----------------------------
async def test_etag_from_create_is_a_plain_write_and_later_a_merge(client):
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    created = await document(client, owner, ws, "Doc", markdown="one\ntwo\n")
    # the document was never opened: its creation ETag is the one GET /content answers
    meta = await (await client.get(f"{API}/documents/{created['id']}", headers=owner.headers)).json()
    assert meta["etag"] == created["etag"]
    assert (await content(client, owner, created["id"]))[1] == created["etag"]
    resp = await put_content(client, owner, created["id"], "one\ntwo\nthree\n", created["etag"])
    assert resp.status == 200, await resp.text()
    assert await resp.text() == "one\ntwo\nthree\n"
    # another client created-then-wrote later: someone else's edit came in between; it merges
    other = await document(client, owner, ws, "Other", markdown="alpha\nbeta\n")
    assert (await put_content(client, owner, other["id"], "alpha\nbeta\ngamma\n")).status == 200
    await wait_unloaded(client, other["id"])
    client.server.app[STATES]._chains.clear()  # as a new process would: tables only
    resp = await put_content(client, owner, other["id"], "zero\nalpha\nbeta\n", other["etag"])
    assert resp.status == 200, await resp.text()
    assert await resp.text() == "zero\nalpha\nbeta\ngamma\n"


async def test_etag_listed_while_the_room_is_live_still_merges_after_more_typing(client):
    owner, ws, doc_id = await owned_document(client, "first\n")
    live = await YClient.connect(client, doc_id, owner.access_token)
    await live.wait_synced()
    live.insert(len(str(live.text)), "second\n")
    room = client.server.app[ROOMS].loaded(doc_id)
    assert await eventually(lambda: "second" in room.text())
    listed = await (await client.get(f"{API}/workspaces/{ws}/documents", headers=owner.headers)).json()
    etag = next(item["etag"] for item in listed["items"] if item["id"] == doc_id)
    live.insert(len(str(live.text)), "third\n")
    assert await eventually(lambda: "third" in room.text())
    resp = await put_content(client, owner, doc_id, "zero\nfirst\nsecond\n", etag)
    assert resp.status == 200, await resp.text()
    assert await resp.text() == "zero\nfirst\nsecond\nthird\n"
    await live.close()


async def test_a_tiptap_documents_creation_etag_writes_too(client):
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    created = await document(client, owner, ws, "Rich", content_model="tiptap", markdown="# Rich\n\nfirst\n")
    assert (await content(client, owner, created["id"]))[1] == created["etag"]
    resp = await put_content(client, owner, created["id"], "# Rich\n\nfirst\n\nsecond\n", created["etag"])
    assert resp.status == 200, await resp.text()
    assert "second" in await resp.text()


async def test_a_projection_the_database_refuses_holds_back_no_other_document(make_client, monkeypatch, engine):
    """Documents due together are projected in one writer job; when the database refuses one of
    them (refused by hand: a NUL character, which PostgreSQL text cannot hold, is now stored as
    U+FFFD, tests/test_nul_characters.py), the others are stored anyway."""
    client = await make_client(collab__projection_debounce=0.2, collab__projection_max_delay=1.0)
    app = client.server.app
    alice = await register(client)
    rooms = []
    for n in range(3):
        _, doc_id = await make_document(app, alice.id, markdown=f"doc {n}\n")
        rooms.append(await app[ROOMS].acquire(doc_id))
    for room in rooms:
        await room.drain()
    bad = rooms[1].document_id
    store_projection = projection.store_projection

    def refuse_one(tx, document_id, *args):
        if document_id == bad:
            raise ValueError("simulated: the database refuses this projection")
        return store_projection(tx, document_id, *args)

    store_changed = projection.store_changed_markdowns

    def refuse_batch(tx, docs, *args):  # the job's one statement for all documents
        if any(document_id == bad for document_id, _ in docs):
            raise ValueError("simulated: the database refuses this projection")
        return store_changed(tx, docs, *args)

    monkeypatch.setattr(projection, "store_projection", refuse_one)
    monkeypatch.setattr(projection, "store_changed_markdowns", refuse_batch)
    for n, room in enumerate(rooms):
        room.edit(lambda text, n=n: text.insert(0, f"edit\x00{n} " if n == 1 else f"edit {n} "), alice.id)
    db = app[DB]

    async def projected() -> list[str]:
        return [await db.value("SELECT markdown FROM documents WHERE id = ?", (room.document_id,)) for room in rooms]

    async with asyncio.timeout(10):
        while await projected() != ["edit 0 doc 0\n", "doc 1\n", "edit 2 doc 2\n"]:
            await asyncio.sleep(0.02)
    for room in rooms:
        app[ROOMS].release(room)


def _etag_as_documented(doc: Doc) -> str:
    """The ETag scheme written out plainly (mdsync/collab/etags.py): sha256 of the state vector as
    sorted "client:clock," pairs, "|", and the delete set's sorted (client, [(start, length)])
    list as text; base64url of its first 18 bytes after a "y"."""
    import base64
    import hashlib

    from mdsync.collab import protocol as p
    from mdsync.collab.room import decode_state_vector

    sv = doc.get_state()
    text = "".join(f"{client}:{clock_}," for client, clock_ in sorted(decode_state_vector(sv).items()))
    update, out = doc.get_update(sv), []
    clients, pos = p.read_varuint(update, 0)
    assert clients == 0
    count, pos = p.read_varuint(update, pos)
    for _ in range(count):
        client, pos = p.read_varuint(update, pos)
        ranges, pos = p.read_varuint(update, pos)
        spans = []
        for _ in range(ranges):
            start, pos = p.read_varuint(update, pos)
            length, pos = p.read_varuint(update, pos)
            spans.append((start, length))
        out.append((client, sorted(spans)))
    digest = hashlib.sha256(text.encode() + b"|" + repr(sorted(out)).encode()).digest()
    return "y" + base64.urlsafe_b64encode(digest[:18]).decode()


def test_the_etag_scheme_is_unchanged_for_any_state():
    """ETags handed out stay valid across versions: `state_etag` (its state vector read inline)
    is the documented scheme, for small and large client ids, with and without deletions."""
    rng = random.Random(7)
    for _ in range(60):
        docs = [Doc(client_id=rng.choice([rng.randrange(1, 200), rng.randrange(1, 2**32), rng.randrange(1, 2**53)]))
                for _ in range(rng.randrange(1, 4))]
        for _ in range(rng.randrange(0, 12)):
            doc = rng.choice(docs)
            text = doc.get("markdown", type=Text)
            length = len(str(text))
            if length and rng.random() < 0.3:
                start = rng.randrange(length)
                del text[start:min(length, start + rng.randrange(1, 4))]
            else:
                text.insert(rng.randrange(length + 1), "x" * rng.randrange(1, 300))
            other = rng.choice(docs)
            other.apply_update(doc.get_update(other.get_state()))
            for each in docs:
                assert state_etag(each) == _etag_as_documented(each)

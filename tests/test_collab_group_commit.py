"""The update log and the markdown projection are written for many rooms at once: one writer job
per group-commit window for every room with pending updates, one per projection sweep for every
document due; a failing shared job leaves each room to fail or succeed on its own."""

from __future__ import annotations

import pytest

import asyncio
import sqlite3

from mdsync import clock
from mdsync.collab import projection, store
from mdsync.collab.rooms import ROOMS
from mdsync.appkeys import DB
from mdsync.sync import changes
from tests.builders import make_document, register
from tests.readers import doc_text_in_db
from tests.waiting import eventually

pytestmark = pytest.mark.both_engines


async def open_rooms(app, owner_id: str, count: int) -> list:
    rooms = app[ROOMS]
    held = []
    for n in range(count):
        _, doc_id = await make_document(app, owner_id, markdown=f"doc {n}\n")
        held.append(await rooms.acquire(doc_id))
    for room in held:
        await room.drain()  # the seed is written: only the edits below are pending
    return held


async def saved(rooms: list) -> None:
    """Until every update accepted so far in each room is committed (without flushing early)."""
    waits = []
    for room in rooms:
        done = asyncio.get_running_loop().create_future()
        room.when_saved(lambda done=done: done.done() or done.set_result(None))
        waits.append(done)
    async with asyncio.timeout(10):
        await asyncio.gather(*waits)


async def test_one_group_flush_writes_the_updates_of_every_room(client):
    app = client.server.app
    alice = await register(client)
    rooms = await open_rooms(app, alice.id, 3)
    stats = app[ROOMS].stats
    flushes, flushed = stats.flushes, stats.flushed_updates
    for n, room in enumerate(rooms):
        room.edit(lambda text, n=n: text.insert(0, f"edit {n} "), alice.id)
    await saved(rooms)
    assert stats.flushes - flushes == 1
    assert stats.flushed_updates - flushed == 3
    for n, room in enumerate(rooms):
        assert await doc_text_in_db(app, room.document_id) == f"edit {n} doc {n}\n"
        app[ROOMS].release(room)


async def test_edits_typed_within_the_default_window_make_one_commit(client):
    # one node: the window is 0.2 s (config.CollabSettings.flush_delay), so a document typed in
    # at a few keystrokes a second costs the writer a commit per 0.2 s, not one per keystroke
    app = client.server.app
    alice = await register(client)
    [room] = await open_rooms(app, alice.id, 1)
    manager = app[ROOMS]
    stats = manager.stats
    flushes, flushed = stats.flushes, stats.flushed_updates
    await eventually(lambda: manager._flush_handle is None)   # no window already open (the seed's)
    edited = asyncio.get_running_loop().time()
    room.edit(lambda text: text.insert(0, "0"), alice.id)
    # the group flush is due a whole window after the first edit (read off its timer, not timed:
    # 0.05 s before), and takes every edit made meanwhile
    assert manager._flush_handle.when() >= edited + 0.2
    for n in (1, 2):
        room.edit(lambda text, n=n: text.insert(0, f"{n}"), alice.id)
    await saved([room])
    assert (stats.flushes - flushes, stats.flushed_updates - flushed) == (1, 3)
    assert await doc_text_in_db(app, room.document_id) == "210doc 0\n"
    app[ROOMS].release(room)


async def test_a_failing_shared_flush_fails_only_for_its_own_room(client, monkeypatch):
    app = client.server.app
    alice = await register(client)
    rooms = await open_rooms(app, alice.id, 3)
    bad = rooms[1].document_id
    append, append_many = store.append, store.append_many

    def refuse_one_document(tx, document_id, rows):
        if document_id == bad:
            raise sqlite3.IntegrityError("simulated: these rows never reach the log")
        return append(tx, document_id, rows)

    def refuse_with_it(tx, batches):
        if any(document_id == bad for document_id, _ in batches):
            raise sqlite3.IntegrityError("simulated: one document's rows conflict")
        return append_many(tx, batches)

    monkeypatch.setattr(store, "append", refuse_one_document)
    monkeypatch.setattr(store, "append_many", refuse_with_it)
    for n, room in enumerate(rooms):
        room.edit(lambda text, n=n: text.insert(0, f"edit {n} "), alice.id)
    await saved(rooms)  # the bad room's update is saved by the snapshot written instead
    for n, room in enumerate(rooms):
        assert await doc_text_in_db(app, room.document_id) == f"edit {n} doc {n}\n"
        app[ROOMS].release(room)
    assert app[ROOMS].stats.flush_errors == 1


async def test_documents_due_together_are_projected_in_one_writer_job(make_client, monkeypatch):
    client = await make_client(collab__projection_debounce=0.2, collab__projection_max_delay=1.0)
    app = client.server.app
    alice = await register(client)
    rooms = await open_rooms(app, alice.id, 3)
    jobs = []
    store_projections = projection.store_projections

    def counted(tx, rows, now):
        jobs.append([row[0] for row in rows])
        return store_projections(tx, rows, now)

    monkeypatch.setattr(projection, "store_projections", counted)
    for n, room in enumerate(rooms):
        room.edit(lambda text, n=n: text.insert(0, f"edit {n} "), alice.id)
    db = app[DB]

    async def projected() -> list[str]:
        return [await db.value("SELECT markdown FROM documents WHERE id = ?", (room.document_id,)) for room in rooms]

    async with asyncio.timeout(10):
        while await projected() != [f"edit {n} doc {n}\n" for n in range(3)]:
            await asyncio.sleep(0.02)
    assert jobs == [[room.document_id for room in rooms]]
    for room in rooms:
        app[ROOMS].release(room)


async def test_one_projection_job_writes_each_document_as_if_alone(make_client):
    """`store_projections` writes all documents of a job in a few statements; each document still
    gets what a projection of its own would give: a new revision and its own change-feed row (in
    the job's order) only when its markdown changed, a trashed one's text without a feed row, a
    content_heads row, GONE for a document that is not there."""
    client = await make_client()
    app = client.server.app
    db = app[DB]
    alice = await register(client)
    ids = [(await make_document(app, alice.id, markdown=f"doc {n}\n"))[1] for n in range(4)]
    changed_a, same, trashed, changed_b = ids
    await db.write(lambda tx: tx.execute("UPDATE documents SET deleted_at = ? WHERE id = ?", (clock.iso(), trashed)))
    before = {row["id"]: row["seq"] for row in await db.all("SELECT id, seq FROM documents")}
    feed_from = await db.value("SELECT max(seq) FROM changes")
    rows = [(changed_b, "new b\n", "yB", 1), (same, "doc 1\n", "yS", 2), ("no-such-document", "x", "yX", 3),
            (trashed, "new t\n", "yT", 4), (changed_a, "new a\n", "yA", 5)]
    wakes = []
    changes.listeners.add(wakes.append)
    try:
        results = await db.write(projection.store_projections, rows, clock.iso())
    finally:
        changes.listeners.discard(wakes.append)
    assert results == [projection.STORED, projection.STORED, projection.GONE, projection.STORED, projection.STORED]
    docs = {row["id"]: row for row in await db.all("SELECT id, markdown, size, seq FROM documents")}
    assert [docs[i]["markdown"] for i in ids] == ["new a\n", "doc 1\n", "new t\n", "new b\n"]
    assert [docs[i]["seq"] - before[i] for i in ids] == [1, 0, 1, 1]
    assert docs[changed_a]["size"] == len("new a\n")
    feed = await db.all("SELECT seq, entity, entity_id, op FROM changes WHERE seq > ? ORDER BY seq", (feed_from,))
    assert [(row["entity"], row["entity_id"], row["op"]) for row in feed] == [
        ("document", changed_b, "upsert"), ("document", changed_a, "upsert")]
    # the feed's readers are woken with each row's own seq
    assert [(wake.seq, wake.entity_id) for wake in wakes] == [(row["seq"], row["entity_id"]) for row in feed]
    heads = {row["document_id"]: (row["etag"], row["crdt_seq"]) for row in await db.all("SELECT * FROM content_heads")}
    assert heads[changed_b] == ("yB", 1) and heads[same] == ("yS", 2) and heads[trashed] == ("yT", 4)
    assert "no-such-document" not in heads
    if db.engine == "sqlite":  # the FTS5 index, kept by a trigger (PostgreSQL indexes the column itself)
        hits = await db.all("SELECT rowid FROM docs_fts WHERE docs_fts MATCH 'new'")
        assert len(hits) == 2  # both live documents' new text, not the trashed one's


async def test_an_acknowledgement_waited_for_flushes_without_waiting_out_the_window(make_client):
    client = await make_client(collab__flush_delay_seconds=0.5)
    app = client.server.app
    alice = await register(client)
    quiet, acked = await open_rooms(app, alice.id, 2)
    manager = app[ROOMS]
    quiet.edit(lambda text: text.insert(0, "typed "), alice.id)
    window = manager._flush_handle
    assert window is not None and not manager._flush_now  # nobody waits: the window runs
    acked.edit(lambda text: text.insert(0, "acked "), alice.id)
    done = asyncio.get_running_loop().create_future()
    acked.when_saved(lambda: done.set_result(None))  # what a Hocuspocus update does (SyncStatus)
    assert manager._flush_now and window.cancelled()  # flushed on the next loop turn instead
    async with asyncio.timeout(10):
        await done
    assert await doc_text_in_db(app, acked.document_id) == "acked doc 1\n"
    assert await doc_text_in_db(app, quiet.document_id) == "typed doc 0\n"  # went along in that flush
    for room in (quiet, acked):
        manager.release(room)


def test_a_projection_job_s_statements_hold_a_bounded_amount_of_text():
    """A job of many large documents is written in several statements (at most CHUNK documents
    and about CHUNK_CHARS characters each; a larger document alone), in the job's order."""
    from mdsync.documents import content

    docs = [(str(n), "x" * size) for n, size in enumerate([10] * 450 + [3_000_000, 3_000_000, 5_000_000, 1])]
    chunks = content._chunks(docs)
    assert [len(chunk) for chunk in chunks] == [200, 200, 51, 1, 1, 1]
    assert [doc for chunk in chunks for doc in chunk] == docs
    assert content._chunks([]) == []

"""The update log and the markdown projection are written for many rooms at once: one writer job
per group-commit window for every room with pending updates, one per projection sweep for every
document due; a failing shared job leaves each room to fail or succeed on its own."""

from __future__ import annotations

import pytest

import asyncio
import sqlite3

from mdsync.collab import projection, store
from mdsync.collab.rooms import ROOMS
from mdsync.appkeys import DB
from tests.builders import make_document, register
from tests.readers import doc_text_in_db

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

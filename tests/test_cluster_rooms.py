"""Several nodes, one document (issue 21, "Room updates across nodes"): two apps on one PostgreSQL
and one Redis (real servers: tests/pgserver.py, tests/redisserver.py; attachments on moto's S3, as
a cluster requires). Yjs clients on different nodes converge; a flushed or paused Redis costs
latency, never an edit; nodes compacting the same document at once lose nothing; the log's seqs
are the commit order, without holes or duplicates; a REST write answered on one node is in
PostgreSQL and reaches the other node's room."""

from __future__ import annotations

import asyncio
import random

import psycopg
import pytest
from pycrdt import Doc, Text

from mdsync.app import create_app
from mdsync.collab.rooms import ROOMS
from mdsync.hooks import HOOKS
from tests import engines, redisserver
from tests.builders import document, owned_document, owned_workspace
from tests.cluster import node_settings
from tests.prerequisites import requires
from tests.redisserver import RedisServer
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = [pytest.mark.postgresql_only, requires(redisserver.missing_reason())]



@pytest.fixture
def database(tmp_path) -> str:
    """The one PostgreSQL database every node of the test shares."""
    return engines.database_url(tmp_path / "cluster")


@pytest.fixture
def nodes(aiohttp_client, tmp_path, redis, cluster_s3, database):
    """`await nodes(2, collab__snapshot_after_updates=5)`: that many nodes (test clients on apps)."""
    async def start(count: int, **overrides):
        return [await aiohttp_client(create_app(node_settings(tmp_path / f"node{i}", database, redis, cluster_s3,
                                                              **overrides)))
                for i in range(count)]
    return start


def stored_text(url: str, document_id: str) -> str:
    """The document as PostgreSQL holds it (snapshot + the rows after it), read without a node."""
    doc = Doc()
    with psycopg.connect(url) as conn:
        snap = conn.execute("SELECT seq, state FROM doc_snapshots WHERE document_id = %s", (document_id,)).fetchone()
        if snap is not None:
            doc.apply_update(snap[1])
        for (data,) in conn.execute("SELECT data FROM doc_updates WHERE document_id = %s AND seq > %s ORDER BY seq",
                                    (document_id, snap[0] if snap else 0)):
            doc.apply_update(data)
    return str(doc.get("markdown", type=Text))


def log_seqs(url: str, document_id: str) -> tuple[int, list[int]]:
    """(snapshot seq, the seqs of the rows after it)."""
    with psycopg.connect(url) as conn:
        snap = conn.execute("SELECT seq FROM doc_snapshots WHERE document_id = %s", (document_id,)).fetchone()
        rows = conn.execute("SELECT seq FROM doc_updates WHERE document_id = %s ORDER BY seq", (document_id,))
        return (snap[0] if snap else 0), [seq for (seq,) in rows]


async def content(node, owner, document_id: str) -> str:
    resp = await node.get(f"/api/v1/documents/{document_id}/content", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    return await resp.text()


async def typists(nodes, owner, document_id):
    """One y-websocket client per node, synced."""
    clients = [await YClient.connect(node, document_id, owner.access_token) for node in nodes]
    for client in clients:
        await asyncio.wait_for(client.synced.wait(), 10)
    return clients


async def type_words(clients, words: int, tag: str, pause: float = 0.005) -> list[str]:
    """Each client appends `words` words of its own, interleaved; every word typed."""
    typed = []
    for i in range(words):
        for n, client in enumerate(clients):
            word = f"{tag}{n}-{i} "
            client.insert(len(client.text), word)
            typed.append(word)
        await asyncio.sleep(pause)
    return typed


def converged(clients, typed: list[str]) -> bool:
    texts = {str(client.text) for client in clients}
    return len(texts) == 1 and all(word in next(iter(texts)) for word in typed)


async def close_all(clients) -> None:
    for client in clients:
        await client.close()


async def test_clients_on_two_nodes_converge_and_the_log_is_the_commit_order(nodes, database):
    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="start\n")
    clients = await typists([a, b, a, b], owner, document_id)
    typed = await type_words(clients, 25, "w")
    assert await eventually(lambda: converged(clients, typed), timeout=15), [str(c.text) for c in clients]
    text = str(clients[0].text)
    assert text.startswith("start")
    # REST on either node answers the same text
    assert await eventually(lambda: a.app[ROOMS].loaded(document_id).text() == text
                            and b.app[ROOMS].loaded(document_id).text() == text, timeout=5)
    assert await content(a, owner, document_id) == await content(b, owner, document_id)
    # every update is in PostgreSQL, numbered 1..N without a hole or a duplicate
    for room in (a.app[ROOMS].loaded(document_id), b.app[ROOMS].loaded(document_id)):
        await room.drain()
    snapshot_seq, seqs = log_seqs(database, document_id)
    assert seqs == list(range(snapshot_seq + 1, snapshot_seq + 1 + len(seqs)))
    assert stored_text(database, document_id) == text
    # the remote rows were applied, not logged again: one row per update typed
    # (+ the seed of each node that loaded the fresh document at once: the same bytes, merged)
    assert len(seqs) + snapshot_seq <= len(typed) + 2
    await close_all(clients)


async def test_a_rest_write_on_one_node_is_stored_and_reaches_the_room_on_the_other(nodes, database):
    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="one\n")
    [bob] = await typists([b], owner, document_id)
    heard_on_b = []   # what node B's projection and versions would hear: its own updates only
    b.app[HOOKS].room_update.append(lambda room, update, user_id: heard_on_b.append(update))
    resp = await a.put(f"/api/v1/documents/{document_id}/content", data="one\ntwo\n", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert "two" in stored_text(database, document_id)   # answered after commit: in PostgreSQL
    assert await eventually(lambda: str(bob.text) == "one\ntwo\n", timeout=2)
    assert await content(b, owner, document_id) == "one\ntwo\n"
    assert heard_on_b == [] and b.app[ROOMS].stats.remote_updates > 0
    seqs_before = log_seqs(database, document_id)
    bob.insert(0, "zero\n")   # and an edit on B is B's: heard there, logged once
    assert await eventually(lambda: len(heard_on_b) == 1 and a.app[ROOMS].loaded(document_id).text()
                            == "zero\none\ntwo\n", timeout=2)
    await b.app[ROOMS].loaded(document_id).drain()
    assert len(log_seqs(database, document_id)[1]) == len(seqs_before[1]) + 1
    await close_all([bob])


async def test_a_flushed_redis_costs_no_edit(nodes, redis, database):
    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="")
    clients = await typists([a, b], owner, document_id)
    typed = await type_words(clients, 10, "before")
    redis.flushall()
    typed += await type_words(clients, 10, "during")
    redis.flushall()
    typed += await type_words(clients, 10, "after")
    ok = await eventually(lambda: converged(clients, typed), timeout=15)
    if not ok:
        for node in (a, b):
            room = node.app[ROOMS].loaded(document_id)
            print("ROOM", room.known, room._ahead, room.text(), node.app[ROOMS].replication.stats)
        print("SEQS", log_seqs(database, document_id))
        print("STORED", stored_text(database, document_id))
        print("CLIENTS", [str(c.text) for c in clients])
        raise AssertionError("not converged")
    for node in (a, b):
        await node.app[ROOMS].loaded(document_id).drain()
    assert stored_text(database, document_id) == str(clients[0].text)
    await close_all(clients)


async def test_a_paused_redis_costs_latency_not_data(nodes, redis, database):
    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="")
    alice, bob = await typists([a, b], owner, document_id)
    typed = await type_words([alice, bob], 5, "warm")
    assert await eventually(lambda: converged([alice, bob], typed), timeout=10)
    redis.pause()
    try:
        alice.insert(len(alice.text), "while-redis-sleeps ")
        bob.insert(0, "bob-too ")
        typed += ["while-redis-sleeps ", "bob-too "]
        # the nodes' head check against PostgreSQL (every ~1 s) carries the edits meanwhile
        assert await eventually(lambda: converged([alice, bob], typed), timeout=8), (str(alice.text), str(bob.text))
    finally:
        redis.resume()
    typed += await type_words([alice, bob], 5, "resumed")
    assert await eventually(lambda: converged([alice, bob], typed), timeout=15)
    for node in (a, b):
        await node.app[ROOMS].loaded(document_id).drain()
    assert stored_text(database, document_id) == str(alice.text)
    await close_all([alice, bob])


async def test_nodes_compacting_the_same_document_at_once_lose_nothing(nodes, database):
    a, b, c = await nodes(3, collab__snapshot_after_updates=4)
    owner, _, document_id = await owned_document(a, markdown="")
    clients = await typists([a, b, c], owner, document_id)
    typed = []
    for burst in range(6):
        typed += await type_words(clients, 4, f"b{burst}-", pause=0)
        await asyncio.sleep(0.03)
        for node in (a, b, c):   # and every node compacts at the same instant
            room = node.app[ROOMS].loaded(document_id)
            room._compact()
    assert await eventually(lambda: converged(clients, typed), timeout=15), [str(c.text) for c in clients]
    for node in (a, b, c):
        node.app[ROOMS].loaded(document_id)._compact()
    for node in (a, b, c):
        await node.app[ROOMS].loaded(document_id).drain()
    assert node.app[ROOMS].stats.compactions > 0
    text = str(clients[0].text)
    assert stored_text(database, document_id) == text
    snapshot_seq, seqs = log_seqs(database, document_id)
    assert snapshot_seq > 0
    assert seqs == list(range(snapshot_seq + 1, snapshot_seq + 1 + len(seqs)))
    await close_all(clients)
    # a node opening it afresh reads exactly that
    [d] = await nodes(1)
    assert await content(d, owner, document_id) == text


async def test_a_room_opened_later_on_another_node_starts_from_postgresql(nodes, redis):
    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="")
    [alice] = await typists([a], owner, document_id)
    typed = await type_words([alice], 10, "early")
    await a.app[ROOMS].loaded(document_id).drain()
    redis.stop()   # no Redis at all from here on
    [bob] = await typists([b], owner, document_id)
    assert converged([alice, bob], typed)
    bob.insert(0, "late ")
    assert await eventually(lambda: converged([alice, bob], [*typed, "late "]), timeout=8)
    await close_all([alice, bob])



async def test_a_large_edit_goes_to_the_other_node_through_postgresql(nodes, redis):
    """An update over 64 KiB is announced on the stream without its bytes (Redis holds about the
    last 2 000 updates of each document): the other node reads it from PostgreSQL."""
    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="small\n")
    [bob] = await typists([b], owner, document_id)
    large = "small\n" + "".join(f"line {i} of a long paste\n" for i in range(8000))
    assert len(large) > 100_000
    resp = await a.put(f"/api/v1/documents/{document_id}/content", data=large, headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert await eventually(lambda: str(bob.text) == large, timeout=5)
    assert all(len(entry[1].get(b"update", b"")) < 65536 for entry in await _stream(redis, document_id))
    await close_all([bob])


async def test_a_stream_entry_that_fails_the_gate_is_read_from_postgresql_instead(nodes, redis, database):
    """Redis carries the bytes of small updates, but it is not the log: an entry at the next seq
    that fails the update gate (written by something else than a node) never reaches the room;
    the row PostgreSQL holds at that seq does, and the node goes on."""
    import redis.asyncio as aioredis

    a, b = await nodes(2)
    owner, _, document_id = await owned_document(a, markdown="start\n")
    [bob] = await typists([b], owner, document_id)
    head = b.app[ROOMS].rooms[document_id].known
    forged = Doc()
    forged.get("markdown", type=Text).insert(0, "INTRUDER ")
    client = aioredis.Redis.from_url(redis.url)
    try:   # a valid update with a byte after it: the gate refuses it, pycrdt would not
        await client.xadd(f"mdsync:doc:{document_id}",
                          {"seq": head + 1, "node": "elsewhere", "update": forged.get_update() + b"\x00"})
    finally:
        await client.aclose()
    assert await eventually(lambda: b.app[ROOMS].replication.stats["refused"] == 1, timeout=5)
    resp = await a.put(f"/api/v1/documents/{document_id}/content", data="start\nreal edit\n", headers=owner.headers)
    assert resp.status == 200, await resp.text()
    assert await eventually(lambda: str(bob.text) == "start\nreal edit\n", timeout=5)
    assert await content(b, owner, document_id) == "start\nreal edit\n"
    assert stored_text(database, document_id) == "start\nreal edit\n"
    await close_all([bob])


async def _stream(server: RedisServer, document_id: str) -> list:
    """The entries of the document's stream, as Redis holds them."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(server.url)
    try:
        return await client.xrange(f"mdsync:doc:{document_id}")
    finally:
        await client.aclose()


def two_writers(count: int, seed: int) -> tuple[list[bytes], str]:
    """`count` updates of two clients editing one text, each synced with what came before (as a
    server would log them), and the text they make."""
    rnd = random.Random(seed)
    server, writers = Doc(), [Doc(), Doc()]
    made = []
    for step in range(count):
        writer = writers[rnd.randrange(2)]
        writer.apply_update(server.get_update(writer.get_state()))
        text, before = writer.get("markdown", type=Text), writer.get_state()
        text.insert(len(text) if rnd.random() < 0.7 else 0, f"w{step} ")
        made.append(writer.get_update(before))
        server.apply_update(made[-1])
    return made, str(server.get("markdown", type=Text))


async def test_rows_from_other_nodes_arriving_out_of_order_are_applied_in_seq_order(nodes):
    """Streams of two nodes interleave, and a flushed Redis loses entries: rows reach a room in
    any order. pycrdt loses updates applied before their dependencies (docs/architecture.md
    "Facts the code relies on"), so a room holds a row past a gap until the rows before it are in."""
    [a] = await nodes(1)
    owner, ws = await owned_workspace(a)
    for seed in range(4):
        document_id = (await document(a, owner, ws, f"Doc {seed}", markdown=""))["id"]
        made, text = two_writers(20, seed)
        order = list(range(len(made)))
        random.Random(seed).shuffle(order)
        async with a.app[ROOMS].use(document_id) as room:
            first = room.known + 1
            for i in order:
                room.apply_remote(first + i, made[i])
            assert room.known == first + len(made) - 1 and not room.gap()
            assert room.text() == text


async def test_rows_logged_after_rows_that_depend_on_them_are_still_applied_and_loaded(nodes, database):
    """A node's append that fails outright is retried after its later rows may have committed:
    the log then holds a row before one it depends on. A node reading that stretch from the
    stream, and one loading it from PostgreSQL, still end with every word."""
    a, b = await nodes(2)
    owner, ws = await owned_workspace(a)
    for seed in range(4):
        document_id = (await document(a, owner, ws, f"Doc {seed}", markdown=""))["id"]
        made, text = two_writers(20, seed)
        order = list(range(len(made)))
        random.Random(seed).shuffle(order)   # the seq order: not the order they were made in
        async with a.app[ROOMS].use(document_id) as room:
            first = room.known + 1
            for n, i in enumerate(order):
                room.apply_remote(first + n, made[i])
            assert room.text() == text
        with psycopg.connect(database) as conn:   # as the nodes had logged them
            conn.execute("INSERT INTO doc_heads (document_id, seq) VALUES (%s, %s)",
                         (document_id, first + len(made) - 1))
            for n, i in enumerate(order):
                conn.execute("INSERT INTO doc_updates (document_id, seq, data, created_at) VALUES (%s, %s, %s, 'x')",
                             (document_id, first + n, made[i]))
        async with b.app[ROOMS].use(document_id) as loaded:
            assert loaded.text() == text

"""Several nodes (issue 21): presence, awareness, the markdown projection and automatic versions
across nodes. Two apps in this process are two nodes: one PostgreSQL database, one real Redis
(tests/redisserver.py), attachments on S3 (moto), as `cluster.redis_url` requires."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mdsync.app import create_app
from tests import engines, pgserver, redisserver
from tests.builders import API, join, make_settings, owned_document
from tests.prerequisites import requires
from tests.redisserver import RedisServer
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = [requires(pgserver.missing_reason()), requires(redisserver.missing_reason())]

BUCKET = "mdsync-cluster"
SECRET = "cluster-test-secret-0123456789abcdef-0123456789"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.resume()  # a test that paused it may have failed before resuming
    server.stop()


@pytest.fixture
async def nodes(aiohttp_client, tmp_path, redis, s3):
    """Two nodes (in-process apps) sharing one PostgreSQL database and one Redis."""
    name = "t_cluster_" + uuid.uuid4().hex[:12]
    url = engines.cluster().create_database(name, template=engines.TEMPLATE)
    clients = []
    for node in ("a", "b"):
        settings = make_settings(
            tmp_path / f"node-{node}", database__url=url, server__secret=SECRET, cluster__redis_url=redis.url,
            storage__backend="s3", storage__s3__endpoint=s3.endpoint, storage__s3__bucket=BUCKET,
            storage__s3__access_key_id=ACCESS_KEY, storage__s3__secret_access_key=SECRET_KEY,
            storage__s3__path_style=True)
        clients.append(await aiohttp_client(create_app(settings)))
    yield clients
    for client in clients:
        await client.close()
    engines.cluster().drop_database(name)


async def presence(client, who, doc_id) -> dict:
    resp = await client.get(f"{API}/documents/{doc_id}/presence", headers=who.headers)
    assert resp.status == 200, await resp.text()
    return {item["user_id"]: item for item in (await resp.json())["items"]}


async def until_presence(client, who, doc_id, check, timeout: float = 10.0) -> dict:
    """Poll presence on `client` until `check(items by user id)` holds (bounded); the last answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        items = await presence(client, who, doc_id)
        if check(items) or asyncio.get_running_loop().time() > deadline:
            return items
        await asyncio.sleep(0.1)


# -- presence ------------------------------------------------------------------------------------

async def test_presence_on_any_node_lists_the_users_of_every_node(nodes):
    a, b = nodes
    owner, ws, doc_id = await owned_document(a)
    viewer = await join(a, owner, ws, "viewer", name="Vera")
    on_a = await YClient.connect(a, doc_id, owner.access_token)
    await on_a.wait_synced()
    items = await until_presence(b, viewer, doc_id, lambda items: owner.id in items)
    assert items[owner.id]["connections"] == 1 and items[owner.id]["read_only"] is False

    # a viewer on B, the owner on both: connections summed per user, read_only as on one node
    vera_b = await YClient.connect(b, doc_id, viewer.access_token)
    owner_b = await YClient.connect(b, doc_id, owner.access_token)
    await owner_b.wait_synced()
    items = await until_presence(a, owner, doc_id, lambda items: items.get(owner.id, {}).get("connections") == 2
                                 and viewer.id in items)
    assert items[owner.id]["connections"] == 2
    assert items[viewer.id] == {"user_id": viewer.id, "name": "Vera", "connections": 1, "read_only": True}
    assert await presence(b, owner, doc_id) == items  # the same list on both nodes

    # leaving on A shows on B
    await on_a.close()
    items = await until_presence(b, owner, doc_id, lambda items: items.get(owner.id, {}).get("connections") == 1)
    assert items[owner.id]["connections"] == 1
    await owner_b.close()
    await vera_b.close()
    items = await until_presence(a, owner, doc_id, lambda items: not items)
    assert items == {}


async def test_presence_answers_with_the_nodes_own_users_while_redis_is_stopped(nodes, redis):
    a, b = nodes
    owner, ws, doc_id = await owned_document(a)
    editor = await join(a, owner, ws, "editor", name="Eddie")
    on_a = await YClient.connect(a, doc_id, owner.access_token)
    on_b = await YClient.connect(b, doc_id, editor.access_token)
    await on_a.wait_synced()
    await on_b.wait_synced()
    items = await until_presence(b, owner, doc_id, lambda items: len(items) == 2)
    assert set(items) == {owner.id, editor.id}

    redis.pause()
    try:
        started = asyncio.get_running_loop().time()
        items = await presence(b, owner, doc_id)
        assert set(items) == {editor.id}  # B's own user, no error
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        redis.resume()
    items = await until_presence(b, owner, doc_id, lambda items: len(items) == 2)
    assert set(items) == {owner.id, editor.id}
    await on_a.close()
    await on_b.close()


# -- awareness -----------------------------------------------------------------------------------

async def test_awareness_reaches_sockets_on_the_other_node_and_late_joiners(nodes):
    a, b = nodes
    owner, ws, doc_id = await owned_document(a)
    alice = await YClient.connect(a, doc_id, owner.access_token)
    bob = await YClient.connect(b, doc_id, owner.access_token)
    await alice.wait_synced()
    await bob.wait_synced()
    await asyncio.sleep(0.6)  # B's relay follows its open rooms every 0.25 s
    await alice.set_awareness('{"user":{"name":"Alice"}}')
    assert await eventually(lambda: alice.doc.client_id in bob.awareness, timeout=5)
    assert bob.awareness[alice.doc.client_id] == '{"user":{"name":"Alice"}}'
    await bob.set_awareness('{"user":{"name":"Bob"}}')
    assert await eventually(lambda: bob.doc.client_id in alice.awareness, timeout=5)

    # a late joiner on B is sent A's state when it joins (B's room holds it)
    carol = await YClient.connect(b, doc_id, owner.access_token)
    assert await eventually(lambda: alice.doc.client_id in carol.awareness, timeout=5)

    # a node that opens the room after the state was set asks the others for theirs
    other_id = (await (await a.post(f"{API}/workspaces/{ws}/documents", json={"title": "Two"},
                                     headers=owner.headers)).json())["id"]
    dave = await YClient.connect(a, other_id, owner.access_token)
    await dave.set_awareness('{"user":{"name":"Dave"}}')
    await dave.wait_synced()
    erin = await YClient.connect(b, other_id, owner.access_token)
    assert await eventually(lambda: dave.doc.client_id in erin.awareness, timeout=5)

    # leaving removes the state on the other node
    await alice.close()
    assert await eventually(lambda: alice.doc.client_id not in bob.awareness, timeout=5)
    assert await eventually(lambda: alice.doc.client_id not in carol.awareness, timeout=5)
    for client in (bob, carol, dave, erin):
        await client.close()

"""Several nodes (issue 21): presence, awareness, the markdown projection and automatic versions
across nodes. Two apps in this process are two nodes: one PostgreSQL database, one real Redis
(tests/redisserver.py), attachments on S3 (moto), as `cluster.redis_url` requires."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from pycrdt import Doc, Text

from mdsync.app import create_app
from tests import engines, pgserver, redisserver
from tests.builders import API, join, make_workspace, owned_document, register
from tests.builders import document as new_document
from tests.cluster import NodeCluster, node_settings
from tests.nodeclients import needs_node, run_node
from tests.prerequisites import requires
from tests.readers import db_rows, feed
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = [pytest.mark.postgresql_only, requires(pgserver.missing_reason()), requires(redisserver.missing_reason())]



@pytest.fixture
async def make_nodes(aiohttp_client, tmp_path, redis, cluster_s3):
    """`await make_nodes(**settings)`: two nodes (in-process apps) sharing one PostgreSQL database
    and one Redis."""
    clients = []

    async def build(**overrides):
        # one data dir, hence one database (tests/engines.py), for both; nothing else of it is used
        data_dir = tmp_path / f"cluster-{uuid.uuid4().hex[:6]}"
        for _node in ("a", "b"):
            settings = node_settings(data_dir, engines.database_url(data_dir), redis, cluster_s3, **overrides)
            clients.append(await aiohttp_client(create_app(settings)))
        return clients[-2:]

    yield build
    for client in clients:  # stopped before their database goes (the engine fixture's teardown)
        await client.close()


@pytest.fixture
async def nodes(make_nodes):
    return await make_nodes()


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
        await on_a.set_awareness('{"user":{"name":"during"}}', clock_=3)
        await asyncio.sleep(7)  # longer than the Redis client's socket timeout
        assert set(await presence(b, owner, doc_id)) == {editor.id}
    finally:
        redis.resume()
    items = await until_presence(b, owner, doc_id, lambda items: len(items) == 2)
    assert set(items) == {owner.id, editor.id}
    # awareness goes between the nodes again too (the relay reconnects)
    await on_a.set_awareness('{"user":{"name":"after"}}', clock_=5)
    assert await eventually(lambda: on_b.awareness.get(on_a.doc.client_id) == '{"user":{"name":"after"}}',
                            timeout=15)
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

    metrics = await (await b.get("/metrics")).text()
    received = [line for line in metrics.splitlines() if line.startswith("mdsync_cluster_awareness_received_total ")]
    assert received and float(received[0].split()[1]) >= 1

    # leaving removes the state on the other node
    await alice.close()
    assert await eventually(lambda: alice.doc.client_id not in bob.awareness, timeout=5)
    assert await eventually(lambda: alice.doc.client_id not in carol.awareness, timeout=5)
    for client in (bob, carol, dave, erin):
        await client.close()


# -- the markdown projection and automatic versions: made once --------------------------------------

def stored_markdown(client, doc_id) -> str:
    return db_rows(client, "SELECT markdown FROM documents WHERE id = ?", (doc_id,))[0]["markdown"]


def document_upserts(client, ws, doc_id) -> int:
    return sum(1 for row in feed(client, ws) if row[:3] == ("document", doc_id, "upsert"))


async def yjs_state(client, who, doc_id) -> Doc:
    resp = await client.get(f"{API}/documents/{doc_id}/yjs", headers=who.headers)
    assert resp.status == 200
    doc = Doc()
    doc.apply_update(await resp.read())
    return doc


def edit(doc: Doc, fn) -> bytes:
    """The Yjs update of `fn(text)` on `doc`."""
    captured = []
    subscription = doc.observe(lambda event: captured.append(event.update))
    fn(doc.get("markdown", type=Text))
    doc.unobserve(subscription)
    return captured[0]


async def post_update(client, who, doc_id, update: bytes) -> None:
    resp = await client.post(f"{API}/documents/{doc_id}/yjs", data=update,
                             headers={**who.headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 204, await resp.text()


async def test_a_node_behind_never_stores_an_older_projection_over_a_newer_one(make_nodes):
    a, b = await make_nodes(collab__projection_debounce=0.2, collab__projection_max_delay=1.0)
    owner, ws, doc_id = await owned_document(a, markdown="base\n")
    local = await yjs_state(a, owner, doc_id)   # opens the room on A ...
    await yjs_state(b, owner, doc_id)           # ... then on B (loaded from what A seeded)
    first = edit(local, lambda text: text.insert(0, "one "))
    second = edit(local, lambda text: text.insert(0, "two "))
    before = document_upserts(a, ws, doc_id)

    await post_update(a, owner, doc_id, first)
    await post_update(a, owner, doc_id, second)
    assert await eventually(lambda: stored_markdown(a, doc_id) == "two one base\n", timeout=10)
    # B hears of the first edit only (as if its copy of the room lagged): its projection is older
    await post_update(b, owner, doc_id, first)
    deadline = asyncio.get_running_loop().time() + 2.0  # B's projection is due 0.2 s after its edit
    while asyncio.get_running_loop().time() < deadline:
        assert stored_markdown(b, doc_id) == "two one base\n"
        await asyncio.sleep(0.05)
    assert document_upserts(a, ws, doc_id) - before == 1


async def test_two_nodes_editing_make_one_projection_and_one_automatic_version(make_nodes):
    a, b = await make_nodes(collab__projection_debounce=0.2, collab__projection_max_delay=1.0,
                            versions__idle_seconds=0.5, versions__max_interval_seconds=600)
    alice, ws, doc_id = await owned_document(a, markdown="base\n")
    bob = await join(a, alice, ws, "editor", name="Bob")
    local = await yjs_state(a, alice, doc_id)
    await yjs_state(b, bob, doc_id)
    update = edit(local, lambda text: text.insert(0, "together "))
    before = document_upserts(a, ws, doc_id)

    # the same edit reaches both nodes from their own clients: both project it, both start a burst
    await asyncio.gather(post_update(a, alice, doc_id, update), post_update(b, bob, doc_id, update))

    async def versions() -> list[dict]:
        resp = await b.get(f"{API}/documents/{doc_id}/versions", headers=alice.headers)
        assert resp.status == 200
        body = await resp.json()
        return [v for v in (body["items"] if isinstance(body, dict) else body) if v["kind"] == "auto"]

    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        autos = await versions()
        if autos and {author["id"] for author in autos[0]["authors"]} == {alice.id, bob.id}:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # three idle gaps: a second node's version would be there by now
    autos = await versions()
    assert len(autos) == 1
    assert {author["id"] for author in autos[0]["authors"]} == {alice.id, bob.id}
    assert stored_markdown(a, doc_id) == "together base\n"
    assert document_upserts(a, ws, doc_id) - before == 1


async def test_typing_on_two_nodes_at_once_ends_with_the_projection_of_the_converged_text(make_nodes):
    a, b = await make_nodes(collab__projection_debounce=0.2, collab__projection_max_delay=0.5)
    alice, ws, doc_id = await owned_document(a, markdown="start\n")
    bob = await join(a, alice, ws, "editor", name="Bob")
    on_a = await YClient.connect(a, doc_id, alice.access_token)
    await on_a.wait_synced()
    on_b = await YClient.connect(b, doc_id, bob.access_token)
    await on_b.wait_synced()
    for i in range(40):  # both type at once for ~2 s: each node projects while the other's edits arrive
        on_a.insert(0, f"a{i} ")
        on_b.insert(len(str(on_b.text)), f" b{i}")
        await asyncio.sleep(0.05)
    assert await eventually(lambda: str(on_a.text) == str(on_b.text) and "a39" in str(on_b.text)
                            and "b39" in str(on_a.text), timeout=10)
    final = str(on_a.text)
    assert await eventually(lambda: stored_markdown(a, doc_id) == final, timeout=10)
    await asyncio.sleep(1.0)  # projections still due on either node would be stored by now
    assert stored_markdown(b, doc_id) == final
    for client, who in ((a, alice), (b, bob)):
        resp = await client.get(f"{API}/documents/{doc_id}/content", headers=who.headers)
        assert await resp.text() == final
    await on_a.close()
    await on_b.close()

async def test_document_metadata_on_one_node_shows_the_content_etag_after_an_edit_on_another(nodes):
    a, b = nodes
    owner, ws, doc_id = await owned_document(a, markdown="base\n")
    first = await b.get(f"{API}/documents/{doc_id}", headers=owner.headers)
    assert first.status == 200
    old_etag = (await first.json())["etag"]
    resp = await a.put(f"{API}/documents/{doc_id}/content", data="edited on A\n",
                       headers={**owner.headers, "Content-Type": "text/markdown", "If-Match": old_etag})
    assert resp.status == 200, await resp.text()
    new_etag = resp.headers["ETag"]
    assert new_etag != old_etag

    async def etag_on_b() -> str:
        resp = await b.get(f"{API}/documents/{doc_id}", headers=owner.headers)
        return (await resp.json())["etag"]

    deadline = asyncio.get_running_loop().time() + 5
    while await etag_on_b() != new_etag and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    assert await etag_on_b() == new_etag
    content = await b.get(f"{API}/documents/{doc_id}/content", headers=owner.headers)
    assert await content.text() == "edited on A\n" and content.headers["ETag"] == new_etag


@pytest.mark.serial  # two `mdsync serve` nodes, Redis, S3 and npm clients: the drill's kind of test
@needs_node
async def test_real_clients_on_two_serve_nodes_see_each_others_awareness(tmp_path):
    with NodeCluster(tmp_path / "cluster", nodes=2) as cluster:
        a, b = cluster.nodes
        async with aiohttp.ClientSession(a.base) as http:
            owner = await register(http, name="Owner")
            ws = await make_workspace(http, owner)
            doc = await new_document(http, owner, ws, "Doc", markdown="hello\n")
        ws_a, ws_b = (node.base.replace("http://", "ws://") for node in (a, b))
        result = await run_node("cluster_awareness.mjs", "spread", {
            "yurlA": f"{ws_a}/ws/docs", "yurlB": f"{ws_b}/ws/docs", "hurlB": f"{ws_b}/ws/hocuspocus",
            "doc": doc["id"], "token": owner.access_token}, timeout=60)
        assert (result["a"], result["b"], result["h"]) == ("A,B,H", "A,B,H", "A,B,H")
        assert result["removed"] is True


@pytest.mark.serial  # two `mdsync serve` nodes, one of them killed
async def test_the_users_of_a_killed_node_leave_the_presence_lists_within_15_seconds(tmp_path):
    with NodeCluster(tmp_path / "cluster", nodes=2) as cluster:
        a, b = cluster.nodes
        async with aiohttp.ClientSession(a.base) as http:
            owner = await register(http, name="Owner")
            ws = await make_workspace(http, owner)
            doc = await new_document(http, owner, ws, "Doc", markdown="hello\n")
            editor = await join(http, owner, ws, "editor", name="Eddie")
        async with aiohttp.ClientSession() as http:
            on_a = await http.ws_connect(a.url(f"/ws/docs/{doc['id']}?token={owner.access_token}"))
            on_b = await http.ws_connect(b.url(f"/ws/docs/{doc['id']}?token={editor.access_token}"))

            async def listed() -> set[str]:
                async with http.get(b.url(f"{API}/documents/{doc['id']}/presence"), headers=owner.headers) as resp:
                    assert resp.status == 200
                    return {item["user_id"] for item in (await resp.json())["items"]}

            async def until(check, timeout: float) -> set[str]:
                deadline = asyncio.get_running_loop().time() + timeout
                while not check(seen := await listed()) and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.2)
                return seen

            assert await until(lambda seen: seen == {owner.id, editor.id}, 10) == {owner.id, editor.id}
            cluster.kill(0)  # no goodbye: its entry stays in Redis until it is read as expired
            killed = asyncio.get_running_loop().time()
            assert await until(lambda seen: seen == {editor.id}, 20) == {editor.id}
            assert asyncio.get_running_loop().time() - killed < 17  # 15 s, and a look every 0.2 s
            await on_a.close()
            await on_b.close()

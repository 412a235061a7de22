"""Issue 21's drill: three real `mdsync serve` nodes sharing one PostgreSQL, one Redis and one S3
bucket (tests/cluster.py), real npm y-websocket and Hocuspocus clients spread over them
(tests/interop/fleet.mjs) on two documents, the Hocuspocus ones two documents to a socket, as the
provider multiplexes them. Clients on different nodes converge, presence and the change feed hold
across nodes, and under each fault — `kill -9` of a node, Redis stopped 10 s, Redis emptied, every
node compacting the same document, clients hopping between nodes — while 30 clients type, every
client ends with the text every node serves, and every acknowledged edit is in it."""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import aiohttp
import pytest

from tests.builders import API, bearer, document, join, make_workspace, register
from tests.cluster import CLUSTER_MARKS, NodeCluster
from tests.nodeclients import Fleet, needs_node
from tests.prerequisites import program, requires
from tests.processes import ROOT, Caddy

pytestmark = [needs_node, *CLUSTER_MARKS]

# every node compacts a document past 100 logged updates: with 30 clients typing that is several
# times a second, on all three nodes at once (the "all nodes compacting" fault runs in every test)
NODE_ENV = {
    "MDSYNC_COLLAB__SNAPSHOT_AFTER_UPDATES": "100",
    "MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS": "10000",  # the tests register many users from 127.0.0.1
}
TYPISTS = 30
INTERVAL_MS = 300  # each typist inserts a marker this often: ~100 edits a second in all
SETTLE_SECONDS = 45


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with NodeCluster(tmp_path_factory.mktemp("cluster"), nodes=3, env=NODE_ENV) as started:
        yield started


@pytest.fixture(autouse=True)
def healthy(cluster):
    """Each test starts on three live nodes and an answering Redis, whatever the last one left."""
    cluster.redis.resume()
    for i, node in enumerate(cluster.nodes):
        if node.proc.poll() is not None:
            cluster.restart(i)
    yield


class Team:
    """An owner, editors and two documents, all made through node 0's API."""

    def __init__(self, owner, editors, docs):
        self.owner, self.editors, self.docs = owner, editors, docs
        self.users = [owner, *editors]


async def make_team(cluster: NodeCluster, editors: int = 5) -> Team:
    async with aiohttp.ClientSession(cluster.nodes[0].base) as http:
        owner = await register(http, name="Owner")
        ws = await make_workspace(http, owner, "Drill")
        members = [await join(http, owner, ws, "editor", name=f"Editor {i}") for i in range(editors)]
        docs = [(await document(http, owner, ws, title, markdown=""))["id"] for title in ("One", "Two")]
    return Team(owner, members, docs)


def spread(team: Team, count: int) -> list[dict]:
    """`count` clients over the nodes, the users and both documents: Hocuspocus and y-websocket in
    turn; the Hocuspocus ones in pairs on one socket carrying both documents (c0 and c2 on s0, on
    node 0; c4 and c6 on s1, node 1; ...), as the provider multiplexes them."""
    return [{"id": f"c{i}", "kind": "hp" if i % 2 == 0 else "yws", "node": i % 3,
             "doc": team.docs[(i // 2) % 2], "socket": f"s{i // 4}" if i % 2 == 0 else None,
             "token": team.users[i % len(team.users)].access_token} for i in range(count)]


async def contents(cluster: NodeCluster, team: Team, doc_id: str) -> list[str | None]:
    """GET content of the document on every live node (None: that node did not answer 200)."""
    texts = []
    async with aiohttp.ClientSession(headers=bearer(team.owner.access_token)) as http:
        for node in cluster.alive():
            try:
                async with http.get(node.url(f"{API}/documents/{doc_id}/content"),
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    texts.append(await resp.text() if resp.status == 200 else None)
            except (aiohttp.ClientError, TimeoutError):
                texts.append(None)
    return texts


async def settled(cluster: NodeCluster, fleet: Fleet, team: Team, abandoned: dict | None = None) -> dict[str, str]:
    """Stop typing; wait (bounded) until every client is synced and, per document, every client of it
    holds one text that GET content serves on every node; then every acknowledged edit — of the live
    clients and of those that went away — is in its document's text, and PostgreSQL holds it.
    {document id: text}."""
    await fleet.ask("stop")
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        state = await fleet.ask("state")
        served = {doc: await contents(cluster, team, doc) for doc in team.docs}
        texts = {doc: [g["text"] for g in state["texts"] if g["doc"] == doc] for doc in team.docs}
        synced = all(c["synced"] for c in state["clients"].values())
        if synced and all(len(texts[doc]) == 1 and all(s == texts[doc][0] for s in served[doc])
                          for doc in team.docs):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no convergence in {SETTLE_SECONDS} s: {describe(state, served)}{logs(cluster)}")
        await asyncio.sleep(0.5)
    text = {doc: texts[doc][0] for doc in team.docs}
    everyone = {**state["clients"], **(abandoned or {})}
    missing = {cid: [m for m in c["acked"] if m not in text[c["doc"]]] for cid, c in everyone.items()}
    missing = {cid: ms for cid, ms in missing.items() if ms}
    assert not missing, f"acknowledged edits lost: {missing}"
    unheld = {cid: [m for m in c["typed"] if m not in text[c["doc"]]] for cid, c in state["clients"].items()}
    assert not any(unheld.values()), f"edits of live clients lost: { {k: v for k, v in unheld.items() if v} }"
    for doc in team.docs:
        assert cluster.persisted_text(doc) == text[doc], f"PostgreSQL's snapshot + log of {doc} differ from what is served"
    return text


def logs(cluster: NodeCluster) -> str:
    return "".join(f"\n--- node {i}:\n{cluster.log(i, 1500)}" for i in range(len(cluster.nodes)))


def describe(state: dict, served: dict) -> str:
    unsynced = sorted((cid, c["node"], c["socket"], c["pending"]) for cid, c in state["clients"].items()
                      if not c["synced"])
    groups = [(g["doc"][:8], len(g["text"]), sorted(g["ids"])[:6]) for g in state["texts"]]
    lengths = {doc[:8]: [None if s is None else len(s) for s in texts] for doc, texts in served.items()}
    return (f"unsynced clients (id, node, socket state, pending) {unsynced}; client texts (document, length, ids) "
            f"{groups}; served lengths per node {lengths}")


def acks(state: dict) -> int:
    """The Hocuspocus acknowledgements (SyncStatus) the clients received so far."""
    return sum(c["acks"] for c in state["clients"].values() if c["kind"] == "hp")


async def start_typing(fleet: Fleet, team: Team, seconds: float) -> None:
    await fleet.ask("open", clients=spread(team, TYPISTS))
    await fleet.ask("type", interval=INTERVAL_MS)
    await asyncio.sleep(seconds)


# -- without faults --------------------------------------------------------------------------------
async def test_clients_on_three_nodes_converge(cluster):
    team = await make_team(cluster, editors=2)
    async with Fleet([n.base for n in cluster.nodes]) as fleet:
        await fleet.ask("open", clients=spread(team, 12))
        await fleet.ask("type", interval=200)
        await asyncio.sleep(3)
        text = await settled(cluster, fleet, team)
        state = await fleet.ask("state")
    for doc in team.docs:
        assert {c["node"] for c in state["clients"].values() if c["doc"] == doc} == {0, 1, 2}
    for cid, c in state["clients"].items():
        assert c["typed"] and all(m in text[c["doc"]] for m in c["typed"]), cid


async def test_presence_on_any_node_lists_the_clients_of_every_node(cluster):
    team = await make_team(cluster, editors=2)
    # user k on node k: each node has one of them
    clients = [{"id": f"p{k}", "kind": "hp" if k % 2 else "yws", "node": k, "doc": team.docs[0],
                "token": team.users[k].access_token} for k in range(3)]
    wanted = sorted(u.id for u in team.users)
    async with Fleet([n.base for n in cluster.nodes]) as fleet, \
            aiohttp.ClientSession(headers=bearer(team.owner.access_token)) as http:
        await fleet.ask("open", clients=clients)
        seen: dict[int, list] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for i, node in enumerate(cluster.nodes):
                async with http.get(node.url(f"{API}/documents/{team.docs[0]}/presence")) as resp:
                    assert resp.status == 200, await resp.text()
                    seen[i] = sorted(item["user_id"] for item in (await resp.json())["items"])
            if all(ids == wanted for ids in seen.values()):
                break
            await asyncio.sleep(0.2)
        assert all(ids == wanted for ids in seen.values()), f"presence per node {seen}, wanted {wanted}"


async def test_change_feed_long_poll_on_node_c_wakes_for_a_commit_on_node_a(cluster):
    team = await make_team(cluster, editors=0)
    a, c = cluster.nodes[0], cluster.nodes[2]
    async with aiohttp.ClientSession(headers=bearer(team.owner.access_token)) as http:
        async with http.get(c.url(f"{API}/sync/changes"), params={"since": "now"}) as resp:
            assert resp.status == 200, await resp.text()
            cursor = (await resp.json())["cursor"]

        async def long_poll():
            async with http.get(c.url(f"{API}/sync/changes"), params={"since": cursor, "wait": "30"}) as resp:
                assert resp.status == 200, await resp.text()
                return await resp.json(), time.monotonic()

        waiting = asyncio.ensure_future(long_poll())
        await asyncio.sleep(1)  # the long poll is parked on node C
        assert not waiting.done(), "the long poll answered before anything changed"
        async with http.put(a.url(f"{API}/documents/{team.docs[0]}/content"), data="woken\n") as resp:
            assert resp.status == 200, await resp.text()
            committed = time.monotonic()
        body, answered = await asyncio.wait_for(waiting, 40)
    assert [(ch["entity"], ch["id"]) for ch in body["changes"]] == [("document", team.docs[0])], body
    # it woke for the commit, not at the end of its 30 s wait
    assert answered - committed < 10, f"node C answered {answered - committed:.1f} s after the commit"


async def test_login_throttle_of_an_account_holds_across_nodes(cluster):
    """Wrong passwords for one account, in turn on the three nodes: after
    auth.login_failures_per_account (5) failures every node answers 429."""
    async with aiohttp.ClientSession(cluster.nodes[0].base) as first:
        victim = await register(first, name="Victim")
    statuses = []
    async with aiohttp.ClientSession() as http:
        for k in range(9):
            node = cluster.nodes[k % 3]
            async with http.post(node.url(f"{API}/auth/login"), json={"email": victim.email, "password": "wrong!"}) as r:
                statuses.append(r.status)
    assert statuses[:5] == [401] * 5, statuses
    assert statuses[5:] == [429] * 4, statuses


# -- faults, each while 30 clients type ------------------------------------------------------------
async def test_kill_9_of_a_node_loses_nothing_acknowledged(cluster):
    team = await make_team(cluster)
    async with Fleet([n.base for n in cluster.nodes]) as fleet:
        await start_typing(fleet, team, 4)
        before = (await fleet.ask("state"))["clients"]
        on_node_1 = [cid for cid, c in before.items() if c["node"] == 1]
        # a few of node 1's Hocuspocus clients go away with it (their tabs closed): what they saw
        # acknowledged must survive from PostgreSQL alone; the rest reconnect to other nodes
        gone = [cid for cid in on_node_1 if before[cid]["kind"] == "hp"][:3]
        killed = await fleet.ask("kill", pid=cluster.nodes[1].proc.pid, node=1, abandon=gone)
        cluster.nodes[1].proc.wait(10)
        assert any(c["acked"] for c in killed["abandoned"].values()), killed
        await asyncio.sleep(4)
        state = await fleet.ask("state")
        moved = {cid: state["clients"][cid]["node"] for cid in on_node_1 if cid not in gone}
        assert all(node != 1 for node in moved.values()), f"clients still on the dead node: {moved}"
        # the two nodes left agree with every client, and hold everything acknowledged
        await settled(cluster, fleet, team, abandoned=killed["abandoned"])
        # node 1 back (it loads the document from PostgreSQL), its clients back on it, typing again
        cluster.restart(1)
        for cid in moved:
            await fleet.ask("move", id=cid, node=1)
        await fleet.ask("type", interval=INTERVAL_MS)
        await asyncio.sleep(2)
        await settled(cluster, fleet, team, abandoned=killed["abandoned"])


async def test_redis_stopped_10_s_then_resumed(cluster):
    team = await make_team(cluster)
    async with Fleet([n.base for n in cluster.nodes]) as fleet:
        await start_typing(fleet, team, 3)
        before = acks(await fleet.ask("state"))
        cluster.redis.pause()
        try:
            await asyncio.sleep(1)
            early = await fleet.ask("state")
            await asyncio.sleep(9)
            late = await fleet.ask("state")
        finally:
            cluster.redis.resume()
        # while Redis answered nothing, edits went on being committed and acknowledged, and what
        # was acknowledged on one node reached the clients of the others (from PostgreSQL)
        assert acks(late) > acks(early) > before, (
            f"acks before the pause {before}, 1 s into it {acks(early)}, 10 s into it {acks(late)}: "
            f"{describe(late, {})}{logs(cluster)}")
        acked = {doc: {m for c in early["clients"].values() if c["kind"] == "hp" and c["doc"] == doc
                       for m in c["acked"]} for doc in team.docs}
        unseen = {cid: len([m for m in acked[group["doc"]] if m not in group["text"]])
                  for group in late["texts"] for cid in group["ids"]}
        assert not any(unseen.values()), f"edits acknowledged 8 s earlier, unseen per client: {unseen}"
        await asyncio.sleep(3)
        await settled(cluster, fleet, team)


async def test_redis_flushall(cluster):
    team = await make_team(cluster)
    async with Fleet([n.base for n in cluster.nodes]) as fleet:
        await start_typing(fleet, team, 3)
        cluster.redis.flushall()
        await asyncio.sleep(3)
        await settled(cluster, fleet, team)


async def test_all_nodes_compacting_the_same_document_at_once(cluster):
    """collab.snapshot_after_updates is 100 on every node and all three have the room open: each
    passes the threshold again and again while 30 clients type, at the same moments."""
    team = await make_team(cluster)

    def snapshot_seq() -> int:
        rows = cluster.sql("SELECT seq FROM doc_snapshots WHERE document_id = %s", (team.docs[0],))
        return rows[0][0] if rows else 0

    async with Fleet([n.base for n in cluster.nodes]) as fleet:
        await start_typing(fleet, team, 2)
        seqs = [snapshot_seq()]
        deadline = time.monotonic() + 20
        while len(set(seqs) - {0}) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            seqs.append(snapshot_seq())
        await settled(cluster, fleet, team)
    assert len(set(seqs) - {0}) >= 3, f"the document was not compacted again and again: snapshot seqs {seqs}"
    logged = cluster.sql("SELECT count(*) FROM doc_updates WHERE document_id = %s", (team.docs[0],))[0][0]
    assert logged < 1000, f"the log was not compacted: {logged} rows"


async def test_clients_moving_from_node_to_node_between_edits(cluster):
    team = await make_team(cluster)
    rand = random.Random(21)
    async with Fleet([n.base for n in cluster.nodes]) as fleet:
        await start_typing(fleet, team, 1)
        for _ in range(30):
            cid = f"c{rand.randrange(TYPISTS)}"
            await fleet.ask("move", id=cid, node=rand.randrange(3))
            await asyncio.sleep(0.2)
        await settled(cluster, fleet, team)
        state = await fleet.ask("state")
    assert sum(c["opens"] for c in state["clients"].values()) >= TYPISTS + 20, "the clients did not move"


def docs_caddyfile(cluster: NodeCluster, tmp_path) -> Path:
    """The Caddyfile of docs/operations.md "Several nodes", its site and nodes made this cluster's."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("## Several nodes"):]
    block = re.search(r"```caddyfile\n(.*?)```", section, re.S).group(1)
    addresses = re.findall(r"10\.0\.0\.\d+:8080", block)
    assert len(addresses) == len(cluster.nodes), block
    for address, node in zip(addresses, cluster.nodes, strict=True):
        block = block.replace(address, node.base.removeprefix("http://"))
    path = tmp_path / "Caddyfile"
    path.write_text("{\n\tadmin {$MDSYNC_CADDY_ADMIN}\n}\n" + block.replace("docs.example.com", "{$MDSYNC_SITE}"))
    return path


@requires(program("caddy", ".ci/run installs Debian's caddy"))
async def test_the_caddy_load_balancer_of_the_docs_spreads_requests_and_goes_around_a_dead_node(cluster, tmp_path):
    caddy = Caddy(tmp_path, config=docs_caddyfile(cluster, tmp_path)).start()
    try:
        async with aiohttp.ClientSession(caddy.base) as http:
            user = await register(http, name="Through Caddy")

            async def node_of_one_request() -> str:
                async with http.get("/readyz") as resp:
                    assert resp.status == 200, await resp.text()
                    node = (await resp.json())["checks"]["cluster"]["node"]
                async with http.get(f"{API}/me", headers=user.headers) as resp:
                    assert resp.status == 200, await resp.text()
                return node

            served = {await node_of_one_request() for _ in range(30)}
            assert len(served) >= 2, f"every request went to one node: {served}"
            cluster.kill(1)
            # the dead node's requests are tried on another: nobody sees an error
            for _ in range(30):
                await node_of_one_request()
    finally:
        caddy.stop()

"""Limits that hold across several nodes (issue 21; docs/operations.md "Limits and tickets on
several nodes"): three in-process nodes on one PostgreSQL database, one Redis and one S3 (moto),
each a real app over real HTTP. Requests spread over the nodes meet one login throttle, one AI
budget and one AI rate limit; a socket ticket from one node opens a socket once, on any node.
With Redis stopped, sign-in still works and each node still throttles on its own. One test runs
the throttle and AI limits over three `mdsync serve` processes (tests/cluster.py), as the drill."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid

import aiohttp
import pytest

from mdsync.app import create_app
from tests import engines, redisserver
from mdsync.ai.ledger import Ledger
from mdsync.appkeys import SETTINGS
from mdsync.db import database_for
from tests.ai_setup import OPENAI, team
from tests.cluster import NodeCluster, node_settings
from tests.builders import PASSWORD, owned_document, register
from tests.fake_ai_upstream import CHAT_USAGE, fake_ai  # noqa: F401
from tests.prerequisites import requires
from tests.readers import settings_rows
from tests.waiting import eventually
from tests.yclient import YClient

# several nodes need PostgreSQL: `test_x[postgresql]` alone (tests/cluster.py)
pytestmark = [pytest.mark.postgresql_only, requires(redisserver.missing_reason())]

CHAT = {"model": "gpt-fake", "max_tokens": 20, "messages": [{"role": "user", "content": "Say hello"}]}


@pytest.fixture
def nodes(cluster_s3, redis, aiohttp_client, tmp_path):
    """`await nodes(3, **overrides)`: that many in-process nodes of one cluster, each a test client
    with a data dir of its own, all on one database (dropped after the test), Redis and bucket."""
    database = engines.database_url(tmp_path / "cluster")

    async def start(count: int = 3, **overrides) -> list:
        return [await aiohttp_client(create_app(node_settings(tmp_path / f"node{n}", database, redis, cluster_s3,
                                                              **overrides)))
                for n in range(count)]
    return start


async def login(client, email: str, password: str = PASSWORD) -> int:
    resp = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    await resp.read()
    return resp.status


def spread(nodes: list, count: int) -> list:
    """`count` calls' nodes, round robin."""
    return [nodes[n % len(nodes)] for n in range(count)]


# -- login throttles -----------------------------------------------------------------------------
async def test_wrong_passwords_spread_over_three_nodes_stop_at_the_account_limit(nodes):
    a, b, c = await nodes(3, auth__login_failures_per_account=5, auth__login_attempts_per_address=1000)
    account = await register(a)
    statuses = await asyncio.gather(*(login(node, account.email, f"guess number {n}")
                                      for n, node in enumerate(spread([a, b, c], 30))))
    assert sorted(statuses).count(401) == 5, statuses
    assert sorted(statuses).count(429) == 25, statuses
    for node in (a, b, c):  # the right password waits too, on every node
        assert await login(node, account.email) == 429
    bystander = await register(b)
    assert await login(c, bystander.email) == 200


async def test_a_sign_in_on_one_node_forgives_the_failures_counted_on_the_others(nodes):
    a, b, c = await nodes(3, auth__login_failures_per_account=3, auth__login_attempts_per_address=1000)
    account = await register(a)
    assert [await login(node, account.email, "wrong password!") for node in (a, b)] == [401, 401]
    assert await login(c, account.email) == 200
    assert [await login(node, account.email, "wrong password!") for node in (a, b, c)] == [401, 401, 401]
    assert await login(a, account.email) == 429


async def test_address_limits_hold_across_nodes(nodes):
    a, b, c = await nodes(3, auth__login_attempts_per_address=7, auth__register_attempts_per_address=4)
    statuses = await asyncio.gather(*(login(node, f"nobody{n}@example.com")
                                      for n, node in enumerate(spread([a, b, c], 21))))
    assert sorted(statuses).count(401) == 7 and sorted(statuses).count(429) == 14, statuses

    async def register_on(node, n: int) -> int:
        resp = await node.post("/api/v1/auth/register", json={
            "email": f"new{n}-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD, "name": "N"})
        await resp.read()
        return resp.status
    statuses = await asyncio.gather(*(register_on(node, n) for n, node in enumerate(spread([a, b, c], 12))))
    assert sorted(statuses).count(201) == 4 and sorted(statuses).count(429) == 8, statuses


async def test_with_redis_stopped_sign_in_works_and_each_node_throttles_alone(nodes, redis):
    a, b = await nodes(2, auth__login_failures_per_account=3, auth__login_attempts_per_address=1000)
    account, other = await register(a), await register(a)
    redis.pause()
    try:
        assert await asyncio.wait_for(login(b, other.email), 10) == 200  # not locked out
        assert [await login(a, account.email, "wrong password!") for _ in range(4)] == [401, 401, 401, 429]
        assert await login(a, account.email) == 429
    finally:
        redis.resume()
    # Redis back: within a few seconds the nodes count together again
    probe = await register(a)
    key = "mdsync:throttle:failures:" + hashlib.sha256(probe.email.encode()).hexdigest()[:32]
    for _ in range(60):
        await login(a, probe.email, "wrong password!")
        if redis.command("EXISTS", key) == b":1":
            break
        await asyncio.sleep(0.25)
    assert redis.command("EXISTS", key) == b":1"
    fresh = await register(b)
    statuses = [await login(node, fresh.email, "wrong password!") for node in (a, b, a, b)]
    assert statuses == [401, 401, 401, 429]


# -- AI budgets and rate limits ------------------------------------------------------------------
async def ai_call(node, t, who: str = "editor") -> int:
    resp = await node.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers(who))
    await resp.read()
    return resp.status


async def test_ai_requests_spread_over_nodes_never_pass_the_budget(nodes, fake_ai):
    a, b, c = await nodes(3, **fake_ai.settings())
    t = await team(a, "editor")
    per_call = sum(CHAT_USAGE)
    # each call reserves more than it spends (prompt estimate + max_tokens 20), so fewer may pass
    await t.put_limits(tokens_per_month=10 * per_call)
    statuses = await asyncio.gather(*(ai_call(node, t) for node in spread([a, b, c], 30)))
    passed = statuses.count(200)
    assert 1 <= passed <= 10 and statuses.count(429) == 30 - passed, statuses
    spent = t.rows("SELECT tokens FROM ai_spend WHERE workspace_id = ? AND user_id = ''", (t.ws,))
    assert spent[0]["tokens"] == passed * per_call <= 10 * per_call
    assert sum(u["requests"] for u in await t.usage()) == passed


async def test_ai_requests_per_minute_spread_over_nodes_stop_at_the_limit(nodes, fake_ai):
    a, b, c = await nodes(3, **fake_ai.settings())
    t = await team(a, "editor")
    await t.put_limits(user_requests_per_minute=4)
    statuses = await asyncio.gather(*(ai_call(node, t) for node in spread([a, b, c], 15)))
    assert statuses.count(200) == 4 and statuses.count(429) == 11, statuses
    for node in (a, b, c):
        assert await ai_call(node, t) == 429


async def test_an_ai_reservation_aborted_by_a_deadlock_between_nodes_is_made_again(nodes):
    """Node 1's batch holds the workspace's month row and then waits for a row that node 2's batch
    took before its reservation, which waits for the month row: PostgreSQL aborts one of them (the
    reservation, which waited first). The writer runs it again (docs/architecture.md "Databases"):
    the request gets its reservation, not an error."""
    a, = await nodes(1)
    t = await team(a, "editor")
    await t.put_limits(tokens_per_month=10_000)
    dbs = [database_for(a.app[SETTINGS], readers=1) for _ in range(2)]
    for db in dbs:
        await db.open()
    one, two = Ledger(dbs[0]), Ledger(dbs[1])
    await one.reserve(t.ws, t.owner.id, "openai", "gpt-fake", 10)  # the month row exists
    month_held, limits_held, go = threading.Event(), threading.Event(), threading.Event()
    month = "UPDATE ai_spend SET tokens = tokens WHERE workspace_id = ? AND user_id = ''"
    limits = "UPDATE ai_limits SET updated_at = updated_at WHERE workspace_id = ?"

    def node_one(tx):
        tx.execute(month, (t.ws,))
        month_held.set()
        limits_held.wait(10)
        time.sleep(0.3)  # so that the reservation waits longer: PostgreSQL aborts it, not this
        tx.execute(limits, (t.ws,))

    def node_two_first(tx):
        month_held.wait(10)
        tx.execute(limits, (t.ws,))
        limits_held.set()

    try:
        blocker = dbs[1].submit(lambda tx: go.wait(10))  # node 2's next batch: its first job + the reservation
        held = dbs[0].submit(node_one)
        first = dbs[1].submit(node_two_first)
        queued = dbs[1].stats.queued
        reservation = asyncio.ensure_future(two.reserve(t.ws, t.people["editor"].id, "openai", "gpt-fake", 10))
        assert await eventually(lambda: dbs[1].stats.queued == queued + 1)
        go.set()
        await asyncio.wait_for(asyncio.gather(blocker, held, first), 30)
        call_id = await asyncio.wait_for(reservation, 30)
    finally:
        go.set()
        month_held.set()
        limits_held.set()
        for db in dbs:
            await db.close()
    assert t.rows("SELECT reserved FROM ai_calls WHERE id = ?", (call_id,))[0]["reserved"] == 10


# -- the same over `mdsync serve` processes, as the drill runs them ---------------------------------
@pytest.mark.serial
async def test_three_served_nodes_hold_the_login_throttle_and_the_ai_limits_together(tmp_path, fake_ai):
    env = {**fake_ai.environment(), "MDSYNC_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS": "1000"}
    with NodeCluster(tmp_path / "cluster", nodes=3, env=env) as cluster:
        sessions = [aiohttp.ClientSession(node.base) for node in cluster.nodes]
        try:
            victim = await register(sessions[0])
            statuses = await asyncio.gather(*(login(node, victim.email, f"guess number {n}")
                                              for n, node in enumerate(spread(sessions, 30))))
            assert sorted(statuses).count(401) == 5 and sorted(statuses).count(429) == 25, statuses

            t = await team(sessions[1], "editor")
            await t.put_limits(user_requests_per_minute=4)
            statuses = await asyncio.gather(*(ai_call(node, t) for node in spread(sessions, 15)))
            assert statuses.count(200) == 4 and statuses.count(429) == 11, statuses
            # 4 calls spent; room for 10 more (each reserves more than it spends: maybe fewer pass)
            await t.put_limits(tokens_per_month=14 * sum(CHAT_USAGE))
            statuses = await asyncio.gather(*(ai_call(node, t, "owner") for node in spread(sessions, 30)))
            passed = statuses.count(200)
            assert 1 <= passed <= 10 and statuses.count(429) == 30 - passed, statuses
            spent = cluster.sql("SELECT tokens FROM ai_spend WHERE workspace_id = %s AND user_id = ''", (t.ws,))
            assert spent[0][0] == (4 + passed) * sum(CHAT_USAGE) <= 14 * sum(CHAT_USAGE)
        finally:
            for session in sessions:
                await session.close()


# -- socket tickets ------------------------------------------------------------------------------
async def ticket(node, doc_id: str, headers: dict) -> str:
    resp = await node.post(f"/api/v1/documents/{doc_id}/ws-ticket", headers=headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["ticket"]


async def opens(node, doc_id: str, token: str) -> bool:
    """True when the socket syncs; False when it is closed 4401."""
    sock = await YClient.connect(node, doc_id, token)
    try:
        done = asyncio.ensure_future(sock.wait_synced())
        closed = asyncio.ensure_future(sock.wait_closed())
        await asyncio.wait({done, closed}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if done.done() and not done.exception():
            closed.cancel()
            return True
        assert closed.done() and closed.result() == 4401
        done.cancel()
        return False
    finally:
        await sock.close()


async def test_a_ticket_from_one_node_opens_a_socket_once_on_any_node(nodes):
    a, b, c = await nodes(3)
    owner, _, doc_id = await owned_document(a, markdown="# Shared\n")
    issued = await ticket(a, doc_id, owner.headers)
    assert await opens(b, doc_id, issued)
    assert not await opens(c, doc_id, issued)
    assert not await opens(b, doc_id, issued)
    assert not await opens(a, doc_id, issued)
    # the database the nodes share never holds a ticket one could use
    assert not engines_rows(a, "SELECT * FROM ws_tickets WHERE ticket_hash = ? OR principal LIKE ?",
                            (issued, f"%{issued}%"))


async def test_one_ticket_sent_to_every_node_at_once_opens_one_socket(nodes):
    a, b, c = await nodes(3)
    owner, _, doc_id = await owned_document(a, markdown="# Race\n")
    for _ in range(3):
        issued = await ticket(c, doc_id, owner.headers)
        opened = await asyncio.gather(*(opens(node, doc_id, issued) for node in (a, b, c, a, b, c)))
        assert opened.count(True) == 1, opened


async def test_signing_out_on_one_node_voids_the_sessions_tickets_on_every_node(nodes):
    a, b, c = await nodes(3)
    owner, _, doc_id = await owned_document(a, markdown="# Gone\n")
    resp = await c.post("/api/v1/auth/login", json={"email": owner.email, "password": PASSWORD})
    laptop = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}  # a second session
    issued = [await ticket(a, doc_id, owner.headers) for _ in range(3)]
    kept = await ticket(a, doc_id, laptop)
    resp = await b.post("/api/v1/auth/logout", headers=owner.headers)
    assert resp.status == 204
    for node, token in zip((c, a, b), issued):
        assert not await opens(node, doc_id, token)
    assert await eventually(lambda: len(engines_rows(a, "SELECT 1 FROM ws_tickets WHERE user_id = ?", (owner.id,))) == 1)
    assert await opens(b, doc_id, kept)  # the other session's ticket stays good


def engines_rows(node, sql: str, params=()) -> list:
    return settings_rows(node.app[SETTINGS], sql, params)

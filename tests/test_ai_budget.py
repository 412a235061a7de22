"""AI proxy: budgets that hold under concurrency (reserve, then settle), user limits, the usage
report (the provider's counts; estimates where none came), and the model list."""

from __future__ import annotations

import asyncio

import pytest

from mdsync.ai import AI_KEY
from mdsync.ai.ledger import Ledger
from mdsync.api.errors import RateLimited
from mdsync.appkeys import SETTINGS
from mdsync.db import database_for
from tests.ai_setup import ANTHROPIC, API, OPENAI, make_workspace, team
from tests.fake_ai_upstream import CHAT_USAGE, MESSAGES_USAGE, RESPONSES_USAGE, fake_ai  # noqa: F401

pytestmark = pytest.mark.both_engines

MESSAGES = [{"role": "user", "content": "Say hello"}]
CHAT = {"model": "gpt-fake", "max_tokens": 20, "messages": MESSAGES}


@pytest.fixture
async def client(make_client, fake_ai):
    return await make_client(**fake_ai.settings())


def spent(t, period: str | None = None) -> int:
    rows = t.rows("SELECT SUM(tokens) AS s FROM ai_spend WHERE workspace_id = ? AND user_id = ''", (t.ws,))
    return rows[0]["s"] or 0


async def test_twenty_concurrent_requests_with_a_budget_for_ten(client, fake_ai):
    """Each call reserves more than it spends (prompt estimate + cap 20) and spends 17 (12 + 5):
    a budget of 10 × 17 tokens lets at most 10 through, however they interleave."""
    t = await team(client)
    per_call = sum(CHAT_USAGE)
    await t.put_limits(tokens_per_month=10 * per_call)

    async def one():
        resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
        await resp.read()
        return resp.status, resp.headers.get("x-should-retry"), resp.headers.get("Retry-After")

    results = await asyncio.gather(*(one() for _ in range(20)))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert 1 <= len(ok) <= 10
    assert all(r[0] == 429 and r[1] == "false" and r[2] for r in refused)
    assert spent(t) == len(ok) * per_call <= 10 * per_call
    usage = await t.usage()
    assert sum(u["requests"] for u in usage) == len(ok)
    assert sum(u["input_tokens"] + u["output_tokens"] for u in usage) == len(ok) * per_call


async def test_two_writers_on_one_database_never_pass_the_budget_together(client):
    """Two writers on one database (two processes; here two database objects), each committing
    its reservations in batches: a reservation adds to the month's total first, under that row's
    lock, and checks the total it got, so on PostgreSQL too (READ COMMITTED) the second writer
    waits and then sees the first one's calls."""
    t = await team(client)
    await t.put_limits(tokens_per_month=1000)
    dbs = [database_for(client.app[SETTINGS], readers=1) for _ in range(2)]
    for db in dbs:
        await db.open()
    ledgers = [Ledger(db) for db in dbs]

    async def reserve(n: int) -> int | None:
        try:
            return await ledgers[n % 2].reserve(t.ws, f"user-{n % 3}", "openai", "gpt-fake", 100)
        except RateLimited:
            return None

    try:
        calls = await asyncio.gather(*(reserve(n) for n in range(30)))
    finally:
        for db in dbs:
            await db.close()
    assert sum(call is not None for call in calls) == 10
    assert spent(t) == 1000
    assert len(t.rows("SELECT id FROM ai_calls WHERE workspace_id = ?", (t.ws,))) == 10


async def test_held_reservations_refuse_what_could_pass_the_budget(client, fake_ai):
    """While calls are in flight their reservation counts: the budget can never be overspent by
    requests that are answered later."""
    t = await team(client)
    await t.put_limits(tokens_per_month=3000)
    body = {"model": "fake-hold", "max_tokens": 1000, "messages": MESSAGES}  # reserves > 1000 each
    first = asyncio.ensure_future(client.post(OPENAI + "/chat/completions", json=body, headers=t.headers()))
    second = asyncio.ensure_future(client.post(OPENAI + "/chat/completions", json=body, headers=t.headers()))
    for _ in range(200):
        if len(fake_ai.requests) == 2:
            break
        await asyncio.sleep(0.02)
    resp = await client.post(OPENAI + "/chat/completions", json=body, headers=t.headers())
    assert resp.status == 429 and resp.headers["x-should-retry"] == "false"
    fake_ai.release()
    for call in (first, second):
        assert (await call).status == 200
    assert spent(t) == 2 * sum(CHAT_USAGE)  # settled: the rest released
    resp = await client.post(OPENAI + "/chat/completions", json=body, headers=t.headers())
    assert resp.status == 200


async def test_user_limits_are_429_with_retry_after(client, fake_ai):
    t = await team(client, "editor")
    await t.put_limits(user_requests_per_minute=2)
    for _ in range(2):
        assert (await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers("editor"))).status == 200
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers("editor"))
    assert resp.status == 429
    assert (await resp.json())["type"] == "urn:mdsync:error:rate-limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert "x-should-retry" not in resp.headers  # a user limit passes: the SDK may retry after Retry-After
    # another user of the workspace is not limited by it
    assert (await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())).status == 200

    await t.put_limits(user_tokens_per_day=500)
    resp = await client.post(OPENAI + "/chat/completions", json={**CHAT, "max_tokens": 600}, headers=t.headers())
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "x-should-retry" not in resp.headers
    assert (await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())).status == 200


async def test_usage_equals_the_providers_counts(client, fake_ai):
    t = await team(client)
    calls = [(OPENAI + "/chat/completions", CHAT, CHAT_USAGE),
             (OPENAI + "/chat/completions", {**CHAT, "stream": True}, CHAT_USAGE),  # no include_usage asked
             (OPENAI + "/responses", {"model": "gpt-fake", "input": "hi"}, RESPONSES_USAGE),
             (OPENAI + "/responses", {"model": "gpt-fake", "input": "hi", "stream": True}, RESPONSES_USAGE),
             (ANTHROPIC + "/v1/messages", {**CHAT, "model": "claude-fake"}, MESSAGES_USAGE),
             (ANTHROPIC + "/v1/messages", {**CHAT, "model": "claude-fake", "stream": True}, MESSAGES_USAGE)]
    for url, body, _ in calls:
        async with client.post(url, json=body, headers=t.headers()) as resp:
            assert resp.status == 200
            text = await resp.read()
            if body.get("stream") and "chat" in url:
                assert b'"usage"' not in text  # the usage chunk it did not ask for
    usage = await t.usage()
    by_model = {(u["provider"], u["model"]): u for u in usage}
    assert all(not u["estimated"] for u in usage)
    assert by_model[("openai", "gpt-fake")] == {
        "workspace_id": t.ws, "user_id": t.owner.id, "provider": "openai", "model": "gpt-fake",
        "day": usage[0]["day"], "requests": 4, "input_tokens": 4 * 12, "output_tokens": 4 * 5, "estimated": False}
    assert by_model[("anthropic", "claude-fake")]["input_tokens"] == 2 * MESSAGES_USAGE[0]
    assert by_model[("anthropic", "claude-fake")]["output_tokens"] == 2 * MESSAGES_USAGE[1]
    assert spent(t) == sum(sum(c[2]) for c in calls)


async def test_usage_report_who_sees_what_and_dates(client, fake_ai):
    t = await team(client, "editor", "admin", "viewer")
    for who in ("owner", "editor"):
        assert (await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers(who))).status == 200
    day = (await t.usage())[0]["day"]
    assert {u["user_id"] for u in await t.usage("admin")} == {t.owner.id, t.people["editor"].id}
    assert {u["user_id"] for u in await t.usage("editor")} == {t.people["editor"].id}
    assert await t.usage("viewer") == []
    assert len(await t.usage(**{"from": day, "to": day})) == 2
    assert await t.usage(**{"from": "2000-01-01", "to": "2000-01-31"}) == []
    # without workspace_id: every workspace of the caller
    resp = await client.get(f"{API}/ai/usage", headers=t.headers("editor"))
    assert [u["user_id"] for u in (await resp.json())["items"]] == [t.people["editor"].id]
    for bad in ({"from": "2026-13-01"}, {"to": "yesterday"}, {"from": "2026-02-30"}):
        resp = await client.get(f"{API}/ai/usage", params={"workspace_id": t.ws, **bad}, headers=t.headers())
        assert resp.status == 422
        assert [e["field"] for e in (await resp.json())["errors"]] == list(bad)
    other = await team(client)
    resp = await client.get(f"{API}/ai/usage", params={"workspace_id": other.ws}, headers=t.headers())
    assert resp.status == 404


async def test_models_from_limits_else_the_upstreams_cached(client, fake_ai):
    t = await team(client)
    resp = await client.get(f"{API}/ai/models", headers=t.headers())
    assert resp.status == 200
    assert (await resp.json())["items"] == [{"provider": "openai", "id": "gpt-fake"},
                                            {"provider": "openai", "id": "gpt-fake-mini"},
                                            {"provider": "anthropic", "id": "claude-fake"}]
    asked = len(fake_ai.requests)
    assert (await client.get(f"{API}/ai/models", headers=t.headers())).status == 200
    assert len(fake_ai.requests) == asked  # cached
    await t.put_limits(models=["gpt-fake", "claude-fake"])
    resp = await client.get(f"{API}/ai/models", headers=t.headers())
    assert (await resp.json())["items"] == [{"provider": "openai", "id": "gpt-fake"},
                                            {"provider": "anthropic", "id": "claude-fake"}]


async def test_models_of_an_unreachable_upstream_are_empty(make_client):
    client = await make_client(ai__openai__api_key="sk-x")  # a loopback port nothing listens on
    t = await team(client)
    resp = await client.get(f"{API}/ai/models", headers=t.headers())
    assert resp.status == 200 and (await resp.json())["items"] == []


async def test_reservations_a_stopped_process_held_are_released_at_start(client, fake_ai):
    t = await team(client)
    await t.put_limits(tokens_per_month=5000)
    ai = client.app[AI_KEY]
    await Ledger(ai.db, "an earlier run").reserve(t.ws, t.owner.id, "openai", "gpt-fake", 4000)
    resp = await client.post(OPENAI + "/chat/completions", json={**CHAT, "max_tokens": 2000}, headers=t.headers())
    assert resp.status == 429
    assert await ai.ledger.release_abandoned() == 1
    assert spent(t) == 0
    assert (await client.post(OPENAI + "/chat/completions", json={**CHAT, "max_tokens": 2000},
                              headers=t.headers())).status == 200


async def test_the_ledger_rows_go_with_a_purged_workspace(client, fake_ai):
    t = await team(client)
    await make_workspace(client, t.owner, "Another")
    await t.put_key("openai", "sk-workspace")
    await t.put_limits(tokens_per_month=100000)
    headers = t.headers(**{"X-Mdsync-Workspace": t.ws})
    assert (await client.post(OPENAI + "/chat/completions", json=CHAT, headers=headers)).status in (200, 502)
    from mdsync.workspaces.service import WORKSPACES, purge_workspace

    await client.app[WORKSPACES].db.write(purge_workspace, t.ws)
    for table in ("ai_keys", "ai_limits", "ai_calls", "ai_spend"):
        assert t.rows(f"SELECT * FROM {table} WHERE workspace_id = ?", (t.ws,)) == [], table


async def test_calls_and_tokens_are_counted_for_metrics(client, fake_ai):
    t = await team(client)
    assert (await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())).status == 200
    assert (await client.post(OPENAI + "/chat/completions", json={**CHAT, "model": "fake-500"},
                              headers=t.headers())).status == 500
    text = await (await client.get("/metrics")).text()
    assert 'mdsync_ai_calls_total{outcome="2xx",provider="openai"} 1.0' in text
    assert 'mdsync_ai_calls_total{outcome="5xx",provider="openai"} 1.0' in text
    assert 'mdsync_ai_tokens_total{kind="input",provider="openai"} 12.0' in text
    assert 'mdsync_ai_tokens_total{kind="output",provider="openai"} 5.0' in text

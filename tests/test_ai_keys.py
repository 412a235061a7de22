"""AI proxy: workspace provider keys (stored encrypted, shown as last4), where a workspace's
base_url may point (SSRF rules), which key pays, and the limits routes (docs/api.md "AI proxy")."""

from __future__ import annotations

import pytest

from mdsync.ai import AI_KEY
from tests.ai_setup import API, OPENAI, team
from tests.fake_ai_upstream import ANTHROPIC_KEY, OPENAI_KEY, fake_ai  # noqa: F401 (fixture)

pytestmark = pytest.mark.both_engines

CHAT = {"model": "gpt-fake", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
WORKSPACE_KEY = "sk-workspace-own-key-7f3a"


@pytest.fixture
async def client(make_client, fake_ai):
    return await make_client(**fake_ai.settings())


def names(table: dict[str, list[str]]):
    """A lookup that maps host names to addresses without any DNS."""
    async def lookup(host: str) -> list[str]:
        if host not in table:
            raise OSError(f"no such host {host}")
        return table[host]
    return lookup


async def test_key_is_stored_shown_as_last4_and_removed(client):
    t = await team(client)
    url = f"{API}/workspaces/{t.ws}/ai/keys/openai"
    assert (await client.get(url, headers=t.headers())).status == 404
    assert (await client.delete(url, headers=t.headers())).status == 404
    resp = await t.put_key("openai", WORKSPACE_KEY)
    assert resp.status == 204
    resp = await client.get(url, headers=t.headers())
    assert resp.status == 200
    assert await resp.json() == {"provider": "openai", "last4": "7f3a", "base_url": None}
    assert WORKSPACE_KEY not in await resp.text()
    assert (await client.delete(url, headers=t.headers())).status == 204
    assert (await client.get(url, headers=t.headers())).status == 404
    assert (await client.delete(url, headers=t.headers())).status == 404


async def test_bad_key_bodies_and_providers(client):
    t = await team(client)
    for body, field in (({"api_key": ""}, "api_key"), ({"api_key": "   "}, "api_key"), ({}, "api_key"),
                        ({"api_key": 12}, "api_key")):
        resp = await client.put(f"{API}/workspaces/{t.ws}/ai/keys/openai", json=body, headers=t.headers())
        assert resp.status == 422, body
        assert [e["field"] for e in (await resp.json())["errors"]] == [field]
    for verb in ("get", "put", "delete"):
        resp = await getattr(client, verb)(f"{API}/workspaces/{t.ws}/ai/keys/mistral", json={"api_key": "x"},
                                           headers=t.headers())
        assert resp.status == 404, verb
    assert (await client.get(f"{API}/workspaces/{t.ws}/ai/keys/openai", headers=t.headers())).status == 404


async def test_key_is_unreadable_in_the_database_file_without_the_secret(client, make_client, tmp_path, engine):
    t = await team(client)
    assert (await t.put_key("anthropic", "sk-ant-very-secret-workspace-key-123456")).status == 204
    settings = client.app[AI_KEY]
    [row] = t.rows("SELECT * FROM ai_keys WHERE workspace_id = ?", (t.ws,))
    assert not any(b"very-secret-workspace-key" in (v if isinstance(v, bytes) else str(v).encode()) for v in row)
    if engine == "sqlite":  # and nowhere in the database's files (PostgreSQL's are its server's)
        stored = b"".join(p.read_bytes() for p in client.app[AI_KEY].db.path.parent.rglob("mdsync.db*"))
        assert b"very-secret-workspace-key" not in stored
    assert (await settings.keys.get(t.ws, "anthropic")).api_key == "sk-ant-very-secret-workspace-key-123456"
    # the same ciphertext under another server secret is no key at all
    from mdsync.ai.keys import KeyStore

    other = KeyStore(client.app[AI_KEY].db, "another secret")
    assert await other.get(t.ws, "anthropic") is None


async def test_the_workspace_key_pays_else_the_servers_and_the_upstream_never_sees_the_mdsync_token(client, fake_ai):
    t = await team(client)
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 200, await resp.text()
    seen = fake_ai.requests[-1].headers
    assert seen["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert not any(t.owner.access_token in v for v in seen.values())
    fake_ai.keys.add(WORKSPACE_KEY)
    assert (await t.put_key("openai", WORKSPACE_KEY)).status == 204
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 200
    assert fake_ai.requests[-1].headers["Authorization"] == f"Bearer {WORKSPACE_KEY}"
    assert WORKSPACE_KEY not in await resp.text()


async def test_no_key_anywhere_is_409_and_nothing_is_sent(make_client, fake_ai):
    client = await make_client(ai__openai__base_url=fake_ai.openai_base, ai__anthropic__base_url=fake_ai.anthropic_base)
    t = await team(client)
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 409
    assert (await resp.json())["type"] == "urn:mdsync:error:conflict"
    assert resp.headers["x-should-retry"] == "false"
    resp = await client.post(f"{API}/ai/anthropic/v1/messages", json={**CHAT, "model": "claude-fake"},
                             headers=t.headers())
    assert resp.status == 409
    assert fake_ai.requests == []
    assert t.rows("SELECT * FROM ai_calls") == []


@pytest.mark.parametrize("base_url, table", [
    ("http://api.example.com/v1", {"api.example.com": ["93.184.216.34"]}),   # http on a public host
    ("https://127.0.0.1/v1", {}),
    ("https://[::1]/v1", {}),
    ("https://[::ffff:127.0.0.1]/v1", {}),
    ("https://ten.internal.test/v1", {"ten.internal.test": ["10.1.2.3"]}),
    ("https://metadata.internal.test/v1", {"metadata.internal.test": ["169.254.169.254"]}),
    ("https://ula.internal.test/v1", {"ula.internal.test": ["fc00::1"]}),
    ("https://mixed.internal.test/v1", {"mixed.internal.test": ["93.184.216.34", "192.168.1.9"]}),
    ("https://localhost/v1", {"localhost": ["127.0.0.1", "::1"]}),
    ("https://nowhere.internal.test/v1", {}),                                # does not resolve
    ("ftp://files.example.com/v1", {"files.example.com": ["93.184.216.34"]}),
])
async def test_ssrf_base_urls_are_422_naming_base_url(client, base_url, table):
    client.app[AI_KEY].proxy.lookup = names(table)
    t = await team(client)
    resp = await t.put_key("openai", "sk-x", base_url=base_url)
    assert resp.status == 422, await resp.text()
    assert [e["field"] for e in (await resp.json())["errors"]] == ["base_url"]
    assert (await client.get(f"{API}/workspaces/{t.ws}/ai/keys/openai", headers=t.headers())).status == 404


async def test_a_public_https_base_url_is_stored_without_any_call(client, fake_ai):
    client.app[AI_KEY].proxy.lookup = names({"llm.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    t = await team(client)
    resp = await t.put_key("openai", "sk-x", base_url="https://llm.example.com/v1")
    assert resp.status == 204
    shown = await (await client.get(f"{API}/workspaces/{t.ws}/ai/keys/openai", headers=t.headers())).json()
    assert shown == {"provider": "openai", "last4": "sk-x"[-4:], "base_url": "https://llm.example.com/v1"}
    assert fake_ai.requests == []


async def test_a_name_that_resolves_private_at_call_time_is_refused_there(client, fake_ai):
    """The check runs again on every call, on the addresses the connection would use."""
    ai = client.app[AI_KEY]
    ai.proxy.lookup = names({"llm.example.com": ["93.184.216.34"]})
    t = await team(client)
    assert (await t.put_key("openai", "sk-x", base_url="https://llm.example.com/v1")).status == 204
    ai.proxy.lookup = names({"llm.example.com": ["10.0.0.7"]})  # DNS rebinding
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 502
    assert (await resp.json())["type"] == "urn:mdsync:error:upstream"
    assert fake_ai.requests == []


async def test_the_fake_upstream_needs_its_prefix_in_allowed_base_urls(make_client, fake_ai):
    strict = await make_client(**fake_ai.settings())
    t = await team(strict)
    resp = await t.put_key("openai", WORKSPACE_KEY, base_url=fake_ai.openai_base)
    assert resp.status == 422
    assert [e["field"] for e in (await resp.json())["errors"]] == ["base_url"]

    client = await make_client(**{**fake_ai.settings(), "ai__openai__base_url": "http://127.0.0.1:9/v1",
                                  "ai__allowed_base_urls": [fake_ai.openai_base]})
    t = await team(client)
    # a prefix admits only what continues it at a path boundary
    assert (await t.put_key("openai", WORKSPACE_KEY, base_url=fake_ai.openai_base + "x")).status == 422
    assert (await t.put_key("openai", WORKSPACE_KEY, base_url=fake_ai.openai_base)).status == 204
    fake_ai.keys.add(WORKSPACE_KEY)
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 200, await resp.text()
    assert fake_ai.requests[-1].headers["Authorization"] == f"Bearer {WORKSPACE_KEY}"


async def test_upstream_redirects_are_not_followed(make_client, fake_ai):
    from aiohttp import web

    async def redirect(request):
        raise web.HTTPFound(fake_ai.openai_base + "/chat/completions")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    try:
        client = await make_client(ai__openai__base_url=f"http://127.0.0.1:{port}/v1", ai__openai__api_key=OPENAI_KEY)
        t = await team(client)
        resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers(),
                                 allow_redirects=False)
        assert resp.status == 302
        assert fake_ai.requests == []
    finally:
        await runner.cleanup()


# -- limits ------------------------------------------------------------------------------------------
async def test_limits_start_null_and_put_replaces_all_four(client):
    t = await team(client)
    url = f"{API}/workspaces/{t.ws}/ai/limits"
    nulls = {"tokens_per_month": None, "user_requests_per_minute": None, "user_tokens_per_day": None, "models": None}
    assert await (await client.get(url, headers=t.headers())).json() == nulls
    full = {"tokens_per_month": 1000, "user_requests_per_minute": 5, "user_tokens_per_day": 300, "models": ["gpt-fake"]}
    assert await t.put_limits(**full) == full
    assert await (await client.get(url, headers=t.headers())).json() == full
    assert await t.put_limits(tokens_per_month=50) == {**nulls, "tokens_per_month": 50}
    assert await (await client.get(url, headers=t.headers())).json() == {**nulls, "tokens_per_month": 50}


@pytest.mark.parametrize("field, value", [("tokens_per_month", -1), ("user_requests_per_minute", 1.5),
                                          ("user_tokens_per_day", "10"), ("tokens_per_month", True),
                                          ("models", "gpt-fake"), ("models", [1])])
async def test_bad_limits_are_422_naming_the_field_and_change_nothing(client, field, value):
    t = await team(client)
    await t.put_limits(tokens_per_month=77)
    resp = await client.put(f"{API}/workspaces/{t.ws}/ai/limits", json={field: value}, headers=t.headers())
    assert resp.status == 422
    assert {e["field"].split(".")[0] for e in (await resp.json())["errors"]} == {field}
    got = await (await client.get(f"{API}/workspaces/{t.ws}/ai/limits", headers=t.headers())).json()
    assert got["tokens_per_month"] == 77

"""AI proxy passthrough with the official SDKs (pinned in the test extra): base_url at mdsync, an
mdsync token as the key; every route, streamed and not, against the fake upstream. Streams
arrive unchanged, event by event and byte for byte (but the usage-only chunk a client did not
ask for); errors pass through, except a refused key of ours (502); refusals of our own."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import openai
import pytest

from tests.ai_setup import ANTHROPIC, OPENAI, bearer, document, make_workspace, pat, team
from tests.fake_ai_upstream import ANTHROPIC_KEY, OPENAI_KEY, fake_ai, fake_ollama, fixture, is_usage_chunk, sse_events  # noqa: F401

pytestmark = pytest.mark.both_engines

MESSAGES = [{"role": "user", "content": "Say hello"}]
CHAT = {"model": "gpt-fake", "max_tokens": 50, "messages": MESSAGES}


@pytest.fixture
async def client(make_client, fake_ai):
    return await make_client(**fake_ai.settings(), cors__origins=["https://editor.example.com"])


def sdk_openai(client, token: str, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url(OPENAI)), api_key=token, max_retries=0, **kw)


def sdk_anthropic(client, token: str, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(client.make_url(ANTHROPIC)), api_key=token, max_retries=0, **kw)


def payloads(raw: bytes) -> list[dict]:
    """The JSON of each `data:` line of an SSE fixture ([DONE] left out)."""
    out = []
    for event in sse_events(raw):
        for line in event.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


def no_mdsync_token(fake, *tokens: str) -> None:
    for rec in fake.requests:
        for value in rec.headers.values():
            assert not any(t in value for t in tokens), rec.headers


# -- the SDKs, every route ---------------------------------------------------------------------------
async def test_openai_sdk_chat_unchanged_stream_and_not(client, fake_ai):
    t = await team(client)
    sdk = sdk_openai(client, t.owner.access_token)
    answer = await sdk.chat.completions.create(model="gpt-fake", messages=MESSAGES)
    assert answer.to_dict() == json.loads(fixture("chat.json"))
    stream = await sdk.chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True)
    got = [chunk.to_dict() async for chunk in stream]
    expected = [p for p in payloads(fixture("chat_stream.sse")) if p["choices"]]  # no usage chunk: not asked
    assert got == expected
    stream = await sdk.chat.completions.create(model="gpt-fake", messages=MESSAGES, stream=True,
                                               stream_options={"include_usage": True})
    assert [chunk.to_dict() async for chunk in stream] == payloads(fixture("chat_stream.sse"))
    no_mdsync_token(fake_ai, t.owner.access_token)
    await sdk.close()


async def test_openai_sdk_responses_and_models(client, fake_ai):
    t = await team(client)
    token = await pat(client, t.owner, ["read", "write"])
    sdk = sdk_openai(client, token)
    answer = await sdk.responses.create(model="gpt-fake", input="Say hello")
    assert answer.to_dict() == json.loads(fixture("responses.json"))
    assert answer.output_text == "Hello from the fake upstream."
    stream = await sdk.responses.create(model="gpt-fake", input="Say hello", stream=True)
    assert [event.to_dict() async for event in stream] == payloads(fixture("responses_stream.sse"))
    models = [m.id async for m in sdk.models.list()]
    assert models == ["gpt-fake", "gpt-fake-mini"]
    no_mdsync_token(fake_ai, token)
    await sdk.close()


@pytest.mark.parametrize("how", ["x-api-key", "bearer"])
async def test_anthropic_sdk_messages_and_models(client, fake_ai, how):
    t = await team(client)
    token = t.owner.access_token
    sdk = sdk_anthropic(client, token) if how == "x-api-key" else \
        anthropic.AsyncAnthropic(base_url=str(client.make_url(ANTHROPIC)), auth_token=token, max_retries=0)
    answer = await sdk.messages.create(model="claude-fake", max_tokens=100, messages=MESSAGES)
    assert answer.to_dict() == json.loads(fixture("messages.json"))
    stream = await sdk.messages.create(model="claude-fake", max_tokens=100, messages=MESSAGES, stream=True)
    # the SDK reads `ping` events and hands out the others (the raw bytes: test_streams_are_byte_for_byte...)
    expected = [p for p in payloads(fixture("messages_stream.sse")) if p["type"] != "ping"]
    assert [event.to_dict() async for event in stream] == expected
    assert [m.id async for m in sdk.models.list()] == ["claude-fake"]
    for rec in fake_ai.requests:
        assert rec.headers["x-api-key"] == ANTHROPIC_KEY
        assert rec.headers["anthropic-version"]
        assert "Authorization" not in rec.headers
    no_mdsync_token(fake_ai, token)
    await sdk.close()


async def test_streams_are_byte_for_byte_the_upstreams(client, fake_ai):
    t = await team(client)
    cases = [(OPENAI + "/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
              fixture("chat_stream.sse")),
             (OPENAI + "/chat/completions", {**CHAT, "stream": True},
              b"".join(e for e in sse_events(fixture("chat_stream.sse")) if not is_usage_chunk(e))),
             (OPENAI + "/responses", {"model": "gpt-fake", "input": "hi", "stream": True}, fixture("responses_stream.sse")),
             (ANTHROPIC + "/v1/messages", {**CHAT, "model": "claude-fake", "stream": True}, fixture("messages_stream.sse"))]
    for url, body, expected in cases:
        async with client.post(url, json=body, headers=t.headers()) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert await resp.read() == expected, url


async def test_request_bodies_pass_unchanged_and_headers_are_filtered(client, fake_ai):
    t = await team(client)
    raw = b'{"model":"claude-fake",  "max_tokens": 9,"messages":[{"role":"user","content":"\\u00e9t\\u00e9"}]}'
    resp = await client.post(ANTHROPIC + "/v1/messages", data=raw, headers={
        "x-api-key": t.owner.access_token, "Content-Type": "application/json", "anthropic-version": "2023-06-01",
        "anthropic-beta": "fake-beta-2026", "Cookie": "session=1", "X-Mdsync-Workspace": t.ws,
        "X-Forwarded-For": "203.0.113.1", "Proxy-Authorization": "Basic eDp5"})
    assert resp.status == 200, await resp.text()
    rec = fake_ai.requests[-1]
    assert rec.body == raw
    assert rec.headers["anthropic-beta"] == "fake-beta-2026"
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.headers["x-api-key"] == ANTHROPIC_KEY
    lowered = {k.lower() for k in rec.headers}
    assert not lowered & {"cookie", "x-mdsync-workspace", "x-forwarded-for", "proxy-authorization", "authorization"}


# -- the default output cap --------------------------------------------------------------------------
async def test_requests_without_a_cap_get_the_default_and_reserve_it(client, fake_ai):
    t = await team(client)
    cases = [(OPENAI + "/chat/completions", {"model": "fake-hold", "messages": MESSAGES}, "max_completion_tokens"),
             (OPENAI + "/responses", {"model": "fake-hold", "input": "hi"}, "max_output_tokens"),
             (ANTHROPIC + "/v1/messages", {"model": "fake-hold", "messages": MESSAGES}, "max_tokens")]
    for url, body, cap in cases:
        fake_ai._hold.clear()
        sent = json.dumps(body).encode()
        call = asyncio.ensure_future(client.post(url, data=sent, headers=t.headers(**{"Content-Type": "application/json"})))
        for _ in range(200):
            if fake_ai.requests and fake_ai.requests[-1].json().get("model") == "fake-hold" and \
                    len(fake_ai.requests) == cases.index((url, body, cap)) + 1:
                break
            await asyncio.sleep(0.02)
        upstream = fake_ai.requests[-1]
        assert upstream.json()[cap] == 4096
        # the rest of the body is the client's, byte for byte
        assert upstream.body == sent[:-1] + f',"{cap}":4096}}'.encode()
        held = t.rows("SELECT reserved FROM ai_calls WHERE settled_at IS NULL")
        assert len(held) == 1 and 4096 < held[0]["reserved"] < 4096 + 1000
        fake_ai.release()
        resp = await call
        resp.release()


# -- errors ------------------------------------------------------------------------------------------
async def test_upstream_429_and_500_pass_through_with_their_retry_headers(client, fake_ai):
    t = await team(client)
    for model, status in (("fake-429", 429), ("fake-500", 500)):
        for url, body in ((OPENAI + "/chat/completions", {**CHAT, "model": model}),
                          (ANTHROPIC + "/v1/messages", {**CHAT, "model": model})):
            resp = await client.post(url, json=body, headers=t.headers())
            assert resp.status == status
            assert resp.headers["retry-after"] == "7" and resp.headers["retry-after-ms"] == "7000"
            assert "x-should-retry" not in resp.headers
            assert "(fake)" in (await resp.json())["error"]["message"]
    sdk = sdk_openai(client, t.owner.access_token)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model="fake-429", messages=MESSAGES)
    assert caught.value.status_code == 429
    await sdk.close()
    assert t.rows("SELECT SUM(tokens) AS s FROM ai_spend WHERE user_id = ''")[0]["s"] == 0  # all released


async def test_upstream_401_on_our_key_is_502_in_our_own_words(make_client, fake_ai):
    client = await make_client(**{**fake_ai.settings(), "ai__openai__api_key": "sk-revoked-server-key"},
                               ai__allowed_base_urls=[fake_ai.url])
    t = await team(client)
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 502
    body = await resp.json()
    assert body["type"] == "urn:mdsync:error:upstream" and "fake" not in json.dumps(body)
    assert resp.headers["x-should-retry"] == "false"
    # a workspace's stored key, refused: the same
    assert (await t.put_key("anthropic", "sk-ant-revoked", base_url=fake_ai.anthropic_base)).status == 204
    resp = await client.post(ANTHROPIC + "/v1/messages", json={**CHAT, "model": "claude-fake"}, headers=t.headers())
    assert resp.status == 502
    assert "invalid x-api-key" not in await resp.text() and "(fake)" not in await resp.text()
    sdk = sdk_anthropic(client, t.owner.access_token, )
    with pytest.raises(anthropic.APIStatusError) as caught:
        await sdk.messages.create(model="claude-fake", max_tokens=5, messages=MESSAGES)
    assert caught.value.status_code == 502
    await sdk.close()


async def test_an_unreachable_upstream_is_502(make_client):
    client = await make_client(ai__openai__api_key="sk-x")  # base_url: a loopback port nothing listens on
    t = await team(client)
    resp = await client.post(OPENAI + "/chat/completions", json=CHAT, headers=t.headers())
    assert resp.status == 502
    assert (await resp.json())["type"] == "urn:mdsync:error:upstream"
    assert t.rows("SELECT SUM(tokens) AS s FROM ai_spend WHERE user_id = ''")[0]["s"] == 0


async def test_in_band_stream_errors_pass_through(client, fake_ai):
    t = await team(client)
    async with client.post(OPENAI + "/chat/completions", json={**CHAT, "model": "fake-inband-error", "stream": True},
                           headers=t.headers()) as resp:
        assert resp.status == 200
        text = (await resp.read()).decode()
    assert '"error":{"message":"The server is overloaded (fake)"' in text and "[DONE]" not in text
    sdk = sdk_anthropic(client, t.owner.access_token)
    with pytest.raises(anthropic.APIStatusError):
        stream = await sdk.messages.create(model="fake-inband-error", max_tokens=5, messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
    await sdk.close()


async def test_an_idle_stream_ends(make_client, fake_ai):
    client = await make_client(**fake_ai.settings(), ai__idle_timeout=0.5)
    t = await team(client)
    async with client.post(OPENAI + "/chat/completions", json={**CHAT, "model": "fake-idle", "stream": True},
                           headers=t.headers()) as resp:
        assert resp.status == 200
        body = await asyncio.wait_for(resp.read(), 10)
    assert body.count(b"data: ") == 3
    for _ in range(100):
        if fake_ai.requests[-1].closed_at is not None:
            break
        await asyncio.sleep(0.05)
    assert fake_ai.requests[-1].closed_at is not None


async def test_a_client_gone_mid_stream_closes_the_upstream_at_once_and_is_recorded(client, fake_ai):
    t = await team(client)
    resp = await client.post(OPENAI + "/chat/completions", json={**CHAT, "model": "fake-slow", "stream": True},
                             headers=t.headers())
    assert resp.status == 200
    for _ in range(3):
        line = b""
        while not line.startswith(b"data: "):
            line = await asyncio.wait_for(resp.content.readline(), 10)
    left = time.monotonic()
    resp.close()  # the client goes away after 3 chunks
    upstream = fake_ai.requests[-1]
    for _ in range(100):
        if upstream.closed_at is not None:
            break
        await asyncio.sleep(0.05)
    assert upstream.closed_at is not None and upstream.closed_at - left < 1.0
    assert upstream.chunks_sent < 40
    for _ in range(100):
        rows = t.rows("SELECT * FROM ai_calls WHERE settled_at IS NOT NULL")
        if rows:
            break
        await asyncio.sleep(0.05)
    assert rows[0]["estimated"] == 1 and rows[0]["input_tokens"] > 0 and rows[0]["output_tokens"] > 0
    usage = await t.usage()
    assert usage[0]["estimated"] is True and usage[0]["requests"] == 1


async def test_a_client_gone_before_the_answer_ends_the_upstream_request(client, fake_ai):
    t = await team(client)
    fake_ai._hold.clear()
    call = asyncio.ensure_future(client.post(OPENAI + "/chat/completions", json={**CHAT, "model": "fake-hold"},
                                             headers=t.headers()))
    for _ in range(200):
        if fake_ai.requests:
            break
        await asyncio.sleep(0.02)
    left = time.monotonic()
    call.cancel()  # the client gives up while the upstream is still thinking
    upstream = fake_ai.requests[-1]
    for _ in range(100):
        if upstream.closed_at is not None:
            break
        await asyncio.sleep(0.05)
    assert upstream.closed_at is not None and upstream.closed_at - left < 1.0
    for _ in range(100):
        rows = t.rows("SELECT * FROM ai_calls WHERE settled_at IS NOT NULL")
        if rows:
            break
        await asyncio.sleep(0.05)
    assert rows[0]["reserved"] == 0 and rows[0]["estimated"] == 1 and rows[0]["input_tokens"] > 0
    fake_ai.release()


# -- OpenAI-compatible upstreams (Ollama) ------------------------------------------------------------
async def test_an_ollama_like_upstream_as_openai_with_its_prefix_allowed(make_client, fake_ollama):
    client = await make_client(ai__allowed_base_urls=[fake_ollama.openai_base])
    t = await team(client)
    assert (await t.put_key("openai", "ollama", base_url=fake_ollama.openai_base)).status == 204
    sdk = sdk_openai(client, t.owner.access_token)
    stream = await sdk.chat.completions.create(model="llama3.2", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the fake upstream."
    assert fake_ollama.requests[-1].json()["stream_options"] == {"include_usage": True}
    answer = await sdk.chat.completions.create(model="llama3.2", messages=MESSAGES)
    assert answer.usage.prompt_tokens == 12
    await sdk.close()
    usage = {row["estimated"]: row for row in await t.usage()}
    assert usage[True]["requests"] == 1 and usage[True]["output_tokens"] == len(text) // 4 + (len(text) % 4 > 0)
    assert usage[False]["input_tokens"] == 12 and usage[False]["output_tokens"] == 5


# -- refusals of our own ------------------------------------------------------------------------------
async def test_refusals(client, fake_ai):
    t = await team(client, "editor", "commenter", "viewer")
    url = OPENAI + "/chat/completions"
    assert (await client.post(url, json=CHAT)).status == 401
    assert (await client.post(url, json=CHAT, headers=bearer("not-a-token"))).status == 401
    assert (await client.post(ANTHROPIC + "/v1/messages", json=CHAT, headers={"x-api-key": "mds_bad"})).status == 401
    for role in ("commenter", "viewer"):
        resp = await client.post(url, json=CHAT, headers=t.headers(role))
        assert resp.status == 403 and resp.headers["x-should-retry"] == "false"
    read_only = await pat(client, t.people["editor"], ["read"])
    assert (await client.post(url, json=CHAT, headers=bearer(read_only))).status == 403
    assert (await client.post(url, json=CHAT, headers=t.headers("editor"))).status == 200
    # a workspace the caller is not in
    other = await team(client)
    resp = await client.post(url, json=CHAT, headers=t.headers("editor", **{"X-Mdsync-Workspace": other.ws}))
    assert resp.status == 403
    # two workspaces and no header
    await make_workspace(client, t.people["editor"], "Second")
    resp = await client.post(url, json=CHAT, headers=t.headers("editor"))
    assert resp.status == 400
    body = await resp.json()
    assert body["type"] == "urn:mdsync:error:bad-request" and "X-Mdsync-Workspace" in body["detail"]
    assert (await client.post(url, json=CHAT, headers=t.headers("editor", **{"X-Mdsync-Workspace": t.ws}))).status == 200
    # a model outside `models`
    await t.put_limits(models=["gpt-other"])
    resp = await client.post(url, json=CHAT, headers=t.headers())
    assert resp.status == 403 and resp.headers["x-should-retry"] == "false"
    # other paths under the prefixes
    for path in (OPENAI + "/embeddings", ANTHROPIC + "/v1/complete", OPENAI + "/files/x"):
        assert (await client.post(path, json=CHAT, headers=t.headers())).status == 404
    sent = len([r for r in fake_ai.requests if r.path.endswith("/chat/completions")])
    assert sent == 2  # only the two that passed


async def test_bad_input_is_refused_before_anything_is_sent_or_recorded(make_client, fake_ai):
    client = await make_client(**fake_ai.settings(), limits__max_body_bytes=4096)
    t = await team(client)
    doc = await document(client, t.owner, t.ws, "Doc", "x")
    url = OPENAI + "/chat/completions"
    cases = [
        (dict(data=b"{not json", headers=t.headers(**{"Content-Type": "application/json"})), 422, "body"),
        (dict(data=b"[1, 2]", headers=t.headers(**{"Content-Type": "application/json"})), 422, "body"),
        (dict(json={"messages": MESSAGES}, headers=t.headers()), 422, "model"),
        (dict(json={"model": "", "messages": MESSAGES}, headers=t.headers()), 422, "model"),
        (dict(json={"model": "gpt-fake"}, headers=t.headers()), 422, "messages"),
        (dict(json={**CHAT, "max_tokens": -3}, headers=t.headers()), 422, "max_tokens"),
        (dict(json={**CHAT, "padding": "x" * 5000}, headers=t.headers()), 413, None),
        (dict(json=CHAT, headers=t.headers(**{"X-Mdsync-Context": "no-such-doc"})), 404, None),
    ]
    other = await team(client)
    foreign = await document(client, other.owner, other.ws, "Theirs", "secret")
    cases.append((dict(json=CHAT, headers=t.headers(**{"X-Mdsync-Context": f"{doc},{foreign}"})), 404, None))
    for kwargs, status, field in cases:
        resp = await client.post(url, **kwargs)
        assert resp.status == status, (kwargs, await resp.text())
        if field:
            assert [e["field"] for e in (await resp.json())["errors"]] == [field]
    assert fake_ai.requests == []
    assert t.rows("SELECT * FROM ai_calls") == []


async def test_cors_lets_the_sdks_call_from_the_browser(client, fake_ai):
    t = await team(client)
    origin = "https://editor.example.com"
    resp = await client.options(OPENAI + "/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,x-stainless-retry-count"})
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "x-stainless-os", "x-stainless-retry-count", "x-api-key",
            "anthropic-version", "x-mdsync-workspace", "x-mdsync-context"} <= allowed
    async with client.post(OPENAI + "/chat/completions", json={**CHAT, "stream": True},
                           headers=t.headers(Origin=origin)) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"retry-after", "x-should-retry", "x-request-id"} <= exposed
        await resp.read()
    resp = await client.post(OPENAI + "/chat/completions", json={**CHAT, "model": "fake-429"},
                             headers=t.headers(Origin=origin))
    assert resp.headers["Access-Control-Allow-Origin"] == origin and resp.status == 429


def test_the_meter_reads_events_split_anywhere_and_drops_only_the_usage_chunk():
    from mdsync.ai.openai import ChatMeter

    data = fixture("chat_stream.sse").replace(b"\n\n", b"\r\n\r\n")
    for size in (1, 7, 64, len(data)):
        meter = ChatMeter(drop_usage_chunk=True)
        out = b"".join(meter.feed(data[i:i + size]) for i in range(0, len(data), size)) + meter.end()
        assert out == b"".join(e for e in data.split(b"\r\n\r\n") if e and b'"choices":[]' not in e
                               for e in [e + b"\r\n\r\n"])
        assert meter.usage(0) == type(meter.usage(0))(12, 5, False)

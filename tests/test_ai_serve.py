"""A real `mdsync serve` with `ai.*` pointed at the fake upstream (environment variables), driven by
the official SDKs; logging at debug level, no provider key and no mdsync token appears in its
output, and no provider key is readable in its data dir."""

from __future__ import annotations

import threading

import aiohttp
import anthropic
import openai
import pytest

from tests.fake_ai_upstream import ANTHROPIC_KEY, OPENAI_KEY, fake_ai  # noqa: F401 (fixture)

pytestmark = pytest.mark.both_engines

WORKSPACE_KEY = "sk-ant-workspace-owned-key-5b8c2d"


async def test_serve_proxies_to_the_fake_and_logs_no_key(server_process, fake_ai):
    fake_ai.keys.add(WORKSPACE_KEY)
    server = server_process(env={**fake_ai.environment(), "MDSYNC_LOG__LEVEL": "debug",
                                 "MDSYNC_AUTH__REGISTRATION": "open",
                                 "MDSYNC_AI__ALLOWED_BASE_URLS": f'["{fake_ai.url}"]'})
    drain = threading.Thread(target=lambda: server.output.extend(iter(server.proc.stdout.readline, "")), daemon=True)
    drain.start()
    api = server.url("/api/v1")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api}/auth/register", json={"email": "ai@example.com", "password": "pass word 123",
                                                            "name": "AI"}) as resp:
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(f"{api}/workspaces", json={"name": "W"}, headers=headers) as resp:
            ws = (await resp.json())["id"]
        async with http.put(f"{api}/workspaces/{ws}/ai/keys/anthropic", headers=headers,
                            json={"api_key": WORKSPACE_KEY, "base_url": fake_ai.anthropic_base}) as resp:
            assert resp.status == 204

    oa = openai.AsyncOpenAI(base_url=f"{api}/ai/openai/v1", api_key=token, max_retries=0)
    answer = await oa.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from the fake upstream."
    stream = await oa.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "hi"}],
                                              stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == \
        "Hello from the fake upstream."
    await oa.close()
    an = anthropic.AsyncAnthropic(base_url=f"{api}/ai/anthropic", api_key=token, max_retries=0)
    async with an.messages.stream(model="claude-fake", max_tokens=50,
                                  messages=[{"role": "user", "content": "hi"}]) as stream:
        assert await stream.get_final_text() == "Hello from the fake upstream."
    await an.close()
    assert fake_ai.requests[-1].headers["x-api-key"] == WORKSPACE_KEY
    assert fake_ai.requests[0].headers["Authorization"] == f"Bearer {OPENAI_KEY}"

    assert server.terminate() == 0
    drain.join(5)
    log = "".join(server.output)
    assert "/api/v1/ai/openai/v1/chat/completions" in log  # the access log was on
    leaked = [secret for secret in (OPENAI_KEY, ANTHROPIC_KEY, WORKSPACE_KEY, token) if secret in log]
    assert leaked == []
    stored = b"".join(f.read_bytes() for f in server.data_dir.rglob("*") if f.is_file())
    assert WORKSPACE_KEY.encode() not in stored

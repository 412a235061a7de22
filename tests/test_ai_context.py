"""AI proxy: `X-Mdsync-Context` puts readable documents' markdown in front of the request (chat:
one system message before the messages; Responses: before `instructions`; Anthropic: appended to
`system`), the rest of the body byte for byte the client's; ids the caller cannot read are 404."""

from __future__ import annotations

import json

import pytest

from tests.ai_setup import ANTHROPIC, API, OPENAI, document, team
from tests.fake_ai_upstream import fake_ai  # noqa: F401 (fixture)

pytestmark = pytest.mark.both_engines

ONE, TWO = "# Style guide\n\nShort sentences.", "# Glossary\n\n*mdsync*: the server."
CONTEXT = ONE + "\n\n" + TWO


@pytest.fixture
async def client(make_client, fake_ai):
    return await make_client(**fake_ai.settings(), ai__context_max_chars=200)


async def two_docs(client, t) -> str:
    a = await document(client, t.owner, t.ws, "Style", ONE)
    b = await document(client, t.owner, t.ws, "Glossary", TWO)
    return f"{a}, {b}"


async def send(client, url: str, raw: bytes, headers: dict) -> None:
    resp = await client.post(url, data=raw, headers={**headers, "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    await resp.read()


async def test_chat_gets_one_system_message_before_the_messages(client, fake_ai):
    t = await team(client)
    ids = await two_docs(client, t)
    raw = b'{"model": "gpt-fake", "max_tokens": 5, "messages": [ {"role": "user", "content": "Hi"} ], "x": 1}'
    await send(client, OPENAI + "/chat/completions", raw, t.headers(**{"X-Mdsync-Context": ids}))
    sent = fake_ai.requests[-1].body
    system = json.dumps({"role": "system", "content": CONTEXT}, ensure_ascii=False).encode()
    assert sent == raw.replace(b'"messages": [ ', b'"messages": [' + system + b", ")
    assert fake_ai.requests[-1].json()["messages"][0] == {"role": "system", "content": CONTEXT}


async def test_responses_get_the_context_before_their_instructions(client, fake_ai):
    t = await team(client)
    ids = await two_docs(client, t)
    raw = b'{"model":"gpt-fake","input":"Hi","max_output_tokens":5,"instructions":"Be brief."}'
    await send(client, OPENAI + "/responses", raw, t.headers(**{"X-Mdsync-Context": ids}))
    body = fake_ai.requests[-1].json()
    assert body["instructions"] == CONTEXT + "\n\nBe brief."
    assert {k: v for k, v in body.items() if k != "instructions"} == {k: v for k, v in json.loads(raw).items()
                                                                     if k != "instructions"}
    raw = b'{"model":"gpt-fake","input":"Hi","max_output_tokens":5}'
    await send(client, OPENAI + "/responses", raw, t.headers(**{"X-Mdsync-Context": ids}))
    assert fake_ai.requests[-1].body == raw[:-1] + b',"instructions":' + json.dumps(CONTEXT).encode() + b"}"


@pytest.mark.parametrize("system, expected", [
    ('"You are terse."', "You are terse.\n\n" + CONTEXT),
    ('[{"type":"text","text":"You are terse."}]', [{"type": "text", "text": "You are terse."},
                                                   {"type": "text", "text": CONTEXT}]),
    (None, CONTEXT),
])
async def test_anthropic_gets_the_context_appended_to_system(client, fake_ai, system, expected):
    t = await team(client)
    ids = await two_docs(client, t)
    head = b'{"model":"claude-fake","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]'
    raw = head + (b',"system":' + system.encode() if system else b"") + b"}"
    await send(client, ANTHROPIC + "/v1/messages", raw, t.headers(**{"X-Mdsync-Context": ids}))
    sent = fake_ai.requests[-1]
    assert sent.json()["system"] == expected
    assert sent.body.startswith(head)  # the rest, byte for byte


async def test_unreadable_ids_are_one_404_and_too_much_is_413(client, fake_ai):
    t = await team(client, "editor")
    mine = await document(client, t.owner, t.ws, "Mine", "ok")
    trashed = await document(client, t.owner, t.ws, "Trashed", "gone")
    assert (await client.delete(f"{API}/documents/{trashed}", headers=t.headers())).status == 204
    other = await team(client)
    foreign = await document(client, other.owner, other.ws, "Theirs", "their secret")
    # a document the editor's grant hides: a grant to viewer still reads; none is needed
    answers = set()
    for bad in ("no-such-id", foreign, trashed):
        resp = await client.post(OPENAI + "/chat/completions", json={"model": "gpt-fake", "messages": []},
                                 headers=t.headers("editor", **{"X-Mdsync-Context": f"{mine},{bad}"}))
        body = await resp.json()
        assert resp.status == 404 and "their secret" not in json.dumps(body)
        answers.add((resp.status, body["type"], body["title"]))
    assert len(answers) == 1
    big = await document(client, t.owner, t.ws, "Big", "x" * 201)
    resp = await client.post(OPENAI + "/chat/completions", json={"model": "gpt-fake", "messages": []},
                             headers=t.headers(**{"X-Mdsync-Context": big}))
    assert resp.status == 413 and (await resp.json())["type"] == "urn:mdsync:error:too-large"
    assert fake_ai.requests == []
    assert t.rows("SELECT * FROM ai_calls") == []

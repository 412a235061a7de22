"""Access-token parsing edges (issue 14 item 16): a JWT followed by a newline
(`?token=<jwt>%0A`) raised an uncaught binascii.Error inside the upgraded socket (the shape
pattern's `$` matches before a final newline), and each signature had four accepted spellings
(the two unused bits of its last base64url character were ignored). Now: one spelling, refused
cleanly otherwise."""

from __future__ import annotations

import logging
import urllib.parse

import pytest
from aiohttp import WSMsgType

from mdsync.auth.tokens import AccessTokens
from tests.builders import owned_document, register

pytestmark = pytest.mark.both_engines

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def other_spellings(segment: str) -> list[str]:
    """The same bytes written with other values in the unused low bits of the last character."""
    value = B64.index(segment[-1])
    unused = {2: 0b1111, 3: 0b11}.get(len(segment) % 4, 0)  # 43 characters: 2 unused bits
    return [segment[:-1] + B64[(value & ~unused) | bits] for bits in range(unused + 1)
            if (value & ~unused) | bits != value]


def test_a_token_verifies_in_exactly_one_spelling():
    tokens = AccessTokens("s" * 32, 900)
    token = tokens.issue("user", "session")
    assert tokens.verify(token) is not None
    header, payload, signature = token.split(".")
    spellings = other_spellings(signature)
    assert len(spellings) == 3
    for variant in spellings:
        assert tokens.verify(f"{header}.{payload}.{variant}") is None
    for variant in other_spellings(payload):  # a payload of another spelling is refused too
        assert tokens.verify(f"{header}.{variant}.{signature}") is None


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "=", ".", "\x00"])
def test_trailing_characters_are_refused_without_an_exception(suffix):
    tokens = AccessTokens("s" * 32, 900)
    assert tokens.verify(tokens.issue("user", "session") + suffix) is None


@pytest.mark.parametrize("token", ["a.b.c", "a.b." + "A" * 43, "aaaaa.bbbbb." + "A" * 43, "." * 2 + "A" * 43,
                                   "eyJ.eyJ." + "A" * 42 + "\n"])
def test_malformed_tokens_are_refused_without_an_exception(token):
    assert AccessTokens("s" * 32, 900).verify(token) is None


async def test_a_socket_token_with_a_newline_is_refused_with_4401(client, caplog):
    owner, _, doc_id = await owned_document(client)
    token = urllib.parse.quote(owner.access_token + "\n")
    caplog.set_level(logging.ERROR)
    ws = await client.ws_connect(f"/ws/docs/{doc_id}?token={token}")
    msg = await ws.receive(timeout=10)
    assert msg.type == WSMsgType.CLOSE and msg.data == 4401
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # the same token without the newline works; over HTTP the header form is checked the same way
    ws = await client.ws_connect(f"/ws/docs/{doc_id}?token={owner.access_token}")
    msg = await ws.receive(timeout=10)
    assert msg.type == WSMsgType.BINARY
    await ws.close()
    resp = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {owner.access_token}="})
    assert resp.status == 401
    assert (await register(client)).access_token  # the server goes on

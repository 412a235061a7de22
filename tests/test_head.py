"""HEAD answers as GET without a body (HTTP semantics: uptime checkers, caches and download
managers use it), on every GET route: same status and headers, no body, and streaming routes
(the SSE feed, long-polls, export, attachment downloads) answer at once without streaming."""

from __future__ import annotations

import asyncio
import re

import pytest

from mdsync.appkeys import ROUTE_TABLES
from tests.builders import document, make_workspace, register, upload_raw

pytestmark = pytest.mark.both_engines

API = "/api/v1"


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-0000-0000-000000000000", path)


async def test_every_get_route_answers_head_like_get_without_a_body(client):
    paths = sorted({spec.path for table in client.app[ROUTE_TABLES] for spec in table.specs if spec.method == "GET"})
    assert len(paths) > 30
    for path in paths:
        url = _fill(path)
        got = await client.get(url)
        await got.read()
        head = await client.head(url)
        assert head.status == got.status, (path, head.status, got.status)
        assert await head.read() == b"", path
        assert head.headers.get("Content-Type") == got.headers.get("Content-Type"), path


async def test_head_of_content_and_metadata_names_the_same_etag_and_length(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, "Doc", markdown="# Hello\n\nwörld\n")
    got = await client.get(f"{API}/documents/{doc['id']}/content", headers=owner.headers)
    body = await got.read()
    head = await client.head(f"{API}/documents/{doc['id']}/content", headers=owner.headers)
    assert head.status == 200 and await head.read() == b""
    assert head.headers["ETag"] == got.headers["ETag"] == doc["etag"]
    assert int(head.headers["Content-Length"]) == len(body)
    meta = await client.head(f"{API}/documents/{doc['id']}", headers=owner.headers)
    assert meta.status == 200 and await meta.read() == b""


async def test_head_of_streaming_routes_answers_at_once_and_the_connection_stays_usable(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    data = bytes(range(256)) * 400
    attachment = await upload_raw(client, owner, ws, data, "blob.bin")
    # a bounded wait (not a timing assertion): a HEAD that streamed or waited would not answer
    async def head(url: str):
        resp = await asyncio.wait_for(client.head(url, headers=owner.headers), 20)
        assert await resp.read() == b""
        return resp

    resp = await head(f"{API}/attachments/{attachment['id']}")
    assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
    resp = await head(f"{API}/sync/events")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    resp = await head(f"{API}/sync/changes?since=now&wait=60")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    resp = await head(f"{API}/workspaces/{ws}/export")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/zip"
    # the same keep-alive connections serve the next request cleanly: no stray body bytes
    got = await client.get(f"{API}/attachments/{attachment['id']}", headers=owner.headers)
    assert got.status == 200 and await got.read() == data
    ranged = await head(f"{API}/attachments/{attachment['id']}")
    assert ranged.status == 200

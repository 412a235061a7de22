"""Interop with the real npm clients: yjs 13.6 + y-websocket 3.1 `WebsocketProvider`, run from Node
(tests/interop/scenario.mjs) against a real server. Every Node run is bounded in time."""

from __future__ import annotations

import pytest

from mdsync.collab.rooms import ROOMS
from tests.builders import make_document, register
from tests.nodeclients import needs_node, run_node
from tests.readers import doc_text_in_db

pytestmark = [needs_node, pytest.mark.both_engines]


def ws_base(client) -> str:
    return f"ws://{client.server.host}:{client.server.port}/ws/docs"


async def test_two_writers_and_a_viewer_converge_with_awareness(client):
    app = client.server.app
    alice, bob, viewer = await register(client), await register(client), await register(client)
    _, doc_id = await make_document(app, alice.id, markdown="# Shared\n",
                                    members={bob.id: "editor", viewer.id: "viewer"})
    result = await run_node("scenario.mjs", "converge", {
        "url": ws_base(client), "doc": doc_id, "writerA": alice.access_token, "writerB": bob.access_token,
        "viewer": viewer.access_token, "edits": 1000, "seed": 42}, timeout=90)
    # the viewer holds its own edit locally; nobody else ever sees it
    assert result["a"] == result["b"] == result["late"] == result["viewer"].replace("VIEWER-EDIT", "", 1)
    assert "VIEWER-EDIT" not in result["a"] and len(result["a"]) > 2000
    assert (result["aSeesB"], result["bSeesA"], result["viewerSeesA"]) == ("B", "A", "A")
    assert result["removedOnLeave"] is True
    room = app[ROOMS].loaded(doc_id)
    assert room.text() == result["a"]
    await room.drain()
    stored = await doc_text_in_db(app, doc_id)
    assert stored == result["a"] and "VIEWER-EDIT" not in stored
    assert app[ROOMS].stats.readonly_dropped >= 1


async def test_offline_edits_merge_on_reconnect(client):
    app = client.server.app
    alice, bob = await register(client), await register(client)
    _, doc_id = await make_document(app, alice.id, members={bob.id: "editor"})
    result = await run_node("scenario.mjs", "offline", {"url": ws_base(client), "doc": doc_id,
                                                         "writerA": alice.access_token, "writerB": bob.access_token})
    assert result["a"] == result["b"] == result["fresh"]
    assert "off" in result["a"] and "on" in result["a"]
    assert app[ROOMS].loaded(doc_id).text() == result["a"]


@pytest.mark.parametrize("case", ["none", "bad", "other-workspace"])
async def test_provider_gets_close_code_and_stops(client, case):
    app = client.server.app
    alice, mallory = await register(client), await register(client)
    _, doc_id = await make_document(app, alice.id)
    token = {"none": "", "bad": "not-a-token", "other-workspace": mallory.access_token}[case]
    result = await run_node("scenario.mjs", "closeCode", {"url": ws_base(client), "doc": doc_id, "token": token},
                            timeout=20)
    assert result["closed"] == (4404 if case == "other-workspace" else 4401)
    assert result["synced"] is False

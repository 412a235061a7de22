"""Version history with the real npm clients: yjs 13.6 + y-websocket 3.1 `WebsocketProvider`
driven from Node (tests/interop/versions_session.mjs) against a real server. Every Node run is
bounded in time."""

from __future__ import annotations

import pytest

from mdsync import clock
from mdsync.collab.rooms import ROOMS
from tests.builders import document, join, make_workspace, register
from tests.nodeclients import needs_node, run_node

pytestmark = [needs_node, pytest.mark.both_engines]
API = "/api/v1"
IDLE = 0.5


def ws_base(client) -> str:
    return f"ws://{client.server.host}:{client.server.port}/ws/docs"


@pytest.fixture
async def client(make_client):
    return await make_client(versions__idle_seconds=IDLE, versions__max_interval_seconds=600)


async def all_versions(client, who, doc_id) -> list[dict]:
    resp = await client.get(f"{API}/documents/{doc_id}/versions", headers=who.headers)
    assert resp.status == 200
    return (await resp.json())["items"]


async def markdown_of(client, who, vid) -> str:
    resp = await client.get(f"{API}/versions/{vid}", headers=who.headers)
    return (await resp.json())["markdown"]


async def test_scripted_session_makes_versions_at_the_idle_gap_with_their_authors(client):
    alice = await register(client, name="Alice")
    ws = await make_workspace(client, alice)
    bob = await join(client, alice, ws, "editor", "Bob")
    doc = await document(client, alice, ws, markdown="")
    result = await run_node("versions_session.mjs", "session", {
        "url": ws_base(client), "doc": doc["id"], "writerA": alice.access_token, "writerB": bob.access_token,
        "idleMs": int(IDLE * 1000)}, timeout=60)
    bursts = result["bursts"]
    items = list(reversed(await all_versions(client, alice, doc["id"])))  # oldest first
    # one automatic version per burst, none while typing, none during the final idle time
    assert [v["kind"] for v in items] == ["auto", "auto", "auto"]
    assert [{a["name"] for a in v["authors"]} for v in items] == [{"Alice"}, {"Bob"}, {"Alice", "Bob"}]
    for version, burst in zip(items, bursts, strict=True):
        assert await markdown_of(client, alice, version["id"]) == burst["text"]
        # taken once the burst had been idle for the configured gap, not before
        ended = burst["endedAt"] / 1000
        assert clock.parse(version["created_at"]).timestamp() >= ended + IDLE - 0.05
    assert bursts[2]["text"].startswith("A29;") and bursts[2]["text"].endswith("B29;")


@pytest.mark.parametrize("link", ["if-match", "slow-link"])
async def test_restore_while_a_client_types_in_paragraph_three(client, link):
    """A typist keeps typing into paragraph 3 while a restore rewrites paragraph 1.

    if-match: the restorer read the content (its ETag) before the typing began and restores with
    `If-Match`; the typist is on a normal link and its first 20 keystrokes have reached the server
    before the restore is sent. The restore merges base→version, so those keystrokes survive too.
    slow-link: no If-Match (a diff against the live text), the typist on a 400 ms link: its
    keystrokes around the restore are concurrent with it and merge after it. (Without If-Match,
    text the server already had is part of the state a restore replaces, by design.)"""
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    typist = await join(client, owner, ws, "editor", "Typist")
    restorer = await join(client, owner, ws, "editor", "Restorer")
    observer = await join(client, owner, ws, "viewer", "Observer")
    p1, p2, p3, p4 = "Paragraph one, as it was.", "Paragraph two.", "Paragraph three", "Paragraph four."
    original = f"{p1}\n\n{p2}\n\n{p3}\n\n{p4}\n"
    doc = await document(client, owner, ws, markdown=original)
    resp = await client.post(f"{API}/documents/{doc['id']}/versions", json={"label": "Good"}, headers=owner.headers)
    good = await resp.json()
    # someone rewrites paragraph 1 (and the version list shows it as an automatic version)
    async with client.server.app[ROOMS].use(doc["id"]) as room:
        room.edit(lambda t: (t.__delitem__(slice(0, len(p1))), t.insert(0, "Paragraph ONE, vandalised!")), owner.id)
    result = await run_node("versions_session.mjs", "restoreWhileTyping", {
        "url": ws_base(client), "doc": doc["id"], "typist": typist.access_token, "observer": observer.access_token,
        "restorer": restorer.access_token, "p1": p1, "p3End": "\n\nParagraph four.",
        "restoreUrl": f"http://{client.server.host}:{client.server.port}{API}/versions/{good['id']}/restore",
        "before": 20, "after": 60, "gapMs": 5,
        **({"latencyMs": 400} if link == "slow-link" else {
            "contentUrl": f"http://{client.server.host}:{client.server.port}{API}/documents/{doc['id']}/content",
            "waitBeforeRestore": True})}, timeout=60)
    assert result["restoreStatus"] == 200
    final = result["fresh"]
    # every client converged, the server too
    assert result["typist"] == result["observer"] == final
    async with client.server.app[ROOMS].use(doc["id"]) as room:
        assert room.text() == final
    # paragraph 1 is the version's; every keystroke typed into paragraph 3 is there, in order
    paragraphs = final.split("\n\n")
    assert paragraphs[0] == p1 and paragraphs[1] == p2 and paragraphs[3] == p4 + "\n"
    assert paragraphs[2] == p3 + "".join(result["typed"])
    assert len(result["typed"]) == 80
    # the restore arrived while the typist was still typing (observer saw it mid-way)
    assert result["sawRestoreAt"] is not None and result["sawRestoreAt"] < 80
    # the restore recorded the state it replaced
    items = await all_versions(client, owner, doc["id"])
    before = [v for v in items if v["kind"] == "restore"]
    assert len(before) == 1 and [v["id"] for v in items if v["kind"] == "named"] == [good["id"]]
    replaced = await markdown_of(client, owner, before[0]["id"])
    if link == "slow-link":  # none of the keystrokes had arrived: they were on the wire
        assert replaced == f"Paragraph ONE, vandalised!\n\n{p2}\n\n{p3}\n\n{p4}\n"
    else:  # at least the first 20 had arrived (typing went on while the request travelled), and
        # the restore kept every one of them
        arrived = next((k for k in range(20, 81)
                        if replaced == f"Paragraph ONE, vandalised!\n\n{p2}\n\n{p3}{''.join(result['typed'][:k])}"
                                       f"\n\n{p4}\n"), None)
        assert arrived is not None and arrived >= 20, replaced

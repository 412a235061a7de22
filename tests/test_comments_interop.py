"""Comment anchors that follow the text, with the real npm `yjs` + `y-websocket` clients
(tests/interop/comment_anchors.mjs) against a real server: positions a client made, positions the
server placed from a quote, and a quote repeated three times picked by its prefix, all still
covering their words after two clients insert and delete before, inside and after them."""

from __future__ import annotations

import pytest

from tests.builders import document, join, make_workspace, register
from tests.nodeclients import needs_node, run_node

pytestmark = [needs_node, pytest.mark.both_engines]

MARKDOWN = ("# Ünïcødé notes\n"
            "Alpha beta gamma delta epsilon zeta. Eta theta iota kappa lambda.\n"
            "A: see note. B: see note. C: see note.\n"
            "End line.\n")


async def test_anchors_follow_edits_from_two_clients(client):
    alice = await register(client, name="Alice")
    ws = await make_workspace(client, alice)
    bob = await join(client, alice, ws, "editor", "Bob")
    doc = await document(client, alice, ws, "Anchored", markdown=MARKDOWN)
    base = f"http://{client.server.host}:{client.server.port}"
    result = await run_node("comment_anchors.mjs", "follow", {
        "url": base.replace("http", "ws") + "/ws/docs", "http": base, "doc": doc["id"],
        "tokenA": alice.access_token, "tokenB": bob.access_token}, timeout=90)
    assert result["created"] == {"t1": "gamma delta epsilon", "t2": "theta iota kappa", "t3": "see note."}
    expected = {"t1": "gamma EXTRA epsilon", "t2": "theta NEW iota kappa", "t3": "see very note."}
    assert result["a"] == result["b"] == result["late"] == expected
    # the edges stayed outside; the repeat T3 picked is B's, and the quotes come back as written
    assert "Xgamma EXTRA epsilonY" in result["text"] and "B: see very note. see note." in result["text"]
    assert result["quotes"] == ["gamma delta epsilon", "theta iota kappa", "see note."]
    assert result["samePositions"] is True


async def test_server_positions_are_the_bytes_yjs_makes():
    """At every UTF-16 index of a text two clients wrote (accents, emoji, CJK, deletions), the
    positions the server makes (assoc 0 and -1) are the bytes yjs makes, and read back to the
    same index."""
    import base64

    from pycrdt import Doc, Text

    from mdsync.collab.positions import AFTER, BEFORE, Shadow

    def raw(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    result = await run_node("comment_anchors.mjs", "positions", {}, timeout=30)
    doc = Doc()
    doc.apply_update(raw(result["update"]))
    assert str(doc.get("markdown", type=Text)) == result["text"]
    shadow = Shadow(doc)
    made, read = [], []
    for index, after, before in result["at"]:
        made.append((index, shadow.position(index, AFTER), shadow.position(index, BEFORE)))
        read.append((shadow.resolve(raw(after)), shadow.resolve(raw(before))))
    assert made == [(index, raw(after), raw(before)) for index, after, before in result["at"]]
    assert read == [(index, index) for index, _, _ in result["at"]]
    assert len(made) > 40


async def test_quote_anchors_in_a_tiptap_document_follow_edits(client):
    """A TipTap document: the server places quotes in the editor's text (across bold, and the
    second of two repeats by its prefix); two clients edit the runs around and inside them."""
    alice = await register(client, name="Alice")
    ws = await make_workspace(client, alice)
    bob = await join(client, alice, ws, "editor", "Bob")
    doc = await document(client, alice, ws, "Rich", content_model="tiptap",
                         markdown="# Title\n\nThe **quick** brown fox jumps.\n\nAnother quick fox.\n")
    base = f"http://{client.server.host}:{client.server.port}"
    result = await run_node("comment_anchors.mjs", "tiptap", {
        "url": base.replace("http", "ws") + "/ws/docs", "http": base, "doc": doc["id"],
        "tokenA": alice.access_token, "tokenB": bob.access_token}, timeout=90)
    assert result["created"] == {"t1": "quick brown fox", "t2": "quick"}
    assert result["a"] == result["b"] == result["late"] == {"t1": "quick very brown fox", "t2": "quick"}
    assert result["runs"] == ["Ünïcødé 😀 The quick very brown fox jumps. And more.", "Yet another quick fox."]

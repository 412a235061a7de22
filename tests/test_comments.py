"""Comments (docs/api.md "Comments") over HTTP against the real app: threads and replies, who may edit,
delete, resolve and reopen, share links with role commenter, bad input that stores nothing, the
change feed, and anchors placed from a quote. Positions followed by live npm clients:
tests/test_comments_interop.py."""

from __future__ import annotations

import base64

import pytest
from pycrdt import Doc, StickyIndex, Text

from mdsync.collab.rooms import ROOMS
from mdsync.comments.anchors import find_quote
from tests.builders import API, document, join, make_workspace, register, share
from tests.readers import audit_actions, db_rows

pytestmark = pytest.mark.both_engines


@pytest.fixture
async def team(client):
    owner = await register(client, name="Olga")
    ws = await make_workspace(client, owner)
    people = {"owner": owner}
    for role in ("admin", "editor", "commenter", "viewer"):
        people[role] = await join(client, owner, ws, role, role.title())
    doc = await document(client, owner, ws, "Draft", markdown="The quick brown fox jumps over the lazy dog.\n")
    return ws, doc["id"], people


async def post_comment(client, who, doc_id, status=201, headers=None, **body) -> dict:
    resp = await client.post(f"{API}/documents/{doc_id}/comments", json=body, headers={**who.headers, **(headers or {})})
    got = await resp.json()
    assert resp.status == status, got
    return got


async def threads(client, who, doc_id, **params) -> dict:
    resp = await client.get(f"{API}/documents/{doc_id}/comments", params=params, headers=who.headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


def comment_rows(client) -> list:
    return [tuple(r) for r in db_rows(client, "SELECT * FROM comments ORDER BY id")]


def resolve_in(doc_markdown_update: bytes, encoded: str) -> int:
    """The byte index a base64url position stands for in a pycrdt Doc of ASCII text."""
    doc = Doc()
    doc.apply_update(doc_markdown_update)
    text = doc.get("markdown", type=Text)
    return StickyIndex.decode(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)), text).get_index()


async def test_thread_reply_edit_resolve_reopen(client, team):
    ws, doc, p = team
    thread = await post_comment(client, p["commenter"], doc, body="Is it *quick*?", anchor={"quote": "quick brown"})
    assert thread["parent_id"] is None and thread["replies"] == [] and thread["resolved"] is False
    assert (thread["author_id"], thread["author_name"], thread["document_id"]) == (p["commenter"].id, "Commenter", doc)
    anchor = thread["anchor"]
    assert anchor["quote"] == "quick brown" and anchor["prefix"] is None and anchor["yjs_start"] and anchor["yjs_end"]
    reply = await post_comment(client, p["editor"], doc, body="Yes.", parent_id=thread["id"])
    assert reply["parent_id"] == thread["id"] and reply["anchor"] is None

    listed = await threads(client, p["viewer"], doc)
    assert [t["id"] for t in listed["items"]] == [thread["id"]] and listed["next_cursor"] is None
    assert [r["body"] for r in listed["items"][0]["replies"]] == ["Yes."]

    # only the author edits the body
    resp = await client.patch(f"{API}/comments/{reply['id']}", json={"body": "Yes!"}, headers=p["editor"].headers)
    assert resp.status == 200 and (await resp.json())["body"] == "Yes!"
    for other in ("owner", "admin", "commenter"):
        resp = await client.patch(f"{API}/comments/{reply['id']}", json={"body": "mine now"}, headers=p[other].headers)
        assert resp.status == 403, other
    resp = await client.patch(f"{API}/comments/{reply['id']}", json={"body": "x"}, headers=p["viewer"].headers)
    assert resp.status == 403

    # resolve (from a reply: its thread), listed as resolved, reopen
    resp = await client.post(f"{API}/comments/{reply['id']}/resolve", headers=p["commenter"].headers)
    resolved = await resp.json()
    assert resp.status == 200 and resolved["id"] == thread["id"] and resolved["resolved"] is True
    assert resolved["resolved_by"] == p["commenter"].id and [r["body"] for r in resolved["replies"]] == ["Yes!"]
    assert (await threads(client, p["owner"], doc))["items"] == []
    assert [t["id"] for t in (await threads(client, p["owner"], doc, status="resolved"))["items"]] == [thread["id"]]
    assert len((await threads(client, p["owner"], doc, status="all"))["items"]) == 1
    assert (await client.post(f"{API}/comments/{thread['id']}/resolve", headers=p["viewer"].headers)).status == 403
    resp = await client.post(f"{API}/comments/{thread['id']}/reopen", headers=p["editor"].headers)
    assert resp.status == 200 and (await resp.json())["resolved"] is False
    assert [t["id"] for t in (await threads(client, p["owner"], doc))["items"]] == [thread["id"]]
    resp = await client.get(f"{API}/comments/{reply['id']}", headers=p["viewer"].headers)
    assert resp.status == 200 and (await resp.json())["body"] == "Yes!"


async def test_delete_rules_and_audit(client, team):
    ws, doc, p = team
    thread = await post_comment(client, p["commenter"], doc, body="Thread")
    reply = await post_comment(client, p["editor"], doc, body="Reply", parent_id=thread["id"])
    own = await post_comment(client, p["commenter"], doc, body="Own reply", parent_id=thread["id"])
    for who in ("editor", "viewer"):  # not theirs, not admins
        assert (await client.delete(f"{API}/comments/{thread['id']}", headers=p[who].headers)).status == 403, who
    assert (await client.delete(f"{API}/comments/{own['id']}", headers=p["commenter"].headers)).status == 204
    assert "comment.delete" not in audit_actions(client, ws)  # an author deleting their own: no audit row
    assert [r["id"] for r in (await threads(client, p["owner"], doc))["items"][0]["replies"]] == [reply["id"]]
    # an admin deletes someone else's thread: it leaves the listing with its replies, audited
    assert (await client.delete(f"{API}/comments/{thread['id']}", headers=p["admin"].headers)).status == 204
    assert (await threads(client, p["owner"], doc, status="all"))["items"] == []
    assert comment_rows(client) == []
    assert audit_actions(client, ws).count("comment.delete") == 1
    for gone in (thread["id"], reply["id"]):
        assert (await client.get(f"{API}/comments/{gone}", headers=p["owner"].headers)).status == 404
        assert (await client.delete(f"{API}/comments/{gone}", headers=p["owner"].headers)).status == 404


async def test_bad_input_is_422_naming_the_field_and_stores_nothing(client, team):
    ws, doc, p = team
    other = await document(client, p["owner"], ws, "Other", markdown="quick")
    thread = await post_comment(client, p["owner"], doc, body="thread")
    reply = await post_comment(client, p["owner"], doc, body="reply", parent_id=thread["id"])
    elsewhere = await post_comment(client, p["owner"], other["id"], body="on another document")
    good = base64.urlsafe_b64encode(b"\x01\x08markdown\x00").decode().rstrip("=")
    cases = [
        ({"body": ""}, "body"),
        ({"body": "   \n\t"}, "body"),
        ({"body": "x" * 10_001}, "body"),
        ({"body": "nul \x00 inside"}, "body"),
        ({}, "body"),
        ({"body": "r", "parent_id": reply["id"]}, "parent_id"),
        ({"body": "r", "parent_id": elsewhere["id"]}, "parent_id"),
        ({"body": "r", "parent_id": "no-such-comment"}, "parent_id"),
        ({"body": "r", "parent_id": thread["id"], "anchor": {"quote": "quick"}}, "anchor"),
        ({"body": "a", "anchor": {"quote": "not in the text"}}, "anchor"),
        ({"body": "a", "anchor": {"quote": ""}}, "anchor.quote"),
        ({"body": "a", "anchor": {"quote": "quick", "yjs_start": good}}, "anchor"),
        ({"body": "a", "anchor": {"quote": "quick", "yjs_start": "!!not base64!!", "yjs_end": good}},
         "anchor.yjs_start"),
        ({"body": "a", "anchor": {"quote": "quick", "yjs_start": good, "yjs_end": "AAAAAAAAAAAAAAAA"}},
         "anchor.yjs_end"),
        ({"body": "a", "anchor": "quick"}, "anchor"),
    ]
    before = comment_rows(client), db_rows(client, "SELECT count(*) FROM changes")[0][0]
    for body, field in cases:
        resp = await client.post(f"{API}/documents/{doc}/comments", json=body, headers=p["owner"].headers)
        problem = await resp.json()
        assert resp.status == 422, (body, problem)
        assert problem["type"] == "urn:mdsync:error:validation"
        assert [e["field"] for e in problem["errors"]] == [field], (body, problem)
    for body in ({"body": ""}, {"body": "y" * 10_001}, {}):
        resp = await client.patch(f"{API}/comments/{thread['id']}", json=body, headers=p["owner"].headers)
        assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "body"
    resp = await client.get(f"{API}/documents/{doc}/comments", params={"status": "closed"}, headers=p["owner"].headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "status"
    assert (comment_rows(client), db_rows(client, "SELECT count(*) FROM changes")[0][0]) == before


async def test_list_pages_with_cursor(client, team):
    ws, doc, p = team
    made = [(await post_comment(client, p["commenter"], doc, body=f"c{i}"))["id"] for i in range(5)]
    first = await threads(client, p["viewer"], doc, limit="2")
    second = await threads(client, p["viewer"], doc, limit="2", cursor=first["next_cursor"])
    third = await threads(client, p["viewer"], doc, limit="2", cursor=second["next_cursor"])
    assert [c["id"] for c in first["items"] + second["items"] + third["items"]] == made
    assert third["next_cursor"] is None


async def test_share_link_with_role_commenter(client, team):
    ws, doc, p = team
    outsider = await register(client, name="Guest")
    commenter_link = (await share(client, p["owner"], doc, role="commenter"))["token"]
    viewer_link = (await share(client, p["owner"], doc, role="viewer"))["token"]
    # a signed-in holder comments on that document, by header or by query parameter
    made = await post_comment(client, outsider, doc, body="From the link", headers={"X-Mdsync-Share": commenter_link})
    assert made["author_id"] == outsider.id
    resp = await client.post(f"{API}/documents/{doc}/comments", params={"share": commenter_link},
                             json={"body": "again"}, headers=outsider.headers)
    assert resp.status == 201
    # and edits, resolves and deletes their own comment through it
    with_link = {**outsider.headers, "X-Mdsync-Share": commenter_link}
    assert (await client.patch(f"{API}/comments/{made['id']}", json={"body": "edited"}, headers=with_link)).status == 200
    assert (await client.post(f"{API}/comments/{made['id']}/resolve", headers=with_link)).status == 200
    assert (await client.delete(f"{API}/comments/{made['id']}", headers=with_link)).status == 204
    # a viewer link reads the threads but does not comment
    viewer_headers = {**outsider.headers, "X-Mdsync-Share": viewer_link}
    assert (await client.get(f"{API}/documents/{doc}/comments", headers=viewer_headers)).status == 200
    resp = await client.post(f"{API}/documents/{doc}/comments", json={"body": "no"}, headers=viewer_headers)
    assert resp.status == 403
    # anonymous holders never comment
    resp = await client.post(f"{API}/documents/{doc}/comments", json={"body": "anon"},
                             headers={"X-Mdsync-Share": commenter_link})
    assert resp.status == 401
    resp = await client.post(f"{API}/documents/{doc}/comments", params={"share": commenter_link}, json={"body": "anon"})
    assert resp.status == 401
    # the link opens its own document only
    other = await document(client, p["owner"], ws, "Other", markdown="x")
    resp = await client.post(f"{API}/documents/{other['id']}/comments", json={"body": "no"},
                             headers={**outsider.headers, "X-Mdsync-Share": commenter_link})
    assert resp.status == 404


async def test_change_feed_carries_every_comment_event_to_members_only(client, team):
    ws, doc, p = team
    outsider = await register(client, name="Elsewhere")
    own_ws = await make_workspace(client, outsider, "Elsewhere")

    async def comment_changes(who) -> list[tuple]:
        resp = await client.get(f"{API}/sync/changes", params={"limit": "1000"}, headers=who.headers)
        assert resp.status == 200
        return [(c["id"], c["op"], c["workspace_id"]) for c in (await resp.json())["changes"] if c["entity"] == "comment"]

    thread = await post_comment(client, p["commenter"], doc, body="t", anchor={"quote": "lazy dog"})
    reply = await post_comment(client, p["editor"], doc, body="r", parent_id=thread["id"])
    t, r = thread["id"], reply["id"]
    await client.patch(f"{API}/comments/{r}", json={"body": "r2"}, headers=p["editor"].headers)
    await client.post(f"{API}/comments/{t}/resolve", headers=p["viewer"].headers)  # refused: no event
    await client.post(f"{API}/comments/{t}/resolve", headers=p["commenter"].headers)
    await client.post(f"{API}/comments/{t}/resolve", headers=p["commenter"].headers)  # no change: no event
    await client.post(f"{API}/comments/{t}/reopen", headers=p["commenter"].headers)
    assert (await client.delete(f"{API}/comments/{t}", headers=p["owner"].headers)).status == 204
    expected = [(t, "upsert", ws), (r, "upsert", ws), (r, "upsert", ws), (t, "upsert", ws), (t, "upsert", ws),
                (t, "delete", ws), (r, "delete", ws)]
    for role in ("owner", "admin", "editor", "commenter", "viewer"):
        assert await comment_changes(p[role]) == expected, role
    assert await comment_changes(outsider) == []
    assert own_ws


async def test_quote_anchor_is_placed_on_the_live_text(client, team):
    """Three occurrences of one sentence: prefix (or suffix) picks one; positions stand for the
    chosen occurrence in the document's CRDT state, also after text was typed before it."""
    ws, doc_id, p = team
    markdown = "Intro.\nA: the same line.\nB: the same line.\nC: the same line.\n"
    doc = await document(client, p["owner"], ws, "Repeats", markdown=markdown)
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data="Typed first. " + markdown,
                            headers={**p["owner"].headers, "Content-Type": "text/markdown"})
    assert resp.status == 200
    text = "Typed first. " + markdown
    room_update = None
    for prefix, suffix, where in (("B: ", None, "B: the"), (None, "\nC:", "B: the"), ("C: ", None, "C: the"),
                                  (None, None, "A: the")):
        made = await post_comment(client, p["commenter"], doc["id"], body="which one?",
                                  anchor={"quote": "the same line.", "prefix": prefix, "suffix": suffix})
        async with client.app[ROOMS].use(doc["id"]) as room:
            room_update = room.doc.get_update()
        start = resolve_in(room_update, made["anchor"]["yjs_start"])
        end = resolve_in(room_update, made["anchor"]["yjs_end"])
        assert text[start:end] == "the same line." and text[start - 3:start + 3] == where, (prefix, suffix)
        assert made["anchor"]["prefix"] == prefix and made["anchor"]["suffix"] == suffix


async def test_anchor_positions_sent_by_a_client_are_kept(client, team):
    ws, doc, p = team
    start = base64.urlsafe_b64encode(b"\x00\x07\x03\x00").decode().rstrip("=")
    end = base64.urlsafe_b64encode(b"\x00\x07\x09\x41").decode()  # padded base64url is accepted too
    made = await post_comment(client, p["commenter"], doc, body="b",
                              anchor={"quote": "text the server has not seen yet", "yjs_start": start, "yjs_end": end})
    assert (made["anchor"]["yjs_start"], made["anchor"]["yjs_end"]) == (start, end)
    rich = await document(client, p["owner"], ws, "Rich", content_model="tiptap", markdown="quick")
    made = await post_comment(client, p["commenter"], rich["id"], body="b",
                              anchor={"quote": "elsewhere", "yjs_start": start, "yjs_end": end})
    assert made["anchor"]["quote"] == "elsewhere"


async def test_quote_anchor_in_a_tiptap_document_is_placed_in_its_text(client, team):
    """In a TipTap document the quote is the text the editor shows (no markdown syntax), across
    formatting; the positions name the XmlText it sits in (followed by clients:
    tests/test_comments_interop.py)."""
    ws, doc, p = team
    rich = await document(client, p["owner"], ws, "Rich", content_model="tiptap",
                          markdown="# Title\n\nThe **quick** brown fox.\n\nAnother quick fox.\n")
    made = await post_comment(client, p["commenter"], rich["id"], body="b", anchor={"quote": "quick brown"})
    for key in ("yjs_start", "yjs_end"):  # each names an item (tag 0), not the end of a type
        assert base64.urlsafe_b64decode(made["anchor"][key] + "==")[0] == 0
    resp = await client.post(f"{API}/documents/{rich['id']}/comments", headers=p["commenter"].headers,
                             json={"body": "b", "anchor": {"quote": "**quick**"}})  # markdown is not shown text
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "anchor"


def test_find_quote_prefers_the_best_context():
    text = "x the y the z the"
    assert find_quote(text, "the", None, None) == 2
    assert find_quote(text, "the", "z ", None) == 14
    assert find_quote(text, "the", None, " z") == 8
    assert find_quote(text, "the", "q y ", None) == 8  # the closest context wins when none is exact
    assert find_quote(text, "absent", None, None) is None

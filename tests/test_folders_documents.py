"""Folders and documents: create, tree, move, reorder, cycles, trash/restore/purge, templates,
content with ETag / If-Match, grants, bad input that changes nothing, cross-workspace ids."""

from __future__ import annotations

import gzip
import json

import pytest

from tests.builders import API, document, folder, join, make_workspace, register
from tests.readers import audit_actions, content, feed, tree

pytestmark = pytest.mark.both_engines


@pytest.fixture
async def team(client):
    owner = await register(client, name="Olga")
    ws = await make_workspace(client, owner)
    return owner, ws


async def test_tree_has_everything_in_one_call(client, team):
    owner, ws = team
    notes = await folder(client, owner, ws, "Notes")
    sub = await folder(client, owner, ws, "Sub", notes)
    a = await document(client, owner, ws, "A", folder_id=notes)
    b = await document(client, owner, ws, "B", folder_id=sub, kind="context")
    c = await document(client, owner, ws, "C")
    t = await tree(client, owner, ws)
    assert t["workspace_id"] == ws
    assert {(f["id"], f["parent_id"], f["name"]) for f in t["folders"]} == {(notes, None, "Notes"), (sub, notes, "Sub")}
    docs = {d["id"]: d for d in t["documents"]}
    assert set(docs) == {a["id"], b["id"], c["id"]}
    assert (docs[b["id"]]["folder_id"], docs[b["id"]]["kind"]) == (sub, "context")
    assert set(docs[a["id"]]) == {"id", "title", "folder_id", "position", "kind", "updated_at"}


async def test_document_metadata_and_content(client, team):
    owner, ws = team
    doc = await document(client, owner, ws, "Plan", markdown="# Plan\n", content_model="tiptap")
    assert doc["id"] and doc["workspace_id"] == ws and doc["size"] == 7 and doc["deleted_at"] is None
    assert (doc["kind"], doc["content_model"], doc["created_by"]) == ("note", "tiptap", owner.id)
    text, etag = await content(client, owner, doc["id"])
    assert text == "# Plan" and etag == doc["etag"]  # as TipTap writes it: no final newline

    resp = await client.get(f"{API}/documents/{doc['id']}/content", headers={**owner.headers, "If-None-Match": etag})
    assert resp.status == 304
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data="# Plan v2\n",
                            headers={**owner.headers, "Content-Type": "text/markdown", "If-Match": etag})
    assert resp.status == 200 and await resp.text() == "# Plan v2"
    new_etag = resp.headers["ETag"]
    assert new_etag != etag
    # a stale base is merged (tests/test_tiptap_content.py), an unknown one refused
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data="lost",
                            headers={**owner.headers, "Content-Type": "text/markdown", "If-Match": '"y-unknown"'})
    assert resp.status == 412
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data=b"no base", headers=owner.headers)
    assert resp.status == 200
    meta = await (await client.get(f"{API}/documents/{doc['id']}", headers=owner.headers)).json()
    assert meta["size"] == len("no base") and meta["etag"] == resp.headers["ETag"]
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data=b"\xff\xfe",
                            headers={**owner.headers, "Content-Type": "text/markdown"})
    assert resp.status == 422
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data=b"{}",
                            headers={**owner.headers, "Content-Type": "application/json"})
    assert resp.status == 415
    assert (await content(client, owner, doc["id"]))[0] == "no base"


async def test_content_size_limit(make_client):
    client = await make_client(limits__max_document_bytes=1024)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="small")
    resp = await client.put(f"{API}/documents/{doc['id']}/content", data="x" * 2000,
                            headers={**owner.headers, "Content-Type": "text/markdown"})
    assert resp.status == 413
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "big", "markdown": "x" * 2000},
                             headers=owner.headers)
    assert resp.status == 413
    assert (await content(client, owner, doc["id"]))[0] == "small"


async def test_from_template(client, team):
    owner, ws = team
    tpl = await document(client, owner, ws, "Meeting", kind="template",
                         markdown="# {{title}}\nDate: {{date}}\nBy {{author}} {{unknown}}")
    made = await document(client, owner, ws, "Standup", template_id=tpl["id"])
    text, _ = await content(client, owner, made["id"])
    lines = text.split("\n")
    assert lines[0] == "# Standup" and lines[2] == "By Olga {{unknown}}"
    assert len(lines[1]) == len("Date: 2026-01-01") and lines[1].startswith("Date: 20")
    templates = (await (await client.get(f"{API}/workspaces/{ws}/templates", headers=owner.headers)).json())["items"]
    assert [d["id"] for d in templates] == [tpl["id"]]
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "x", "template_id": "nope"},
                             headers=owner.headers)
    assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "template_id"


async def test_move_rename_reorder_and_cycles(client, team):
    owner, ws = team
    top = await folder(client, owner, ws, "Top")
    mid = await folder(client, owner, ws, "Mid", top)
    low = await folder(client, owner, ws, "Low", mid)
    for target in (top, mid, low):
        resp = await client.patch(f"{API}/folders/{top}", json={"parent_id": target}, headers=owner.headers)
        assert resp.status == 409, target
    resp = await client.patch(f"{API}/folders/{low}", json={"parent_id": None, "name": "Now top", "position": 5},
                              headers=owner.headers)
    assert resp.status == 200
    body = await resp.json()
    assert (body["parent_id"], body["name"], body["position"]) == (None, "Now top", 5)
    resp = await client.patch(f"{API}/folders/{top}", json={"parent_id": low}, headers=owner.headers)
    assert resp.status == 200  # no longer below itself

    doc = await document(client, owner, ws, "Doc", folder_id=mid)
    resp = await client.patch(f"{API}/documents/{doc['id']}", json={"folder_id": None, "title": "Renamed", "kind": "context"},
                              headers=owner.headers)
    body = await resp.json()
    assert (body["folder_id"], body["title"], body["kind"]) == (None, "Renamed", "context")
    resp = await client.patch(f"{API}/documents/{doc['id']}", json={"position": 0.5}, headers=owner.headers)
    assert (await resp.json())["position"] == 0.5
    assert ("document", doc["id"], "upsert", None) in feed(client, ws)


async def test_bad_input_changes_nothing(client, team):
    owner, ws = team
    f = await folder(client, owner, ws, "F")
    doc = await document(client, owner, ws, "D", folder_id=f, markdown="body")
    before = await tree(client, owner, ws)
    bad_folder_patches = [{"name": "x" * 10_000}, {"name": ""}, {"name": 1}, {"parent_id": "nope"},
                          {"parent_id": f}, {"position": "first"}, {"name": None}, {"position": None}]
    for body in bad_folder_patches:
        resp = await client.patch(f"{API}/folders/{f}", json=body, headers=owner.headers)
        assert resp.status in (409, 422), body
    bad_doc_patches = [{"title": "x" * 10_000}, {"title": " "}, {"kind": "poem"}, {"folder_id": "nope"},
                       {"folder_id": 7}, {"position": [1]}, {"title": None}]
    for body in bad_doc_patches:
        resp = await client.patch(f"{API}/documents/{doc['id']}", json=body, headers=owner.headers)
        assert resp.status == 422, body
    bad_creates = [{"title": "x" * 10_000}, {}, {"title": "t", "kind": "poem"}, {"title": "t", "content_model": "doc"},
                   {"title": "t", "folder_id": "nope"}, {"title": "t", "markdown": 5},
                   {"title": "t", "markdown": "a", "template_id": doc["id"]}]
    for body in bad_creates:
        resp = await client.post(f"{API}/workspaces/{ws}/documents", json=body, headers=owner.headers)
        assert resp.status == 422, body
    for body in ({"name": "x" * 10_000}, {"name": "n", "parent_id": "nope"}, {"name": "n", "position": "a"}):
        resp = await client.post(f"{API}/workspaces/{ws}/folders", json=body, headers=owner.headers)
        assert resp.status == 422, body
    for path in (f"{API}/documents/nope", f"{API}/folders/nope", f"{API}/workspaces/nope/tree"):
        assert (await client.get(path, headers=owner.headers)).status in (404, 405)
    assert (await client.patch(f"{API}/folders/nope", json={"name": "x"}, headers=owner.headers)).status == 404
    assert (await client.delete(f"{API}/documents/nope", headers=owner.headers)).status == 404
    assert (await client.get(f"{API}/workspaces/{ws}/documents?kind=poem", headers=owner.headers)).status == 422
    assert (await client.get(f"{API}/workspaces/{ws}/documents?limit=zero", headers=owner.headers)).status == 422
    assert await tree(client, owner, ws) == before
    assert (await content(client, owner, doc["id"]))[0] == "body"


async def test_folder_delete_sends_contents_to_trash_and_restore_brings_them_back(client, team):
    owner, ws = team
    top = await folder(client, owner, ws, "Top")
    sub = await folder(client, owner, ws, "Sub", top)
    a = await document(client, owner, ws, "A", folder_id=top)
    b = await document(client, owner, ws, "B", folder_id=sub)
    keep = await document(client, owner, ws, "Keep")
    assert (await client.delete(f"{API}/folders/{top}", headers=owner.headers)).status == 204
    t = await tree(client, owner, ws)
    assert t["folders"] == [] and [d["id"] for d in t["documents"]] == [keep["id"]]
    trash = (await (await client.get(f"{API}/workspaces/{ws}/trash", headers=owner.headers)).json())["items"]
    assert {d["id"] for d in trash} == {a["id"], b["id"]} and all(d["deleted_at"] for d in trash)
    # trashed: metadata still readable, content and edits are not
    meta = await (await client.get(f"{API}/documents/{b['id']}", headers=owner.headers)).json()
    assert meta["deleted_at"] is not None
    assert (await client.get(f"{API}/documents/{b['id']}/content", headers=owner.headers)).status == 404
    assert (await client.patch(f"{API}/documents/{b['id']}", json={"title": "x"}, headers=owner.headers)).status == 404
    assert (await client.patch(f"{API}/folders/{top}", json={"name": "x"}, headers=owner.headers)).status == 404

    resp = await client.post(f"{API}/documents/{b['id']}/restore", headers=owner.headers)
    assert resp.status == 200 and (await resp.json())["deleted_at"] is None
    t = await tree(client, owner, ws)
    assert {f["id"] for f in t["folders"]} == {top, sub}  # its folders came back with it
    assert {d["id"] for d in t["documents"]} == {b["id"], keep["id"]}  # A stays in the trash
    assert ("folder", top, "delete", None) in feed(client, ws)
    assert "folder.delete" in audit_actions(client, ws) and "document.restore" in audit_actions(client, ws)


async def test_trash_and_purge_permissions(client, team):
    owner, ws = team
    editor = await join(client, owner, ws, "editor")
    viewer = await join(client, owner, ws, "viewer")
    doc = await document(client, owner, ws, "D")
    assert (await client.delete(f"{API}/documents/{doc['id']}", headers=viewer.headers)).status == 403
    assert (await client.delete(f"{API}/documents/{doc['id']}", headers=editor.headers)).status == 204
    assert (await client.delete(f"{API}/documents/{doc['id']}", headers=editor.headers)).status == 404
    assert (await client.delete(f"{API}/documents/{doc['id']}?permanent=true", headers=editor.headers)).status == 403
    assert (await client.delete(f"{API}/documents/{doc['id']}?permanent=true", headers=owner.headers)).status == 204
    assert (await client.get(f"{API}/documents/{doc['id']}", headers=owner.headers)).status == 404
    assert ("document", doc["id"], "delete", None) == feed(client, ws)[-1]
    actions = audit_actions(client, ws)
    assert "document.trash" in actions and "document.purge" in actions


async def test_grants_raise_and_lower(client, team):
    owner, ws = team
    viewer = await join(client, owner, ws, "viewer")
    editor = await join(client, owner, ws, "editor")
    admin = await join(client, owner, ws, "admin")
    doc = await document(client, owner, ws, "Shared")
    other = await document(client, owner, ws, "Other")
    put = lambda who, user, role: client.put(f"{API}/documents/{doc['id']}/grants/{user.id}", json={"role": role},
                                             headers=who.headers)
    assert (await put(editor, viewer, "editor")).status == 403  # setting grants is admin and up
    assert (await put(admin, viewer, "owner")).status == 403  # not above your own role
    resp = await put(admin, viewer, "editor")
    assert resp.status == 200 and (await resp.json())["role"] == "editor"
    assert (await put(admin, editor, "viewer")).status == 200

    write = lambda who, d: client.put(f"{API}/documents/{d['id']}/content", data="x", headers=who.headers)
    assert (await write(viewer, doc)).status == 200       # raised on this document
    assert (await write(viewer, other)).status == 403     # workspace role elsewhere
    assert (await write(editor, doc)).status == 403       # lowered on this document
    assert (await write(editor, other)).status == 200

    grants = (await (await client.get(f"{API}/documents/{doc['id']}/grants", headers=admin.headers)).json())["items"]
    assert {(g["user_id"], g["role"]) for g in grants} == {(viewer.id, "editor"), (editor.id, "viewer")}
    assert (await client.get(f"{API}/documents/{doc['id']}/grants/{viewer.id}", headers=admin.headers)).status == 200
    assert (await client.delete(f"{API}/documents/{doc['id']}/grants/{viewer.id}", headers=admin.headers)).status == 204
    assert (await client.get(f"{API}/documents/{doc['id']}/grants/{viewer.id}", headers=admin.headers)).status == 404
    assert (await write(viewer, doc)).status == 403
    outsider = await register(client)
    assert (await put(owner, outsider, "viewer")).status == 404  # grants are for members
    assert (await put(owner, viewer, "boss")).status == 422
    actions = audit_actions(client, ws)
    assert actions.count("grant.set") == 2 and "grant.revoke" in actions


async def test_cross_workspace_ids_are_not_found(client):
    ada, eve = await register(client), await register(client)
    ws_a = await make_workspace(client, ada, "A")
    ws_e = await make_workspace(client, eve, "E")
    secret_folder = await folder(client, eve, ws_e, "Secret")
    secret = await document(client, eve, ws_e, "Secret", markdown="the plan", folder_id=secret_folder)
    mine = await document(client, ada, ws_a, "Mine")
    attempts = [
        ("GET", f"/documents/{secret['id']}", None), ("GET", f"/documents/{secret['id']}/content", None),
        ("PATCH", f"/documents/{secret['id']}", {"title": "x"}), ("DELETE", f"/documents/{secret['id']}", None),
        ("POST", f"/documents/{secret['id']}/restore", None), ("PATCH", f"/folders/{secret_folder}", {"name": "x"}),
        ("DELETE", f"/folders/{secret_folder}", None), ("GET", f"/workspaces/{ws_e}/tree", None),
        ("GET", f"/documents/{secret['id']}/grants", None), ("POST", f"/documents/{secret['id']}/share-links", {}),
        # ids of the other workspace inside my own requests
        ("PATCH", f"/documents/{mine['id']}", {"folder_id": secret_folder}),
        ("POST", f"/workspaces/{ws_a}/documents", {"title": "t", "folder_id": secret_folder}),
        ("POST", f"/workspaces/{ws_a}/documents", {"title": "t", "template_id": secret["id"]}),
        ("POST", f"/workspaces/{ws_a}/folders", {"name": "t", "parent_id": secret_folder}),
    ]
    for method, path, body in attempts:
        resp = await client.request(method, API + path, json=body, headers=ada.headers)
        text = await resp.text()
        assert resp.status in (404, 422), (method, path, resp.status)
        assert "the plan" not in text and "Secret" not in text and secret_folder not in text.replace(path, "")
    text, _ = await content(client, eve, secret["id"])
    assert text == "the plan"


async def test_tree_etag_gzip_and_freshness(client, team):
    owner, ws = team
    doc = await document(client, owner, ws, "First", markdown="a")
    resp = await client.get(f"{API}/workspaces/{ws}/tree", headers={**owner.headers, "Accept-Encoding": "identity"})
    etag = resp.headers["ETag"]
    resp = await client.get(f"{API}/workspaces/{ws}/tree", headers={**owner.headers, "If-None-Match": etag})
    assert resp.status == 304
    # every kind of change shows at once (the cached tree is rebuilt)
    await client.put(f"{API}/documents/{doc['id']}/content", data="b", headers=owner.headers)
    resp = await client.get(f"{API}/workspaces/{ws}/tree", headers={**owner.headers, "If-None-Match": etag})
    assert resp.status == 200 and resp.headers["ETag"] != etag
    updated = (await resp.json())["documents"][0]["updated_at"]
    assert updated > doc["updated_at"]
    await client.patch(f"{API}/documents/{doc['id']}", json={"title": "Second"}, headers=owner.headers)
    assert [d["title"] for d in (await tree(client, owner, ws))["documents"]] == ["Second"]
    # a big tree travels gzipped to clients that accept it
    for i in range(40):
        await document(client, owner, ws, f"Doc {i}")
    resp = await client.get(f"{API}/workspaces/{ws}/tree", headers={**owner.headers, "Accept-Encoding": "gzip"},
                            auto_decompress=False)
    assert resp.headers.get("Content-Encoding") == "gzip"
    assert len(json.loads(gzip.decompress(await resp.read()))["documents"]) == 41


async def test_a_cursor_this_server_did_not_issue_is_422_on_every_list(client, team):
    """Forged cursors, one holding a NUL (which PostgreSQL refuses in any text): 422 naming
    `cursor`, never a 500, on both engines."""
    import base64

    owner, ws = team
    forged = [base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")
              for key in (["2026-01-01T00:00:00.000000Z\u0000", "x"], ["a", "b\u0000"], [[[["\u0000"]]]])]
    for path in ("documents", "trash", "trash/folders", "templates"):
        for cursor in [*forged, "%%%", "bm90IGpzb24"]:
            resp = await client.get(f"{API}/workspaces/{ws}/{path}", params={"cursor": cursor}, headers=owner.headers)
            assert resp.status == 422, (path, cursor, await resp.text())
            assert (await resp.json())["errors"][0]["field"] == "cursor"

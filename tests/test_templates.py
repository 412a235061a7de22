"""Templates and AI context files (docs/api.md "Folders and documents"): placeholders filled when
a document is created from a template, the template and context lists, and `kind` patchable —
over HTTP against the real app."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from mdsync import clock
from tests.builders import API, document, join, make_workspace, register
from tests.readers import content
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines


@pytest.fixture
async def team(client):
    owner = await register(client, name="Olga")
    ws = await make_workspace(client, owner)
    editor = await join(client, owner, ws, "editor", "Edda {{date}}")
    viewer = await join(client, owner, ws, "viewer", "Vic")
    return owner, ws, editor, viewer


async def listed(client, who, ws, which, **params) -> list[str]:
    resp = await client.get(f"{API}/workspaces/{ws}/{which}", params=params, headers=who.headers)
    assert resp.status == 200, await resp.text()
    return [d["title"] for d in (await resp.json())["items"]]


async def test_placeholders_are_filled_once_and_others_left(client):
    today = datetime.fromtimestamp(clock.timestamp(), UTC)
    clock.advance((datetime(2031, 2, 3, 23, 59, tzinfo=UTC) - today).total_seconds())  # a known UTC date
    owner = await register(client, name="Olga")  # signed in on the moved clock
    ws = await make_workspace(client, owner)
    editor = await join(client, owner, ws, "editor", "Edda {{date}}")
    tpl = await document(client, owner, ws, "Meeting", kind="template",
                         markdown="# {{title}}\n{{date}} by {{author}}\n{{unknown}} {{ title }} {{TITLE}} {{date}}\n")
    made = await document(client, editor, ws, "Standup {{author}} {{date}}", template_id=tpl["id"])
    text, _ = await content(client, editor, made["id"])
    # a title or a name that reads like a placeholder is not filled again
    assert text == ("# Standup {{author}} {{date}}\n2031-02-03 by Edda {{date}}\n"
                    "{{unknown}} {{ title }} {{TITLE}} 2031-02-03\n")
    assert made["kind"] == "note" and made["title"] == "Standup {{author}} {{date}}"
    # the template itself is unchanged
    assert (await content(client, owner, tpl["id"]))[0].startswith("# {{title}}\n")


async def test_a_template_being_edited_is_copied_as_it_is_now(client, team):
    owner, ws, editor, viewer = team
    tpl = await document(client, owner, ws, "Daily", kind="template", markdown="# {{title}}\n")
    live = await YClient.connect(client, tpl["id"], owner.access_token)
    await live.wait_synced()
    live.insert(len(str(live.text)), "- [ ] typed a moment ago\n")
    for _ in range(200):  # until the room has it (not the stored projection, which may lag)
        if "typed" in (await content(client, owner, tpl["id"]))[0]:
            break
        await asyncio.sleep(0.02)
    made = await document(client, editor, ws, "Monday", template_id=tpl["id"])
    assert (await content(client, editor, made["id"]))[0] == "# Monday\n- [ ] typed a moment ago\n"
    await live.close()


async def test_template_id_must_be_a_live_document_of_this_workspace(client, team):
    owner, ws, editor, viewer = team
    stranger = await register(client, name="Stranger")
    their_ws = await make_workspace(client, stranger, "Theirs")
    theirs = await document(client, stranger, their_ws, "Their template", kind="template", markdown="secret {{title}}")
    binned = await document(client, owner, ws, "Binned", kind="template", markdown="x")
    assert (await client.delete(f"{API}/documents/{binned['id']}", headers=owner.headers)).status == 204
    mine = await document(client, owner, ws, "Mine", kind="template", markdown="{{title}}")
    for body in ({"title": "x", "template_id": theirs["id"]}, {"title": "x", "template_id": binned["id"]},
                 {"title": "x", "template_id": "no-such-id"},
                 {"title": "x", "template_id": mine["id"], "markdown": "both"}):
        before = await listed(client, owner, ws, "documents")
        resp = await client.post(f"{API}/workspaces/{ws}/documents", json=body, headers=editor.headers)
        problem = await resp.json()
        assert resp.status == 422 and [e["field"] for e in problem["errors"]] == ["template_id"], (body, problem)
        assert "secret" not in str(problem)
        assert await listed(client, owner, ws, "documents") == before
    # a viewer may not create from a template (creating is editor and up)
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "v", "template_id": mine["id"]},
                             headers=viewer.headers)
    assert resp.status == 403


async def test_lists_and_kind_patchable(client, team):
    owner, ws, editor, viewer = team
    note = await document(client, owner, ws, "Note", markdown="n")
    tpl = await document(client, owner, ws, "Template", kind="template", markdown="t")
    ctx = await document(client, owner, ws, "Style guide", kind="context", markdown="c")
    assert await listed(client, viewer, ws, "templates") == ["Template"]
    assert await listed(client, viewer, ws, "context") == ["Style guide"]
    # kind changes move a document between the lists (editor and up); the change feed says so
    resp = await client.patch(f"{API}/documents/{note['id']}", json={"kind": "template"}, headers=editor.headers)
    assert resp.status == 200 and (await resp.json())["kind"] == "template"
    resp = await client.patch(f"{API}/documents/{tpl['id']}", json={"kind": "context"}, headers=editor.headers)
    assert resp.status == 200
    assert await listed(client, viewer, ws, "templates") == ["Note"]
    assert await listed(client, viewer, ws, "context") == ["Template", "Style guide"]
    assert await listed(client, viewer, ws, "documents", kind="context") == ["Template", "Style guide"]
    changes = await (await client.get(f"{API}/sync/changes", headers=viewer.headers)).json()
    assert {c["id"] for c in changes["changes"] if c["entity"] == "document"} >= {note["id"], tpl["id"]}
    # what may not change it: a viewer, a bad kind, null
    assert (await client.patch(f"{API}/documents/{ctx['id']}", json={"kind": "note"},
                               headers=viewer.headers)).status == 403
    for bad in ("banana", None, 3, ""):
        resp = await client.patch(f"{API}/documents/{ctx['id']}", json={"kind": bad}, headers=owner.headers)
        assert resp.status == 422 and (await resp.json())["errors"][0]["field"] == "kind", bad
    assert await listed(client, viewer, ws, "context") == ["Template", "Style guide"]
    # trashed ones leave the lists, restored ones come back
    assert (await client.delete(f"{API}/documents/{ctx['id']}", headers=owner.headers)).status == 204
    assert await listed(client, viewer, ws, "context") == ["Template"]
    assert (await client.post(f"{API}/documents/{ctx['id']}/restore", headers=owner.headers)).status == 200
    assert await listed(client, viewer, ws, "context") == ["Template", "Style guide"]
    # pages, and strangers see no list at all
    first = await (await client.get(f"{API}/workspaces/{ws}/context", params={"limit": "1"},
                                    headers=viewer.headers)).json()
    rest = await (await client.get(f"{API}/workspaces/{ws}/context", params={"cursor": first["next_cursor"]},
                                   headers=viewer.headers)).json()
    assert [d["title"] for d in first["items"] + rest["items"]] == ["Template", "Style guide"]
    assert rest["next_cursor"] is None
    stranger = await register(client, name="Stranger")
    for which in ("templates", "context"):
        assert (await client.get(f"{API}/workspaces/{ws}/{which}", headers=stranger.headers)).status == 404


async def test_creating_with_a_kind_and_from_a_template_in_another_content_model(client, team):
    owner, ws, editor, viewer = team
    tpl = await document(client, owner, ws, "Rich template", kind="template", content_model="tiptap",
                         markdown="# {{title}}\n\nBy **{{author}}**\n")
    made = await document(client, editor, ws, "Plain copy", template_id=tpl["id"], kind="context")
    assert made["kind"] == "context" and made["content_model"] == "text"
    text, _ = await content(client, editor, made["id"])
    assert text.startswith("# Plain copy") and "**Edda {{date}}**" in text
    assert await listed(client, viewer, ws, "context") == ["Plain copy"]

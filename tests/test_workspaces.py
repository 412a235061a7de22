"""Workspaces and members: create, list, rename, settings, roles, removal, leave, transfer,
soft delete with a grace period, restore, purge; change feed, audit rows, access listeners, CLI.

The helpers at the top (`make_workspace`, `join`, `db_rows`, ...) build state through the
public API; the other workspace/document test files import them."""

from __future__ import annotations

import pytest

from mdsync import clock
from mdsync.hooks import HOOKS
from mdsync.workspaces.service import WORKSPACES
from tests.builders import API, PASSWORD, join, make_workspace, register
from tests.processes import cli
from tests.readers import audit_actions, db_rows, feed, role_of

pytestmark = pytest.mark.both_engines

# -- helpers shared by the workspace and document tests ---------------------------------------------


# -- workspaces ------------------------------------------------------------------------------------
async def test_create_list_get_rename(client):
    ada = await register(client, name="Ada")
    resp = await client.post(f"{API}/workspaces", json={"name": "  Research  "}, headers=ada.headers)
    assert resp.status == 201
    created = await resp.json()
    assert created["name"] == "Research" and created["role"] == "owner" and created["id"]

    resp = await client.get(f"{API}/workspaces", headers=ada.headers)
    listed = await resp.json()
    assert [(w["id"], w["role"]) for w in listed["items"]] == [(created["id"], "owner")]
    assert listed["next_cursor"] is None

    resp = await client.patch(f"{API}/workspaces/{created['id']}", json={"name": "Lab", "settings": {"theme": "dark"}},
                              headers=ada.headers)
    assert resp.status == 200
    resp = await client.get(f"{API}/workspaces/{created['id']}", headers=ada.headers)
    body = await resp.json()
    assert (body["name"], body["settings"], body["role"]) == ("Lab", {"theme": "dark"}, "owner")


async def test_list_pages_with_cursor(client):
    ada = await register(client)
    ids = {await make_workspace(client, ada, f"W{i}") for i in range(5)}
    seen, cursor = [], None
    while True:
        url = f"{API}/workspaces?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=ada.headers)).json()
        assert len(page["items"]) <= 2
        seen += [w["id"] for w in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and set(seen) == ids
    resp = await client.get(f"{API}/workspaces?cursor=garbage", headers=ada.headers)
    assert resp.status == 422


async def test_others_cannot_see_a_workspace(client):
    ada, bob = await register(client), await register(client)
    ws = await make_workspace(client, ada)
    for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/members"), ("POST", "/leave")]:
        resp = await client.request(method, f"{API}/workspaces/{ws}{path}", json={"name": "x"}, headers=bob.headers)
        assert resp.status == 404, (method, path)
    assert (await (await client.get(f"{API}/workspaces", headers=bob.headers)).json())["items"] == []
    resp = await client.get(f"{API}/workspaces/no-such-id", headers=ada.headers)
    assert resp.status == 404
    assert (await resp.json())["type"] == "urn:mdsync:error:not-found"


async def test_bad_names_change_nothing(client):
    ada = await register(client)
    ws = await make_workspace(client, ada, "Keep")
    for body in ({"name": "x" * 10_000}, {"name": "   "}, {"name": 42}, {"name": None}, {"settings": "nope"}):
        resp = await client.patch(f"{API}/workspaces/{ws}", json=body, headers=ada.headers)
        assert resp.status == 422, body
    for body in ({"name": "x" * 10_000}, {}, {"name": ["a"]}):
        resp = await client.post(f"{API}/workspaces", json=body, headers=ada.headers)
        assert resp.status == 422
        assert (await resp.json())["errors"][0]["field"] == "name"
    resp = await client.post(f"{API}/workspaces", data="{not json", headers={**ada.headers, "Content-Type": "application/json"})
    assert resp.status == 422
    listed = (await (await client.get(f"{API}/workspaces", headers=ada.headers)).json())["items"]
    assert [w["name"] for w in listed] == ["Keep"]


# -- members and roles -----------------------------------------------------------------------------
async def test_members_roles_and_limits_of_admins(client):
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    admin = await join(client, owner, ws, "admin", "Admin")
    editor = await join(client, owner, ws, "editor", "Editor")

    resp = await client.get(f"{API}/workspaces/{ws}/members", headers=editor.headers)
    members = {m["user_id"]: m for m in (await resp.json())["items"]}
    assert {m["role"] for m in members.values()} == {"owner", "admin", "editor"}
    assert members[editor.id]["name"] == "Editor" and members[editor.id]["email"] == editor.email

    # an admin manages up to admin, never owners
    resp = await client.patch(f"{API}/workspaces/{ws}/members/{editor.id}", json={"role": "viewer"}, headers=admin.headers)
    assert resp.status == 200 and (await resp.json())["role"] == "viewer"
    resp = await client.patch(f"{API}/workspaces/{ws}/members/{editor.id}", json={"role": "owner"}, headers=admin.headers)
    assert resp.status == 403
    resp = await client.patch(f"{API}/workspaces/{ws}/members/{owner.id}", json={"role": "viewer"}, headers=admin.headers)
    assert resp.status == 403
    resp = await client.delete(f"{API}/workspaces/{ws}/members/{owner.id}", headers=admin.headers)
    assert resp.status == 403
    # below admin: no member management at all
    resp = await client.patch(f"{API}/workspaces/{ws}/members/{admin.id}", json={"role": "viewer"}, headers=editor.headers)
    assert resp.status == 403
    # bad role, unknown member
    resp = await client.patch(f"{API}/workspaces/{ws}/members/{editor.id}", json={"role": "god"}, headers=owner.headers)
    assert resp.status == 422
    resp = await client.patch(f"{API}/workspaces/{ws}/members/nobody", json={"role": "viewer"}, headers=owner.headers)
    assert resp.status == 404
    assert await role_of(client, editor, ws) == "viewer"

    resp = await client.delete(f"{API}/workspaces/{ws}/members/{editor.id}", headers=admin.headers)
    assert resp.status == 204
    assert await role_of(client, editor, ws) is None
    assert (await client.get(f"{API}/workspaces/{ws}", headers=editor.headers)).status == 404
    actions = audit_actions(client, ws)
    assert actions.count("member.add") == 3 and "member.role" in actions and "member.remove" in actions


async def test_removed_member_sees_exactly_one_workspace_delete(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    bob = await join(client, owner, ws, "editor")
    assert (await client.delete(f"{API}/workspaces/{ws}/members/{bob.id}", headers=owner.headers)).status == 204
    rows = feed(client, ws)
    assert rows[-2:] == [("member", bob.id, "delete", None), ("workspace", ws, "delete", bob.id)]
    assert [r for r in rows if r[3] == bob.id and r[2] == "delete"] == [("workspace", ws, "delete", bob.id)]


async def test_leave_and_last_owner(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    viewer = await join(client, owner, ws, "viewer")
    resp = await client.post(f"{API}/workspaces/{ws}/leave", headers=owner.headers)
    assert resp.status == 409 and (await resp.json())["type"] == "urn:mdsync:error:conflict"
    resp = await client.patch(f"{API}/workspaces/{ws}/members/{owner.id}", json={"role": "admin"}, headers=owner.headers)
    assert resp.status == 409
    assert await role_of(client, owner, ws) == "owner"
    # a viewer may leave, also through DELETE on themselves
    assert (await client.delete(f"{API}/workspaces/{ws}/members/{viewer.id}", headers=viewer.headers)).status == 204
    assert await role_of(client, viewer, ws) is None
    assert "member.leave" in audit_actions(client, ws)


async def test_transfer_ownership(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    bob = await join(client, owner, ws, "editor")
    resp = await client.post(f"{API}/workspaces/{ws}/transfer", json={"user_id": bob.id}, headers=bob.headers)
    assert resp.status == 403
    resp = await client.post(f"{API}/workspaces/{ws}/transfer", json={"user_id": "nobody"}, headers=owner.headers)
    assert resp.status == 404
    resp = await client.post(f"{API}/workspaces/{ws}/transfer", json={"user_id": bob.id}, headers=owner.headers)
    assert resp.status == 204
    assert (await role_of(client, bob, ws), await role_of(client, owner, ws)) == ("owner", "admin")
    # now the old owner may leave, the new one may not
    assert (await client.post(f"{API}/workspaces/{ws}/leave", headers=bob.headers)).status == 409
    assert (await client.post(f"{API}/workspaces/{ws}/leave", headers=owner.headers)).status == 204


async def test_access_listeners_hear_about_lost_access(client):
    heard = []
    client.app[HOOKS].access_changed.append(lambda *args: heard.append(args))
    owner = await register(client)
    ws = await make_workspace(client, owner)
    bob = await join(client, owner, ws, "editor")
    await client.patch(f"{API}/workspaces/{ws}/members/{bob.id}", json={"role": "editor"}, headers=owner.headers)
    assert heard == []  # the same role: nothing changed
    await client.patch(f"{API}/workspaces/{ws}/members/{bob.id}", json={"role": "admin"}, headers=owner.headers)
    assert heard == [(ws, bob.id, None)]  # a promotion: live sockets become writable where they were not
    await client.patch(f"{API}/workspaces/{ws}/members/{bob.id}", json={"role": "viewer"}, headers=owner.headers)
    assert heard == [(ws, bob.id, None)] * 2
    await client.delete(f"{API}/workspaces/{ws}/members/{bob.id}", headers=owner.headers)
    assert heard[-1] == (ws, bob.id, None)
    await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)
    assert heard[-1] == (ws, None, None)


# -- delete, restore, purge ------------------------------------------------------------------------
async def test_delete_is_owner_only_and_soft(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    admin = await join(client, owner, ws, "admin")
    assert (await client.delete(f"{API}/workspaces/{ws}", headers=admin.headers)).status == 403
    assert (await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)).status == 204
    for who in (owner, admin):
        assert (await client.get(f"{API}/workspaces/{ws}", headers=who.headers)).status == 404
        assert await role_of(client, who, ws) is None
    assert feed(client, ws)[-1] == ("workspace", ws, "delete", None)
    assert "workspace.delete" in audit_actions(client, ws)
    # within the grace period an owner brings it back; an admin cannot
    assert (await client.post(f"{API}/workspaces/{ws}/restore", headers=admin.headers)).status == 403
    resp = await client.post(f"{API}/workspaces/{ws}/restore", headers=owner.headers)
    assert resp.status == 200 and (await resp.json())["id"] == ws
    assert await role_of(client, admin, ws) == "admin"
    assert (await client.post(f"{API}/workspaces/{ws}/restore", headers=owner.headers)).status == 409


async def test_purge_after_the_configured_grace_period(make_client):
    client = await make_client(workspaces__purge_grace_seconds=600)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "Doc", "markdown": "x"}, headers=owner.headers)
    doc = (await resp.json())["id"]
    assert (await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)).status == 204
    service = client.app[WORKSPACES]
    assert await service.purge_expired() == 0  # still in its grace period
    clock.advance(601)
    assert await service.purge_expired() == 1
    assert db_rows(client, "SELECT id FROM workspaces WHERE id = ?", (ws,)) == []
    assert db_rows(client, "SELECT id FROM documents WHERE id = ?", (doc,)) == []
    assert db_rows(client, "SELECT 1 FROM members WHERE workspace_id = ?", (ws,)) == []
    assert (await client.post(f"{API}/workspaces/{ws}/restore", headers=owner.headers)).status == 404
    assert "workspace.purge" in audit_actions(client, ws)


# -- CLI ---------------------------------------------------------------------------------------------


def test_cli_workspaces(tmp_path):
    data = tmp_path / "data"
    for email in ("ann@example.com", "ben@example.com"):
        assert cli(data, "users", "create", email, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    done = cli(data, "workspaces", "create", "Ops Team", "--owner", "ann@example.com")
    assert done.returncode == 0, done.stderr
    assert cli(data, "workspaces", "create", "X", "--owner", "nobody@example.com").returncode == 1

    listed = cli(data, "workspaces", "list").stdout
    ws_id, slug, name, members, owners, _ = listed.strip().split("\t")
    assert (slug, name, members, owners) == ("ops-team", "Ops Team", "1 members", "owners: ann@example.com")

    assert cli(data, "workspaces", "add-member", "ops-team", "ben@example.com", "--role", "viewer").returncode == 0
    assert "2 members" in cli(data, "workspaces", "list").stdout
    refused = cli(data, "workspaces", "remove-member", ws_id, "ann@example.com")
    assert refused.returncode == 1 and "owner" in refused.stderr
    # ann is the only owner: deleting her account is refused, nothing changes
    refused = cli(data, "users", "delete", "ann@example.com", "--yes")
    assert refused.returncode == 1 and "only owner" in refused.stderr
    assert "ann@example.com" in cli(data, "users", "list").stdout
    # make ben owner, then ann can go
    assert cli(data, "workspaces", "add-member", ws_id, "ben@example.com", "--role", "owner").returncode == 0
    assert cli(data, "workspaces", "remove-member", ws_id, "ann@example.com").returncode == 0
    assert "owners: ben@example.com" in cli(data, "workspaces", "list").stdout
    assert cli(data, "workspaces", "remove-member", "no-such", "ben@example.com").returncode == 1


@pytest.mark.parametrize("role", ["viewer", "admin"])
async def test_member_of_one_workspace_cannot_reach_another(client, role):
    ada, eve = await register(client), await register(client)
    ws_a = await make_workspace(client, ada, "A")
    ws_e = await make_workspace(client, eve, "E")
    ada_in_e = await join(client, eve, ws_e, role)  # someone else, so ada stays outside E
    del ada_in_e
    resp = await client.get(f"{API}/workspaces/{ws_e}/members", headers=ada.headers)
    assert resp.status == 404
    body = await resp.text()
    assert eve.email not in body and ws_e not in body
    assert (await client.get(f"{API}/workspaces/{ws_a}/members", headers=eve.headers)).status == 404


async def test_resolve_and_recheck_follow_membership_and_grants(client):
    """The interface live sockets use: resolve once, recheck after an access listener fires."""
    from mdsync.appkeys import DB
    from mdsync.workspaces import access

    db = client.app[DB]
    owner = await register(client)
    ws = await make_workspace(client, owner)
    bob = await join(client, owner, ws, "editor")
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": "D"}, headers=owner.headers)
    doc = (await resp.json())["id"]
    held = await access.resolve(db, bob.id, document_id=doc)
    assert (held.role, held.workspace_id, held.document_id, held.at_least("editor")) == ("editor", ws, doc, True)
    await client.put(f"{API}/documents/{doc}/grants/{bob.id}", json={"role": "viewer"}, headers=owner.headers)
    now = await access.recheck(db, held)
    assert now.role == "viewer" and not now.at_least("commenter")
    await client.delete(f"{API}/workspaces/{ws}/members/{bob.id}", headers=owner.headers)
    assert await access.recheck(db, held) is None
    with pytest.raises(Exception) as caught:
        await access.resolve(db, bob.id, workspace_id=ws)
    assert getattr(caught.value, "status", None) == 404


async def test_the_purger_runs_by_itself(make_client):
    import asyncio

    client = await make_client(workspaces__purge_grace_seconds=0, workspaces__purge_interval=0.05)
    owner = await register(client)
    ws = await make_workspace(client, owner)
    assert (await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)).status == 204
    for _ in range(200):  # bounded: at most ~10 s
        if not db_rows(client, "SELECT 1 FROM workspaces WHERE id = ?", (ws,)):
            break
        await asyncio.sleep(0.05)
    assert db_rows(client, "SELECT 1 FROM workspaces WHERE id = ?", (ws,)) == []

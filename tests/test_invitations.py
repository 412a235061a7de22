"""Invitations: create (role, email, expiry; token + URL), list, revoke, accept while signed in,
register with an invitation; expired, revoked and used ones are 410 and change nothing."""

from __future__ import annotations

import pytest

from mdsync import clock
from tests.builders import API, invite, join, make_workspace, register
from tests.readers import audit_actions, role_of

pytestmark = pytest.mark.both_engines


async def test_create_and_list(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    created = await invite(client, owner, ws, "editor", email="New@Example.com", expires_in=3600)
    assert created["id"] and created["token"].startswith("mdi_") and created["token"] in created["url"]
    assert (created["role"], created["email"], created["status"]) == ("editor", "new@example.com", "pending")
    assert clock.parse(created["expires_at"]).timestamp() - clock.timestamp() > 3500

    resp = await client.get(f"{API}/workspaces/{ws}/invitations", headers=owner.headers)
    items = (await resp.json())["items"]
    assert [i["id"] for i in items] == [created["id"]]
    assert "token" not in items[0]  # the token is shown once
    default = await invite(client, owner, ws, "viewer")
    assert 7 * 86400 - 60 < clock.parse(default["expires_at"]).timestamp() - clock.timestamp() <= 7 * 86400
    assert "invitation.create" in audit_actions(client, ws)


async def test_admin_cannot_invite_above_own_role(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    admin = await join(client, owner, ws, "admin")
    editor = await join(client, owner, ws, "editor")
    resp = await client.post(f"{API}/workspaces/{ws}/invitations", json={"role": "owner"}, headers=admin.headers)
    assert resp.status == 403
    assert (await invite(client, admin, ws, "admin"))["role"] == "admin"
    resp = await client.post(f"{API}/workspaces/{ws}/invitations", json={"role": "viewer"}, headers=editor.headers)
    assert resp.status == 403
    assert (await client.get(f"{API}/workspaces/{ws}/invitations", headers=editor.headers)).status == 403
    assert (await invite(client, owner, ws, "owner"))["role"] == "owner"


async def test_bad_invitation_bodies(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    for body in ({}, {"role": "boss"}, {"role": "viewer", "email": "not-an-email"},
                 {"role": "viewer", "expires_in": "soon"}, {"role": "viewer", "expires_in": -5}, {"role": 3}):
        resp = await client.post(f"{API}/workspaces/{ws}/invitations", json=body, headers=owner.headers)
        assert resp.status == 422, body
    assert (await (await client.get(f"{API}/workspaces/{ws}/invitations", headers=owner.headers)).json())["items"] == []


async def test_invite_only_server_registers_with_invitation(make_client, tmp_path):
    data = tmp_path / "shared-data"
    open_server = await make_client(data_dir=data)
    owner = await register(open_server)
    ws = await make_workspace(open_server, owner)
    token = (await invite(open_server, owner, ws, "editor"))["token"]

    client = await make_client(data_dir=data, auth__registration="invite")
    resp = await client.post(f"{API}/auth/register", json={"email": "a@example.com", "password": "x" * 12, "name": "A"})
    assert resp.status == 403  # invite mode without a token
    newcomer = await register(client, invitation=token)
    assert await role_of(client, newcomer, ws) == "editor"


async def test_register_and_accept(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    invitation = await invite(client, owner, ws, "commenter")
    newcomer = await register(client, invitation=invitation["token"])
    assert await role_of(client, newcomer, ws) == "commenter"
    # used: a second registration with it fails and creates no account
    resp = await client.post(f"{API}/auth/register", json={"email": "late@example.com", "password": "x" * 12,
                                                          "name": "Late", "invitation": invitation["token"]})
    assert resp.status == 410 and (await resp.json())["type"] == "urn:mdsync:error:gone"
    resp = await client.post(f"{API}/auth/login", json={"email": "late@example.com", "password": "x" * 12})
    assert resp.status == 401

    # accepting while signed in
    someone = await register(client)
    token = (await invite(client, owner, ws, "editor"))["token"]
    resp = await client.post(f"{API}/invitations/accept", json={"token": token}, headers=someone.headers)
    assert resp.status == 200
    body = await resp.json()
    assert (body["workspace_id"], body["role"], body["workspace"]["id"]) == (ws, "editor", ws)
    assert await role_of(client, someone, ws) == "editor"
    resp = await client.post(f"{API}/invitations/accept", json={"token": token}, headers=someone.headers)
    assert resp.status == 410
    listed = (await (await client.get(f"{API}/workspaces/{ws}/invitations", headers=owner.headers)).json())["items"]
    assert {i["status"] for i in listed} == {"accepted"}
    assert "invitation.accept" in audit_actions(client, ws)


async def test_expired_and_revoked_are_gone_and_change_nothing(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    someone = await register(client)
    expiring = await invite(client, owner, ws, "viewer", expires_in=60)
    revoked = await invite(client, owner, ws, "viewer")
    assert (await client.delete(f"{API}/workspaces/{ws}/invitations/{revoked['id']}", headers=owner.headers)).status == 204
    assert "invitation.revoke" in audit_actions(client, ws)
    clock.advance(61)
    for inv in (expiring, revoked):
        resp = await client.post(f"{API}/invitations/accept", json={"token": inv["token"]}, headers=someone.headers)
        assert resp.status == 410, inv
        resp = await client.post(f"{API}/auth/register", json={"email": f"r{inv['id'][:6]}@example.com",
                                                              "password": "x" * 12, "name": "R", "invitation": inv["token"]})
        assert resp.status == 410
    resp = await client.post(f"{API}/invitations/accept", json={"token": "mdi_unknown"}, headers=someone.headers)
    assert resp.status == 410
    assert await role_of(client, someone, ws) is None
    statuses = {i["id"]: i["status"] for i in (await (await client.get(
        f"{API}/workspaces/{ws}/invitations", headers=owner.headers)).json())["items"]}
    assert statuses == {expiring["id"]: "expired", revoked["id"]: "revoked"}


async def test_email_bound_invitation_and_existing_member(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    bound = await invite(client, owner, ws, "editor", email="right@example.com")
    wrong = await register(client, email="wrong@example.com")
    resp = await client.post(f"{API}/invitations/accept", json={"token": bound["token"]}, headers=wrong.headers)
    assert resp.status == 403
    right = await register(client, email="right@example.com", invitation=bound["token"])
    assert await role_of(client, right, ws) == "editor"
    # a member accepting another invitation: 409, and it stays usable
    again = await invite(client, owner, ws, "admin")
    resp = await client.post(f"{API}/invitations/accept", json={"token": again["token"]}, headers=right.headers)
    assert resp.status == 409
    assert await role_of(client, right, ws) == "editor"
    assert (await client.post(f"{API}/invitations/accept", json={"token": again["token"]}, headers=wrong.headers)).status == 200


async def test_revoke_rules(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    admin = await join(client, owner, ws, "admin")
    owners_inv = await invite(client, owner, ws, "owner")
    resp = await client.delete(f"{API}/workspaces/{ws}/invitations/{owners_inv['id']}", headers=admin.headers)
    assert resp.status == 403
    assert (await client.delete(f"{API}/workspaces/{ws}/invitations/nope", headers=owner.headers)).status == 404
    # an invitation of another workspace is not found here
    other = await make_workspace(client, owner, "Other")
    foreign = await invite(client, owner, other, "viewer")
    assert (await client.delete(f"{API}/workspaces/{ws}/invitations/{foreign['id']}", headers=owner.headers)).status == 404


async def test_deleted_workspace_invitations_are_gone(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    inv = await invite(client, owner, ws, "viewer")
    await client.delete(f"{API}/workspaces/{ws}", headers=owner.headers)
    someone = await register(client)
    assert (await client.post(f"{API}/invitations/accept", json={"token": inv["token"]}, headers=someone.headers)).status == 410

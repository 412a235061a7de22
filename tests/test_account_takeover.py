"""Account takeover paths (issue 14, item 15): a stolen 15-minute access token must not turn into
something that outlives it or the owner's password change.

- Creating a personal access token needs the password, unless the caller's session signed in
  (with the password) less than `auth.recent_sign_in_seconds` ago.
- Changing the password revokes every personal access token (and the other sessions).
- Changing the email needs the current password, and an invitation bound to an email is accepted
  only by an account that had that email when it was invited (or registers with it and the
  invitation): an email changed later does not accept it.
"""

from __future__ import annotations

from functools import partial

import pytest

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.auth import admin
from tests.builders import API, PASSWORD, bearer, invite, make_workspace, register
from tests.readers import role_of

pytestmark = pytest.mark.both_engines


async def new_token(client, who, **body):
    return await client.post(f"{API}/me/tokens", json={"name": "script", **body}, headers=who.headers)


async def test_a_personal_access_token_needs_the_password_once_the_sign_in_is_not_recent(client):
    account = await register(client)
    assert (await new_token(client, account)).status == 201  # just signed in with the password
    clock.advance(10 * 60)  # the access token (15 min) still works, the sign-in is no longer recent
    assert (await client.get(f"{API}/me", headers=account.headers)).status == 200
    resp = await new_token(client, account)
    assert resp.status == 403
    problem = await resp.json()
    assert problem["type"] == "urn:mdsync:error:forbidden" and problem["errors"][0]["field"] == "password"
    assert (await new_token(client, account, password="not the password")).status == 403
    resp = await new_token(client, account, password=PASSWORD)
    assert resp.status == 201, await resp.text()
    # a personal access token cannot mint another one without the password either
    pat = (await resp.json())["token"]
    assert (await client.post(f"{API}/me/tokens", json={"name": "again"}, headers=bearer(pat))).status == 403
    listed = await (await client.get(f"{API}/me/tokens", headers=account.headers)).json()
    assert len(listed["items"]) == 2


async def test_a_password_change_revokes_personal_access_tokens(client):
    account = await register(client)
    pat = (await (await new_token(client, account)).json())["token"]
    assert (await client.get(f"{API}/me", headers=bearer(pat))).status == 200
    resp = await client.post(f"{API}/me/password", headers=account.headers,
                             json={"current_password": PASSWORD, "new_password": "a new password"})
    assert resp.status == 204
    assert (await client.get(f"{API}/me", headers=bearer(pat))).status == 401
    listed = await (await client.get(f"{API}/me/tokens", headers=account.headers)).json()
    assert listed["items"] == []


async def test_an_admin_password_reset_revokes_them_too(client):
    account = await register(client)
    pat = (await (await new_token(client, account)).json())["token"]
    # what `mdsync users reset-password` runs
    await client.app[DB].write(partial(admin.reset_password, via="cli"), account.id, "not a real hash")
    assert (await client.get(f"{API}/me", headers=bearer(pat))).status == 401


async def test_changing_the_email_needs_the_current_password(client):
    account = await register(client, email="ada@example.com")
    resp = await client.patch(f"{API}/me", json={"email": "thief@example.com"}, headers=account.headers)
    assert resp.status == 403
    assert (await resp.json())["errors"][0]["field"] == "current_password"
    resp = await client.patch(f"{API}/me", json={"email": "thief@example.com", "current_password": "nope"},
                              headers=account.headers)
    assert resp.status == 403
    me = await (await client.get(f"{API}/me", headers=account.headers)).json()
    assert me["email"] == "ada@example.com"
    # the name alone needs no password; the email with it is changed
    assert (await client.patch(f"{API}/me", json={"name": "Ada L."}, headers=account.headers)).status == 200
    resp = await client.patch(f"{API}/me", json={"email": "lovelace@example.com", "current_password": PASSWORD},
                              headers=account.headers)
    assert resp.status == 200 and (await resp.json())["email"] == "lovelace@example.com"


async def test_an_email_set_after_the_invitation_cannot_accept_it(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    before = await register(client, email="before@example.com")
    bound = await invite(client, owner, ws, "editor", email="target@example.com")
    mallory = await register(client, email="mallory@example.com")
    resp = await client.patch(f"{API}/me", json={"email": "target@example.com", "current_password": PASSWORD},
                              headers=mallory.headers)
    assert resp.status == 200
    resp = await client.post(f"{API}/invitations/accept", json={"token": bound["token"]}, headers=mallory.headers)
    assert resp.status == 403, await resp.text()
    assert await role_of(client, mallory, ws) is None
    # an account that had the address when it was invited accepts it
    early = await invite(client, owner, ws, "viewer", email="before@example.com")
    resp = await client.post(f"{API}/invitations/accept", json={"token": early["token"]}, headers=before.headers)
    assert resp.status == 200, await resp.text()

"""Share links: create (viewer or commenter, optional expiry), read without an account at
GET /share/{token}, use by a signed-in non-member on routes that accept them, list, revoke."""

from __future__ import annotations

import pytest

from mdsync import clock
from mdsync.hooks import HOOKS
from tests.builders import API, document, join, make_workspace, register, share
from tests.readers import audit_actions

pytestmark = pytest.mark.both_engines


async def test_anonymous_read(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, "Public note", markdown="# Hello\n")
    link = await share(client, owner, doc["id"])
    assert link["id"] and link["role"] == "viewer" and link["token"].startswith("mdl_")
    assert link["url"].endswith(f"/api/v1/share/{link['token']}")
    resp = await client.get(f"{API}/share/{link['token']}")
    assert resp.status == 200
    body = await resp.json()
    assert (body["markdown"], body["role"], body["document"]["title"]) == ("# Hello\n", "viewer", "Public note")
    assert "workspace_id" not in body["document"]
    assert (await client.get(f"{API}/share/mdl_nope")).status == 404
    assert "share_link.create" in audit_actions(client, ws)


async def test_expired_revoked_trashed_are_not_found(client):
    heard = []
    client.app[HOOKS].access_changed.append(lambda *args: heard.append(args))
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="x")
    short = await share(client, owner, doc["id"], expires_in=30)
    revoked = await share(client, owner, doc["id"], role="commenter")
    kept = await share(client, owner, doc["id"])
    assert (await client.delete(f"{API}/documents/{doc['id']}/share-links/{revoked['id']}", headers=owner.headers)).status == 204
    assert heard[-1] == (ws, None, doc["id"])
    assert (await client.get(f"{API}/share/{revoked['token']}")).status == 404
    assert (await client.get(f"{API}/share/{short['token']}")).status == 200
    clock.advance(31)
    assert (await client.get(f"{API}/share/{short['token']}")).status == 404
    listed = (await (await client.get(f"{API}/documents/{doc['id']}/share-links", headers=owner.headers)).json())["items"]
    assert {link["id"] for link in listed} == {short["id"], kept["id"]} and all("token" not in link for link in listed)
    await client.delete(f"{API}/documents/{doc['id']}", headers=owner.headers)
    assert (await client.get(f"{API}/share/{kept['token']}")).status == 404
    await client.post(f"{API}/documents/{doc['id']}/restore", headers=owner.headers)
    assert (await client.get(f"{API}/share/{kept['token']}")).status == 200
    assert "share_link.revoke" in audit_actions(client, ws)


async def test_signed_in_holder_reads_that_document_only(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    doc = await document(client, owner, ws, markdown="shared text")
    other = await document(client, owner, ws, markdown="private")
    link = await share(client, owner, doc["id"], role="commenter")
    holder = await register(client)
    with_token = {**holder.headers, "X-Mdsync-Share": link["token"]}
    resp = await client.get(f"{API}/documents/{doc['id']}/content", headers=with_token)
    assert resp.status == 200 and await resp.text() == "shared text"
    resp = await client.get(f"{API}/documents/{doc['id']}/content?share={link['token']}", headers=holder.headers)
    assert resp.status == 200
    assert (await client.get(f"{API}/documents/{doc['id']}", headers=with_token)).status == 200
    # can see it, may not edit it
    assert (await client.put(f"{API}/documents/{doc['id']}/content", data="x", headers=with_token)).status == 403
    # nothing else: not the other document, not the workspace
    assert (await client.get(f"{API}/documents/{other['id']}/content", headers=with_token)).status == 404
    assert (await client.get(f"{API}/workspaces/{ws}/tree", headers=with_token)).status == 404
    assert (await client.get(f"{API}/documents/{doc['id']}/content", headers=holder.headers)).status == 404
    resp = await client.get(f"{API}/share/{link['token']}", headers=holder.headers)
    assert resp.status == 200 and (await resp.json())["role"] == "commenter"


async def test_who_may_manage_links_and_bad_bodies(client):
    owner = await register(client)
    ws = await make_workspace(client, owner)
    viewer = await join(client, owner, ws, "viewer")
    editor = await join(client, owner, ws, "editor")
    doc = await document(client, owner, ws)
    assert (await client.post(f"{API}/documents/{doc['id']}/share-links", json={}, headers=viewer.headers)).status == 403
    link = await share(client, editor, doc["id"])
    assert (await client.get(f"{API}/documents/{doc['id']}/share-links/{link['id']}", headers=editor.headers)).status == 200
    for body in ({"role": "editor"}, {"role": "owner"}, {"expires_in": "soon"}, {"expires_in": 0}, {"role": None}):
        resp = await client.post(f"{API}/documents/{doc['id']}/share-links", json=body, headers=owner.headers)
        assert resp.status == 422, body
    assert (await client.delete(f"{API}/documents/{doc['id']}/share-links/nope", headers=owner.headers)).status == 404
    listed = (await (await client.get(f"{API}/documents/{doc['id']}/share-links", headers=owner.headers)).json())["items"]
    assert [item["id"] for item in listed] == [link["id"]]

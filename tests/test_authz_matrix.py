"""The authorization matrix: every endpoint × every kind of caller → the expected status.

Callers: owner, admin, editor, commenter, viewer (members), nonmember (signed in, not in the
workspace), share (signed in, not a member, sending a share token of the target document in
`X-Mdsync-Share`) and anonymous (no token).

Each row: method, the route path exactly as declared in its Routes table, the eight expected
statuses in the order of CALLERS, and optionally a query string, a body and a `setup` that makes
fresh targets per caller (for deletes and the like, so one caller's success does not change what
the next one sees). `test_every_route_has_a_row` fails when a route of ANY Routes table in
`app[ROUTE_TABLES]` has no row: routes that are not workspace-scoped (auth, /me, sync, ops) have
rows too, where what matters is signed in or anonymous. The only routes without a row are listed
in NOT_A_ROW, each with the table that covers it instead (the WebSocket upgrade: its table of
close codes and read-only/read-write outcomes is tests/test_authz_socket.py).

HOW OTHER FEATURES JOIN THE MATRIX: register your Routes table in mdsync/app.py and add a row to
ROWS for each of its routes (build state through the API in a `setup` if `World` lacks what you
need; a second row for the same route takes a `label`).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from mdsync.appkeys import ROUTE_TABLES
from mdsync.sync.feed import encode_cursor
from tests.authz_world import World, build_world, fresh_doc, fresh_trashed_doc, viewer_grant
from tests.builders import PASSWORD, Account, document, folder, invite, join, make_workspace, register, share
from tests.readers import db_rows

pytestmark = pytest.mark.both_engines


@pytest.fixture
async def client(make_client):
    # many registrations per test: lift the per-address registration throttle
    return await make_client(auth__register_attempts_per_address=100_000)


CALLERS = ("owner", "admin", "editor", "commenter", "viewer", "nonmember", "share", "anonymous")
# Declared routes that cannot be a row here, and where their authorization table lives instead.
NOT_A_ROW = {
    # WebSocket upgrades: without one they are a 400 for everybody, and their authorization is a
    # close code (or a per-document PermissionDenied) after the upgrade, not a status
    ("GET", "/ws/docs/{document_id}"): "tests/test_authz_socket.py",
    ("GET", "/ws/hocuspocus"): "tests/test_authz_socket.py",
}


Setup = Callable[[World, str], Awaitable[dict[str, Any]]]


@dataclass
class Row:
    method: str
    path: str
    expect: str  # eight statuses, in the order of CALLERS
    query: str = ""
    body: Any = None
    setup: Setup | None = None  # (world, caller) -> overrides of World.vars() (and "token")
    fresh_world: bool = False   # a new World for each caller (workspace-wide destructive actions)
    raw: bytes | None = None    # a non-JSON body (document content)
    content_type: str = "text/markdown"  # of `raw`
    label: str = ""             # tells apart two rows of one route
    headers: dict[str, str] | None = None  # sent by every caller

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}{self.query}" + (f" [{self.label}]" if self.label else "")


# -- setups: fresh targets per caller -------------------------------------------------------------
async def link_of_another_doc(w: World, caller: str) -> dict:
    other = await fresh_doc(w, caller)
    return {"token": other["token"]}


async def fresh_folder(w: World, caller: str) -> dict:
    return {"folder": await folder(w.client, w.people["owner"], w.ws, "Fresh")}


async def fresh_trashed_folder(w: World, caller: str) -> dict:
    target = await fresh_folder(w, caller)
    await w.client.delete(f"/api/v1/folders/{target['folder']}", headers=w.people["owner"].headers)
    return target


async def fresh_member(w: World, caller: str) -> dict:
    return {"user": (await join(w.client, w.people["owner"], w.ws, "commenter")).id}


async def fresh_invitation(w: World, caller: str) -> dict:
    return {"inv": (await invite(w.client, w.people["owner"], w.ws, "viewer"))["id"]}


async def fresh_invitation_token(w: World, caller: str) -> dict:
    return {"body": {"token": (await invite(w.client, w.people["owner"], w.ws, "viewer"))["token"]}}


async def swapped_grants(w: World, caller: str) -> dict:
    """A fresh document on which the viewer is granted editor and the editor only viewer."""
    target = await fresh_doc(w, caller)
    for who, role in (("viewer", "editor"), ("editor", "viewer")):
        resp = await w.client.put(f"/api/v1/documents/{target['doc']}/grants/{w.people[who].id}",
                                  json={"role": role}, headers=w.people["owner"].headers)
        assert resp.status == 200, await resp.text()
    return target


async def fresh_link(w: World, caller: str) -> dict:
    link = await share(w.client, w.people["owner"], w.doc)
    return {"link": link["id"]}


async def doc_version(w: World, caller: str) -> dict:
    resp = await w.client.post(f"/api/v1/documents/{w.doc}/versions", json={"label": "v"},
                               headers=w.people["owner"].headers)
    assert resp.status == 201
    return {"version": (await resp.json())["id"]}


async def _account(w: World, caller: str) -> Account:
    """The caller's account; for the anonymous caller, someone who is not signed in on this request."""
    return w.people.get(caller) or await register(w.client, name="Newcomer")


async def new_account_body(w: World, caller: str) -> dict:
    return {"body": {"email": f"new-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD, "name": "New"}}


async def own_credentials(w: World, caller: str) -> dict:
    account = await _account(w, caller)
    return {"body": {"email": account.email, "password": account.password, "device_name": "matrix"}}


async def own_refresh_token(w: World, caller: str) -> dict:
    return {"body": {"refresh_token": (await _account(w, caller)).refresh_token}}


async def own_password(w: World, caller: str) -> dict:
    account = await _account(w, caller)
    return {"body": {"current_password": account.password, "new_password": "another horse battery"}}


async def _new_session(w: World, account: Account) -> str:
    """The id of a new session of `account` (it signs in on another device)."""
    resp = await w.client.post("/api/v1/auth/login", json={"email": account.email, "password": account.password})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    resp = await w.client.get("/api/v1/auth/sessions", headers={"Authorization": f"Bearer {token}"})
    return next(s["id"] for s in (await resp.json())["items"] if s["current"])


async def own_session(w: World, caller: str) -> dict:
    return {"session_id": await _new_session(w, await _account(w, caller))}


async def others_session(w: World, caller: str) -> dict:
    return {"session_id": await _new_session(w, await register(w.client, name="Someone else"))}


async def _new_api_token(w: World, account: Account) -> str:
    resp = await w.client.post("/api/v1/me/tokens", json={"name": "t", "scopes": ["read"]}, headers=account.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def own_api_token(w: World, caller: str) -> dict:
    return {"token_id": await _new_api_token(w, await _account(w, caller))}


async def others_api_token(w: World, caller: str) -> dict:
    return {"token_id": await _new_api_token(w, await register(w.client, name="Someone else"))}


async def foreign_ids(w: World, caller: str) -> dict:
    """Ids of things in another workspace (its invitation, member, share link, version), to be
    used in paths of this one: they must be as invisible as anything of that workspace."""
    other = await register(w.client, name="Elsewhere")
    ws = await make_workspace(w.client, other, "Elsewhere")
    doc = await document(w.client, other, ws, "Theirs", markdown="not yours")
    resp = await w.client.post(f"/api/v1/documents/{doc['id']}/versions", json={"label": "v"}, headers=other.headers)
    return {"inv": (await invite(w.client, other, ws, "viewer"))["id"],
            "user": (await join(w.client, other, ws, "editor")).id,
            "link": (await share(w.client, other, doc["id"]))["id"],
            "version": (await resp.json())["id"]}


async def deleted_workspace(w: World, caller: str) -> dict:
    resp = await w.client.delete(f"/api/v1/workspaces/{w.ws}", headers=w.people["owner"].headers)
    assert resp.status == 204
    return {}


async def fresh_attachment(w: World, caller: str) -> dict:
    resp = await w.client.post(f"/api/v1/workspaces/{w.ws}/attachments", data=b"bytes", params={"filename": "a.txt"},
                               headers={**w.people["owner"].headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    return {"attachment": body["id"], "signed": body["url"].split("?", 1)[1]}


async def commenter_link(w: World, caller: str) -> dict:
    return {"token": (await share(w.client, w.people["owner"], w.doc, role="commenter"))["token"]}


async def owners_comment(w: World, caller: str) -> dict:
    resp = await w.client.post(f"{D}/{w.doc}/comments", json={"body": "The owner's"}, headers=w.people["owner"].headers)
    assert resp.status == 201, await resp.text()
    return {"comment": (await resp.json())["id"]}


async def own_comment(w: World, caller: str) -> dict:
    """A comment written by the caller: members who may comment write it themselves, the share
    caller through a commenter link (which it then presents); others get the owner's."""
    link = await commenter_link(w, caller)
    author = w.people[caller] if caller in ("owner", "admin", "editor", "commenter", "share") else w.people["owner"]
    headers = {**author.headers, "X-Mdsync-Share": link["token"]} if caller == "share" else author.headers
    resp = await w.client.post(f"{D}/{w.doc}/comments", json={"body": "Mine"}, headers=headers)
    assert resp.status == 201, await resp.text()
    return {"comment": (await resp.json())["id"], **link}


async def ai_key(w: World, caller: str) -> dict:
    resp = await w.client.put(f"/api/v1/workspaces/{w.ws}/ai/keys/openai", json={"api_key": "sk-matrix-key"},
                              headers=w.people["owner"].headers)
    assert resp.status == 204, await resp.text()
    return {"provider": "openai"}


# -- the matrix ------------------------------------------------------------------------------------
#                 owner admin editor commenter viewer nonmember share anonymous
MEMBERS_READ = "200 200 200 200 200 404 404 401"
ADMIN_WRITE = "200 200 403 403 403 404 404 401"
EDITOR_CREATE = "201 201 201 403 403 404 404 401"
DOC_READ = "200 200 200 200 200 404 200 401"       # share links open these routes
DOC_EDIT = "200 200 200 403 403 404 403 401"
DOC_ADMIN = "200 200 403 403 403 404 403 401"
DOC_EDITOR_LINKS = "200 200 200 403 403 404 403 401"
SIGNED_IN = "200 200 200 200 200 200 200 401"     # the caller's own things (not workspace-scoped)
EVERYONE = "200 200 200 200 200 200 200 200"      # no token needed
FEED_AHEAD = encode_cursor(10**9)  # a cursor ahead of the feed: the event stream refuses it (422) at once

W, D, C = "/api/v1/workspaces", "/api/v1/documents", "/api/v1"
_AI_CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
_AI_PASSTHROUGH = [("POST", "/ai/openai/v1/chat/completions", _AI_CHAT),
                   ("POST", "/ai/openai/v1/responses", {"model": "gpt-4o-mini", "input": "hi"}),
                   ("GET", "/ai/openai/v1/models", None),
                   ("POST", "/ai/anthropic/v1/messages", {**_AI_CHAT, "model": "claude-haiku", "max_tokens": 10}),
                   ("GET", "/ai/anthropic/v1/models", None)]
_IMPORT_ZIP = bytes.fromhex(  # a zip holding one document, "imported.md" ("# hello")
    "504b030414000000000000002100c3129e5a08000000080000000b000000696d706f727465642e6d64232068656c6c6f0a"
    "504b0102140314000000000000002100c3129e5a08000000080000000b0000000000000000000000800100000000696d70"
    "6f727465642e6d64504b0506000000000100010039000000310000000000")
ROWS: list[Row] = [
    # workspaces
    Row("GET", W, "200 200 200 200 200 200 200 401"),
    Row("POST", W, "201 201 201 201 201 201 201 401", body={"name": "New"}),
    Row("GET", W + "/{ws}", MEMBERS_READ),
    Row("PATCH", W + "/{ws}", ADMIN_WRITE, body={"name": "Renamed"}),
    Row("DELETE", W + "/{ws}", "204 403 403 403 403 404 404 401", fresh_world=True),
    Row("POST", W + "/{ws}/restore", "200 403 403 403 403 404 404 401", fresh_world=True, setup=deleted_workspace),
    Row("POST", W + "/{ws}/transfer", "204 403 403 403 403 404 404 401", fresh_world=True,
        setup=lambda w, c: _const({"body": {"user_id": w.people["editor"].id}})),
    # members
    Row("GET", W + "/{ws}/members", MEMBERS_READ),
    Row("PATCH", W + "/{ws}/members/{user}", ADMIN_WRITE, body={"role": "viewer"}, setup=fresh_member),
    Row("DELETE", W + "/{ws}/members/{user}", "204 204 403 403 403 404 404 401", setup=fresh_member),
    Row("POST", W + "/{ws}/leave", "409 204 204 204 204 404 404 401"),  # the only owner cannot leave
    # ids of another workspace in this workspace's paths: as invisible as the rest of it
    Row("PATCH", W + "/{ws}/members/{user}", "404 404 403 403 403 404 404 401", body={"role": "viewer"},
        setup=foreign_ids, label="member of another workspace"),
    Row("DELETE", W + "/{ws}/members/{user}", "404 404 403 403 403 404 404 401", setup=foreign_ids,
        label="member of another workspace"),
    Row("DELETE", W + "/{ws}/invitations/{invitation}", "404 404 403 403 403 404 404 401", setup=foreign_ids,
        label="invitation of another workspace"),
    Row("GET", D + "/{doc}/share-links/{link}", "404 404 404 403 403 404 403 401", setup=foreign_ids,
        label="link of another workspace"),
    Row("DELETE", D + "/{doc}/share-links/{link}", "404 404 404 403 403 404 403 401", setup=foreign_ids,
        label="link of another workspace"),
    Row("GET", D + "/{doc}/diff", "404 404 404 404 404 404 403 401", query="?from={version}&to=current",
        setup=foreign_ids, label="version of another workspace"),
    # invitations
    Row("POST", W + "/{ws}/invitations", "201 201 403 403 403 404 404 401", body={"role": "viewer"}),
    Row("GET", W + "/{ws}/invitations", ADMIN_WRITE),
    Row("DELETE", W + "/{ws}/invitations/{invitation}", "204 204 403 403 403 404 404 401", setup=fresh_invitation),
    Row("POST", C + "/invitations/accept", "409 409 409 409 409 200 200 401", setup=fresh_invitation_token),
    # tree, folders
    Row("GET", W + "/{ws}/tree", MEMBERS_READ),
    Row("POST", W + "/{ws}/folders", EDITOR_CREATE, body={"name": "F"}),
    Row("PATCH", C + "/folders/{folder}", "200 200 200 403 403 404 404 401", body={"name": "G"}),
    Row("DELETE", C + "/folders/{folder}", "204 204 204 403 403 404 404 401", setup=fresh_folder),
    Row("POST", C + "/folders/{folder}/restore", "200 200 200 403 403 404 404 401", setup=fresh_trashed_folder),
    Row("GET", W + "/{ws}/trash/folders", MEMBERS_READ),
    # documents
    Row("GET", W + "/{ws}/documents", MEMBERS_READ),
    Row("GET", W + "/{ws}/templates", MEMBERS_READ),
    Row("GET", W + "/{ws}/context", MEMBERS_READ),
    Row("GET", W + "/{ws}/trash", MEMBERS_READ),
    Row("POST", W + "/{ws}/documents", EDITOR_CREATE, body={"title": "T"}),
    Row("GET", D + "/{doc}", DOC_READ),
    Row("PATCH", D + "/{doc}", DOC_EDIT, body={"title": "Renamed"}),
    Row("DELETE", D + "/{doc}", "204 204 204 403 403 404 403 401", setup=fresh_doc),
    Row("DELETE", D + "/{doc}", "204 204 403 403 403 404 403 401", query="?permanent=true", setup=fresh_doc),
    # a trashed document is invisible through its share link
    Row("POST", D + "/{doc}/restore", "200 200 200 403 403 404 404 401", setup=fresh_trashed_doc),
    # content
    Row("GET", D + "/{doc}/content", DOC_READ),
    # a share token opens its own document only
    Row("GET", D + "/{doc}/content", "200 200 200 200 200 404 404 401", setup=link_of_another_doc,
        label="share token of another document"),
    Row("PUT", D + "/{doc}/content", DOC_EDIT, raw=b"# new"),
    # a grant replaces the workspace role on its document, raising or lowering it
    Row("PUT", D + "/{doc}/content", "200 200 403 403 200 404 403 401", raw=b"# new", setup=swapped_grants,
        label="viewer granted editor, editor granted viewer"),
    # Yjs over HTTP and presence (an empty Yjs update is a valid no-op)
    Row("GET", D + "/{doc}/yjs", DOC_READ),
    Row("POST", D + "/{doc}/yjs", "204 204 204 403 403 404 403 401", raw=b"\x00\x00"),
    Row("GET", D + "/{doc}/presence", DOC_READ),
    # grants (the target user is the viewer)
    Row("GET", D + "/{doc}/grants", DOC_ADMIN),
    Row("GET", D + "/{doc}/grants/{user}", DOC_ADMIN, setup=viewer_grant),
    Row("PUT", D + "/{doc}/grants/{user}", DOC_ADMIN, body={"role": "commenter"}),
    Row("DELETE", D + "/{doc}/grants/{user}", "204 204 403 403 403 404 403 401", setup=viewer_grant),
    # share links
    Row("POST", D + "/{doc}/share-links", "201 201 201 403 403 404 403 401", body={"role": "viewer"}),
    Row("GET", D + "/{doc}/share-links", DOC_EDITOR_LINKS),
    Row("GET", D + "/{doc}/share-links/{link}", DOC_EDITOR_LINKS, setup=fresh_link),
    Row("DELETE", D + "/{doc}/share-links/{link}", "204 204 204 403 403 404 403 401", setup=fresh_link),
    Row("GET", C + "/share/{token}", "200 200 200 200 200 200 200 200"),
    # versions: viewers read, editors create and restore, share links open none
    Row("GET", D + "/{doc}/versions", "200 200 200 200 200 404 403 401"),
    Row("POST", D + "/{doc}/versions", "201 201 201 403 403 404 403 401", body={"label": "Named"}),
    Row("GET", C + "/versions/{version}", "200 200 200 200 200 404 403 401", setup=doc_version),
    Row("GET", D + "/{doc}/diff", "200 200 200 200 200 404 403 401", query="?from={version}&to=current",
        setup=doc_version),
    Row("POST", C + "/versions/{version}/restore", "200 200 200 403 403 404 403 401", setup=doc_version),
    # attachments: editors upload and delete, members read; a share link opens none of these routes
    Row("POST", W + "/{ws}/attachments", EDITOR_CREATE, raw=b"bytes", content_type="application/octet-stream"),
    Row("GET", C + "/attachments/{attachment}/meta", MEMBERS_READ, setup=fresh_attachment),
    Row("GET", C + "/attachments/{attachment}", MEMBERS_READ, setup=fresh_attachment),
    # a signed url opens the file to anyone holding it, with or without a token
    Row("GET", C + "/attachments/{attachment}", EVERYONE, query="?{signed}", setup=fresh_attachment,
        label="signed url"),
    Row("GET", D + "/{doc}/attachments", "200 200 200 200 200 404 403 401"),
    Row("DELETE", C + "/attachments/{attachment}", "204 204 204 403 403 404 404 401", setup=fresh_attachment),
    # comments: members and share links read; commenters and up write (a viewer link: 403)
    Row("GET", D + "/{doc}/comments", DOC_READ),
    Row("POST", D + "/{doc}/comments", "201 201 201 201 403 404 403 401", body={"body": "Looks good"}),
    # a commenter link, presented by every caller (?share=): signed-in holders comment, anonymous never;
    # a member keeps their own role
    Row("POST", D + "/{doc}/comments", "201 201 201 201 403 201 201 401", query="?share={token}",
        body={"body": "Via the link"}, setup=commenter_link, label="commenter share link"),
    Row("GET", C + "/comments/{comment}", DOC_READ, setup=owners_comment),
    # the owner's comment: only its author edits it; admins and up delete it
    Row("PATCH", C + "/comments/{comment}", "200 403 403 403 403 404 403 401", body={"body": "Edited"},
        setup=owners_comment),
    Row("PATCH", C + "/comments/{comment}", "200 200 200 200 403 404 200 401", body={"body": "Edited"},
        setup=own_comment, label="own comment"),
    Row("DELETE", C + "/comments/{comment}", "204 204 403 403 403 404 403 401", setup=owners_comment),
    Row("DELETE", C + "/comments/{comment}", "204 204 204 204 403 404 204 401", setup=own_comment,
        label="own comment"),
    Row("POST", C + "/comments/{comment}/resolve", "200 200 200 200 403 404 403 401", setup=owners_comment),
    Row("POST", C + "/comments/{comment}/reopen", "200 200 200 200 403 404 403 401", setup=owners_comment),
    # search: every signed-in caller searches what they may read; one workspace only for its members
    Row("GET", C + "/search", SIGNED_IN, query="?q=hello"),
    Row("GET", C + "/search", MEMBERS_READ, query="?q=hello&workspace_id={ws}", label="one workspace"),
    # export / import: admin and up
    Row("GET", W + "/{ws}/export", ADMIN_WRITE),
    Row("POST", W + "/{ws}/import", ADMIN_WRITE, raw=_IMPORT_ZIP, content_type="application/zip"),
    # auth: open registration, sign-in and refresh need no token (an Authorization header changes
    # nothing); the anonymous caller uses an account of its own that it is not signed in with
    Row("POST", C + "/auth/register", "201 201 201 201 201 201 201 201", setup=new_account_body),
    Row("POST", C + "/auth/login", EVERYONE, setup=own_credentials),
    Row("POST", C + "/auth/refresh", EVERYONE, setup=own_refresh_token),
    Row("POST", C + "/auth/logout", "204 204 204 204 204 204 204 401"),
    # the server has users: setup is over for everyone, whatever token they send (setup tokens on a
    # server without users: test_setup_token_decides below)
    Row("POST", C + "/auth/setup", "409 409 409 409 409 409 409 409",
        body={"setup_token": "not-the-setup-token", "email": "root@example.com", "password": PASSWORD, "name": "R"}),
    Row("GET", C + "/auth/sessions", SIGNED_IN),
    Row("DELETE", C + "/auth/sessions/{session_id}", "204 204 204 204 204 204 204 401", setup=own_session),
    Row("DELETE", C + "/auth/sessions/{session_id}", "404 404 404 404 404 404 404 401", setup=others_session,
        label="another user's session"),
    Row("GET", C + "/me", SIGNED_IN),
    Row("PATCH", C + "/me", SIGNED_IN, body={"name": "Renamed"}),
    Row("POST", C + "/me/password", "204 204 204 204 204 204 204 401", setup=own_password),
    Row("GET", C + "/me/tokens", SIGNED_IN),
    Row("POST", C + "/me/tokens", "201 201 201 201 201 201 201 401", body={"name": "PAT", "scopes": ["read"]}),
    Row("DELETE", C + "/me/tokens/{token_id}", "204 204 204 204 204 204 204 401", setup=own_api_token),
    Row("DELETE", C + "/me/tokens/{token_id}", "404 404 404 404 404 404 404 401", setup=others_api_token,
        label="another user's token"),
    # ops: open to everyone (/metrics: to loopback clients, which the test client is)
    Row("GET", "/healthz", EVERYONE),
    Row("GET", "/readyz", EVERYONE),
    Row("GET", C + "/openapi.json", EVERYONE),
    Row("GET", "/metrics", EVERYONE),
    # from the internet through the proxy: only the metrics token opens it, a user's token does not
    Row("GET", "/metrics", "403 403 403 403 403 403 403 403", headers={"X-Forwarded-For": "203.0.113.9"},
        label="through the proxy"),
    # sync: the caller's own feed
    Row("GET", C + "/sync/changes", SIGNED_IN),
    Row("GET", C + "/sync/events", "422 422 422 422 422 422 422 401", query="?since=" + FEED_AHEAD),
    # collab: a ticket for the document socket (its use: tests/test_authz_socket.py); a share link
    # does not open this route (the socket takes the share token itself)
    Row("POST", D + "/{document_id}/ws-ticket", "201 201 201 201 201 404 403 401"),
    # AI proxy: editors and up of the paying workspace call (no key is configured here: 409 once
    # past every check); a workspace the caller is not in is 403, none named and none or several
    # joined is 400; keys and limits are admin routes
    *[Row(method, C + path, "409 409 409 403 403 403 403 401", body=body, headers={"X-Mdsync-Workspace": "{ws}"})
      for method, path, body in _AI_PASSTHROUGH],
    *[Row(method, C + path, "409 409 409 403 403 400 400 401", body=body, label="no X-Mdsync-Workspace")
      for method, path, body in _AI_PASSTHROUGH],
    Row("GET", C + "/ai/models", "200 200 200 403 403 403 403 401", headers={"X-Mdsync-Workspace": "{ws}"}),
    Row("GET", C + "/ai/usage", SIGNED_IN),
    Row("GET", C + "/ai/usage", MEMBERS_READ, query="?workspace_id={ws}", label="one workspace"),
    Row("GET", W + "/{ws}/ai/keys/{provider}", ADMIN_WRITE, setup=ai_key),
    Row("PUT", W + "/{ws}/ai/keys/{provider}", "204 204 403 403 403 404 404 401", body={"api_key": "sk-matrix"},
        setup=lambda w, c: _const({"provider": "anthropic"})),
    Row("DELETE", W + "/{ws}/ai/keys/{provider}", "204 204 403 403 403 404 404 401", setup=ai_key),
    Row("GET", W + "/{ws}/ai/limits", ADMIN_WRITE),
    Row("PUT", W + "/{ws}/ai/limits", ADMIN_WRITE, body={"tokens_per_month": 1000}),
]


async def _const(value):
    return value


def _fill(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", str(value))
    path = path.replace("{invitation}", values.get("inv", "none"))
    path = path.replace("{document_id}", values["doc"])
    return path


async def _call(world: World, row: Row, caller: str) -> int:
    values = world.vars()
    body = row.body
    if row.setup is not None:
        extra = await row.setup(world, caller)
        body = extra.pop("body", body)
        values.update(extra)
    headers: dict[str, str] = {name: _fill(value, values) for name, value in (row.headers or {}).items()}
    if caller != "anonymous":
        headers.update(world.people[caller].headers)
    if caller == "share":
        headers["X-Mdsync-Share"] = values["token"]
    url = _fill(row.path, values) + _fill(row.query, values)
    if row.raw is not None:
        resp = await world.client.request(row.method, url, data=row.raw,
                                          headers={**headers, "Content-Type": row.content_type})
    else:
        resp = await world.client.request(row.method, url, json=body, headers=headers)
    await resp.read()
    return resp.status


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_matrix(client, row: Row):
    expected = dict(zip(CALLERS, (int(s) for s in row.expect.split()), strict=True))
    world = None if row.fresh_world else await build_world(client)
    got = {}
    for caller in CALLERS:
        here = await build_world(client) if row.fresh_world else world
        got[caller] = await _call(here, row, caller)
    assert got == expected


def test_every_route_has_a_row(settings):
    from mdsync.app import create_app
    from tests.authz_world import SOCKET_ROUTES

    app = create_app(settings)
    declared = {(spec.method, spec.path) for table in app[ROUTE_TABLES] for spec in table.specs}
    covered = {(row.method, row.path) for row in ROWS}
    assert declared - covered - set(NOT_A_ROW) == set(), "routes without a row in the authorization matrix"
    assert covered - declared == set(), "rows for routes that do not exist"
    assert set(NOT_A_ROW) <= declared - covered, "stale or needless exceptions"
    assert not set(NOT_A_ROW) & covered
    # each exception is covered by its own table
    assert {route for route, where in NOT_A_ROW.items() if where == "tests/test_authz_socket.py"} == SOCKET_ROUTES


# -- a read-scope personal access token changes nothing ---------------------------------------------
# Every row that writes, called by the owner with a read-scope token: 403. The exceptions:
READ_SCOPE_ENOUGH = {
    # a ticket opens a socket that is read-only for a read-scope token (tests/test_authz_socket.py)
    ("POST", D + "/{document_id}/ws-ticket"): 201,
}
WRITE_ROWS = [row for row in ROWS if row.method != "GET"]


@pytest.mark.parametrize("row", WRITE_ROWS, ids=[r.id for r in WRITE_ROWS])
async def test_read_scope_token_cannot_write(client, row: Row):
    specs = {(s.method, s.path): s for t in client.app[ROUTE_TABLES] for s in t.specs}
    if specs[(row.method, row.path)].auth == "none":
        pytest.skip("no token needed")
    world = await build_world(client)
    if row.setup is not None:  # made with the owner's full token, before it is swapped
        row = dataclasses.replace(row, setup=lambda w, c, extra=await row.setup(world, "owner"): _const(extra))
    resp = await client.post("/api/v1/me/tokens", json={"name": "read", "scopes": ["read"]},
                             headers=world.people["owner"].headers)
    world.people["owner"].access_token = (await resp.json())["token"]
    assert await _call(world, row, "owner") == READ_SCOPE_ENOUGH.get((row.method, row.path), 403)


async def test_setup_token_decides(make_client):
    """`POST /auth/setup` needs no bearer token: the setup token is the credential. On a server
    without users a wrong one is 403, the right one creates the first admin once, then 409."""
    from mdsync.auth.routes import AUTH

    client = await make_client(auth__registration="closed")
    token = await client.app[AUTH].prepare_setup()  # what `mdsync serve` prints
    admin = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    statuses = []
    for setup_token in ("", "not-the-setup-token", token, token):
        resp = await client.post("/api/v1/auth/setup", json={**admin, "setup_token": setup_token})
        statuses.append(resp.status)
    assert statuses == [403, 403, 201, 409]


async def test_event_stream_ends_when_its_personal_access_token_is_deleted(client):
    """Authorization on a long-lived request is not only checked at its start: an SSE stream opened
    with a personal access token ends when that token is deleted (as one opened with a session ends
    at logout, tests/test_sync_feed.py)."""
    import asyncio

    ada = await register(client)
    await make_workspace(client, ada)
    resp = await client.post("/api/v1/me/tokens", json={"name": "feed", "scopes": ["read"]}, headers=ada.headers)
    pat = await resp.json()
    async with client.get("/api/v1/sync/events", params={"since": "now"},
                          headers={"Authorization": f"Bearer {pat['token']}"}) as stream:
        assert stream.status == 200
        assert (await asyncio.wait_for(stream.content.readline(), 5)).startswith(b": ")  # the greeting
        resp = await client.delete(f"/api/v1/me/tokens/{pat['id']}", headers=ada.headers)
        assert resp.status == 204
        async def to_the_end():
            while await stream.content.readline():
                pass  # heartbeats, until the stream ends
        await asyncio.wait_for(to_the_end(), 10)


# -- bad input on every endpoint: 422 and nothing changes -------------------------------------------
STATE_TABLES = ("workspaces", "members", "invitations", "folders", "documents", "document_grants", "share_links",
                "changes", "audit_log")


def _snapshot(client) -> dict[str, list[tuple]]:
    return {t: sorted(map(tuple, db_rows(client, f"SELECT * FROM {t}")), key=repr) for t in STATE_TABLES}


BODY_ROWS = [row for row in ROWS if row.body is not None or row.method in ("POST", "PATCH", "PUT")]


@pytest.mark.parametrize("row", BODY_ROWS, ids=[r.id for r in BODY_ROWS])
async def test_garbage_bodies_change_nothing(client, row: Row):
    """Every endpoint that takes a JSON body, called by the owner with bodies of the wrong shape
    or with every field of the wrong type: 422 naming the field, and the database is unchanged."""
    specs = {(s.method, s.path): s for t in client.app[ROUTE_TABLES] for s in t.specs}
    spec = specs[(row.method, row.path)]
    if spec.body is None:
        pytest.skip("no JSON body")
    world = await build_world(client)
    values = world.vars()
    if row.setup is not None:
        extra = await row.setup(world, "owner")
        extra.pop("body", None)
        values.update(extra)
    url = _fill(row.path, values) + _fill(row.query, values)
    headers = world.people["owner"].headers
    before = _snapshot(client)
    wrong_types = {name: [[1]] for name in spec.body.model_fields}
    for body in ([1, 2], "text", 42, wrong_types):
        resp = await client.request(row.method, url, json=body, headers=headers)
        problem = await resp.json()
        assert resp.status == 422, (body, problem)
        assert problem["type"] == "urn:mdsync:error:validation" and problem["errors"][0]["field"]
    resp = await client.request(row.method, url, data=b"{broken", headers={**headers, "Content-Type": "application/json"})
    assert resp.status == 422
    assert _snapshot(client) == before

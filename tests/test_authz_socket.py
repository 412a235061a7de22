"""The authorization table of the document socket, `GET /ws/docs/{document_id}?token=…`: every kind
of caller → a close code (4401 unauthenticated or session revoked, 4403 lost access, 4404 no such
document or one the caller cannot see) or an accepted socket, read-only or read-write.

The socket routes are the routes of the HTTP matrix (tests/test_authz_matrix.py) without a row
there: their answer comes after the upgrade (a close code, a PermissionDenied), not as a status.
These tables are their rows: `/ws/docs/{id}` (SOCKET_ROWS), `/ws/hocuspocus` (the same callers,
HOCUSPOCUS_ROWS), and sockets losing access while open (LIVE_ROWS).

"Read-only" and "read-write" are checked as a user would notice them: the caller syncs, sends a
Yjs update, and a fresh socket of the owner (then `GET …/content`) shows whether it landed.

Share links: the socket takes a share token as `?share=` (beside `?token=` for a signed-in holder,
or alone). A link gives its role on its one document (docs/api.md "Grants and share links"; links are viewer or
commenter, neither of which edits), so a holder's socket is read-only, like `GET …/content` and
`GET …/yjs` that links open. An unknown, revoked or expired link is "cannot see": 4404 for a
signed-in caller, 4401 for one who presents nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

import pytest
from aiohttp import WSMsgType
from pycrdt import Doc, Text

from mdsync import clock
from mdsync.appkeys import ROUTE_TABLES
from mdsync.collab import protocol as p
from tests.authz_world import World, fresh_doc, fresh_trashed_doc, viewer_grant
from tests.builders import document, share
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines

RW, RO = "read-write", "read-only"


@pytest.fixture
async def client(make_client):
    # many registrations per test: lift the per-address registration throttle
    return await make_client(auth__register_attempts_per_address=100_000)


# -- how each kind of caller opens the socket: (world) -> (document id, query string) ---------------
Opener = Callable[[World], Awaitable[tuple[str, str]]]


def member(role: str) -> Opener:
    async def open_(w: World):
        return w.doc, f"?token={w.people[role].access_token}"
    return open_


async def share_signed_in(w: World):
    return w.doc, f"?token={w.people['share'].access_token}&share={w.token}"


async def share_anonymous(w: World):
    return w.doc, f"?share={w.token}"


async def commenter_link_signed_in(w: World):
    link = await share(w.client, w.people["owner"], w.doc, role="commenter")
    return w.doc, f"?token={w.people['share'].access_token}&share={link['token']}"


async def _revoked_link(w: World) -> str:
    link = await share(w.client, w.people["owner"], w.doc)
    resp = await w.client.delete(f"/api/v1/documents/{w.doc}/share-links/{link['id']}", headers=w.people["owner"].headers)
    assert resp.status == 204
    return link["token"]


async def revoked_link_signed_in(w: World):
    return w.doc, f"?token={w.people['share'].access_token}&share={await _revoked_link(w)}"


async def revoked_link_anonymous(w: World):
    return w.doc, f"?share={await _revoked_link(w)}"


async def link_of_another_document(w: World):
    other = await fresh_doc(w, "share")
    return w.doc, f"?token={w.people['share'].access_token}&share={other['token']}"


async def anonymous(w: World):
    return w.doc, ""


async def bad_token(w: World):
    return w.doc, "?token=not-a-token"


async def expired_token(w: World):
    clock.advance(15 * 60 + 1)  # access tokens live 15 minutes
    return w.doc, f"?token={w.people['editor'].access_token}"


async def revoked_session(w: World):
    resp = await w.client.post("/api/v1/auth/logout", headers=w.people["editor"].headers)
    assert resp.status == 204
    return w.doc, f"?token={w.people['editor'].access_token}"


async def refresh_token(w: World):
    # a refresh token is never an access token
    return w.doc, f"?token={w.people['editor'].refresh_token}"


async def _ticket(w: World, role: str, document_id: str) -> str:
    resp = await w.client.post(f"/api/v1/documents/{document_id}/ws-ticket", headers=w.people[role].headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["ticket"]


def ticket(role: str) -> Opener:
    async def open_(w: World):
        return w.doc, f"?token={await _ticket(w, role, w.doc)}"
    return open_


async def spent_ticket(w: World):
    token = await _ticket(w, "editor", w.doc)
    first = await w.client.ws_connect(f"/ws/docs/{w.doc}?token={token}")
    await first.close()
    return w.doc, f"?token={token}"


async def ticket_of_a_signed_out_session(w: World):
    token = await _ticket(w, "editor", w.doc)
    await sign_out_editor(w)
    return w.doc, f"?token={token}"


async def _personal_token(w: World, role: str, scopes: list[str]) -> dict:
    resp = await w.client.post("/api/v1/me/tokens", json={"name": "pat", "scopes": scopes},
                               headers=w.people[role].headers)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def _revoke_personal_token(w: World, role: str, token_id: str) -> None:
    resp = await w.client.delete(f"/api/v1/me/tokens/{token_id}", headers=w.people[role].headers)
    assert resp.status == 204


async def ticket_of_a_revoked_personal_token(w: World):
    pat = await _personal_token(w, "editor", ["read", "write"])
    resp = await w.client.post(f"/api/v1/documents/{w.doc}/ws-ticket", headers={"Authorization": f"Bearer {pat['token']}"})
    assert resp.status == 201, await resp.text()
    await _revoke_personal_token(w, "editor", pat["id"])
    return w.doc, f"?token={(await resp.json())['ticket']}"


async def ticket_of_another_document(w: World):
    other = (await fresh_doc(w, "editor"))["doc"]
    return w.doc, f"?token={await _ticket(w, 'editor', other)}"


def personal_token(role: str, scopes: list[str]) -> Opener:
    async def open_(w: World):
        return w.doc, f"?token={(await _personal_token(w, role, scopes))['token']}"
    return open_


async def revoked_personal_token(w: World):
    pat = await _personal_token(w, "editor", ["read", "write"])
    await _revoke_personal_token(w, "editor", pat["id"])
    return w.doc, f"?token={pat['token']}"


async def viewer_with_editor_grant(w: World):
    return (await viewer_grant(w, "viewer"))["doc"], f"?token={w.people['viewer'].access_token}"


async def editor_with_viewer_grant(w: World):
    target = await fresh_doc(w, "editor")
    resp = await w.client.put(f"/api/v1/documents/{target['doc']}/grants/{w.people['editor'].id}",
                              json={"role": "viewer"}, headers=w.people["owner"].headers)
    assert resp.status == 200, await resp.text()
    return target["doc"], f"?token={w.people['editor'].access_token}"


async def no_such_document(w: World):
    return str(uuid.uuid4()), f"?token={w.people['owner'].access_token}"


async def trashed_document(w: World):
    return (await fresh_trashed_doc(w, "owner"))["doc"], f"?token={w.people['owner'].access_token}"


async def document_of_another_workspace(w: World):
    # the nonmember's own document: the owner of `w.ws` cannot see it
    outsider = w.people["nonmember"]
    resp = await w.client.post("/api/v1/workspaces", json={"name": "Elsewhere"}, headers=outsider.headers)
    other = await document(w.client, outsider, (await resp.json())["id"], "Theirs")
    return other["id"], f"?token={w.people['owner'].access_token}"


SOCKET_ROWS: list[tuple[str, Opener, str | int]] = [
    # the eight callers of the HTTP matrix
    ("owner", member("owner"), RW),
    ("admin", member("admin"), RW),
    ("editor", member("editor"), RW),
    ("commenter", member("commenter"), RO),
    ("viewer", member("viewer"), RO),
    ("nonmember", member("nonmember"), 4404),
    ("share", share_signed_in, RO),
    ("anonymous", anonymous, 4401),
    # tokens that do not (or no longer) identify anyone
    ("bad token", bad_token, 4401),
    ("expired token", expired_token, 4401),
    ("revoked session", revoked_session, 4401),
    ("refresh token", refresh_token, 4401),
    ("revoked personal access token", revoked_personal_token, 4401),
    # personal access tokens: the read scope never writes
    ("editor, read-scope token", personal_token("editor", ["read"]), RO),
    ("editor, read-write token", personal_token("editor", ["read", "write"]), RW),
    ("nonmember, read-write token", personal_token("nonmember", ["read", "write"]), 4404),
    # tickets: the caller who asked for it, on its one document, once
    ("editor's ticket", ticket("editor"), RW),
    ("viewer's ticket", ticket("viewer"), RO),
    ("spent ticket", spent_ticket, 4401),
    ("ticket of a signed-out session", ticket_of_a_signed_out_session, 4401),
    ("ticket of a revoked personal access token", ticket_of_a_revoked_personal_token, 4401),
    ("ticket of another document", ticket_of_another_document, 4401),
    # document grants replace the workspace role on their document
    ("viewer with an editor grant", viewer_with_editor_grant, RW),
    ("editor with a viewer grant", editor_with_viewer_grant, RO),
    # share links
    ("share link alone (no account)", share_anonymous, RO),
    ("commenter share link, signed in", commenter_link_signed_in, RO),
    ("revoked share link, signed in", revoked_link_signed_in, 4404),
    ("revoked share link alone", revoked_link_anonymous, 4401),
    ("share link of another document", link_of_another_document, 4404),
    # documents the caller cannot see
    ("owner, no such document", no_such_document, 4404),
    ("owner, trashed document", trashed_document, 4404),
    ("owner, document of another workspace", document_of_another_workspace, 4404),
]


async def closed_with(ws) -> int | None:
    """The close code of a socket the server refuses; no document content may arrive first."""
    msg = await ws.receive(timeout=10)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), msg
    return ws.close_code


async def landed(w: World, yc: YClient, document_id: str) -> bool:
    """Send a Yjs update from `yc`; True when it landed in the document (seen by the owner)."""
    marker = f" [{uuid.uuid4().hex[:8]}]"
    edit = Doc()
    edit.apply_update(yc.doc.get_update())
    text = edit.get("markdown", type=Text)
    before = edit.get_state()
    text.insert(len(str(text)), marker)
    await yc.send_raw(p.update_message(edit.get_update(before)))
    # a round trip on the same socket: the server handled the update before it answers this
    yc.synced.clear()
    await yc.send_raw(p.sync_step1(yc.doc.get_state()))
    await yc.wait_synced()
    return await owner_sees(w, document_id, marker)


async def owner_sees(w: World, document_id: str, marker: str) -> bool:
    """Whether `marker` is in the document: in a fresh socket of the owner, then over HTTP."""
    owner = await YClient.connect(w.client, document_id, w.people["owner"].access_token)
    await owner.wait_synced()
    seen = marker in str(owner.text)
    await owner.close()
    # and over HTTP: the projection follows within 2 s (docs/api.md "Document content"), so wait for an edit that landed
    url = f"/api/v1/documents/{document_id}/content"
    for _ in range(100 if seen else 1):
        resp = await w.client.get(url, headers=w.people["owner"].headers)
        assert resp.status == 200
        if (marker in await resp.text()) == seen:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"GET content disagrees with the live document (landed: {seen})")
    return seen


@pytest.mark.parametrize("name,opener,expected", SOCKET_ROWS, ids=[row[0] for row in SOCKET_ROWS])
async def test_socket(client, world: World, name: str, opener: Opener, expected: str | int):
    document_id, query = await opener(world)
    ws = await client.ws_connect(f"/ws/docs/{document_id}{query}", max_msg_size=64 << 20)
    if isinstance(expected, int):
        assert await closed_with(ws) == expected
        return
    yc = YClient(ws)
    await ws.send_bytes(p.sync_step1(yc.doc.get_state()))
    await yc.wait_synced()
    assert str(yc.text) != "" and not ws.closed  # the document arrived
    got = RW if await landed(world, yc, document_id) else RO
    await yc.close()
    assert got == expected


# -- the Hocuspocus socket: the same callers, one document each, refusals per document ---------------
# Its token travels in the document's Auth message and is checked as `?token=` is (docs/api.md
# "Real-time: WebSockets"); a share token has no place there, so a share-link holder is the
# signed-in nonmember (not-found) or nobody (unauthenticated). Close codes become PermissionDenied reasons.
HOCUSPOCUS = ("GET", "/ws/hocuspocus")
REASON = {4401: "unauthenticated", 4403: "forbidden", 4404: "not-found"}
HOCUSPOCUS_DIFFERS = {
    "share": "not-found",
    "share link alone (no account)": "unauthenticated",
    "commenter share link, signed in": "not-found",
}
SCOPE = {RW: "read-write", RO: "readonly"}  # the Authenticated scopes
HOCUSPOCUS_ROWS = [(name, opener, HOCUSPOCUS_DIFFERS.get(name) or REASON.get(expected) or SCOPE[expected])
                   for name, opener, expected in SOCKET_ROWS]


class Hocuspocus:
    """A minimal Hocuspocus provider: frames are [document key][message type][payload]."""

    def __init__(self, ws, key: str):
        self.ws = ws
        self.key = key
        self.head = p.varbytes(key.encode())

    async def send(self, body: bytes) -> None:
        await self.ws.send_bytes(self.head + body)

    async def next(self, kinds: set[int]) -> tuple[int, bytes, int]:
        """The next message of this document with a type in `kinds`: (type, frame, payload position)."""
        while True:
            msg = await self.ws.receive(timeout=10)
            assert msg.type == WSMsgType.BINARY, msg
            if len(msg.data) == 1:
                continue  # a ping
            key, pos = p.read_varstring(msg.data, 0)
            kind, pos = p.read_varuint(msg.data, pos)
            if key == self.key and kind in kinds:
                return kind, msg.data, pos

    async def auth(self, token: str) -> str:
        """`read-write`, `readonly`, or the PermissionDenied reason."""
        await self.send(bytes((p.MSG_AUTH, 0)) + p.varbytes(token.encode()) + p.varbytes(b"4.0.0"))
        _, data, pos = await self.next({p.MSG_AUTH})
        sub, pos = p.read_varuint(data, pos)
        assert sub in (1, 2)  # PermissionDenied, Authenticated
        return p.read_varstring(data, pos)[0]

    async def state(self) -> Doc:
        await self.send(p.sync_step1(Doc().get_state()))
        while True:
            _, data, pos = await self.next({p.MSG_SYNC})
            inner, payload, _ = p.sync_payload(b"\x00" + data[pos:])
            if inner == p.SYNC_STEP2:
                doc = Doc()
                doc.apply_update(payload)
                return doc

    async def edit(self, marker: str) -> bool:
        """Send an update appending `marker`: whether the server acknowledged it as applied."""
        edit = await self.state()
        text = edit.get("markdown", type=Text)
        before = edit.get_state()
        text.insert(len(str(text)), marker)
        await self.send(p.update_message(edit.get_update(before)))
        _, data, pos = await self.next({8})  # SyncStatus
        return data[pos] == 1


@pytest.mark.parametrize("name,opener,expected", HOCUSPOCUS_ROWS, ids=[row[0] for row in HOCUSPOCUS_ROWS])
async def test_hocuspocus(client, world: World, name: str, opener: Opener, expected: str):
    assert HOCUSPOCUS in {(s.method, s.path) for t in client.app[ROUTE_TABLES] for s in t.specs}
    document_id, query = await opener(world)
    token = parse_qs(query.lstrip("?")).get("token", [""])[0]
    ws = await client.ws_connect("/ws/hocuspocus", max_msg_size=64 << 20)
    # a routing key of its own: the document id, then "\0" and a session (the provider's multiplexing)
    doc = Hocuspocus(ws, document_id + "\0" + uuid.uuid4().hex[:8])
    got = await doc.auth(token)
    if got in SCOPE.values():
        # the scope is what the socket does: an edit lands (and is acknowledged) only with read-write
        marker = f" [{uuid.uuid4().hex[:8]}]"
        acked = await doc.edit(marker)
        seen = await owner_sees(world, document_id, marker)
        assert acked == seen == (got == SCOPE[RW]), (got, acked, seen)
    await ws.close()
    assert got == expected


# -- access lost while connected: the open socket is closed at once ---------------------------------
@dataclass
class Live:
    name: str
    caller: str          # who is connected (a caller of the HTTP matrix)
    change: Callable[[World], Awaitable[None]]
    code: int | str      # a close code, or what the socket is after the change (it stays open)


async def _ok(resp, status: int) -> None:
    assert resp.status == status, await resp.text()


async def remove_editor(w: World) -> None:
    await _ok(await w.client.delete(f"/api/v1/workspaces/{w.ws}/members/{w.people['editor'].id}",
                                    headers=w.people["owner"].headers), 204)


async def editor_leaves(w: World) -> None:
    await _ok(await w.client.post(f"/api/v1/workspaces/{w.ws}/leave", headers=w.people["editor"].headers), 204)


async def sign_out_editor(w: World) -> None:
    await _ok(await w.client.post("/api/v1/auth/logout", headers=w.people["editor"].headers), 204)


async def revoke_editors_tokens(w: World) -> None:
    resp = await w.client.get("/api/v1/me/tokens", headers=w.people["editor"].headers)
    for token in (await resp.json())["items"]:
        await _revoke_personal_token(w, "editor", token["id"])


async def editor_changes_password(w: World) -> None:
    # on another device: every other session of the editor ends, the socket's among them
    editor = w.people["editor"]
    resp = await w.client.post("/api/v1/auth/login", json={"email": editor.email, "password": editor.password})
    other = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    await _ok(await w.client.post("/api/v1/me/password", json={"current_password": editor.password,
                                                               "new_password": "another horse battery"},
                                  headers=other), 204)


async def editor_signed_out_from_another_device(w: World) -> None:
    editor = w.people["editor"]
    resp = await w.client.get("/api/v1/auth/sessions", headers=editor.headers)
    [session] = [s["id"] for s in (await resp.json())["items"] if s["current"]]
    resp = await w.client.post("/api/v1/auth/login", json={"email": editor.email, "password": editor.password})
    other = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
    await _ok(await w.client.delete(f"/api/v1/auth/sessions/{session}", headers=other), 204)


def set_role(who: str, role: str):
    async def change(w: World) -> None:
        await _ok(await w.client.patch(f"/api/v1/workspaces/{w.ws}/members/{w.people[who].id}", json={"role": role},
                                       headers=w.people["owner"].headers), 200)
    return change


def set_grant(who: str, role: str):
    async def change(w: World) -> None:
        await _ok(await w.client.put(f"/api/v1/documents/{w.doc}/grants/{w.people[who].id}", json={"role": role},
                                     headers=w.people["owner"].headers), 200)
    return change


async def trash_document(w: World) -> None:
    await _ok(await w.client.delete(f"/api/v1/documents/{w.doc}", headers=w.people["owner"].headers), 204)


async def delete_workspace(w: World) -> None:
    await _ok(await w.client.delete(f"/api/v1/workspaces/{w.ws}", headers=w.people["owner"].headers), 204)


async def revoke_links(w: World) -> None:
    resp = await w.client.get(f"/api/v1/documents/{w.doc}/share-links", headers=w.people["owner"].headers)
    for link in (await resp.json())["items"]:
        await _ok(await w.client.delete(f"/api/v1/documents/{w.doc}/share-links/{link['id']}",
                                        headers=w.people["owner"].headers), 204)


LIVE_ROWS = [
    Live("editor removed", "editor", remove_editor, 4403),
    Live("editor leaves", "editor", editor_leaves, 4403),
    Live("editor signs out", "editor", sign_out_editor, 4401),
    Live("editor changes password elsewhere", "editor", editor_changes_password, 4401),
    Live("editor's session revoked from another device", "editor", editor_signed_out_from_another_device, 4401),
    Live("editor lowered to viewer", "editor", set_role("editor", "viewer"), RO),
    Live("editor granted viewer on the document", "editor", set_grant("editor", "viewer"), RO),
    Live("viewer raised to editor", "viewer", set_role("viewer", "editor"), RW),
    Live("viewer granted editor on the document", "viewer", set_grant("viewer", "editor"), RW),
    Live("editor's personal access token revoked", "editor-pat", revoke_editors_tokens, 4401),
    Live("document trashed", "editor", trash_document, 4403),
    Live("workspace deleted", "editor", delete_workspace, 4403),
    Live("share link revoked", "share", revoke_links, 4403),
    Live("document trashed under a share link", "share", trash_document, 4403),
]


@pytest.mark.parametrize("row", LIVE_ROWS, ids=[row.name for row in LIVE_ROWS])
async def test_socket_loses_access(client, world: World, row: Live):
    opener = {"share": share_signed_in, "editor-pat": personal_token("editor", ["read", "write"])}.get(
        row.caller) or member(row.caller)
    document_id, query = await opener(world)
    ws = await client.ws_connect(f"/ws/docs/{document_id}{query}", max_msg_size=64 << 20)
    yc = YClient(ws)
    await ws.send_bytes(p.sync_step1(yc.doc.get_state()))
    await yc.wait_synced()
    await row.change(world)
    if isinstance(row.code, int):
        assert await yc.wait_closed() == row.code
        return
    # the re-check runs after the change commits: give it a moment (bounded), then it must hold
    for _ in range(50):
        got = RW if await landed(world, yc, document_id) else RO
        if got == row.code:
            break
        await asyncio.sleep(0.02)
    assert got == row.code
    assert (RW if await landed(world, yc, document_id) else RO) == row.code  # and it stays so
    assert not ws.closed
    await yc.close()

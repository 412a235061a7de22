"""The shared setup of the authorization tables (tests/test_authz_matrix.py for HTTP routes,
tests/test_authz_socket.py for the sockets): one workspace with a member of every role, a
signed-in outsider, a share-link holder, a folder and a document — and setups that make fresh
targets per caller. The `world` fixture (tests/conftest.py) builds one for a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.builders import Account, document, folder, join, make_workspace, register, share

# the socket routes: their authorization is a close code after the upgrade, so their table is
# tests/test_authz_socket.py rather than a row of the HTTP matrix
SOCKET_ROUTES = {("GET", "/ws/docs/{document_id}"), ("GET", "/ws/hocuspocus")}


@dataclass
class World:
    """`people`: owner, admin, editor, commenter, viewer, nonmember and share (a signed-in user who
    holds `token`, a viewer share link of `doc`)."""

    client: Any
    ws: str
    people: dict[str, Account]
    folder: str
    doc: str
    token: str  # a share token (viewer) of `doc`

    def vars(self) -> dict[str, str]:
        return {"ws": self.ws, "folder": self.folder, "doc": self.doc, "token": self.token,
                "user": self.people["viewer"].id}


async def build_world(client) -> World:
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    people = {"owner": owner}
    for role in ("admin", "editor", "commenter", "viewer"):
        people[role] = await join(client, owner, ws, role, role.title())
    people["nonmember"] = await register(client, name="Outsider")
    people["share"] = await register(client, name="Link holder")
    f = await folder(client, owner, ws, "Folder")
    doc = await document(client, owner, ws, "Doc", folder_id=f, markdown="hello")
    link = await share(client, owner, doc["id"])
    return World(client, ws, people, f, doc["id"], link["token"])


# -- setups: fresh targets per caller (world, caller) -> overrides of World.vars() ---------------
async def fresh_doc(w: World, caller: str) -> dict:
    doc = await document(w.client, w.people["owner"], w.ws, "Fresh", markdown="x")
    return {"doc": doc["id"], "token": (await share(w.client, w.people["owner"], doc["id"]))["token"]}


async def fresh_trashed_doc(w: World, caller: str) -> dict:
    target = await fresh_doc(w, caller)
    await w.client.delete(f"/api/v1/documents/{target['doc']}", headers=w.people["owner"].headers)
    return target


async def viewer_grant(w: World, caller: str) -> dict:
    """A fresh document on which the viewer is granted editor."""
    target = await fresh_doc(w, caller)
    resp = await w.client.put(f"/api/v1/documents/{target['doc']}/grants/{w.people['viewer'].id}",
                              json={"role": "editor"}, headers=w.people["owner"].headers)
    assert resp.status == 200
    return target

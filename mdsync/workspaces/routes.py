"""HTTP routes of workspaces, members and invitations (docs/api.md "Workspaces, members, invitations").

Each handler: parse → `require(...)` (the one permission check) → service → respond.
"""

from __future__ import annotations

from aiohttp import web

from mdsync.api.pagination import page
from mdsync.api.routing import PRINCIPAL, Routes
from mdsync.workspaces import models as m
from mdsync.workspaces.access import require
from mdsync.workspaces.invitations import Invitations, invitation_json
from mdsync.workspaces.service import WORKSPACES, WorkspaceService, workspace_json

routes = Routes("workspaces")
INVITATIONS: web.AppKey[Invitations] = web.AppKey("invitations", Invitations)


def _svc(request: web.Request) -> WorkspaceService:
    return request.app[WORKSPACES]


def _member_json(row) -> dict:
    return {"user_id": row["user_id"], "name": row["name"], "email": row["email"], "role": row["role"],
            "joined_at": row["joined_at"]}


@routes.get("/api/v1/workspaces", "The caller's workspaces, with their role", response=m.WorkspaceList)
async def list_workspaces(request: web.Request) -> web.Response:
    p = page(request)
    rows = await _svc(request).list_mine(request[PRINCIPAL].user_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["name"], r["id"]],
                                      shape=lambda r: workspace_json(r, r["role"])))


@routes.post("/api/v1/workspaces", "Create a workspace (the caller is its owner)", body=m.WorkspaceIn,
             response=m.WorkspaceOut, status=201)
async def create_workspace(request: web.Request, body: m.WorkspaceIn) -> web.Response:
    return web.json_response(await _svc(request).create(request[PRINCIPAL].user_id, body.name), status=201)


@routes.get("/api/v1/workspaces/{ws}", "A workspace", response=m.WorkspaceOut)
async def get_workspace(request: web.Request) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    return web.json_response(await _svc(request).get(access))


@routes.patch("/api/v1/workspaces/{ws}", "Rename a workspace or change its settings (admin)",
              body=m.WorkspacePatch, response=m.WorkspaceOut)
async def update_workspace(request: web.Request, body: m.WorkspacePatch) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    return web.json_response(await _svc(request).update(access, body.name, body.settings))


@routes.delete("/api/v1/workspaces/{ws}", "Delete a workspace (owner; purged after the grace period)", status=204)
async def delete_workspace(request: web.Request) -> web.Response:
    access = await require(request, "owner", workspace_id=request.match_info["ws"])
    await _svc(request).delete(access)
    return web.Response(status=204)


@routes.post("/api/v1/workspaces/{ws}/restore", "Undo a workspace delete within the grace period (owner)",
             response=m.WorkspaceOut)
async def restore_workspace(request: web.Request) -> web.Response:
    access = await require(request, "owner", workspace_id=request.match_info["ws"], deleted=True)
    return web.json_response(await _svc(request).restore(access))


@routes.post("/api/v1/workspaces/{ws}/transfer", "Make another member owner; the caller becomes admin (owner)",
             body=m.TransferIn, status=204)
async def transfer_workspace(request: web.Request, body: m.TransferIn) -> web.Response:
    access = await require(request, "owner", workspace_id=request.match_info["ws"])
    await _svc(request).transfer(access, body.user_id)
    return web.Response(status=204)


# -- members -------------------------------------------------------------------------------------
@routes.get("/api/v1/workspaces/{ws}/members", "Members and their roles", response=m.MemberList)
async def list_members(request: web.Request) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    p = page(request)
    rows = await _svc(request).members(access.workspace_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["joined_at"], r["user_id"]], shape=_member_json))


@routes.patch("/api/v1/workspaces/{ws}/members/{user}", "Change a member's role (admin; owners: owner)",
              body=m.RoleIn, response=m.MemberOut)
async def change_member(request: web.Request, body: m.RoleIn) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    svc = _svc(request)
    await svc.change_role(access, request.match_info["user"], body.role)
    return web.json_response(_member_json(await svc.member(access.workspace_id, request.match_info["user"])))


@routes.delete("/api/v1/workspaces/{ws}/members/{user}", "Remove a member (admin; owners: owner)", status=204)
async def remove_member(request: web.Request) -> web.Response:
    ws, user = request.match_info["ws"], request.match_info["user"]
    access = await require(request, "viewer", workspace_id=ws)
    if user != access.user_id:  # removing yourself is leaving, open to every role
        access = await require(request, "admin", workspace_id=ws)
    await _svc(request).remove(access, user)
    return web.Response(status=204)


@routes.post("/api/v1/workspaces/{ws}/leave", "Leave a workspace", status=204)
async def leave(request: web.Request) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    await _svc(request).remove(access, access.user_id)
    return web.Response(status=204)


# -- invitations ---------------------------------------------------------------------------------
@routes.post("/api/v1/workspaces/{ws}/invitations", "Invite someone with a role (admin; not above your own)",
             body=m.InvitationIn, response=m.InvitationCreated, status=201)
async def create_invitation(request: web.Request, body: m.InvitationIn) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    created = await request.app[INVITATIONS].create(access, body.role, body.email, body.expires_in)
    return web.json_response(created, status=201)


@routes.get("/api/v1/workspaces/{ws}/invitations", "Invitations of a workspace (admin)", response=m.InvitationList)
async def list_invitations(request: web.Request) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    p = page(request)
    rows = await request.app[INVITATIONS].list(access.workspace_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["id"]], shape=invitation_json))


@routes.delete("/api/v1/workspaces/{ws}/invitations/{invitation}", "Revoke an invitation (admin)", status=204)
async def revoke_invitation(request: web.Request) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    await request.app[INVITATIONS].revoke(access, request.match_info["invitation"])
    return web.Response(status=204)


@routes.post("/api/v1/invitations/accept", "Join a workspace with an invitation token", body=m.AcceptIn,
             response=m.Joined)
async def accept_invitation(request: web.Request, body: m.AcceptIn) -> web.Response:
    principal = request[PRINCIPAL]
    return web.json_response(await request.app[INVITATIONS].accept(principal.user_id, principal.email, body.token))

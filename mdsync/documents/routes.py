"""HTTP routes of folders, documents, the tree, the trash, grants and share links
(docs/api.md "Folders and documents", "Grants and share links"). Content lives in content_routes.py.

Each handler: parse → `require(...)` (the one permission check) → service → respond.
"""

from __future__ import annotations

from aiohttp import web

from mdsync.api.errors import ValidationFailed
from mdsync.api.pagination import page
from mdsync.api.routing import PRINCIPAL, Routes
from mdsync.documents import models as m
from mdsync.documents.content import CONTENT, etag_matches
from mdsync.documents.service import DOCUMENTS, UNSET, Documents, folder_json
from mdsync.documents.sharing import SHARING, grant_json, link_json
from mdsync.workspaces.access import require, resolve_share

routes = Routes("documents")


def _docs(request: web.Request) -> Documents:
    return request.app[DOCUMENTS]


def _sent(body, name: str):
    """A PATCH field's value, or UNSET when the client did not send it (null is a value)."""
    return getattr(body, name) if name in body.model_fields_set else UNSET


# -- tree, folders -------------------------------------------------------------------------------
@routes.get("/api/v1/workspaces/{ws}/tree", "Every folder and document of a workspace, in one answer",
            response=m.TreeOut)
async def tree(request: web.Request) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    gzip_ok = "gzip" in request.headers.get("Accept-Encoding", "")
    body, etag, gzipped = await _docs(request).tree(access.workspace_id, gzip_ok)
    headers = {"ETag": etag, "Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("If-None-Match"), etag) and "If-None-Match" in request.headers:
        return web.Response(status=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type="application/json", headers=headers)


@routes.post("/api/v1/workspaces/{ws}/folders", "Create a folder (editor)", body=m.FolderIn,
             response=m.FolderOut, status=201)
async def create_folder(request: web.Request, body: m.FolderIn) -> web.Response:
    access = await require(request, "editor", workspace_id=request.match_info["ws"])
    folder = await _docs(request).create_folder(access, body.name, body.parent_id, body.position)
    return web.json_response(folder, status=201)


@routes.patch("/api/v1/folders/{folder}", "Rename, move or reorder a folder (editor)", body=m.FolderPatch,
              response=m.FolderOut)
async def update_folder(request: web.Request, body: m.FolderPatch) -> web.Response:
    folder_id = request.match_info["folder"]
    access = await require(request, "editor", folder_id=folder_id)
    folder = await _docs(request).update_folder(access, folder_id, body.name, _sent(body, "parent_id"), body.position)
    return web.json_response(folder)


@routes.delete("/api/v1/folders/{folder}", "Delete a folder: it and its contents go to the trash (editor)",
               status=204)
async def delete_folder(request: web.Request) -> web.Response:
    folder_id = request.match_info["folder"]
    access = await require(request, "editor", folder_id=folder_id)
    await _docs(request).delete_folder(access, folder_id)
    return web.Response(status=204)


@routes.post("/api/v1/folders/{folder}/restore", "Bring a folder back from the trash, with what was trashed"
             " along with it and the trashed folders above it (editor)", response=m.FolderOut)
async def restore_folder(request: web.Request) -> web.Response:
    folder_id = request.match_info["folder"]
    access = await require(request, "editor", folder_id=folder_id, trashed=True)
    return web.json_response(await _docs(request).restore_folder(access, folder_id))


@routes.get("/api/v1/workspaces/{ws}/trash/folders", "Folders in the trash", query=m.PageQuery,
            response=m.FolderList)
async def trashed_folders(request: web.Request, query: m.PageQuery) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    p = page(request)
    rows = await _docs(request).list_trashed_folders(access.workspace_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["deleted_at"], r["id"]], shape=folder_json))


# -- documents -----------------------------------------------------------------------------------
async def _list(request: web.Request, kind: str | None, folder_id: str | None = None) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    p = page(request)
    docs = _docs(request)
    rows = await docs.list_documents(access.workspace_id, p.after, p.fetch_limit(), kind, folder_id)
    result = p.result(rows, key=lambda r: [r["created_at"], r["id"]])
    result["items"] = await docs.documents_json(result["items"])
    return web.json_response(result)


@routes.get("/api/v1/workspaces/{ws}/documents", "Documents of a workspace (not in the trash)",
            query=m.DocumentQuery, response=m.DocumentList)
async def list_documents(request: web.Request, query: m.DocumentQuery) -> web.Response:
    return await _list(request, query.kind, query.folder_id)


@routes.get("/api/v1/workspaces/{ws}/templates", "Documents of kind template", query=m.PageQuery,
            response=m.DocumentList)
async def list_templates(request: web.Request, query: m.PageQuery) -> web.Response:
    return await _list(request, "template")


@routes.get("/api/v1/workspaces/{ws}/context", "Documents of kind context (AI context files)", query=m.PageQuery,
            response=m.DocumentList)
async def list_context(request: web.Request, query: m.PageQuery) -> web.Response:
    return await _list(request, "context")


@routes.post("/api/v1/workspaces/{ws}/documents", "Create a document (editor), optionally from a template",
             body=m.DocumentIn, response=m.DocumentOut, status=201)
async def create_document(request: web.Request, body: m.DocumentIn) -> web.Response:
    access = await require(request, "editor", workspace_id=request.match_info["ws"])
    if body.markdown is not None and body.template_id is not None:
        raise ValidationFailed.field("template_id", "give either markdown or template_id, not both")
    doc = await _docs(request).create_document(access, request[PRINCIPAL].name, body.title, body.folder_id, body.kind,
                                               body.content_model, body.markdown, body.template_id)
    return web.json_response(doc, status=201)


@routes.get("/api/v1/documents/{doc}", "A document's metadata (also in the trash)", response=m.DocumentOut)
async def get_document(request: web.Request) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"], trashed=True, share=True)
    return web.json_response(await _docs(request).document_json(access.document))


@routes.patch("/api/v1/documents/{doc}", "Rename, move, reorder or change the kind of a document (editor)",
              body=m.DocumentPatch, response=m.DocumentOut)
async def update_document(request: web.Request, body: m.DocumentPatch) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    doc = await _docs(request).update_document(access, body.title, _sent(body, "folder_id"), body.position, body.kind)
    return web.json_response(doc)


@routes.delete("/api/v1/documents/{doc}", "Move a document to the trash (editor); ?permanent=true purges (admin)",
               query=m.DeleteQuery, status=204)
async def delete_document(request: web.Request, query: m.DeleteQuery) -> web.Response:
    doc_id = request.match_info["doc"]
    if query.permanent:
        access = await require(request, "admin", document_id=doc_id, trashed=True)
        await _docs(request).purge(access)
    else:
        access = await require(request, "editor", document_id=doc_id)
        await _docs(request).trash(access)
    return web.Response(status=204)


@routes.post("/api/v1/documents/{doc}/restore", "Bring a document back from the trash (editor)",
             response=m.DocumentOut)
async def restore_document(request: web.Request) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"], trashed=True)
    return web.json_response(await _docs(request).restore(access))


@routes.get("/api/v1/workspaces/{ws}/trash", "Documents in the trash", query=m.PageQuery, response=m.DocumentList)
async def trash(request: web.Request, query: m.PageQuery) -> web.Response:
    access = await require(request, "viewer", workspace_id=request.match_info["ws"])
    p = page(request)
    docs = _docs(request)
    rows = await docs.list_trash(access.workspace_id, p.after, p.fetch_limit())
    result = p.result(rows, key=lambda r: [r["deleted_at"], r["id"]])
    result["items"] = await docs.documents_json(result["items"])
    return web.json_response(result)


# -- grants --------------------------------------------------------------------------------------
@routes.get("/api/v1/documents/{doc}/grants", "Per-user grants on a document (admin)", query=m.PageQuery,
            response=m.GrantList)
async def list_grants(request: web.Request, query: m.PageQuery) -> web.Response:
    access = await require(request, "admin", document_id=request.match_info["doc"])
    p = page(request)
    rows = await request.app[SHARING].grants(access.document_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["user_id"]], shape=grant_json))


@routes.get("/api/v1/documents/{doc}/grants/{user}", "One user's grant on a document (admin)", response=m.GrantOut)
async def get_grant(request: web.Request) -> web.Response:
    access = await require(request, "admin", document_id=request.match_info["doc"])
    return web.json_response(grant_json(await request.app[SHARING].grant(access.document_id, request.match_info["user"])))


@routes.put("/api/v1/documents/{doc}/grants/{user}", "Set a member's role on this document (admin)",
            body=m.GrantIn, response=m.GrantOut)
async def put_grant(request: web.Request, body: m.GrantIn) -> web.Response:
    access = await require(request, "admin", document_id=request.match_info["doc"])
    row = await request.app[SHARING].set_grant(access, request.match_info["user"], body.role)
    return web.json_response(grant_json(row))


@routes.delete("/api/v1/documents/{doc}/grants/{user}", "Remove a member's grant on this document (admin)", status=204)
async def delete_grant(request: web.Request) -> web.Response:
    access = await require(request, "admin", document_id=request.match_info["doc"])
    await request.app[SHARING].revoke_grant(access, request.match_info["user"])
    return web.Response(status=204)


# -- share links ---------------------------------------------------------------------------------
@routes.post("/api/v1/documents/{doc}/share-links", "Create a share link (editor)", body=m.ShareLinkIn,
             response=m.ShareLinkCreated, status=201)
async def create_share_link(request: web.Request, body: m.ShareLinkIn) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    return web.json_response(await request.app[SHARING].create_link(access, body.role, body.expires_in), status=201)


@routes.get("/api/v1/documents/{doc}/share-links", "Active share links of a document (editor)", query=m.PageQuery,
            response=m.ShareLinkList)
async def list_share_links(request: web.Request, query: m.PageQuery) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    p = page(request)
    rows = await request.app[SHARING].links(access.document_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["id"]], shape=link_json))


@routes.get("/api/v1/documents/{doc}/share-links/{link}", "One share link (editor)", response=m.ShareLinkOut)
async def get_share_link(request: web.Request) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    return web.json_response(link_json(await request.app[SHARING].link(access.document_id, request.match_info["link"])))


@routes.delete("/api/v1/documents/{doc}/share-links/{link}", "Revoke a share link (editor)", status=204)
async def delete_share_link(request: web.Request) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    await request.app[SHARING].revoke_link(access, request.match_info["link"])
    return web.Response(status=204)


@routes.get("/api/v1/share/{token}", "Read a shared document without an account", auth="optional",
            response=m.SharedDocument)
async def read_shared(request: web.Request) -> web.Response:
    access = await resolve_share(request.app[DOCUMENTS].db, request.match_info["token"], request.get(PRINCIPAL))
    doc = access.document
    markdown, etag = await request.app[CONTENT].read(doc)
    markdown = await request.app[SHARING].shared_markdown(markdown, doc)
    body = {"document": {"id": doc["id"], "title": doc["title"], "folder_id": None, "position": doc["position"],
                         "kind": doc["kind"], "updated_at": doc["updated_at"]},
            "role": access.role, "markdown": markdown}
    return web.json_response(body, headers={"ETag": etag, "Cache-Control": "no-store"})

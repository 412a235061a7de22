"""HTTP routes of comments (docs/api.md "Comments").

Each handler: parse → `require(...)` (the one permission check; a share link with role
`commenter`, presented beside a signed-in user's token, opens these routes on its document) →
service → respond. Routes on /comments/{id} first find the comment's document and authorize on
it, so a comment the caller may not see is a 404 like any other.
"""

from __future__ import annotations

from aiohttp import web

from mdsync.api.errors import NotFound, ValidationFailed
from mdsync.api.pagination import page
from mdsync.api.routing import Routes
from mdsync.comments import models as m
from mdsync.comments.anchors import anchor_for
from mdsync.comments.service import COMMENTS, Comments
from mdsync.workspaces.access import require

routes = Routes("comments")


def _comments(request: web.Request) -> Comments:
    return request.app[COMMENTS]


@routes.get("/api/v1/documents/{doc}/comments", "A document's threads with their replies (viewer)",
            query=m.CommentQuery, response=m.CommentList)
async def list_comments(request: web.Request, query: m.CommentQuery) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"], share=True)
    p = page(request)
    rows = await _comments(request).threads(access.document_id, query.status, p.after, p.fetch_limit())
    body = p.result_json(rows, key=lambda r: [r["created_at"], r["id"]], text=lambda r: r["json"])
    return web.Response(text=body, content_type="application/json")


@routes.post("/api/v1/documents/{doc}/comments", "Start a thread, or reply to one (commenter)",
             body=m.CommentIn, response=m.CommentOut, status=201)
async def create_comment(request: web.Request, body: m.CommentIn) -> web.Response:
    access = await require(request, "commenter", document_id=request.match_info["doc"], share=True)
    if body.anchor is not None and body.parent_id is not None:
        raise ValidationFailed.field("anchor", "a reply has no anchor of its own: it sits with its thread")
    anchor = await anchor_for(request.app, access.document, body.anchor) if body.anchor is not None else None
    comment = await _comments(request).create(access, body.body, anchor, body.parent_id)
    return web.json_response(comment, status=201)


async def _require_on_comment(request: web.Request, role: str):
    comment_id = request.match_info["comment"]
    try:
        document_id = await _comments(request).document_of(comment_id)
        return comment_id, await require(request, role, document_id=document_id, share=True)
    except NotFound:
        raise NotFound("no such comment") from None  # one answer, whether or not the id exists elsewhere


@routes.get("/api/v1/comments/{comment}", "One comment; a thread with its replies (viewer)",
            response=m.CommentOut)
async def get_comment(request: web.Request) -> web.Response:
    comment_id, _ = await _require_on_comment(request, "viewer")
    return web.Response(text=await _comments(request).get_json(comment_id), content_type="application/json")


@routes.patch("/api/v1/comments/{comment}", "Edit a comment's body (its author)", body=m.CommentPatch,
              response=m.CommentOut)
async def edit_comment(request: web.Request, body: m.CommentPatch) -> web.Response:
    comment_id, access = await _require_on_comment(request, "commenter")
    return web.json_response(await _comments(request).edit(access, comment_id, body.body))


@routes.delete("/api/v1/comments/{comment}", "Delete a comment, a thread with its replies (its author, or an admin)",
               status=204)
async def delete_comment(request: web.Request) -> web.Response:
    comment_id, access = await _require_on_comment(request, "viewer")
    await _comments(request).delete(access, comment_id)
    return web.Response(status=204)


@routes.post("/api/v1/comments/{comment}/resolve", "Resolve the comment's thread (commenter)",
             response=m.CommentOut)
async def resolve_comment(request: web.Request) -> web.Response:
    comment_id, access = await _require_on_comment(request, "commenter")
    return web.json_response(await _comments(request).set_resolved(access, comment_id, True))


@routes.post("/api/v1/comments/{comment}/reopen", "Reopen the comment's thread (commenter)",
             response=m.CommentOut)
async def reopen_comment(request: web.Request) -> web.Response:
    comment_id, access = await _require_on_comment(request, "commenter")
    return web.json_response(await _comments(request).set_resolved(access, comment_id, False))

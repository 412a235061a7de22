"""HTTP routes of version history (docs/api.md "Versions").

Viewers and up read versions and diffs; editors and up create and restore them. Share-link
holders see none: `require` without `share=True` answers their token with 403. A version id of
another document (or workspace) is 404 wherever a route names the document — the same answer as
an unknown id, so ids of documents the caller cannot see are never confirmed.
"""

from __future__ import annotations


from aiohttp import web
from pydantic import Field

from mdsync.api.models import Body, Name, Out
from mdsync.api.pagination import page
from mdsync.api.routing import PRINCIPAL, Routes
from mdsync.appkeys import DB
from mdsync.documents.models import DocumentOut
from mdsync.documents.service import DOCUMENTS
from mdsync.versions import store
from mdsync.versions.service import VERSIONS, Versions
from mdsync.workspaces.access import require, resolve

routes = Routes("versions")


class VersionIn(Body):
    label: Name


class Author(Out):
    id: str
    name: str | None


class VersionOut(Out):
    id: str
    document_id: str
    workspace_id: str
    created_at: str
    kind: str
    label: str | None
    authors: list[Author]
    created_by: str | None
    size: int


class VersionDetail(VersionOut):
    markdown: str


class VersionList(Out):
    items: list[VersionOut]
    next_cursor: str | None


class PageQuery(Body):
    limit: str | None = None
    cursor: str | None = None


class DiffQuery(Body):
    from_: str = Field(alias="from", min_length=1, max_length=200)
    to: str = Field(min_length=1, max_length=200)


class DiffStats(Out):
    added: int
    removed: int


class DiffOut(Out):
    unified: str
    stats: DiffStats


def _versions(request: web.Request) -> Versions:
    return request.app[VERSIONS]


@routes.get("/api/v1/documents/{doc}/versions", "A document's versions, newest first (viewer)",
            query=PageQuery, response=VersionList)
async def list_versions(request: web.Request, query: PageQuery) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"])
    p = page(request)
    rows = await _versions(request).page(access.document_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["id"]], shape=store.meta_json))


@routes.post("/api/v1/documents/{doc}/versions", "A named version of the current state (editor)",
             body=VersionIn, response=VersionOut, status=201)
async def create_version(request: web.Request, body: VersionIn) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    version = await _versions(request).record(access.document_id, "named", body.label, request[PRINCIPAL].user_id)
    return web.json_response(version, status=201)


@routes.get("/api/v1/versions/{version}", "A version: metadata and its markdown (viewer)", response=VersionDetail)
async def get_version(request: web.Request) -> web.Response:
    row = await _versions(request).get(request.match_info["version"], with_markdown=True)
    await require(request, "viewer", document_id=row["document_id"])
    return web.json_response({**store.meta_json(row), "markdown": row["markdown"]})


@routes.get("/api/v1/documents/{doc}/diff", "Unified diff between two versions, or a version and the live text"
            " (to=current) (viewer)", query=DiffQuery, response=DiffOut)
async def diff(request: web.Request, query: DiffQuery) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"])
    return web.json_response(await _versions(request).diff(access.document, query.from_, query.to))


@routes.post("/api/v1/versions/{version}/restore", "Apply the difference to this version as a new edit (editor);"
             " optional If-Match: the content ETag the restorer saw (others' later edits merge);"
             " answers the document", response=DocumentOut)
async def restore(request: web.Request) -> web.Response:
    row = await _versions(request).get(request.match_info["version"])
    access = await require(request, "editor", document_id=row["document_id"])
    await _versions(request).restore(access, row["id"], request.headers.get("If-Match"))
    fresh = await resolve(request.app[DB], access.user_id, document_id=access.document_id)
    return web.json_response(await request.app[DOCUMENTS].document_json(fresh.document))

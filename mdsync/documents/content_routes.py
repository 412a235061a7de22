"""HTTP routes of document content as markdown: GET with an ETag, PUT with If-Match.

Both go through the content backend at `app[CONTENT]` (content.py); this module only speaks HTTP.
"""

from __future__ import annotations

from aiohttp import web

from mdsync.api.errors import UnsupportedMediaType
from mdsync.api.routing import Routes, read_text
from mdsync.appkeys import SETTINGS
from mdsync.documents.content import CONTENT, etag_matches
from mdsync.workspaces.access import require

routes = Routes("content")
MARKDOWN = "text/markdown; charset=utf-8"
ACCEPTED_TYPES = ("text/markdown", "text/plain", "text/x-markdown", "application/octet-stream")


def _markdown_response(markdown: str, etag: str) -> web.Response:
    return web.Response(body=markdown.encode("utf-8"), headers={"Content-Type": MARKDOWN, "ETag": etag,
                                                                  "Cache-Control": "no-cache"})


@routes.get("/api/v1/documents/{doc}/content", "The document as markdown, with its ETag",
            raw_response="text/markdown")
async def get_content(request: web.Request) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"], share=True)
    markdown, etag = await request.app[CONTENT].read(access.document)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and etag_matches(if_none_match, etag):
        return web.Response(status=304, headers={"ETag": etag})
    return _markdown_response(markdown, etag)


@routes.put("/api/v1/documents/{doc}/content", "Replace the document's markdown (editor); If-Match optional",
            raw_body="text/markdown", raw_response="text/markdown")
async def put_content(request: web.Request) -> web.Response:
    access = await require(request, "editor", document_id=request.match_info["doc"])
    if request.headers.get("Content-Type") and request.content_type not in ACCEPTED_TYPES:
        raise UnsupportedMediaType(f"send text/markdown, not {request.content_type}")
    markdown = await read_text(request, request.app[SETTINGS].limits.max_document_bytes)
    markdown, etag = await request.app[CONTENT].write(access.document, markdown, request.headers.get("If-Match"), access)
    return _markdown_response(markdown, etag)

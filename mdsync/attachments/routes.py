"""HTTP routes of attachments (docs/api.md "Attachments").

POST   /api/v1/workspaces/{ws}/attachments   editor+: multipart `file` (+ `document_id`) or a raw body
GET    /api/v1/attachments/{attachment}/meta viewer+: the meta shape, with a freshly signed url
GET    /api/v1/documents/{doc}/attachments   viewer+ of the document: a list of meta
GET    /api/v1/attachments/{attachment}      a token (viewer+) or a valid ?exp=&sig=: the bytes
DELETE /api/v1/attachments/{attachment}      editor+
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import quote, unquote

from aiohttp import web

from mdsync.api.errors import Forbidden, NotFound, TooLarge, Unauthenticated, UnsupportedMediaType, ValidationFailed
from mdsync.api.models import Body, Out
from mdsync.api.pagination import page
from mdsync.api.routing import PRINCIPAL, Routes, is_head
from mdsync.attachments import sniff as sniffing
from mdsync.attachments.service import ATTACHMENTS, Attachments
from mdsync.workspaces.access import require

routes = Routes("attachments")
MULTIPART = "multipart/form-data"


class AttachmentOut(Out):
    id: str
    name: str
    content_type: str
    size: int
    sha256: str
    document_id: str | None
    created_at: str
    url: str


class AttachmentList(Out):
    items: list[AttachmentOut]
    next_cursor: str | None


class UploadQuery(Body):
    filename: str | None = None
    document_id: str | None = None


class FileQuery(Body):
    exp: str | None = None
    sig: str | None = None


class PageQuery(Body):
    limit: str | None = None
    cursor: str | None = None


def _svc(request: web.Request) -> Attachments:
    return request.app[ATTACHMENTS]


async def _part_chunks(part) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1 << 16):
        yield chunk


@routes.post("/api/v1/workspaces/{ws}/attachments", "Upload an attachment (editor): multipart `file` or a raw body",
             query=UploadQuery, response=AttachmentOut, status=201, raw_body="application/octet-stream")
async def upload(request: web.Request, query: UploadQuery) -> web.Response:
    access = await require(request, "editor", workspace_id=request.match_info["ws"])
    svc = _svc(request)
    if request.content_length is not None and request.content_length > svc.limit + 64 * 1024:
        raise TooLarge(f"the file is larger than limits.max_upload_bytes ({svc.limit} bytes)")
    document_id, name, spooled = query.document_id, query.filename, None
    try:
        if request.content_type == MULTIPART:
            try:
                reader = await request.multipart()
                async for part in reader:
                    field = getattr(part, "name", None)
                    if field == "file":
                        if spooled is not None:
                            raise ValidationFailed.field("file", "one file per upload")
                        # aiohttp (and some other clients) percent-encode the name in the header
                        name = unquote(part.filename) if part.filename else name
                        spooled = await svc.spool(_part_chunks(part))
                    elif field == "document_id":
                        raw = await part.read_chunk(1024)  # (aiohttp reads at least a boundary's length)
                        if len(raw) > 200 or await part.read_chunk(1024):  # an id is 36 characters
                            raise ValidationFailed.field("document_id", "is not a document id")
                        document_id = raw.decode("utf-8", "replace").strip() or None
            except ValueError as exc:  # aiohttp's parser: no boundary, or not that form
                raise ValidationFailed.field("body", f"not a multipart form: {exc}") from None
            if spooled is None:
                raise ValidationFailed.field("file", "the form has no file part named \"file\"")
        elif request.content_type.startswith("multipart/"):
            raise UnsupportedMediaType(f"send multipart/form-data or a raw body, not {request.content_type}")
        else:
            spooled = await svc.spool(request.content.iter_chunked(1 << 16))
        out = await svc.create(access.workspace_id, access.user_id, spooled, name or "file", document_id)
    finally:
        if spooled is not None:
            spooled.discard()
    return web.json_response(out, status=201)


async def _visible(request: web.Request, role: str):
    """The attachment and the caller's access to its workspace; 404 when they cannot see it."""
    row = await _svc(request).find(request.match_info["attachment"])
    if row is None:
        raise NotFound("no such attachment")
    access = await require(request, role, workspace_id=row["workspace_id"])
    return row, access


@routes.get("/api/v1/attachments/{attachment}/meta", "An attachment's metadata, with a freshly signed url",
            response=AttachmentOut)
async def meta(request: web.Request) -> web.Response:
    row, _ = await _visible(request, "viewer")
    return web.json_response(_svc(request).meta(row), headers={"Cache-Control": "no-store"})


@routes.get("/api/v1/documents/{doc}/attachments", "The attachments of a document", query=PageQuery,
            response=AttachmentList)
async def of_document(request: web.Request, query: PageQuery) -> web.Response:
    access = await require(request, "viewer", document_id=request.match_info["doc"])
    p = page(request)
    svc = _svc(request)
    rows = await svc.of_document(access.document_id, p.after, p.fetch_limit())
    return web.json_response(p.result(rows, key=lambda r: [r["created_at"], r["id"]], shape=svc.meta),
                             headers={"Cache-Control": "no-store"})


@routes.delete("/api/v1/attachments/{attachment}", "Delete an attachment (editor)", status=204)
async def delete(request: web.Request) -> web.Response:
    row, access = await _visible(request, "editor")
    await _svc(request).delete(row, access.user_id)
    return web.Response(status=204)


@routes.get("/api/v1/attachments/{attachment}", "An attachment's bytes (a token, or a signed ?exp=&sig=)",
            auth="optional", query=FileQuery, raw_response="application/octet-stream")
async def download(request: web.Request, query: FileQuery) -> web.StreamResponse:
    svc = _svc(request)
    attachment_id = request.match_info["attachment"]
    if query.exp is not None or query.sig is not None:
        if not svc.signer.valid(attachment_id, query.exp or "", query.sig or ""):
            raise Forbidden("the signature is not valid or has expired")
        row = await svc.find(attachment_id)
        if row is None:
            raise NotFound("no such attachment")
    else:
        if request.get(PRINCIPAL) is None:
            raise Unauthenticated("send a token, or use the attachment's signed url")
        row, _ = await _visible(request, "viewer")
    return await _send(request, svc, row)


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
BEYOND = 10**18  # stands for a position written with more digits: past the end of any file


def _position(digits: str) -> int:
    """A byte position of a Range header; never converts thousands of digits (int() refuses past
    4300, and a file is never that large)."""
    return int(digits) if len(digits) <= 18 else BEYOND


def _range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(start, end) of a single satisfiable range; None: send everything; False: unsatisfiable."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:  # several ranges, or a unit we do not serve: the whole file is a valid answer
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = _position(last)
        if length == 0 or size == 0:
            return False
        return max(0, size - length), size - 1
    start = _position(first)
    end = size - 1 if last == "" else min(_position(last), size - 1)
    if start >= size or (last != "" and _position(last) < start):
        return False
    return start, end


async def _send(request: web.Request, svc: Attachments, row) -> web.StreamResponse:
    active = sniffing.is_active(row["content_type"])
    name = row["name"]
    headers = {
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'",
        "Cache-Control": "private, max-age=300",
        "ETag": f'"{row["sha256"]}"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"{'attachment' if active else 'inline'}; filename*=UTF-8''{quote(name, safe='')}",
    }
    if not active:
        direct = await svc.storage.url(row["storage_key"], name=name, content_type=row["content_type"], ttl=300)
        if direct is not None:
            return web.Response(status=302, headers={"Location": direct, "Cache-Control": "no-store",
                                                     "X-Content-Type-Options": "nosniff"})
    # active content is served as a download of opaque bytes: never a type a browser renders
    ctype = "application/octet-stream" if active else row["content_type"]
    size = row["size"]
    wanted = _range(request.headers.get("Range"), size)
    if wanted is False:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if_range = request.headers.get("If-Range")
    if wanted is not None and if_range and if_range != headers["ETag"]:
        wanted = None
    response = web.StreamResponse(status=206 if wanted else 200, headers=headers)
    response.content_type = ctype
    start, end = wanted if wanted else (0, size - 1)
    if wanted:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    response.content_length = end - start + 1 if size else 0
    await response.prepare(request)
    if size and not is_head(request):
        async for chunk in svc.storage.open(row["storage_key"], start, end):
            await response.write(chunk)
    await response.write_eof()
    return response

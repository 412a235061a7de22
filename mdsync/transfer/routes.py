"""HTTP routes of export and import (docs/api.md "Export and import"): admin and up.

GET  /api/v1/workspaces/{ws}/export   the zip, streamed while it is written (export.py)
POST /api/v1/workspaces/{ws}/import   application/zip, or multipart/form-data with `file`
                                      → {documents, folders, attachments, skipped, skipped_total}

The upload is spooled to an anonymous temporary file (small ones stay in memory; the file has no
name on disk and disappears when closed), never unpacked to the filesystem.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile

from aiohttp import web
from pydantic import BaseModel

from mdsync import audit
from mdsync.api.errors import TooLarge, UnsupportedMediaType, ValidationFailed
from mdsync.api.models import Out
from mdsync.api.routing import Routes, is_head
from mdsync.appkeys import DB, SETTINGS
from mdsync.attachments.service import ATTACHMENTS
from mdsync.db import Tx
from mdsync.documents.content import CONTENT
from mdsync.hooks import HOOKS
from mdsync.transfer import export, importer
from mdsync.workspaces.access import require

log = logging.getLogger("mdsync.transfer")
routes = Routes("transfer")

ZIP_TYPES = ("application/zip", "application/x-zip-compressed", "application/x-zip", "application/octet-stream")
SPOOL_IN_MEMORY = 8 * 1024 * 1024


class Skipped(BaseModel):
    path: str
    reason: str


class ImportOut(Out):
    documents: int
    folders: int
    attachments: int
    skipped: list[Skipped]
    skipped_total: int


def _filename(slug: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", slug).strip("-") or "workspace"


@routes.get("/api/v1/workspaces/{ws}/export", "Export the workspace as a zip of markdown (admin), streamed",
            raw_response="application/zip")
async def export_workspace(request: web.Request) -> web.StreamResponse:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    db = request.app[DB]
    slug = await db.value("SELECT slug FROM workspaces WHERE id = ?", (access.workspace_id,))
    response = web.StreamResponse(headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="{_filename(slug or "")}-export.zip"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    })
    if is_head(request):  # the headers only: nothing is exported, nothing audited
        await response.prepare(request)
        await response.write_eof()
        return response

    def record(tx: Tx) -> None:
        audit.record(tx, "workspace.export", actor_id=access.user_id, target_type="workspace",
                     target_id=access.workspace_id, workspace_id=access.workspace_id)

    await db.write(record)
    await response.prepare(request)
    try:
        await export.stream_export(response.write, request.app[SETTINGS], access.workspace_id, request.app[CONTENT],
                                   request.app[ATTACHMENTS].storage)
    except (ConnectionResetError, export.ExportCancelled):
        raise
    except Exception:
        # the status line is gone: cut the connection so the client sees a broken download,
        # never a zip that looks complete
        log.exception("export of workspace %s failed mid-stream", access.workspace_id)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("export failed") from None
    await response.write_eof()
    return response


async def _spool(request: web.Request, limit: int):
    """The uploaded zip in an anonymous temp file (413 past `limit`); `application/zip` bodies or
    the `file` part of a multipart form."""
    ctype = request.content_type
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    try:
        size = 0

        def take(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the upload is larger than limits.max_import_bytes ({limit} bytes)")
            spool.write(chunk)

        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            raise TooLarge(f"the upload is larger than limits.max_import_bytes ({limit} bytes)")
        if ctype == "multipart/form-data":
            found = False
            try:
                reader = await request.multipart()
                async for part in reader:
                    if getattr(part, "name", None) == "file":
                        found = True
                        while chunk := await part.read_chunk(1 << 16):
                            take(chunk)
                        break
            except ValueError as exc:  # aiohttp's parser: no boundary, or a body that is not that form
                raise ValidationFailed.field("body", f"not a multipart form: {exc}") from None
            if not found:
                raise ValidationFailed.field("file", "the form has no file part named \"file\"")
        elif ctype in ZIP_TYPES or not request.headers.get("Content-Type"):
            async for chunk in request.content.iter_chunked(1 << 16):
                take(chunk)
        else:
            raise UnsupportedMediaType(f"send application/zip or multipart/form-data, not {ctype}")
        if size == 0:
            raise ValidationFailed.field("file", "the upload is empty (not a zip file)")
        spool.seek(0)
        return spool
    except BaseException:
        spool.close()
        raise


@routes.post("/api/v1/workspaces/{ws}/import", "Import a zip of markdown (an export, or plain .md files) (admin)",
             raw_body="application/zip", response=ImportOut)
async def import_workspace(request: web.Request) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    settings = request.app[SETTINGS]
    limits = importer.Limits(settings.limits.max_import_bytes, settings.limits.max_document_bytes)
    spool = await _spool(request, settings.limits.max_import_bytes)
    try:
        source = await asyncio.to_thread(_open_zip, spool)
        try:
            plan = await asyncio.to_thread(importer.plan, source, limits)
            counts = await importer.run(request.app[DB], request.app[ATTACHMENTS], plan, source,
                                        access.workspace_id, access.user_id, limits,
                                        hooks=request.app[HOOKS].document_imported)
        finally:
            source.close()
    except importer.ImportRefused as exc:
        raise ValidationFailed(f"nothing was imported: {exc}", errors=[{"field": "file", "message": str(exc)}]) from None
    finally:
        spool.close()
    return web.json_response({**counts, "skipped": plan.skipped, "skipped_total": plan.skipped_total})


def _open_zip(spool) -> importer.ZipSource:
    return importer.ZipSource(spool)

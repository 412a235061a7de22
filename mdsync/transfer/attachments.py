"""The attachment parts of export and import (docs/api.md "Export and import").

Import: `store(plan, source, service)` puts every attachment file of the archive into storage
BEFORE the import's transaction (each spooled to a temp file while hashed and sniffed, so no file
is ever whole in memory; one over limits.max_upload_bytes is skipped with its reason) and answers
{path in the archive: row fields} for `importer.write`; `discard` removes them again when the
transaction fails. An export's attachment keeps its id when no attachment has it yet (so an export
imported into a fresh server exports to the same paths again); its storage key is always new.

Export: `loop_file_reader` lets the export thread read each file from the storage backend, whose
client lives on the event loop, one chunk at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import posixpath
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from mdsync.attachments import sniff as sniffing
from mdsync.attachments.service import Attachments, reduce_name
from mdsync.attachments.storage import incoming_dir
from mdsync.db import new_id
from mdsync.transfer import archive
from mdsync.transfer.sources import Entry, ImportRefused


def _spool(source, entry: Entry, directory, limit: int) -> tuple[str, int, str, bytes] | None:
    """(temp path, size, sha256, head) of one file of the archive, or None past `limit`."""
    path = os.path.join(directory, uuid.uuid4().hex)
    digest, size, head = hashlib.sha256(), 0, bytearray()
    try:
        with source.open(entry) as f, open(path, "wb") as out:
            while chunk := f.read(1 << 16):
                size += len(chunk)
                if size > entry.size:
                    raise ImportRefused(f"{entry.path} holds more bytes than its header declares")
                if size > limit:
                    os.unlink(path)
                    return None
                digest.update(chunk)
                if len(head) < sniffing.SNIFF_BYTES:
                    head += chunk[:sniffing.SNIFF_BYTES - len(head)]
                out.write(chunk)
    except ImportRefused:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise ImportRefused(f"{entry.path} cannot be read: {exc}") from None
    return path, size, digest.hexdigest(), bytes(head)


async def store(plan: Any, source, service: Attachments) -> dict[str, dict]:
    stored: dict[str, dict] = {}
    if not plan.attachment_files:
        return stored
    directory = await asyncio.to_thread(incoming_dir, service.settings)
    taken: set[str] = set()
    try:
        for entry in plan.attachment_files:
            if entry.size > service.limit:
                plan.skip(entry.path, f"larger than limits.max_upload_bytes ({service.limit} bytes)")
                continue
            spooled = await asyncio.to_thread(_spool, source, entry, directory, service.limit)
            if spooled is None:
                plan.skip(entry.path, f"larger than limits.max_upload_bytes ({service.limit} bytes)")
                continue
            temp, size, sha256, head = spooled
            m = plan.attachment_manifest.get(entry.path) or {}
            name = reduce_name(m.get("name") or posixpath.basename(entry.path))
            wanted = m.get("id")
            if (archive.is_uuid(wanted) and wanted not in taken
                    and await service.db.value("SELECT 1 FROM attachments WHERE id = ?", (wanted,)) is None):
                attachment_id = wanted
            else:
                attachment_id = new_id()
            taken.add(attachment_id)
            key = str(uuid.uuid4())
            try:
                await service.storage.put(key, temp)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            stored[entry.path] = {"id": attachment_id, "name": name, "content_type": sniffing.sniff(head, name),
                                  "size": size, "sha256": sha256, "storage_key": key}
    except BaseException:
        await discard(service, stored)
        raise
    return stored


async def discard(service: Attachments, stored: dict[str, dict]) -> None:
    await service.remove_files([fields["storage_key"] for fields in stored.values()])


def loop_file_reader(loop: asyncio.AbstractEventLoop, storage: Any, stop: Any):
    """In the export thread: key -> an iterator of the file's chunks, read on the event loop."""
    def wait(future):
        while True:
            try:
                return future.result(timeout=0.5)
            except TimeoutError:
                if stop.is_set():
                    future.cancel()
                    from mdsync.transfer.export import ExportCancelled
                    raise ExportCancelled() from None

    def read(key: str) -> Iterator[bytes]:
        stream = storage.open(key)

        async def following() -> bytes | None:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        try:
            while (chunk := wait(asyncio.run_coroutine_threadsafe(following(), loop))) is not None:
                yield chunk
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(stream.aclose(), loop).result(timeout=5)

    return read

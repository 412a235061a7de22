"""The attachments storage protocol: one small interface, one module per backend beside it
(local.py, s3.py), so adding a backend never touches the rest of the feature.

Uploads are first spooled to a temporary file under `data_dir/incoming/` (so size limits,
hashing and sniffing happen before anything is stored, and an upload is never whole in memory);
`put` then moves (local) or uploads (S3) that complete file under its key. The spool directory is
beside `files/`, not in it: on the same filesystem (an atomic rename), but outside what backups
copy, and emptied when the server starts (no upload is in flight then).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from mdsync.config import Settings

CHUNK = 256 * 1024


class Storage(Protocol):
    kind: str  # "local" | "s3"

    async def put(self, key: str, source: Path) -> None:
        """Store the complete file `source` under `key` (`source` is gone or reusable after)."""

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of `key` from `start` up to `end` inclusive (None: to the end), in chunks."""

    async def delete(self, key: str) -> None:
        """Remove `key`; removing what is not there is not an error."""

    async def url(self, key: str, *, name: str, content_type: str, ttl: int) -> str | None:
        """A direct URL the client may be redirected to (valid `ttl` s), or None: mdsync streams."""

    async def exists(self, key: str) -> bool: ...

    async def check(self) -> dict:
        """Readiness: {"ok": bool, ...} (reachable and writable)."""

    async def close(self) -> None: ...


def incoming_dir(settings: Settings) -> Path:
    path = settings.data_dir / "incoming"
    path.mkdir(parents=True, exist_ok=True)
    return path


def clear_incoming(settings: Settings) -> None:
    path = settings.data_dir / "incoming"
    if path.is_dir():
        for leftover in path.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)


def open_storage(settings: Settings) -> Storage:
    if settings.storage.backend == "s3":
        from mdsync.attachments.s3 import S3Storage
        return S3Storage(settings.storage.s3)
    from mdsync.attachments.local import LocalStorage
    return LocalStorage(settings.data_dir / "files")

"""Local backend: each attachment is one file under `data_dir/files/`, named by its key (the
attachment id, never the client's name), in a two-character fan-out directory. Writes are atomic:
the complete spooled file is fsynced and renamed into place, so a crash never leaves half a file
under a key."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from mdsync.attachments.storage import CHUNK

_KEY = re.compile(r"^[0-9a-f-]{36}$")


class LocalStorage:
    kind = "local"

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        if not _KEY.match(key):  # keys are ids we made; anything else is a bug, never a path
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key[:2] / key

    async def put(self, key: str, source: Path) -> None:
        target = self.path(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(source, target)
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        await asyncio.to_thread(move)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(open, self.path(key), "rb")
        try:
            if start:
                f.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = await asyncio.to_thread(f.read, CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(os.unlink, self.path(key))
        except FileNotFoundError:
            pass

    async def url(self, key: str, *, name: str, content_type: str, ttl: int) -> str | None:
        return None  # mdsync streams local files itself

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path(key).is_file)

    async def check(self) -> dict:
        def probe() -> dict:
            self.root.mkdir(parents=True, exist_ok=True)
            ok = os.access(self.root, os.W_OK | os.X_OK)
            return {"ok": ok, "backend": "local"} if ok else {"ok": False, "error": f"{self.root} is not writable"}

        try:
            return await asyncio.to_thread(probe)
        except OSError as exc:
            return {"ok": False, "error": str(exc)}

    async def close(self) -> None:
        pass

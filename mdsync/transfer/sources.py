"""Where an import reads from: a zip (the upload's temp file, or a file given to the CLI), or a
folder of files (the CLI). Both list their entries with clean relative paths (archive.entry_path)
and open them for reading; neither ever writes anything.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mdsync.transfer import archive


class ImportRefused(Exception):
    """The archive cannot be imported; the message names the entry and the reason (422)."""


@dataclass(frozen=True)
class Entry:
    path: str       # clean relative path (archive.entry_path); directories end with "/"
    size: int       # declared (zip header) or stat size
    handle: Any     # what the source opens
    skip: str | None = None  # why it is not imported, when its kind alone says so


class ZipSource:
    """A zip in a seekable file (the upload's temp file, or a file given to the CLI)."""

    def __init__(self, fileobj: IO[bytes]):
        try:
            self.zip = zipfile.ZipFile(fileobj)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
            raise ImportRefused(f"the body is not a zip file ({exc})") from None

    def entries(self) -> list[Entry]:
        out = []
        for info in self.zip.infolist():
            try:
                path = archive.entry_path(info.filename)
            except archive.UnsafePath as exc:
                raise ImportRefused(str(exc)) from None
            if info.flag_bits & 0x1:
                raise ImportRefused(f"{path} is encrypted")
            if stat.S_ISLNK(info.external_attr >> 16):  # its target would be read as a document
                out.append(Entry(path.rstrip("/"), info.file_size, info, "a symbolic link"))
                continue
            out.append(Entry(path if not info.is_dir() or path.endswith("/") else path + "/", info.file_size, info))
        return out

    def open(self, entry: Entry) -> IO[bytes]:
        return self.zip.open(entry.handle)

    def close(self) -> None:
        self.zip.close()


class DirectorySource:
    """A folder of files (the CLI): symbolic links are not followed, so nothing outside it is read."""

    def __init__(self, root: Path):
        self.root = root

    def entries(self) -> list[Entry]:
        out = []
        try:
            for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
                # hidden folders (.git, .obsidian, .trash) are not walked at all: they can be huge
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                base = Path(dirpath)
                for name in dirnames:
                    rel = (base / name).relative_to(self.root).as_posix()
                    if not (base / name).is_symlink():
                        out.append(Entry(archive.entry_path(rel) + "/", 0, base / name))
                for name in sorted(filenames):
                    full = base / name
                    info = full.lstat()
                    if not stat.S_ISREG(info.st_mode):
                        continue  # symlinks, sockets, devices
                    out.append(Entry(archive.entry_path(full.relative_to(self.root).as_posix()), info.st_size, full))
        except archive.UnsafePath as exc:
            raise ImportRefused(str(exc)) from None
        return out

    def open(self, entry: Entry) -> IO[bytes]:
        return open(entry.handle, "rb")

    def close(self) -> None:
        pass

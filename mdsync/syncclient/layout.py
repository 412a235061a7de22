"""Where the workspace's folders and documents go in DIR: named as the export names them
(mdsync/transfer/archive.py: `safe_name`, a clash gets " (2)" in position, title, id order), so
a synced folder and an exported zip agree. Also which local files take part: `.md` files, not
dotfiles, not `.mdsync/`, not editors' temp and swap files."""

from __future__ import annotations

import os
from pathlib import Path

from mdsync.transfer import archive

SUFFIX = ".md"
_TEMP_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".part", ".crdownload")


def remote_layout(tree: dict) -> tuple[dict[str, str], dict[str, str]]:
    """({folder id: "A/B"}, {document id: "A/B/Title.md"}) for a `GET …/tree` answer."""
    folders = archive.place_folders(tree["folders"])
    namespace = archive.document_namespaces(folders)
    by_folder: dict[str | None, list[dict]] = {}
    for d in tree["documents"]:
        fid = d.get("folder_id") if d.get("folder_id") in folders else None
        by_folder.setdefault(fid, []).append(d)
    docs: dict[str, str] = {}
    for fid in (None, *folders):
        space = namespace(fid)
        directory = "" if fid is None else folders[fid].path
        for d in sorted(by_folder.get(fid, ()), key=lambda d: (d["position"], d["title"], d["id"])):
            name = space.claim(archive.safe_name(d["title"]), SUFFIX)
            docs[d["id"]] = f"{directory}/{name}" if directory else name
    return {fid: f.path for fid, f in folders.items()}, docs


def safe_attachment_name(name: str) -> str:
    return archive.safe_name(name, "file")


def ignored(name: str) -> bool:
    return (name.startswith(".") or name.startswith("~") or name.startswith("#")
            or name.endswith(_TEMP_SUFFIXES))


def local_files(root: Path) -> set[str]:
    """Every synced file under `root` as a relative POSIX path."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not ignored(d) and not (dirpath == str(root) and d == "_attachments")]
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if name.endswith(SUFFIX) and not ignored(name):
                found.add((rel / name).as_posix())
    return found


def local_dirs(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if not ignored(d) and not (dirpath == str(root) and d == "_attachments")]
        rel = Path(dirpath).relative_to(root)
        found.update((rel / d).as_posix() for d in dirnames)
    return found


def title_of(path: str) -> str:
    return path.rsplit("/", 1)[-1][:-len(SUFFIX)]


def parent_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""

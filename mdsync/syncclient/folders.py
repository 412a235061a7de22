"""Directories of DIR as the workspace's folders: a new directory becomes a folder (`folder_for`),
a renamed or moved directory is one `PATCH` of its folder (`local_folder_moves`; moving each file
instead would leave the old folder behind on the server, empty, and bring the directory back on
the next pass), a deleted directory a `DELETE` of its folder (`local_folder_deletes`: to the
trash, and only once nothing in it is left on the server: a document the edit-beats-delete rule
kept, or one added remotely meanwhile, keeps its folder).

A directory counts as renamed when a tracked folder's directory is gone and a new directory holds
the most of its documents, each under the same relative path with its last synced text.
A folder renamed, moved or deleted on the server leaves its old directory here behind once its
files have moved out: it is removed if empty (`remove_emptied`), else left as it is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdsync.syncclient import layout
from mdsync.syncclient.http import HttpError, Unauthorized
from mdsync.syncclient.state import Doc

if TYPE_CHECKING:
    from mdsync.syncclient.engine import Pass


def folder_for(p: Pass, directory: str) -> str | None:
    """The folder id of a directory of DIR, its folders created when new."""
    if directory == "":
        return None
    for fid, path in p.folder_paths.items():
        if path == directory:
            return fid
    parent = folder_for(p, layout.parent_of(directory))
    name = directory.rsplit("/", 1)[-1]
    p.report("create", directory + "/", "folder")
    if p.dry:
        fid = f"dry-run:{directory}"
    else:
        fid = p.api.json("POST", f"/workspaces/{p.ws}/folders", {"name": name, "parent_id": parent},
                           creates=True)["id"]
    p.folder_paths[fid] = directory
    return fid


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory + "/")


def _matches(p: Pass, members: list[Doc], old: str, candidate: str) -> int:
    found = 0
    for doc in members:
        p.state.load(doc)
        try:
            got = p.read(candidate + doc.path[len(old):])
        except UnicodeDecodeError:
            continue
        found += got is not None and got[0] == doc.synced_text
    return found


def local_folder_moves(p: Pass, docs: dict[str, Doc]) -> None:
    """Tracked folders whose directory was renamed or moved here: `PATCH` name and parent."""
    present = layout.local_dirs(p.root)
    for fid, old in sorted(p.folder_paths.items(), key=lambda item: item[1].count("/")):
        old = p.folder_paths[fid]  # an outer rename may have moved it already
        if old in present:
            continue
        members = [d for d in docs.values() if _under(d.path, old)]
        candidates = present - set(p.folder_paths.values())
        scored = sorted(((_matches(p, members, old, c), c) for c in candidates), reverse=True)
        if not scored or scored[0][0] == 0:
            continue
        new = scored[0][1]
        if p.read_only_ws:
            p.report("keep", new + "/", f"moved from {old}/, read-only: not moved on the server")
            continue
        patch: dict = {}
        if new.rsplit("/", 1)[-1] != old.rsplit("/", 1)[-1]:
            patch["name"] = new.rsplit("/", 1)[-1]
        if layout.parent_of(new) != layout.parent_of(old):
            patch["parent_id"] = folder_for(p, layout.parent_of(new))
        try:
            p.report("rename" if "name" in patch else "move", f"{old}/ → {new}/")
            if not p.dry:
                p.api.json("PATCH", f"/folders/{fid}", patch)
        except Unauthorized:
            raise
        except HttpError as exc:
            p.report("error", old + "/", str(exc))
            continue
        for other, path in list(p.folder_paths.items()):
            if path == old or _under(path, old):
                p.folder_paths[other] = new + path[len(old):]
        for doc in members:
            doc.path = new + doc.path[len(old):]
            if not p.dry:
                p.save(doc)
        if not p.dry:
            p.state.save_folders(p.folder_paths)
        p.commit()


def local_folder_deletes(p: Pass, gone: dict[str, str], tree: dict) -> bool:
    """`gone`: {folder id: directory} of tracked folders whose directory was deleted here (the
    documents in it already handled). Each folder that holds no document on the server any more
    is deleted (to the trash, with its subfolders); True when one was."""
    children: dict[str | None, list[str]] = {}
    for f in tree["folders"]:
        children.setdefault(f.get("parent_id"), []).append(f["id"])
    holding = {d.get("folder_id") for d in tree["documents"]}
    live = {f["id"] for f in tree["folders"]}
    deleted = False
    for fid, path in sorted(gone.items(), key=lambda item: item[1].count("/")):
        if fid not in live or (p.root / path).is_dir():
            continue
        subtree, todo = set(), [fid]
        while todo:
            current = todo.pop()
            subtree.add(current)
            todo.extend(children.get(current, ()))
        if subtree & holding:
            continue  # something in it is still there: the directory comes back with it
        if p.read_only_ws:
            p.report("keep", path + "/", "deleted here, read-only: not deleted on the server")
            continue
        p.report("delete", path + "/")
        if p.dry:
            continue
        try:
            p.api.request("DELETE", f"/folders/{fid}")
        except Unauthorized:
            raise
        except HttpError as exc:
            if exc.status != 404:
                p.report("error", path + "/", str(exc))
                continue
        live -= subtree
        deleted = True
    return deleted


def remove_emptied(p: Pass, old_dirs: set[str]) -> None:
    """Directories of folders renamed, moved or deleted on the server, removed when nothing is
    left in them (not even a dotfile): deepest first, never one holding a file."""
    if p.dry:
        return
    for path in sorted(old_dirs, key=lambda d: d.count("/"), reverse=True):
        try:
            (p.root / path).rmdir()
        except OSError:
            pass  # not empty (a file of the user's, a new document), or already gone

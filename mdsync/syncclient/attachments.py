"""Attachments in DIR/_attachments/, both ways. Remote: each `attachment` change of the feed (the
whole feed on the first pass) is read through `GET /attachments/{id}/meta` and the file fetched
with the token from `GET /attachments/{id}`, named by `meta.name` (a clash gets " (2)"); a
`delete` moves the file to .mdsync/trash/. Local: a file added there is uploaded (raw body,
`?filename=`), a tracked file removed is deleted on the server; sha256 compared so nothing moves
twice. Markdown keeps the stable `/api/v1/attachments/{id}` links; a signed url is never written."""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

from mdsync.syncclient import layout
from mdsync.syncclient.http import HttpError, Unauthorized

DIRNAME = "_attachments"


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def free_name(directory: Path, name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    candidate, n = name, 1
    while candidate in taken or (directory / candidate).exists():
        n += 1
        candidate = f"{stem} ({n}).{ext}" if ext else f"{name} ({n})"
    return candidate


def sync_attachments(p, remote: dict[str, str]) -> None:
    """`p`: the running engine Pass; `remote`: {attachment id: last op} of this workspace's feed."""
    st = p.state
    tracked = st.attachments()  # {id: (name, sha256)}
    directory = p.root / DIRNAME
    # remote deletes and new remote files
    for att_id, op in remote.items():
        try:
            if op == "delete":
                if att_id in tracked:
                    name = tracked.pop(att_id)[0]
                    p.report("trash", f"{DIRNAME}/{name}", "deleted on the server; a copy is in .mdsync/trash/")
                    p.trash(f"{DIRNAME}/{name}")
                    st.forget_attachment(att_id)
                    p.commit()
                continue
            if att_id in tracked:
                continue
            meta = p.api.json("GET", f"/attachments/{att_id}/meta")
            local = {name: sha for name, sha in tracked.values()}
            same = [n for n in (os.listdir(directory) if directory.is_dir() else ())
                    if n not in local and not layout.ignored(n) and sha256(directory / n) == meta["sha256"]]
            if same:  # already here (a file uploaded by a killed pass, or put here by hand)
                name = same[0]
            else:
                name = free_name(directory, layout.safe_attachment_name(meta["name"]), set(local))
                p.report("pull", f"{DIRNAME}/{name}")
                if not p.dry:
                    data = p.api.request("GET", f"/attachments/{att_id}")[1]
                    directory.mkdir(exist_ok=True)
                    tmp = directory / f".{name}.mdsync-tmp"
                    tmp.write_bytes(data)
                    os.replace(tmp, directory / name)
            tracked[att_id] = (name, meta["sha256"])
            if not p.dry:
                st.save_attachment(att_id, name, meta["sha256"])
            p.commit()
        except Unauthorized:
            raise
        except HttpError as exc:
            if exc.status != 404:  # 404: deleted since the feed said so
                p.report("error", f"{DIRNAME}/{att_id}", str(exc))
                p.recheck_attachments[att_id] = op  # the cursor moves on: the next pass tries it again
    # local deletes and new local files
    present = {n for n in (os.listdir(directory) if directory.is_dir() else ()) if not layout.ignored(n)
               and (directory / n).is_file()}
    by_name = {name: (att_id, sha) for att_id, (name, sha) in tracked.items()}
    for name, (att_id, _) in sorted(by_name.items()):
        if name in present:
            continue
        try:
            p.report("delete", f"{DIRNAME}/{name}")
            if not p.dry:
                try:
                    p.api.request("DELETE", f"/attachments/{att_id}")
                except HttpError as exc:
                    if exc.status != 404:
                        raise
                st.forget_attachment(att_id)
            p.commit()
        except Unauthorized:
            raise
        except HttpError as exc:
            p.report("error", f"{DIRNAME}/{name}", str(exc))
    known_shas = {sha for _, sha in tracked.values()}
    for name in sorted(present - set(by_name)):
        try:
            digest = sha256(directory / name)
            if digest in known_shas:
                continue
            if p.read_only_ws:
                p.report("keep", f"{DIRNAME}/{name}", "read-only workspace: the new file is not sent")
                continue
            p.report("create", f"{DIRNAME}/{name}")
            if p.dry:
                continue
            query = urllib.parse.urlencode({"filename": name})
            meta = p.api.json_body("POST", f"/workspaces/{p.ws}/attachments?{query}", (directory / name).read_bytes(),
                                 creates=True)
            st.save_attachment(meta["id"], name, meta["sha256"])
            known_shas.add(meta["sha256"])
            p.commit()
        except Unauthorized:
            raise
        except HttpError as exc:
            p.report("error", f"{DIRNAME}/{name}", str(exc))

"""Files new in DIR become documents, each once.

A create is recorded in the state (path, title, folder, hash of the text) and committed before
its `POST …/documents`; the document is recorded and the create forgotten in one commit after the
answer. A pass killed between the two (kill -9, a crash, the connection lost after the server
acted) leaves the record behind, and the next pass adopts the document from the tree — a document
no one here tracks, with that title, folder and text — instead of creating a second one
(`adopt_pending`). A record matching nothing means the `POST` never arrived: it is forgotten and
the file created again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdsync.syncclient import layout
from mdsync.syncclient.folders import folder_for
from mdsync.syncclient.http import HttpError, Unauthorized
from mdsync.syncclient.merge import Replica
from mdsync.syncclient.state import Doc, text_hash

if TYPE_CHECKING:
    from mdsync.syncclient.engine import Pass


def adopt_pending(p: Pass, tree: dict, docs: dict[str, Doc]) -> None:
    """Creates a killed pass sent but never recorded: each tree document untracked here with the
    recorded title, folder and text becomes the file's document (added to `docs`)."""
    pending = p.state.creates()
    if not pending or p.dry:
        return
    for rel, (title, folder_id, digest) in sorted(pending.items()):
        candidates = [d for d in tree["documents"]
                      if d["id"] not in docs and d["title"] == title and d.get("folder_id") == folder_id]
        for d in candidates:
            replica = Replica()
            replica.apply(p.api.bytes("GET", f"/documents/{d['id']}/yjs"))
            text = replica.markdown()
            if text_hash(text) != digest:
                continue
            try:
                style = (p.read(rel) or ("", ""))[1]
            except UnicodeDecodeError:
                style = ""
            docs[d["id"]] = Doc(d["id"], rel, title, folder_id, "text", False, replica.state(), text, style, None)
            p.save(docs[d["id"]])
            p.report("create", rel, "adopted: created by a pass that stopped before recording it")
            break
        p.state.forget_create(rel)
        p.commit()


def local_creates(p: Pass) -> None:
    docs = p.state.docs()
    tracked = {d.path for d in docs.values()}
    for rel in sorted(layout.local_files(p.root) - tracked):
        try:
            got = p.read(rel)
            if got is None:
                continue
            if p.read_only_ws:
                p.report("keep", rel, "read-only workspace: the new file is not sent")
                continue
            text, style = got
            folder_id = folder_for(p, layout.parent_of(rel))
            p.report("create", rel)
            if p.dry:
                continue
            title = layout.title_of(rel)
            p.state.record_create(rel, title, folder_id, text)
            p.commit()
            created = p.api.json("POST", f"/workspaces/{p.ws}/documents",
                                 {"title": title, "folder_id": folder_id, "markdown": text})
            replica = Replica()
            replica.apply(p.api.bytes("GET", f"/documents/{created['id']}/yjs"))
            doc = Doc(created["id"], rel, created["title"], folder_id, created.get("content_model", "text"), False,
                      replica.state(), replica.markdown(), style, None)
            p.save(doc)
            p.state.forget_create(rel)
            p.commit()
            if replica.markdown() != text:
                p.write_back(doc, replica)
        except Unauthorized:
            raise
        except UnicodeDecodeError:
            p.report("skip", rel, "not UTF-8, skipped")
        except HttpError as exc:
            p.report("error", rel, str(exc))

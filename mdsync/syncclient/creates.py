"""Files new in DIR become documents, each once.

A create is recorded in the state (path, title, folder, the text sent and its hash) and committed
before its `POST …/documents`; the document is recorded and the create forgotten in one commit
after the answer. A pass killed between the two (kill -9, a crash, the connection lost after the
server acted) leaves the record behind, and the next pass adopts the document from the tree
instead of creating a second one (`adopt_pending`): a document no one here tracks, with that title
and folder, created from that text — whatever was edited in it since (`created_from`). A record
matching nothing means the `POST` never arrived: it is forgotten and the file created again. A
record whose file is gone while an untracked file holds the text sent was renamed or moved here
meanwhile (`moved_creates`): the document is adopted, then renamed or moved as the file was (one
`PATCH`, as for a tracked document's file), instead of being adopted where the file was while the
renamed file became a second document.

How a document shows the text it was created from: the server seeds a new document's CRDT state
from its markdown deterministically (`mdsync.collab.room.seed_update`: a fixed client id, one
insert), so the seed of the text sent is, item for item, the first state of the document this
client created; later edits are other items beside it, and deletions keep its items' ids. A
document whose seed has that length and whose every surviving seed character is the one sent was
created from that text; a document created from other text (another device's create of the same
name, say) is not. The adopted document is recorded at that seed, its synced text the text sent:
the pass then syncs it as any document, so the remote edits are pulled and an edit of the file
since the create is pushed, merged by the CRDT."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mdsync.syncclient import layout
from mdsync.syncclient.folders import folder_for
from mdsync.syncclient.http import HttpError, Unauthorized
from mdsync.syncclient.merge import Replica
from mdsync.syncclient.state import Doc, text_hash

if TYPE_CHECKING:
    from mdsync.syncclient.engine import Pass


def created_from(state: bytes, sent: str | None, digest: str) -> Replica | None:
    """The replica to record for a document whose CRDT state is `state` when it was created from
    the text sent (`sent`, with sha256 `digest`), else None: the seed of that text (the document as
    it was created). A record an older client made holds no text: its document is recognised only
    while it still holds the text sent, and recorded as it is."""
    server = Replica(state)
    if sent is None:
        return server if text_hash(server.markdown()) == digest else None
    from mdsync.collab.room import SEED_CLIENT_ID, decode_state_vector, seed_update  # only here: the server's imports
    seed = seed_update(sent) if sent else b""  # an empty document is never seeded
    base = Replica(seed)
    seeded = decode_state_vector(server.state_vector()).get(SEED_CLIENT_ID, 0)
    if seeded != decode_state_vector(base.state_vector()).get(SEED_CLIENT_ID, 0):
        return None
    # the server's state over the seed of the text sent: its seed items are the ones already there
    # (same ids), so the text is the server's only when every seed character still in it is the one sent
    over = Replica(seed)
    over.apply(state)
    return base if over.markdown() == server.markdown() else None


def moved_creates(p: Pass, pending: dict[str, tuple], docs: dict[str, Doc]) -> dict[str, str]:
    """{recorded path: the file's path now} for the creates whose file is gone while an untracked
    file holds the text sent (its sha256): renamed or moved before this pass."""
    gone = {rel: digest for rel, (_, _, digest, _) in pending.items() if not (p.root / rel).is_file()}
    if not gone:
        return {}
    by_hash: dict[str, str] = {}
    for rel in sorted(layout.local_files(p.root) - {d.path for d in docs.values()} - set(pending)):
        try:
            got = p.read(rel)
        except UnicodeDecodeError:
            continue
        if got is not None:
            by_hash.setdefault(text_hash(got[0]), rel)
    return {rel: by_hash.pop(digest) for rel, digest in sorted(gone.items()) if digest in by_hash}


def adopt_pending(p: Pass, tree: dict, docs: dict[str, Doc]) -> bool:
    """Creates a killed pass sent but never recorded: the tree document untracked here with the
    recorded title and folder, created from the recorded text, becomes the file's document (added
    to `docs`, recorded at its creation, and in `p.changed` so the pass syncs it); renamed or moved
    on the server as its file was here meanwhile. True when one was (the tree is stale)."""
    pending = p.state.creates()
    if not pending or p.dry:
        return False
    moved, renamed = moved_creates(p, pending, docs), False
    for rel, (title, folder_id, digest, sent) in sorted(pending.items()):
        candidates = [d for d in tree["documents"]
                      if d["id"] not in docs and d["title"] == title and d.get("folder_id") == folder_id]
        for d in candidates:
            replica = created_from(p.api.bytes("GET", f"/documents/{d['id']}/yjs"), sent, digest)
            if replica is None:
                continue
            try:
                style = (p.read(moved.get(rel, rel)) or ("", ""))[1]
            except UnicodeDecodeError:
                style = ""
            doc = docs[d["id"]] = Doc(d["id"], rel, title, folder_id, "text", False, replica.state(),
                                      replica.markdown(), style, None)
            p.save(doc)
            if p.changed is not None:
                p.changed.add(d["id"])
            p.report("create", rel, "adopted: created by a pass that stopped before recording it")
            if rel in moved:
                p.local_move(doc, moved[rel])
                renamed = True
            break
        p.state.forget_create(rel)
        p.commit()
    return renamed


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
                                 {"title": title, "folder_id": folder_id, "markdown": text}, creates=True)
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

"""One sync pass over DIR (docs/sync.md has the user's view):

1. the binding: DIR/.mdsync/state.db names the server and workspace it syncs with (a DIR bound
   to another one is refused, exit 2);
2. the change feed from the saved cursor: which documents changed remotely (all of them on the
   first pass, whose cursor is taken with `since=now` before the tree is read);
3. local moves and deletes: a renamed or moved directory is a `PATCH` of its folder (folders.py);
   a tracked file that is gone while an untracked file holds its last synced text was moved or
   renamed (`PATCH` title, folder_id); otherwise it was deleted (`DELETE`, to the trash), unless
   the server changed it meanwhile (the edit wins: restored); a deleted directory's folder is
   deleted once nothing in it is left;
4. the tree, placed as the export places it (layout.py); creates a killed pass sent but never
   recorded are adopted (creates.py; renamed or moved as their file was meanwhile); remote renames and moves move the file; each tracked
   document: a local edit is pushed as a Yjs update (saved as pending first), the remote changes
   pulled with the replica's state vector and merged, the file replaced only while it still holds
   the last synced text (merge.py; `text` and `tiptap` documents alike); documents new on the
   server are fetched a few at a time (`CONCURRENCY`) and written; documents gone from the tree
   are moved to .mdsync/trash/ (unless edited here: then restored, or re-created if purged);
5. untracked files become documents (`POST …/documents`, creates.py), new directories folders;
6. the cursor saved; a document whose step failed (the server down mid-pass, ...) is kept in
   `recheck` and looked at again by the next pass, since the cursor has moved past its change.
Each step commits the state before the next, so a killed pass resumes where it stopped.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from mdsync.syncclient import layout
from mdsync.syncclient.attachments import sync_attachments
from mdsync.syncclient.creates import adopt_pending, local_creates
from mdsync.syncclient.folders import folder_for, local_folder_deletes, local_folder_moves, remove_emptied
from mdsync.syncclient.http import Api, HttpError, Unauthorized
from mdsync.syncclient.merge import Replica, decode, encode, replica_of
from mdsync.syncclient.report import Report
from mdsync.syncclient.state import STATE_DIR, Doc, State, text_hash
from mdsync.tiptap.parse import TooDeep

FEED_PAGES = 10_000   # pages of the change feed read in one pass at most
CONCURRENCY = 8       # documents new on the server fetched at once (the initial pull)
LIST_PAGE = 200       # documents in one page of the workspace's document listing (the API's most)
BATCH_SECONDS = 0.5   # documents pulled are committed together at most this often
WRITE_BACK_TRIES = 5  # a file edited while its merge is written: folded in again at most this often
READ_ONLY_ROLES = ("viewer", "commenter")


class UsageError(Exception):
    """Exit 2: wrong usage, or DIR bound elsewhere."""


class Refused(Exception):
    """Exit 3: the token was refused or no longer reaches the workspace."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class Pass:
    def __init__(self, root: Path, api: Api, state: State, report: Report, dry_run: bool):
        self.root = root
        self.api = api
        self.state = state
        self.report = report
        self.dry = dry_run
        self.ws = ""
        self.read_only_ws = False
        self.changed: set[str] | None = None
        self.folder_paths: dict[str, str] = {}
        self.attachments: dict[str, str] = {}  # attachment id -> its last op in the feed
        self.recheck: set[str] = set()  # documents whose step failed: looked at again next pass
        self.recheck_attachments: dict[str, str] = {}  # attachments likewise: {id: op}
        # what this pass last read from or wrote to each file: {path: (sha256 of the text, (mtime_ns, size))}
        self.seen: dict[str, tuple[str, tuple[int, int]]] = {}
        self.committed = time.monotonic()

    # -- small steps -------------------------------------------------------------------------------
    def commit(self) -> None:
        if not self.dry:
            self.state.conn.commit()
            self.committed = time.monotonic()

    def commit_soon(self) -> None:
        """Commit at most every `BATCH_SECONDS`: for steps whose loss costs nothing but redoing
        them (a pulled file not yet recorded is adopted by the next pass, as it holds the text).
        Each commit waits for the disk (the state is fsynced, so an update recorded as pending is
        never lost while the server has it): one per pulled document was a third of a 10 000
        document pull."""
        if time.monotonic() - self.committed >= BATCH_SECONDS:
            self.commit()

    def stat(self, rel: str) -> tuple[int, int] | None:
        try:
            st = (self.root / rel).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_mtime_ns, st.st_size

    def read(self, rel: str) -> tuple[str, str] | None:
        """The file's (text, style); None when it is gone. Raises UnicodeDecodeError."""
        path = self.root / rel
        try:
            st = path.stat()  # before reading: a write after it changes what the next pass sees
            raw = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        text, style = decode(raw)
        self.seen[rel] = (text_hash(text), (st.st_mtime_ns, st.st_size))
        return text, style

    def write(self, rel: str, text: str, style: str, read_only: bool) -> None:
        """Replace the file atomically (temp file + rename)."""
        if self.dry:
            return
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.mdsync-tmp")
        tmp.write_bytes(encode(text, style))
        os.chmod(tmp, 0o444 if read_only else 0o644)
        st = tmp.stat()
        os.replace(tmp, target)
        self.seen[rel] = (text_hash(text), (st.st_mtime_ns, st.st_size))

    def save(self, doc: Doc) -> None:
        """Record `doc`; with the file's mtime and size when this pass saw it hold the synced text
        (so the next pass need not read it while they stay the same)."""
        seen = self.seen.get(doc.path)
        if doc.loaded:
            if seen is not None and seen[0] == text_hash(doc.synced_text):
                doc.mtime_ns, doc.size = seen[1]
            else:
                doc.mtime_ns = doc.size = None
        self.state.save_doc(doc)

    def trash(self, rel: str) -> None:
        if self.dry or not (self.root / rel).exists():
            return
        dest = self.root / STATE_DIR / "trash" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{Path(rel).stem} ({n}){layout.SUFFIX}")
        shutil.move(str(self.root / rel), str(dest))

    def post_update(self, doc: Doc) -> None:
        if doc.pending and not self.dry:
            self.api.bytes("POST", f"/documents/{doc.id}/yjs", doc.pending)
            doc.pending = None
            self.save(doc)
            self.commit()

    def pull_update(self, doc: Doc, replica: Replica) -> None:
        replica.apply(self.api.bytes("GET", f"/documents/{doc.id}/yjs", params={"sv": _b64(replica.state_vector())}))

    # -- binding and feed ----------------------------------------------------------------------------
    def bind(self, server: str, workspace: str | None) -> None:
        bound_server, bound_ws = self.state.get("server"), self.state.get("workspace_id")
        if bound_server and bound_server.rstrip("/") != server.rstrip("/"):
            raise UsageError(f"{self.root} is bound to {bound_server}, not {server}")
        try:
            listing = self.api.json("GET", "/workspaces", params={"limit": 200})
        except Unauthorized as exc:
            raise Refused(f"the token was refused: {exc.detail}") from None
        items = listing["items"]
        if workspace:
            found = [w for w in items if workspace in (w["id"], w["slug"])] or [w for w in items if w["name"] == workspace]
            if len(found) > 1:
                raise UsageError(f"several workspaces are named {workspace!r}: give its id")
            if not found:
                if bound_ws:
                    raise Refused(f"workspace {workspace!r} is not reachable with this token")
                raise UsageError(f"no workspace {workspace!r} for this token")
            if bound_ws and found[0]["id"] != bound_ws:
                raise UsageError(f"{self.root} is bound to workspace {bound_ws}, not {found[0]['id']}")
            ws = found[0]
        elif bound_ws:
            ws = next((w for w in items if w["id"] == bound_ws), None)
            if ws is None:
                raise Refused(f"workspace {bound_ws} is no longer reachable with this token (files kept)")
        else:
            raise UsageError("--workspace is needed for the first sync of a directory")
        self.ws = ws["id"]
        self.read_only_ws = ws["role"] in READ_ONLY_ROLES
        self.state.set("server", server.rstrip("/"))
        self.state.set("workspace_id", self.ws)
        self.state.set("read_only", "1" if self.read_only_ws else "0")
        self.commit()

    def read_feed(self) -> str:
        """Which documents changed since the saved cursor (`changed`; None: all, on the first
        pass) and the attachments' last op (`attachments`, the whole feed on the first pass);
        the new cursor."""
        cursor = self.state.get("cursor")
        first = cursor is None
        changed: set[str] = set(json.loads(self.state.get("recheck") or "[]"))
        self.attachments.update(json.loads(self.state.get("recheck_attachments") or "{}"))
        for _ in range(FEED_PAGES):
            try:
                page = self.api.json("GET", "/sync/changes", params={"since": cursor, "limit": 200})
            except HttpError as exc:
                if exc.status not in (410, 422) or first:
                    raise
                # the feed no longer reaches back that far: look at everything from its start
                first, cursor, changed = True, None, set()
                continue
            for c in page["changes"]:
                if c["workspace_id"] != self.ws:
                    continue
                if c["entity"] == "document":
                    changed.add(c["id"])
                elif c["entity"] == "attachment":
                    self.attachments[c["id"]] = c["op"]
            cursor = page["cursor"]
            if not page["has_more"]:
                break
        self.changed = None if first else changed
        return cursor

    def folder_for(self, directory: str) -> str | None:
        return folder_for(self, directory)

    # -- the pass ------------------------------------------------------------------------------------
    def run(self, server: str, workspace: str | None) -> None:
        self.bind(server, workspace)
        cursor = self.read_feed()
        self.folder_paths = self.state.folders()
        docs = self.state.docs()
        local_folder_moves(self, docs)
        gone_dirs = {fid: path for fid, path in self.folder_paths.items() if not (self.root / path).is_dir()}
        self.local_moves_and_deletes(docs)
        tree = self.api.json("GET", f"/workspaces/{self.ws}/tree")
        if gone_dirs and local_folder_deletes(self, gone_dirs, tree):
            tree = self.api.json("GET", f"/workspaces/{self.ws}/tree")
        docs = self.state.docs()
        if adopt_pending(self, tree, docs):  # an adopted document renamed or moved as its file was
            tree = self.api.json("GET", f"/workspaces/{self.ws}/tree")
        before = set(self.folder_paths.values())
        self.folder_paths, remote_paths = layout.remote_layout(tree)
        if not self.dry:
            for path in self.folder_paths.values():
                (self.root / path).mkdir(parents=True, exist_ok=True)
            self.state.save_folders(self.folder_paths)
            self.commit()
        claimed = {d.path for d in docs.values()}
        new = [d for d in tree["documents"] if d["id"] not in docs]
        fetched = self.fetch_all(new, self.content_models(new, len(tree["documents"])) if new else {})
        if self.changed is None:
            self.report.start_bar(len(new))
        try:
            for d in tree["documents"]:
                doc, path = docs.get(d["id"]), remote_paths[d["id"]]
                if doc is None:
                    self.step(d["id"], path, self.new_remote, d, path, claimed, next(fetched))
                else:
                    self.step(d["id"], doc.path, self.sync_known, doc, d, path, claimed)
        finally:
            fetched.close()
            self.report.end_bar()
        live = {d["id"] for d in tree["documents"]}
        for doc in list(docs.values()):
            if doc.id not in live:
                self.step(doc.id, doc.path, self.remote_gone, doc)
        remove_emptied(self, before - set(self.folder_paths.values()))
        local_creates(self)
        sync_attachments(self, self.attachments)
        self.state.set("cursor", cursor)
        self.state.set("recheck", json.dumps(sorted(self.recheck)))
        self.state.set("recheck_attachments", json.dumps(self.recheck_attachments))
        self.commit()

    def step(self, doc_id: str, path: str, fn, *args) -> None:
        """One document's step; its failure is reported (and the document looked at again next
        pass), the others go on."""
        try:
            fn(*args)
        except Unauthorized:
            raise
        except UnicodeDecodeError:
            self.report("skip", path, "not UTF-8, skipped")
        except TooDeep as exc:
            self.report("error", path, str(exc))
        except HttpError as exc:
            self.report("error", path, str(exc))
            self.recheck.add(doc_id)

    def content_models(self, new: list[dict], total: int) -> dict[str, str]:
        """{document id: content model} from the workspace's document listing, when its pages
        are fewer than the documents new here (the initial pull: 50 requests instead of 10 000
        `GET /documents/{id}`); else {}. A content model never changes; a document the listing
        missed (created since) is asked for on its own."""
        if len(new) <= -(-total // LIST_PAGE):
            return {}
        models: dict[str, str] = {}
        cursor = None
        for _ in range(FEED_PAGES):
            page = self.api.json("GET", f"/workspaces/{self.ws}/documents", params={"limit": LIST_PAGE, "cursor": cursor})
            models.update((d["id"], d["content_model"]) for d in page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                break
        return models

    def fetch_all(self, ds: Iterable[dict], models: dict[str, str]) -> Iterator[Future]:
        """Each document's (content model, Yjs state) fetched `CONCURRENCY` at a time, in order,
        at most twice that many held at once; a failure is raised by its own future. The content
        model from `models`, else from the document's metadata."""
        pool = ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="mdsync-sync-fetch")

        def fetch(doc_id: str) -> tuple[str, bytes]:
            model = models.get(doc_id) or self.api.json("GET", f"/documents/{doc_id}")["content_model"]
            return model, self.api.bytes("GET", f"/documents/{doc_id}/yjs")

        try:
            it = iter(ds)
            window = deque(pool.submit(fetch, d["id"]) for d in itertools.islice(it, 2 * CONCURRENCY))
            while window:
                nxt = next(it, None)
                if nxt is not None:
                    window.append(pool.submit(fetch, nxt["id"]))
                yield window.popleft()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def local_moves_and_deletes(self, docs: dict[str, Doc]) -> None:
        files = layout.local_files(self.root)
        tracked = {d.path for d in docs.values()}
        untracked = files - tracked
        texts: dict[str, str] = {}
        for rel in sorted(untracked):
            try:
                got = self.read(rel)
            except UnicodeDecodeError:
                continue
            if got is not None:
                texts.setdefault(got[0], rel)
        for doc in docs.values():
            if doc.path in files:
                continue
            self.state.load(doc)
            try:
                moved_to = texts.pop(doc.synced_text, None)
                if moved_to is not None:
                    self.local_move(doc, moved_to)
                else:
                    self.local_delete(doc)
            except Unauthorized:
                raise
            except HttpError as exc:
                self.report("error", doc.path, str(exc))

    def local_move(self, doc: Doc, new: str) -> None:
        if doc.read_only or self.read_only_ws:
            self.report("keep", new, f"moved from {doc.path}, read-only: not moved on the server")
            return
        patch: dict = {}
        if layout.title_of(new) != layout.title_of(doc.path):
            patch["title"] = layout.title_of(new)
        if layout.parent_of(new) != layout.parent_of(doc.path):
            patch["folder_id"] = self.folder_for(layout.parent_of(new))
        self.report("rename" if "title" in patch else "move", f"{doc.path} → {new}")
        if patch and not self.dry:
            self.api.json("PATCH", f"/documents/{doc.id}", patch)
        doc.path = new
        self.save(doc)
        self.commit()

    def local_delete(self, doc: Doc) -> None:
        replica = replica_of(doc.content_model, doc.replica)
        self.pull_update(doc, replica)
        if replica.markdown() != doc.synced_text:
            # edited remotely meanwhile: the edit beats the delete, the file comes back
            self.report("restore", doc.path, "changed on the server since it was deleted here")
            self.write(doc.path, replica.markdown(), doc.style, doc.read_only)
            doc.replica, doc.synced_text = replica.state(), replica.markdown()
            self.save(doc)
            self.commit()
            return
        if doc.read_only or self.read_only_ws:
            self.report("keep", doc.path, "deleted here, read-only: not deleted on the server")
        else:
            self.report("delete", doc.path)
            if not self.dry:
                try:
                    self.api.request("DELETE", f"/documents/{doc.id}")
                except HttpError as exc:
                    if exc.status != 404:
                        raise
        if not self.dry:
            self.state.forget_doc(doc.id)
        self.commit()

    def new_remote(self, d: dict, path: str, claimed: set[str], fetched: Future) -> None:
        content_model, state = fetched.result()
        read_only = self.read_only_ws
        replica = replica_of(content_model)
        replica.apply(state)
        text = replica.markdown()
        path = self.free_path(path, text, claimed)
        local = self.read(path)
        if local is not None and local[0] == text:
            self.report("pull", path, "already here")
            style = local[1]
        else:
            style = ""
            self.report("pull", path)
        self.write(path, text, style, read_only)
        self.report.advance(len(state))
        claimed.add(path)
        doc = Doc(d["id"], path, d["title"], d.get("folder_id"), content_model, read_only,
                  replica.state(), text, style, None)
        if not self.dry:
            self.save(doc)
        self.commit_soon()

    def free_path(self, path: str, text: str, claimed: set[str]) -> str:
        """`path`, unless another document holds it or a file with other text is there (never
        overwritten: it becomes its own document): then the next free ` (n)` name."""
        base, n = path[:-len(layout.SUFFIX)], 1
        candidate = path
        while n < 1000:
            if candidate not in claimed:
                try:
                    local = self.read(candidate)
                except UnicodeDecodeError:
                    local = ("\0", "")
                if local is None or local[0] == text:
                    return candidate
            n += 1
            candidate = f"{base} ({n}){layout.SUFFIX}"
        raise HttpError(0, f"no free name for {path}")

    def move_to_remote_path(self, doc: Doc, path: str, claimed: set[str]) -> None:
        if path == doc.path or path in claimed or (self.root / path).exists():
            return
        self.report("move", f"{doc.path} → {path}", "renamed or moved on the server")
        if not self.dry and (self.root / doc.path).exists():
            (self.root / path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / doc.path, self.root / path)
        claimed.discard(doc.path)
        claimed.add(path)
        doc.path = path
        self.save(doc)
        self.commit()

    def sync_known(self, doc: Doc, d: dict, path: str, claimed: set[str]) -> None:
        doc.title, doc.folder_id = d["title"], d.get("folder_id")
        self.move_to_remote_path(doc, path, claimed)
        unchanged_here = (not doc.has_pending and doc.mtime_ns is not None
                          and self.stat(doc.path) == (doc.mtime_ns, doc.size))
        if unchanged_here and self.changed is not None and doc.id not in self.changed:
            return  # neither the file (same mtime and size) nor the document changed: nothing read
        self.state.load(doc)
        local = self.read(doc.path)
        read_only = doc.read_only or self.read_only_ws
        replica = replica_of(doc.content_model, doc.replica)
        if doc.replica is None:  # a TipTap document pulled by a client that kept no replica of them
            self.pull_update(doc, replica)
            doc.replica = replica.state()
        self.post_update(doc)  # an update a killed pass saved but did not send
        edited = local is not None and local[0] != doc.synced_text
        if edited and read_only:
            self.report("keep", doc.path, "read-only here: the local edit is kept, not sent")
            return
        if edited:
            text, style = local
            doc.pending = replica.edit(text, doc.synced_text)
            doc.replica, doc.synced_text, doc.style = replica.state(), text, style
            self.save(doc)
            self.commit()
            self.post_update(doc)
        if not edited and self.changed is not None and doc.id not in self.changed:
            if local is not None and self.seen[doc.path][1] != (doc.mtime_ns, doc.size):
                self.save(doc)  # touched, not changed: its new mtime recorded
                self.commit()
            return
        pushed = replica.markdown() if edited else None
        self.pull_update(doc, replica)
        merged = replica.markdown()
        if merged == doc.synced_text:
            if edited:
                self.report("push", doc.path)
            return
        self.write_back(doc, replica)
        # a TipTap document's file takes the markdown the renderer writes (the push alone did that)
        self.report("push" if edited and merged == pushed else "merge" if edited else "pull", doc.path)

    def write_back(self, doc: Doc, replica: Replica) -> None:
        """Write the replica's text to the file, folding in an edit the file got meanwhile."""
        for _ in range(WRITE_BACK_TRIES):
            local = self.read(doc.path)
            if local is None or local[0] == doc.synced_text:
                merged = replica.markdown()
                self.write(doc.path, merged, doc.style, doc.read_only or self.read_only_ws)
                doc.replica, doc.synced_text = replica.state(), merged
                self.save(doc)
                self.commit()
                return
            base = replica_of(doc.content_model, doc.replica)  # its text: the last synced text
            update = base.edit(local[0], doc.synced_text)
            replica.apply(update)
            doc.replica, doc.synced_text, doc.style, doc.pending = base.state(), local[0], local[1], update
            self.save(doc)
            self.commit()
            self.post_update(doc)
        self.report("error", doc.path, "the file kept changing while its merge was written; next pass")

    def remote_gone(self, doc: Doc) -> None:
        self.state.load(doc)
        local = self.read(doc.path)
        if local is not None and local[0] != doc.synced_text and not doc.read_only and not self.read_only_ws:
            try:  # edited here: the edit beats the delete
                self.api.request("POST", f"/documents/{doc.id}/restore") if not self.dry else None
                self.report("restore", doc.path, "deleted on the server, edited here")
                self.sync_known(doc, {"title": doc.title, "folder_id": doc.folder_id}, doc.path, set())
                return
            except HttpError as exc:
                if exc.status not in (404, 403):
                    raise
            if not self.dry:  # purged: the file becomes a new document
                self.state.forget_doc(doc.id)
            self.commit()
            return
        self.report("trash", doc.path, "deleted on the server; a copy is in .mdsync/trash/")
        self.trash(doc.path)
        if not self.dry:
            self.state.forget_doc(doc.id)
        self.commit()


def sync_once(root: Path, server: str | None, workspace: str | None, token: str, report: Report,
              dry_run: bool = False, api: Api | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """One pass; the exit code (0 in sync, 1 some items failed). On the caller's `api` (--watch
    keeps one for all its passes, their connections kept alive), else on one of its own, whose
    waits before a retry are `sleep`'s."""
    state = State(root, in_memory=dry_run and not (root / STATE_DIR / "state.db").exists())
    try:
        server = server or state.get("server")
        if not server:
            raise UsageError("--server is needed for the first sync of a directory")
        own = api is None
        api = api or Api(server, token, notify=report.notice, sleep=sleep)
        try:
            Pass(root, api, state, report, dry_run).run(server, workspace)
        finally:
            if own:
                api.close()
    except Unauthorized as exc:
        raise Refused(f"the token was refused: {exc.detail}") from None
    finally:
        state.close()
    return 1 if report.failed else 0

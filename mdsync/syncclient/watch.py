"""`mdsync sync DIR --watch`: passes (engine.py) until SIGINT or SIGTERM. A pass runs when files
under DIR changed and then stayed quiet (watchfiles, debounced: an editor saving through a temp
file and a rename is one change), or when the change feed (long-polled in a thread) reports a
change in the workspace. When all that changed is tracked documents' files saved here and tracked
documents' content on the server, only those are pushed and merged (`sync_files`: no tree,
no walk of DIR; each save's own echo in the feed costs one small pull, not a full pass), else a
full pass runs. The passes after the first, the files synced alone and the change feed share one
`Api`, so a save reuses a kept-alive connection instead of opening one. A signal lets the pass in
flight finish (its state is committed step by step), then the loop ends with exit 0; a wait for a
busy server (its Retry-After, up to 30 s a retry) ends at the signal: that request fails as
"stopping" and the pass ends in moments instead of after its waits."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import watchfiles

from mdsync.syncclient import layout
from mdsync.syncclient.engine import Pass, Refused, sync_once
from mdsync.syncclient.http import Api, HttpError, Unauthorized
from mdsync.syncclient.report import Report
from mdsync.syncclient.state import STATE_DIR, State

DEBOUNCE_MS = 300    # a file is pushed once the folder has been quiet this long
POLL_WAIT = 25       # seconds of one long-poll of the change feed
RETRY_AFTER = 2.0    # seconds before a pass that failed as a whole (server down) is tried again


def _relevant(root: Path, changes: set[tuple[watchfiles.Change, str]]) -> tuple[bool, set[str] | None]:
    """(anything to sync, the files saved when that is all that changed: else None)."""
    relevant, saved = False, set()
    for change, raw in changes:
        rel = Path(raw).relative_to(root)
        if rel.parts and rel.parts[0] == STATE_DIR:
            continue
        if any(layout.ignored(part) for part in rel.parts):
            continue
        relevant = True
        if (saved is not None and change != watchfiles.Change.deleted and rel.name.endswith(layout.SUFFIX)
                and rel.parts[0] != "_attachments" and (root / rel).is_file()):
            saved.add(rel.as_posix())
        else:
            saved = None
    return relevant, saved if relevant else None


class FeedWatcher(threading.Thread):
    """Long-polls the change feed; on a change in the workspace sets `changed` (and wakes the
    loop), keeping which documents changed (`take`) and whether anything else did."""

    def __init__(self, api: Api, workspace_id: str, wake: threading.Event, stop: threading.Event):
        super().__init__(daemon=True, name="mdsync-sync-feed")
        self.api, self.ws, self.wake, self.stop = api, workspace_id, wake, stop
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._other = False

    def take(self) -> tuple[set[str], bool]:
        """(documents changed, anything else changed) since the last call."""
        with self._lock:
            self.changed.clear()
            taken = (self._ids, self._other)
            self._ids, self._other = set(), False
        return taken

    def run(self) -> None:
        cursor = None
        while not self.stop.is_set():
            try:
                if cursor is None:
                    cursor = self.api.json("GET", "/sync/changes", params={"since": "now"})["cursor"]
                page = self.api.json("GET", "/sync/changes", params={"since": cursor, "wait": POLL_WAIT, "limit": 200},
                                     timeout=POLL_WAIT + 15)
                cursor = page["cursor"]
                mine = [c for c in page["changes"] if c["workspace_id"] == self.ws]
                if mine:
                    with self._lock:
                        for c in mine:
                            if c["entity"] == "document" and c["op"] == "upsert":
                                self._ids.add(c["id"])
                            else:
                                self._other = True
                        self._other = self._other or page["has_more"]
                        self.changed.set()
                    self.wake.set()
            except HttpError as exc:
                if exc.status in (410, 422):
                    cursor = None
                    with self._lock:
                        self._other = True
                        self.changed.set()
                self.stop.wait(RETRY_AFTER)


def sync_files(root: Path, api: Api, report: Report, paths: set[str], doc_ids: set[str] = frozenset()) -> bool:
    """--watch, when all that changed is these files saved here (`paths`) and these documents'
    content on the server (`doc_ids`, from the change feed): each pushed and merged as a full
    pass would (`sync_known`), without reading the tree or walking DIR — over 10 000 files a full
    pass costs a second or more, this a few milliseconds and the requests. False when a full pass
    is needed instead: a path is not a tracked document's file (a new file, a rename), a document
    is new here, renamed, moved or trashed on the server, DIR was never synced, or an item
    failed (the full pass retries it). The cursor is left to the next full pass."""
    state = State(root)
    try:
        docs = state.docs()
        by_path = {d.path: d for d in docs.values()}
        server, ws, read_only = state.get("server"), state.get("workspace_id"), state.get("read_only")
        if (not server or read_only is None or any(rel not in by_path for rel in paths)
                or any(i not in docs for i in doc_ids)):
            return False
        failed = len(report.failed)
        p = Pass(root, api, state, report, False)
        p.ws, p.read_only_ws, p.changed = ws, read_only == "1", set(doc_ids)
        for doc_id in sorted(doc_ids):
            try:
                meta = p.api.json("GET", f"/documents/{doc_id}")
            except HttpError as exc:
                if isinstance(exc, Unauthorized):
                    raise
                return False
            doc = docs[doc_id]
            if meta.get("deleted_at") or meta["title"] != doc.title or meta.get("folder_id") != doc.folder_id:
                return False  # its place changed: the tree decides where it goes
        targets = {d.id: d for d in [by_path[rel] for rel in paths] + [docs[i] for i in doc_ids]}
        for doc in sorted(targets.values(), key=lambda d: d.path):
            p.step(doc.id, doc.path, p.sync_known, doc, {"title": doc.title, "folder_id": doc.folder_id}, doc.path,
                   set())
        if p.recheck:
            state.set("recheck", json.dumps(sorted(p.recheck | set(json.loads(state.get("recheck") or "[]")))))
            state.conn.commit()
        return len(report.failed) == failed
    except Unauthorized as exc:
        raise Refused(f"the token was refused: {exc.detail}") from None
    finally:
        state.close()


def _until(stop: threading.Event):
    """The waits before a retry (http.Api's `sleep`): over at `stop`, failing the request."""
    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise HttpError(0, "stopping")
    return sleep


def _pass(root: Path, server, workspace, token: str, report: Report, stop: threading.Event,
          api: Api | None = None) -> bool:
    """One pass; False when it failed as a whole (the server unreachable): try again later."""
    try:
        sync_once(root, server, workspace, token, report, api=api, sleep=_until(stop))
    except Unauthorized:
        raise
    except HttpError as exc:
        if not stop.is_set():   # stopping (a signal ended a wait): nothing to report or retry
            report("error", str(root), f"{exc}; retrying")
            stop.wait(RETRY_AFTER)
        return False
    report.failed.clear()
    return True


def _files(root: Path, api: Api, report: Report, saved: set[str], ids: set[str]) -> bool:
    """Only the files saved here and the documents changed there; False when a full pass is
    needed instead."""
    try:
        done = sync_files(root, api, report, saved, ids)
    except HttpError:
        return False
    report.failed.clear()
    return done


def watch(root: Path, server: str | None, workspace: str | None, token: str, report: Report) -> int:
    """Passes until a signal; 0 then (Refused and UsageError go to the caller as for one pass)."""
    stop, wake = threading.Event(), threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    api: Api | None = None
    try:
        while not stop.is_set() and not _pass(root, server, workspace, token, report, stop):
            pass  # the first pass failed as a whole (server down): tried again
        if stop.is_set():
            return 0
        state = State(root)
        try:
            bound_server, bound_ws = state.get("server"), state.get("workspace_id")
        finally:
            state.close()
        api = Api(bound_server, token, notify=report.notice, sleep=_until(stop))
        feed = FeedWatcher(api, bound_ws, wake, stop)
        feed.start()
        # one watcher for the whole run: changes made during a pass wait in it for the next one
        dirty = True  # a pass once watching has begun: catches what changed before it began
        for changes in watchfiles.watch(root, debounce=DEBOUNCE_MS, step=50, stop_event=stop,
                                        yield_on_timeout=True, rust_timeout=200, raise_interrupt=False):
            if stop.is_set():
                break
            saved: set[str] = set()
            if changes:
                relevant, files = _relevant(root, changes)
                if relevant and files is None:
                    dirty = True
                elif relevant:
                    saved = files
            ids: set[str] = set()
            if feed.changed.is_set():
                ids, other = feed.take()
                dirty = dirty or other
            if not dirty and (saved or ids):
                dirty = not _files(root, api, report, saved, ids)
            if dirty:
                dirty = not _pass(root, server, workspace, token, report, stop, api)
    finally:
        stop.set()
        if api is not None:
            api.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0

"""What the sync client remembers, in DIR/.mdsync/state.db (SQLite): which server and workspace
DIR is bound to, the change-feed cursor, and per document its id, path, Yjs replica, the text
last synced (what the file held when it last agreed with the replica) and the Yjs update not yet
acknowledged by the server (`pending`); each create not yet answered (`creates`: path, title,
folder, the text sent and its hash), recorded before its `POST` so that a run killed between the
`POST` and the commit of its answer adopts the document instead of creating it twice. Every step
commits before the next one starts, so a killed run resumes where it stopped: a pending update
is sent again (Yjs updates are idempotent).
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

STATE_DIR = ".mdsync"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    title TEXT NOT NULL,
    folder_id TEXT,
    content_model TEXT NOT NULL DEFAULT 'text',
    read_only INTEGER NOT NULL DEFAULT 0,
    replica BLOB,
    synced_text TEXT NOT NULL DEFAULT '',
    style TEXT NOT NULL DEFAULT '',
    pending BLOB,
    mtime_ns INTEGER,
    size INTEGER,
    has_pending INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS folders (id TEXT PRIMARY KEY, path TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attachments (id TEXT PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL);
-- what a pass reads of every document, without reaching past the replica and text (SQLite would
-- read their overflow pages to get to a column stored after them: ~1 GB for 10 000 documents)
CREATE INDEX IF NOT EXISTS docs_light ON docs (id, path, title, folder_id, content_model, read_only, style, mtime_ns,
                                               size, has_pending);
CREATE TABLE IF NOT EXISTS creates (path TEXT PRIMARY KEY, title TEXT NOT NULL, folder_id TEXT, text_sha256 TEXT NOT NULL,
                                    text TEXT);
"""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# columns added since state.db first shipped: added to an older file when it is opened
ADDED_COLUMNS = {"docs": (("mtime_ns", "INTEGER", ""), ("size", "INTEGER", ""),
                          ("has_pending", "INTEGER NOT NULL DEFAULT 0", "UPDATE docs SET has_pending = pending IS NOT NULL")),
                 "creates": (("text", "TEXT", ""),)}  # NULL in a record an older client made: only its hash


@dataclass
class Doc:
    """A tracked document. `State.docs()` gives them without their heavy columns (`loaded`
    False: `replica`, `synced_text` and `pending` not read; `has_pending` says whether there is
    one): a pass over 10 000 documents reads those only for the few that changed (`State.load`).
    `mtime_ns`, `size`: the file's when it last held `synced_text` (None: unknown)."""

    id: str
    path: str
    title: str
    folder_id: str | None
    content_model: str
    read_only: bool
    replica: bytes | None
    synced_text: str
    style: str
    pending: bytes | None
    mtime_ns: int | None = None
    size: int | None = None
    loaded: bool = True
    has_pending: bool = False


class State:
    def __init__(self, root: Path, in_memory: bool = False):
        """`in_memory`: a dry run in a DIR never synced (nothing is written into it). Changes are
        kept only once the caller commits (`conn.commit()`); a dry run never does."""
        if in_memory:
            self.conn = sqlite3.connect(":memory:")
        else:
            (root / STATE_DIR).mkdir(exist_ok=True)
            self.conn = sqlite3.connect(root / STATE_DIR / "state.db")
            self.conn.execute("PRAGMA journal_mode=WAL")
        for table, columns in ADDED_COLUMNS.items():
            have = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            for name, kind, fill in columns:
                if have and name not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
                    if fill:
                        self.conn.execute(fill)
            self.conn.commit()
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.rollback()  # what was not committed (a dry run, a failed step) is not kept
        self.conn.close()

    # -- meta
    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                          (key, value))

    # -- documents
    def docs(self) -> dict[str, Doc]:
        """Every tracked document, its heavy columns not read (`load` reads them)."""
        rows = self.conn.execute("SELECT id, path, title, folder_id, content_model, read_only, style, mtime_ns, size,"
                                 " has_pending FROM docs INDEXED BY docs_light").fetchall()
        return {r[0]: Doc(r[0], r[1], r[2], r[3], r[4], bool(r[5]), None, "", r[6], None, r[7], r[8], False, bool(r[9]))
                for r in rows}

    def load(self, d: Doc) -> Doc:
        if not d.loaded:
            d.replica, d.synced_text, d.pending = self.conn.execute(
                "SELECT replica, synced_text, pending FROM docs WHERE id = ?", (d.id,)).fetchone()
            d.loaded = True
        return d

    def save_doc(self, d: Doc) -> None:
        """Insert or update `d` (only its light columns when it was never loaded)."""
        if not d.loaded:
            self.conn.execute("UPDATE docs SET path = ?, title = ?, folder_id = ?, content_model = ?, read_only = ?,"
                              " style = ?, mtime_ns = ?, size = ? WHERE id = ?",
                              (d.path, d.title, d.folder_id, d.content_model, int(d.read_only), d.style, d.mtime_ns,
                               d.size, d.id))
            return
        d.has_pending = d.pending is not None
        self.conn.execute(
            "INSERT INTO docs (id, path, title, folder_id, content_model, read_only, replica, synced_text, style, pending,"
            " mtime_ns, size, has_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " path = excluded.path, title = excluded.title, folder_id = excluded.folder_id,"
            " content_model = excluded.content_model, read_only = excluded.read_only, replica = excluded.replica,"
            " synced_text = excluded.synced_text, style = excluded.style, pending = excluded.pending,"
            " mtime_ns = excluded.mtime_ns, size = excluded.size, has_pending = excluded.has_pending",
            (d.id, d.path, d.title, d.folder_id, d.content_model, int(d.read_only), d.replica, d.synced_text,
             d.style, d.pending, d.mtime_ns, d.size, int(d.has_pending)))

    def forget_doc(self, doc_id: str) -> None:
        self.conn.execute("DELETE FROM docs WHERE id = ?", (doc_id,))

    # -- folders
    def folders(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT id, path FROM folders").fetchall())

    def save_folders(self, folders: dict[str, str]) -> None:
        self.conn.execute("DELETE FROM folders")
        self.conn.executemany("INSERT INTO folders (id, path) VALUES (?, ?)", folders.items())

    # -- attachments (files in _attachments/)
    def attachments(self) -> dict[str, tuple[str, str]]:
        return {r[0]: (r[1], r[2]) for r in self.conn.execute("SELECT id, name, sha256 FROM attachments")}

    def save_attachment(self, att_id: str, name: str, digest: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO attachments (id, name, sha256) VALUES (?, ?, ?)", (att_id, name, digest))

    def forget_attachment(self, att_id: str) -> None:
        self.conn.execute("DELETE FROM attachments WHERE id = ?", (att_id,))

    # -- creates sent but not yet recorded as documents
    def creates(self) -> dict[str, tuple[str, str | None, str, str | None]]:
        """{path: (title, folder_id, sha256 of the text, the text sent)}; the text is None in a
        record an older client made."""
        return {r[0]: (r[1], r[2], r[3], r[4])
                for r in self.conn.execute("SELECT path, title, folder_id, text_sha256, text FROM creates")}

    def record_create(self, path: str, title: str, folder_id: str | None, text: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO creates (path, title, folder_id, text_sha256, text) VALUES (?, ?, ?, ?, ?)",
                          (path, title, folder_id, text_hash(text), text))

    def forget_create(self, path: str) -> None:
        self.conn.execute("DELETE FROM creates WHERE path = ?", (path,))

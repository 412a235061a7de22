"""Import: a zip (an mdsync export, or any zip of `.md` files), or from the CLI a folder of `.md`
files (an Obsidian-style vault), into a workspace.

Two passes, so a refused import writes nothing:

1. `plan(source, limits)` checks ALL of it without writing: every entry path (no absolute paths,
   no `..`, no duplicates), the declared sizes against `limits.max_import_bytes` (zip bombs) and,
   while reading, the bytes actually produced; every document must be UTF-8 and within
   `limits.max_document_bytes`; `mdsync.json`, when present, must be well formed. Any problem is
   an `ImportRefused` naming the entry. The plan holds metadata only, never the markdown.
2. `write(db, plan, source, ...)` creates the folders and documents, reading each document
   again, without holding the database writer for long: batches staged where nobody sees them,
   then one short switch that makes the whole import visible at once and records each creation
   in the change feed (see "writing" below). Whatever fails leaves nothing behind.

Where things come from: the tree is the zip's directories and `.md` files (a document's folder is
its directory); `mdsync.json` (matched by path) gives exact folder names, ids, positions and
content models; a document's front matter gives its id, title, kind and timestamps. Without
them: the title is the front matter's `title:`, else the first `# heading`, else the file name;
positions follow the names' order after what the workspace already holds. Ids from the archive
are kept when no row has them yet (so an export imported into a fresh server keeps its ids) and,
for documents, no purged document had them (migration 0014), otherwise new ones are made.
Hidden files (`.obsidian/`, `.DS_Store`, `__MACOSX/`) are skipped.

Attachments (any other file that is not hidden) are stored BEFORE any row is written, by
`transfer/attachments.py` (size limit, type sniffing, a storage key of their own) and handed to
`write` as `attachments` ({path in the archive: fields}); `write` inserts their rows and change
rows in the import's switch and rewrites each document's links to those files
(`archive.file_links`: relative links and `![[name]]` embeds) to `/api/v1/attachments/{id}`.
The caller (the API route, and `mdsync import` through the same path) deletes the stored files
when the import fails. Without `attachments` the files are listed in `skipped`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import posixpath
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mdsync import audit, clock
from mdsync.api.errors import NotFound
from mdsync.db import Database, Tx, new_id
from mdsync.hooks import DocumentImported
from mdsync.sync import changes
from mdsync.transfer import archive
# the sources are opened by callers through this module too
from mdsync.transfer.sources import DirectorySource, Entry, ImportRefused, ZipSource  # noqa: F401

if TYPE_CHECKING:
    from mdsync.attachments.service import Attachments

log = logging.getLogger("mdsync.transfer.importer")

MAX_ENTRIES = 200_000
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
FRONT_MATTER_ALLOWANCE = 64 * 1024  # a document file may be this much larger than its markdown
SKIPPED_LISTED = 100


# ATTACHMENTS: see the module docstring; the manifest's `attachments` entry (matched by path)
# gives an attachment's id, name, document and creation time; the document is otherwise the
# first one whose links point at the file.


@dataclass(frozen=True)
class Limits:
    max_bytes: int            # limits.max_import_bytes: everything expanded
    max_document_bytes: int   # limits.max_document_bytes: one document's markdown
    max_entries: int = MAX_ENTRIES


# -- the plan ------------------------------------------------------------------------------------
@dataclass
class FolderPlan:
    path: str                  # "A/B"
    parent: str | None         # "A", or None at the top
    name: str
    position: float | None
    id: str | None             # wanted id (kept if free)
    created_at: str | None
    updated_at: str | None


@dataclass
class DocumentPlan:
    path: str                  # "A/B/x.md"
    folder: str | None         # "A/B"
    title: str
    kind: str
    content_model: str
    position: float | None
    id: str | None
    created_at: str | None
    updated_at: str | None
    entry: Entry
    manifest: dict | None      # its mdsync.json entry, for the hooks


@dataclass
class Plan:
    folders: list[FolderPlan] = field(default_factory=list)      # parents first
    documents: list[DocumentPlan] = field(default_factory=list)
    attachment_files: list[Entry] = field(default_factory=list)  # stored by transfer/attachments.py
    attachment_manifest: dict[str, dict] = field(default_factory=dict)  # path -> mdsync.json entry
    skipped: list[dict] = field(default_factory=list)
    skipped_total: int = 0

    def skip(self, path: str, reason: str) -> None:
        self.skipped_total += 1
        if len(self.skipped) < SKIPPED_LISTED:
            self.skipped.append({"path": path, "reason": reason})


class _Budget:
    """Bytes actually read, against the expanded-size limit."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0

    def spend(self, n: int, path: str) -> None:
        self.used += n
        if self.used > self.limit:
            raise ImportRefused(f"the archive expands past the import limit of {self.limit} bytes (at {path})")


def _read(source, entry: Entry, budget: _Budget, cap: int, what: str) -> bytes:
    """An entry's bytes, counting them as they come: never more than declared, than `cap`, or
    than the budget allows (a zip whose headers lie about sizes is refused, not trusted)."""
    chunks, n = [], 0
    try:
        with source.open(entry) as f:
            while chunk := f.read(1 << 16):
                n += len(chunk)
                budget.spend(len(chunk), entry.path)
                if n > entry.size:
                    raise ImportRefused(f"{entry.path} holds more bytes than its header declares")
                if n > cap:
                    raise ImportRefused(f"{entry.path} is larger than {cap} bytes ({what})")
                chunks.append(chunk)
    except ImportRefused:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        raise ImportRefused(f"{entry.path} cannot be read: {exc}") from None
    return b"".join(chunks)


@dataclass
class _Document:
    markdown: str
    meta: dict[str, str]
    ours: bool


def _document(source, entry: Entry, budget: _Budget, limits: Limits) -> _Document:
    raw = _read(source, entry, budget, limits.max_document_bytes + FRONT_MATTER_ALLOWANCE, "a document")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportRefused(f"{entry.path} is not UTF-8 text (invalid byte at offset {exc.start}); "
                            "save it as UTF-8 and import again") from None
    if "\x00" in text:  # as a markdown body (docs/api.md "Conventions"; PostgreSQL text cannot hold one)
        raise ImportRefused(f"{entry.path} must not contain NUL characters")
    text = text.removeprefix("\ufeff")
    split = archive.split_front_matter(text)
    if len(split.markdown.encode("utf-8")) > limits.max_document_bytes:
        raise ImportRefused(f"{entry.path} is larger than limits.max_document_bytes ({limits.max_document_bytes} bytes)")
    return _Document(split.markdown, split.meta, split.ours)


def _hidden(path: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in path.rstrip("/").split("/"))


def _finite(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ImportRefused(f"mdsync.json: {where} must be a finite number")
    return float(value)


def _text(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ImportRefused(f"mdsync.json: {where} must be a string")
    return value


def _timestamp(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return clock.iso(clock.parse(value))
    except (ValueError, TypeError, OverflowError):
        return None


def _manifest(source, entry: Entry, budget: _Budget) -> tuple[dict[str, dict], dict[str, dict], dict[str, dict]]:
    """mdsync.json → ({folder path: entry}, {document path: entry}, {attachment path: entry}),
    checked field by field."""
    import json

    raw = _read(source, entry, budget, MAX_MANIFEST_BYTES, "mdsync.json")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ImportRefused(f"mdsync.json is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != archive.FORMAT:
        raise ImportRefused("mdsync.json is not an mdsync export (its \"format\" is not \"mdsync-export\")")
    version = data.get("version")
    if not isinstance(version, int) or version > archive.FORMAT_VERSION:
        raise ImportRefused(f"mdsync.json: format version {version!r} is not supported "
                            f"(this server reads up to {archive.FORMAT_VERSION})")
    out: tuple[dict[str, dict], dict[str, dict], dict[str, dict]] = ({}, {}, {})
    for key, index in (("folders", 0), ("documents", 1), ("attachments", 2)):
        items = data.get(key, [])
        if not isinstance(items, list):
            raise ImportRefused(f"mdsync.json: {key} must be a list")
        for n, item in enumerate(items):
            where = f"{key}[{n}]"
            if not isinstance(item, dict):
                raise ImportRefused(f"mdsync.json: {where} must be an object")
            path = _text(item.get("path"), f"{where}.path")
            if path is None:
                continue
            try:
                path = archive.entry_path(path).rstrip("/")
            except archive.UnsafePath as exc:
                raise ImportRefused(f"mdsync.json: {where}.path: {exc}") from None
            clean = {"id": _text(item.get("id"), f"{where}.id"),
                     "position": _finite(item.get("position"), f"{where}.position"),
                     "created_at": _timestamp(_text(item.get("created_at"), f"{where}.created_at")),
                     "updated_at": _timestamp(_text(item.get("updated_at"), f"{where}.updated_at"))}
            if key == "folders":
                clean["name"] = _text(item.get("name"), f"{where}.name")
            elif key == "attachments":
                clean["name"] = _text(item.get("name"), f"{where}.name")
                clean["document_id"] = _text(item.get("document_id"), f"{where}.document_id")
            else:
                clean["title"] = _text(item.get("title"), f"{where}.title")
                clean["kind"] = _choice(item.get("kind"), archive.KINDS, f"mdsync.json: {where}.kind")
                clean["content_model"] = _choice(item.get("content_model"), archive.CONTENT_MODELS,
                                                 f"mdsync.json: {where}.content_model")
                versions = item.get("versions", [])
                clean["versions"] = versions if isinstance(versions, list) else []
            out[index][path] = clean
    return out


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str | None:
    if value is None:
        return None
    if value not in allowed:
        raise ImportRefused(f"{where} must be one of {', '.join(allowed)}")
    return value


def plan(source, limits: Limits) -> Plan:
    """Check everything, write nothing (see the module docstring)."""
    result = Plan()
    entries = source.entries()
    if len(entries) > limits.max_entries:
        raise ImportRefused(f"the archive has {len(entries)} entries; at most {limits.max_entries} are accepted")
    declared = sum(e.size for e in entries)
    if declared > limits.max_bytes:
        raise ImportRefused(f"the archive expands to {declared} bytes, past the import limit of {limits.max_bytes}")
    files: dict[str, Entry] = {}
    dirs: set[str] = set()
    for entry in entries:
        if entry.path.endswith("/"):
            dirs.add(entry.path.rstrip("/"))
        elif entry.path in files:
            raise ImportRefused(f"{entry.path} appears twice in the archive")
        else:
            files[entry.path] = entry
    budget = _Budget(limits.max_bytes)
    manifest_folders: dict[str, dict] = {}
    manifest_docs: dict[str, dict] = {}
    manifest = files.pop(archive.MANIFEST, None)
    if manifest is not None:
        manifest_folders, manifest_docs, result.attachment_manifest = _manifest(source, manifest, budget)

    folder_paths: set[str] = set()
    documents: list[tuple[Entry, _Document]] = []
    for path in sorted(files, key=lambda p: (p.casefold(), p)):
        entry = files[path]
        if entry.skip is not None:
            result.skip(path, entry.skip)
        elif _hidden(path):
            result.skip(path, "hidden or system file")
        elif path.lower().endswith(archive.MARKDOWN_SUFFIXES):
            document = _document(source, entry, budget, limits)
            documents.append((entry, document))
            parent = posixpath.dirname(path)
            while parent:
                folder_paths.add(parent)
                parent = posixpath.dirname(parent)
        else:
            result.attachment_files.append(entry)
    if manifest is not None:  # an export's directory entries keep its empty folders
        for path in dirs:
            if not _hidden(path) and path.split("/")[0] != archive.ATTACHMENTS_DIR:
                while path:
                    folder_paths.add(path)
                    path = posixpath.dirname(path)

    for path in sorted(folder_paths, key=lambda p: (p.count("/"), p.casefold(), p)):
        m = manifest_folders.get(path, {})
        name = archive.clean_title(m.get("name")) or archive.clean_title(path.rsplit("/", 1)[-1]) or "Untitled"
        result.folders.append(FolderPlan(path, posixpath.dirname(path) or None, name, m.get("position"), m.get("id"),
                                         m.get("created_at"), m.get("updated_at")))

    for entry, document in documents:
        m = manifest_docs.get(entry.path)
        meta = document.meta
        ours = meta if document.ours else {}
        stem = posixpath.basename(entry.path).rsplit(".", 1)[0]
        title = (archive.clean_title(meta.get("title")) or archive.clean_title((m or {}).get("title"))
                 or archive.clean_title(archive.first_heading(document.markdown)) or archive.clean_title(stem)
                 or "Untitled")
        kind = _choice(ours.get("kind"), archive.KINDS, f"{entry.path}: kind") or (m or {}).get("kind") or "note"
        result.documents.append(DocumentPlan(
            entry.path, posixpath.dirname(entry.path) or None, title, kind,
            (m or {}).get("content_model") or "text", (m or {}).get("position"),
            ours.get("id") or (m or {}).get("id"),
            _timestamp(ours.get("created_at")) or (m or {}).get("created_at"),
            _timestamp(ours.get("updated_at")) or (m or {}).get("updated_at"),
            entry, m))
    return result


# -- writing -------------------------------------------------------------------------------------
# An import never holds the single database writer for long: that writer commits every accepted
# live edit within 1 s (docs/api.md), and an import near the 1 GiB limit has seconds of work.
#   1. Off the writer, in a worker thread: the plan has already checked everything; documents
#      are read (decompressed) again and their attachment links rewritten, one bounded batch at
#      a time (BATCH_ROWS rows or BATCH_BYTES of markdown), so memory stays bounded too.
#   2. The writer inserts each batch as its own short job, into a staging workspace: a
#      workspaces row created already deleted, which nobody can see, nor anything in it (every
#      route reaches folders and documents through a live workspace, and staged rows write no
#      change rows). The rows get their final ids here, so ids are taken as they are staged.
#   3. One final job switches: the staged folders and documents move into the target workspace
#      (an UPDATE of workspace_id between two ids of one length, so SQLite overwrites each row in
#      place and leaves the markdown's overflow pages alone), their change rows, the attachment
#      rows and the audit row are written, and the empty staging row goes. Readers see none of
#      the import, then all of it.
# A failure before the switch (a refused read, the target workspace deleted meanwhile, a hook
# failing) removes the staged rows again, in short jobs; a process killed mid-import leaves a
# staging workspace with `purge_after` set, which the workspace purger removes like any other.
BATCH_ROWS = 500
BATCH_BYTES = 4 << 20
STAGING_TTL = 24 * 3600.0  # a staging workspace left by a crash is purged this long after its last batch


@dataclass
class _Staging:
    """What the import's jobs share: the staging workspace and the ids given so far."""

    staging_id: str
    workspace_id: str          # the target
    user_id: str | None
    positions: _Positions
    taken: set[str] = field(default_factory=set)
    folder_ids: dict[str, str] = field(default_factory=dict)   # folder path -> id
    doc_ids: dict[str, str] = field(default_factory=dict)      # document path -> id
    new_doc_ids: dict[str, str] = field(default_factory=dict)  # archive's document id -> the id it got here

    def pick(self, tx: Tx, wanted: str | None, table: str) -> str:
        """The archive's id when it is a UUID no row has (nor had: a purged document's id is
        retired for good), else a new one."""
        # table is "folders" or "documents", named by the two callers below
        if (archive.is_uuid(wanted) and wanted not in self.taken
                and tx.value(f"SELECT 1 FROM {table} WHERE id = ?", (wanted,)) is None
                and (table != "documents"
                     or tx.value("SELECT 1 FROM retired_documents WHERE id = ?", (wanted,)) is None)):
            self.taken.add(wanted)
            return wanted
        fresh = new_id()
        self.taken.add(fresh)
        return fresh


def _open_staging(tx: Tx, workspace_id: str, user_id: str | None) -> _Staging:
    if tx.value("SELECT 1 FROM workspaces WHERE id = ? AND deleted_at IS NULL", (workspace_id,)) is None:
        raise NotFound("no such workspace")
    staging_id, now = new_id(), clock.iso()
    tx.execute("INSERT INTO workspaces (id, name, slug, created_by, created_at, updated_at, deleted_at, purge_after)"
               " VALUES (?, 'import staging', ?, ?, ?, ?, ?, ?)",
               (staging_id, f"import-staging-{staging_id}", user_id, now, now, now, clock.iso_in(STAGING_TTL)))
    return _Staging(staging_id, workspace_id, user_id, _Positions(workspace_id))


def _still_staging(tx: Tx, st: _Staging) -> None:
    if tx.value("SELECT 1 FROM workspaces WHERE id = ? AND deleted_at IS NULL", (st.workspace_id,)) is None:
        raise NotFound("no such workspace")
    if not tx.execute("UPDATE workspaces SET purge_after = ? WHERE id = ?",
                      (clock.iso_in(STAGING_TTL), st.staging_id)).rowcount:
        raise RuntimeError("the import's staging workspace was purged")


def _stage_folders(tx: Tx, st: _Staging, folders: list[FolderPlan]) -> None:
    _still_staging(tx, st)
    now = clock.iso()
    for f in folders:
        parent_id = st.folder_ids[f.parent] if f.parent else None
        folder_id = st.pick(tx, f.id, "folders")
        st.folder_ids[f.path] = folder_id
        tx.execute("INSERT INTO folders (id, workspace_id, parent_id, name, position, created_by, created_at, updated_at)"
                   " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (folder_id, st.staging_id, parent_id, f.name, st.positions.take(tx, "folders", parent_id, f.position),
                    st.user_id, f.created_at or now, f.updated_at or f.created_at or now))


def _stage_documents(tx: Tx, st: _Staging, batch: list[tuple[DocumentPlan, str]],
                     hooks: Sequence[DocumentImported]) -> None:
    _still_staging(tx, st)
    now = clock.iso()
    for d, markdown in batch:
        folder_id = st.folder_ids[d.folder] if d.folder else None
        doc_id = st.pick(tx, d.id, "documents")
        st.doc_ids[d.path] = doc_id
        if d.id:
            st.new_doc_ids[d.id] = doc_id
        tx.execute("INSERT INTO documents (id, workspace_id, folder_id, title, kind, content_model, markdown, size,"
                   " position, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (doc_id, st.staging_id, folder_id, d.title, d.kind, d.content_model, markdown,
                    len(markdown.encode("utf-8")), st.positions.take(tx, "documents", folder_id, d.position),
                    st.user_id, d.created_at or now, d.updated_at or d.created_at or now))
        for hook in hooks:
            hook(tx, st.workspace_id, doc_id, st.user_id, d.manifest)


def _switch(tx: Tx, st: _Staging, plan: Plan, stored: dict[str, dict], linked_from: dict[str, str],
            via: str) -> dict:
    """The import's one visible moment (see above): staged rows into the workspace, all at once."""
    _still_staging(tx, st)
    ws = st.workspace_id
    tx.execute("UPDATE folders SET workspace_id = ? WHERE workspace_id = ?", (ws, st.staging_id))
    tx.execute("UPDATE documents SET workspace_id = ? WHERE workspace_id = ?", (ws, st.staging_id))
    tx.execute("DELETE FROM workspaces WHERE id = ?", (st.staging_id,))
    for f in plan.folders:
        changes.record(tx, ws, "folder", st.folder_ids[f.path], "upsert")
    for d in plan.documents:
        changes.record(tx, ws, "document", st.doc_ids[d.path], "upsert")

    from mdsync.attachments.service import insert_row  # the attachments feature's one insert

    for path, fields in stored.items():
        m = plan.attachment_manifest.get(path)
        if m is not None:  # an export says which document it belongs to (or none)
            document_id = st.new_doc_ids.get(m.get("document_id") or "")
        else:
            linking = linked_from.get(path)
            document_id = st.doc_ids[linking] if linking is not None else None
        insert_row(tx, ws, document_id, st.user_id, fields, created_at=(m or {}).get("created_at"))

    counts = {"documents": len(plan.documents), "folders": len(plan.folders), "attachments": len(stored)}
    audit.record(tx, "workspace.import", actor_id=st.user_id, target_type="workspace", target_id=ws,
                 workspace_id=ws, detail={**counts, "skipped": plan.skipped_total, "via": via})
    return counts


class _Reader:
    """Off the writer: the plan's documents read again (checked in the plan), their links to
    stored attachments rewritten, handed out a bounded batch at a time."""

    def __init__(self, plan: Plan, source, limits: Limits, stored: dict[str, dict]):
        self.plan, self.source, self.limits, self.stored = plan, source, limits, stored
        self.budget = _Budget(limits.max_bytes)
        self.next = 0
        self.by_name: dict[str, str] = {}  # Obsidian resolves `![[name]]` by file name (first path in order)
        for path in sorted(stored, key=lambda p: (p.count("/"), p)):
            self.by_name.setdefault(posixpath.basename(path), path)
            self.by_name.setdefault(posixpath.basename(path).casefold(), path)
        self.linked_from: dict[str, str] = {}  # attachment path -> the first document (path) linking to it

    def batch(self) -> list[tuple[DocumentPlan, str]]:
        out: list[tuple[DocumentPlan, str]] = []
        size = 0
        while self.next < len(self.plan.documents) and len(out) < BATCH_ROWS and size < BATCH_BYTES:
            d = self.plan.documents[self.next]
            self.next += 1
            markdown = _document(self.source, d.entry, self.budget, self.limits).markdown
            if self.stored:
                markdown = _link_attachments(markdown, d.folder or "", self.stored, self.by_name,
                                             self.linked_from, d.path)
            out.append((d, markdown))
            size += len(markdown)
        return out


async def write(db: Database, plan: Plan, source, workspace_id: str, user_id: str | None, limits: Limits,
                *, via: str = "api", attachments: dict[str, dict] | None = None,
                hooks: Sequence[DocumentImported] = ()) -> dict:
    """Create the plan's folders and documents (and the rows of the already stored `attachments`,
    {path: fields}) as described above, calling the `document_imported` hooks for each document;
    all or nothing. Returns the counts."""
    if attachments is None:
        for entry in plan.attachment_files:
            plan.skip(entry.path, "attachments are imported through the server's API, not by this command")
    stored = attachments or {}
    st = await db.write(_open_staging, workspace_id, user_id)
    try:
        for start in range(0, len(plan.folders), BATCH_ROWS):
            await db.write(_stage_folders, st, plan.folders[start:start + BATCH_ROWS])
        reader = _Reader(plan, source, limits, stored)
        for _ in range(len(plan.documents) + 1):  # each batch holds one document at least
            batch = await asyncio.to_thread(reader.batch)
            if not batch:
                break
            await db.write(_stage_documents, st, batch, hooks)
        return await db.write(_switch, st, plan, stored, reader.linked_from, via)
    except BaseException:
        await asyncio.shield(_discard(db, st.staging_id))
        raise


async def _discard(db: Database, staging_id: str) -> None:
    """Remove a failed import's staged rows (in short jobs) and its staging workspace."""
    from mdsync.workspaces.service import purge_documents_in_steps

    def drop(tx: Tx) -> None:
        tx.execute("DELETE FROM workspaces WHERE id = ?", (staging_id,))  # its folders cascade

    try:
        await purge_documents_in_steps(db, staging_id, None)
        await db.write(drop)
    except Exception:  # the workspace purger removes it later (its purge_after is set)
        log.exception("could not remove the staging rows of a failed import")


async def run(db: Database, files: Attachments, plan: Plan, source, workspace_id: str, user_id: str | None,
              limits: Limits, *, via: str = "api", hooks: Sequence[DocumentImported] = ()) -> dict:
    """The whole write side of an import, for the HTTP route and `mdsync import` alike: the
    attachment files into storage first, then the rows (`write`), or the stored files are
    removed again. Returns the counts."""
    from mdsync.transfer import attachments as transfer_attachments

    stored = await transfer_attachments.store(plan, source, files)
    try:
        return await write(db, plan, source, workspace_id, user_id, limits, via=via, attachments=stored,
                           hooks=hooks)
    except BaseException:
        await transfer_attachments.discard(files, stored)
        raise


def _link_attachments(markdown: str, directory: str, stored: dict[str, dict], by_name: dict[str, str],
                      linked_from: dict[str, str], document: str) -> str:
    """Links to files of the archive that became attachments → `/api/v1/attachments/{id}`;
    `linked_from` notes the first `document` (its path) linking to each."""
    def found(path: str) -> str:
        linked_from.setdefault(path, document)
        return f"/api/v1/attachments/{stored[path]['id']}"

    def link(path: str) -> str | None:
        if path in stored:
            return found(path)
        # Obsidian also writes links relative to the vault's root ("absolute path in vault") and
        # bare file names found anywhere in it ("shortest path when possible")
        raw = path[len(directory) + 1:] if directory and path.startswith(directory + "/") else path
        if raw in stored:
            return found(raw)
        return by_file_name(raw) if "/" not in raw else None

    def by_file_name(name: str) -> str | None:
        name = name.strip()
        if name in stored:
            return found(name)
        path = by_name.get(name) or by_name.get(posixpath.basename(name)) or by_name.get(name.casefold())
        return None if path is None else found(path)

    return archive.file_links(markdown, directory, resolve=link, resolve_name=by_file_name)


class _Positions:
    """Positions for items the archive gives none: after everything already in that parent
    (in the workspace, or given by the archive), in the plan's order (by name)."""

    def __init__(self, workspace_id: str):
        self.workspace_id = workspace_id
        self.next: dict[tuple[str, str | None], float] = {}

    def take(self, tx: Tx, table: str, parent: str | None, given: float | None) -> float:
        key = (table, parent)
        if key not in self.next:
            column = "parent_id" if table == "folders" else "folder_id"  # fixed names, not input
            highest = tx.value(f"SELECT max(position) FROM {table} WHERE workspace_id = ? AND {column} IS NOT DISTINCT FROM ?"
                               " AND deleted_at IS NULL", (self.workspace_id, parent))
            self.next[key] = -1.0 if highest is None else float(highest)
        if given is not None:
            self.next[key] = max(self.next[key], given)
            return given
        self.next[key] = math.floor(self.next[key]) + 1.0
        return self.next[key]

"""Export: a workspace as a zip of markdown (layout in archive.py), written while it is read.

`write_export(out, tx, workspace_id, read_markdown)` is the whole export. It runs in a thread:
it reads metadata from its own database connection (`open_snapshot`) inside ONE read transaction
(a consistent snapshot of the tree, however long the export takes: on SQLite a deferred read
transaction, on PostgreSQL a REPEATABLE READ, READ ONLY one), asks `read_markdown` for each document's
current markdown, and writes zip entries to `out`, a non-seekable writer (zipfile then uses data
descriptors), so nothing but one document's entry at a time is ever held, and what is read per
document (stored markdown, Yjs state, versions) is read for a batch of documents in one statement
(`BATCH`, `BATCH_BYTES`: a round trip per batch on PostgreSQL, not per document). `mdsync.json` is
written last, by a second pass over the same snapshot.

`stream_export` runs it for the HTTP route: the zip goes to the response chunk by chunk through
a small bounded pipe (the thread waits when the client reads slowly), and the markdown comes
from the app's content backend on the event loop (`app[CONTENT].markdown`, live text when a room is
loaded), a few documents ahead of the writer. `mdsync export` runs it with `stored_reader`,
which reads what the database holds (the Yjs state where there is one).

Attachments: given `read_file` (storage key -> chunks), each live attachment of the workspace is
streamed into `attachments/<id>/<name>` before the documents (one chunk in memory at a time), its
links in the markdown become relative paths to that file, and mdsync.json lists it. A file the
storage no longer holds is left out (and logged) rather than failing every export.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import threading
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from mdsync import clock
from mdsync.api.errors import NotFound
from mdsync.config import Settings
from mdsync.db import Tx, connect
from mdsync.transfer import archive

log = logging.getLogger("mdsync.transfer")

# One directory's documents at a time (the documents_workspace index finds them; SQLite sorts one
# folder's rows, never the whole workspace's). At the top level: documents in no folder, and any
# whose folder is not live (never left behind by the API, but never lost by an export either).
_DOC_COLUMNS = ("SELECT d.id, d.workspace_id, d.folder_id, d.title, d.kind, d.content_model, d.size, d.seq,"
                " d.position, d.created_by, d.created_at, d.updated_at, d.deleted_at,"
                " (EXISTS (SELECT 1 FROM doc_snapshots s WHERE s.document_id = d.id)"
                "  OR EXISTS (SELECT 1 FROM doc_updates u WHERE u.document_id = d.id)) AS has_state"
                " FROM documents d WHERE d.workspace_id = ? AND d.deleted_at IS NULL AND ")
DOCS_IN_FOLDER = _DOC_COLUMNS + "d.folder_id = ? ORDER BY d.position, d.title, d.id"
DOCS_AT_TOP = _DOC_COLUMNS + ("(d.folder_id IS NULL OR NOT EXISTS (SELECT 1 FROM folders f WHERE f.id = d.folder_id"
                              " AND f.workspace_id = d.workspace_id AND f.deleted_at IS NULL))"
                              " ORDER BY d.position, d.title, d.id")
# What is read per document — stored markdown, Yjs state, versions — is read for a batch of
# documents in one statement (on PostgreSQL each statement is a round trip): up to BATCH documents,
# and no more of their text (documents.size) or Yjs state than about BATCH_BYTES held at once. Small
# notes go 200 a statement; big ones, whose transfer outweighs a round trip, fewer. (The budget is
# what the export's flat memory allows: 1 MiB batches grew the server by ~3 MiB more in
# tests/test_export_import.py's 5 000-document export.)
BATCH = 200
BATCH_BYTES = 128 * 1024
CHUNK_BYTES = 256 * 1024
PIPE_DEPTH = 4          # chunks between the zip thread and the response: at most ~1 MiB in flight
READ_AHEAD = 16         # documents whose markdown is being read ahead of the zip writer
COMPRESS_LEVEL = 1      # deflate level: 2.4x faster than 6 for ~10% more bytes on markdown (bench/README.md)


@dataclass
class Placed:
    """A document and where it goes in the zip."""

    doc: dict
    directory: str    # "" or "A/B"
    path: str         # "A/B/Title.md"
    has_state: bool   # the document has Yjs state (it was opened or synced at least once)


# (placed documents) -> (placed, markdown), in the same order
MarkdownReader = Callable[[Iterable[Placed]], Iterator[tuple[Placed, str]]]


@dataclass
class ExportSummary:
    documents: int = 0
    folders: int = 0
    attachments: int = 0


class ExportCancelled(Exception):
    """The reader of the export went away."""


class WorkspaceGone(Exception):
    pass


def open_snapshot(settings: Settings) -> Tx:
    """A read-only connection of its own for one export (close it with `tx.conn.close()`);
    `write_export` holds its snapshot transaction."""
    if settings.database.url is None:
        conn = connect(settings.db_path, autocheckpoint=settings.replica.url is None)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("PRAGMA cache_size = -1024")  # a sequential read: 1 MiB of page cache is plenty
        return Tx(conn)
    from mdsync.db.postgres import PgTx
    from mdsync.db.postgres import connect as connect_pg

    return PgTx(connect_pg(settings.database.url, statement_timeout=settings.database.statement_timeout))


# one snapshot for the whole export; PostgreSQL's default READ COMMITTED would see each
# statement's own moment, so its transaction asks for REPEATABLE READ
_BEGIN_SNAPSHOT = {"sqlite": "BEGIN", "postgresql": "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"}


def count_documents(tx: Tx, workspace_id: str) -> int:
    return tx.value("SELECT count(*) FROM documents WHERE workspace_id = ? AND deleted_at IS NULL", (workspace_id,))


def _zip_time(iso: str | None) -> tuple[int, int, int, int, int, int]:
    try:
        moment = clock.parse(iso).astimezone(UTC)
    except (TypeError, ValueError):
        return (1980, 1, 1, 0, 0, 0)
    if moment.year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _entry(path: str, iso: str | None, directory: bool = False) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(path, _zip_time(iso))
    info.create_system = 3  # unix, so the permission bits below are honoured by unzip
    if directory:
        info.external_attr = (0o40755 << 16) | 0x10
        info.compress_type = zipfile.ZIP_STORED
    else:
        info.external_attr = 0o100644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        # a ZipInfo given to writestr/open keeps its own level (the ZipFile's is not applied)
        info._compresslevel = COMPRESS_LEVEL
    return info


def _folders(tx: Tx, workspace_id: str) -> tuple[list[Any], dict[str, archive.FolderPath]]:
    rows = tx.all("SELECT id, parent_id, name, position, created_at, updated_at FROM folders"
                  " WHERE workspace_id = ? AND deleted_at IS NULL", (workspace_id,))
    return rows, archive.place_folders(rows)


def _placed(tx: Tx, workspace_id: str, folders: dict[str, archive.FolderPath]) -> Iterator[Placed]:
    """Every live document with its path, directory by directory in a stable order; names are
    claimed per directory (subfolders first, then documents in order)."""
    namespace = archive.document_namespaces(folders)
    for folder_id in (None, *folders):
        space = namespace(folder_id)
        if folder_id is None:
            directory, rows = "", tx.execute(DOCS_AT_TOP, (workspace_id,))
        else:
            directory, rows = folders[folder_id].path, tx.execute(DOCS_IN_FOLDER, (workspace_id, folder_id))
        for row in rows:
            doc = {k: row[k] for k in row.keys() if k != "has_state"}
            name = space.claim(archive.safe_name(doc["title"]), ".md")
            yield Placed(doc, directory, f"{directory}/{name}" if directory else name, bool(row["has_state"]))


def _batches(items: Iterable[Any], weight: Callable[[Any], int]) -> Iterator[list[Any]]:
    """`items` in consecutive lists of at most BATCH, and of a total `weight` (bytes to be read
    for them) of at most BATCH_BYTES unless one item alone weighs more."""
    batch: list[Any] = []
    held = 0
    for item in items:
        heavy = weight(item)
        if batch and (len(batch) >= BATCH or held + heavy > BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append(item)
        held += heavy
    if batch:
        yield batch


def _marks(ids: list[str]) -> str:
    return ", ".join("?" * len(ids))


_VERSION_COLUMNS = ("id", "created_at", "kind", "label", "size")


def _versions(tx: Tx, doc_ids: list[str]) -> dict[str, list[dict]]:
    """{document id: its versions as listed in mdsync.json, oldest first (the API's order, read
    backwards)} for `doc_ids`, in one statement."""
    found: dict[str, list[dict]] = {doc_id: [] for doc_id in doc_ids}
    for row in tx.all(f"SELECT document_id, {', '.join(_VERSION_COLUMNS)} FROM versions"
                      f" WHERE document_id IN ({_marks(doc_ids)}) ORDER BY created_at, id", doc_ids):
        found[row[0]].append(dict(zip(_VERSION_COLUMNS, tuple(row)[1:], strict=True)))
    return found


def stored_markdown(tx: Tx, doc_id: str) -> str:
    markdown = tx.value("SELECT markdown FROM documents WHERE id = ?", (doc_id,))
    return "" if markdown is None else markdown


def stored_markdowns(tx: Tx, doc_ids: list[str]) -> dict[str, str]:
    """`stored_markdown` of each of `doc_ids`, in one statement."""
    if not doc_ids:
        return {}
    return {row[0]: row[1] for row in tx.all(f"SELECT id, markdown FROM documents WHERE id IN ({_marks(doc_ids)})",
                                               doc_ids)}


class _StoredBatch:
    """`stored_markdowns` of a batch of documents, read when the first of them is wanted (not when
    the batch enters the read-ahead: the text is held from the zip writer's need of it on), each
    given away once taken."""

    __slots__ = ("tx", "ids", "found")

    def __init__(self, tx: Tx, ids: list[str]):
        self.tx, self.ids, self.found = tx, ids, None

    def take(self, doc_id: str) -> str:
        if self.found is None:
            self.found = stored_markdowns(self.tx, self.ids)
        return self.found.pop(doc_id, "")


def _yjs_states(tx: Tx, doc_ids: list[str]) -> Iterator[dict[str, list[bytes]]]:
    """The Yjs state of `doc_ids` ({document id: its snapshot, then its updates in seq order}), in
    parts of `doc_ids` (in their order) of about BATCH_BYTES of state each: one statement for the
    sizes, one per part."""
    if not doc_ids:
        return
    marks = _marks(doc_ids)
    sizes = {row[0]: row[1] or 0 for row in tx.all(
        "SELECT document_id, sum(n) FROM ("
        f"SELECT document_id, length(state) AS n FROM doc_snapshots WHERE document_id IN ({marks})"
        f" UNION ALL SELECT document_id, length(data) FROM doc_updates WHERE document_id IN ({marks})"
        ") AS parts GROUP BY document_id", doc_ids + doc_ids)}
    for part in _batches(doc_ids, lambda doc_id: sizes.get(doc_id, 0)):
        marks = _marks(part)
        found: dict[str, list[bytes]] = {doc_id: [] for doc_id in part}
        for row in tx.all(
                f"SELECT 0 AS kind, document_id, 0 AS seq, state FROM doc_snapshots WHERE document_id IN ({marks})"
                f" UNION ALL SELECT 1, document_id, seq, data FROM doc_updates WHERE document_id IN ({marks})"
                " ORDER BY kind, seq", part + part):
            found[row[1]].append(row[3])
        yield found


# storage key -> the file's bytes, chunk by chunk
FileReader = Callable[[str], Iterator[bytes]]


def _attachment_rows(tx: Tx, workspace_id: str) -> list[Any]:
    return tx.all("SELECT id, name, document_id, content_type, size, sha256, storage_key, created_at"
                  " FROM attachments WHERE workspace_id = ? AND deleted_at IS NULL ORDER BY created_at, id",
                  (workspace_id,))


def _write_attachments(zf: zipfile.ZipFile, rows: list[Any], read_file: FileReader) -> list[dict]:
    """Each attachment's file into the zip; answers the manifest entries of those written."""
    written = []
    for row in rows:
        chunks = read_file(row["storage_key"])
        try:
            first = next(chunks, b"")
        except ExportCancelled:
            raise
        except Exception as exc:  # not in storage any more: leave it out, never fail every export
            log.warning("export: attachment %s is not in storage (%s); left out", row["id"], exc)
            continue
        path = archive.attachment_path(row["id"], row["name"])
        info = _entry(path, row["created_at"])
        if not (row["content_type"].startswith("text/") or row["content_type"] in ("application/json", "image/svg+xml")):
            info.compress_type = zipfile.ZIP_STORED  # images, PDFs, archives: compressed already
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(first)
            for chunk in chunks:
                f.write(chunk)
        written.append({"id": row["id"], "name": row["name"], "document_id": row["document_id"],
                        "content_type": row["content_type"], "size": row["size"], "sha256": row["sha256"],
                        "path": path, "created_at": row["created_at"]})
    return written


def write_export(out: Any, tx: Tx, workspace_id: str, read_markdown: MarkdownReader,
                 progress: Callable[[int], Any] | None = None, read_file: FileReader | None = None) -> ExportSummary:
    """Write the workspace's zip to `out` (anything with `write`; need not seek). Attachments
    are included when `read_file` is given."""
    summary = ExportSummary()
    tx.execute(_BEGIN_SNAPSHOT[tx.engine])  # one snapshot for both passes
    try:
        ws = tx.one("SELECT id, name, slug FROM workspaces WHERE id = ? AND deleted_at IS NULL", (workspace_id,))
        if ws is None:
            raise WorkspaceGone(workspace_id)
        folder_rows, folders = _folders(tx, workspace_id)
        by_id = {r["id"]: r for r in folder_rows}
        zf = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL,
                             allowZip64=True)
        try:
            for folder in folders.values():  # parents first
                zf.writestr(_entry(folder.path + "/", by_id[folder.id]["updated_at"], directory=True), b"")
                summary.folders += 1
            listed = ([] if read_file is None
                      else _write_attachments(zf, _attachment_rows(tx, workspace_id), read_file))
            attachments = {a["id"]: a["path"] for a in listed}  # attachment id -> path in the zip
            summary.attachments = len(listed)
            for placed, markdown in read_markdown(_placed(tx, workspace_id, folders)):
                doc = placed.doc
                body = archive.links_to_files(markdown, placed.directory, attachments)
                data = (archive.front_matter(doc) + body).encode("utf-8")
                zf.writestr(_entry(placed.path, doc["updated_at"]), data)
                summary.documents += 1
                if progress is not None:
                    progress(1)
            with zf.open(_entry(archive.MANIFEST, clock.iso()), "w", force_zip64=True) as manifest:
                _write_manifest(manifest, tx, ws, folder_rows, folders, listed)
        except BaseException:
            # never finish a zip that lacks entries (no central directory, also not from
            # ZipFile.__del__): whoever reads it must see it broken, not a smaller export
            zf.fp = None
            raise
        zf.close()
        return summary
    finally:
        tx.execute("ROLLBACK")


def _write_manifest(out: Any, tx: Tx, ws: Any, folder_rows: list[Any],
                    folders: dict[str, archive.FolderPath], attachments: list[dict] = ()) -> None:
    """mdsync.json, written piece by piece (one document's entry at a time)."""
    def put(text: str) -> None:
        out.write(text.encode("utf-8"))

    dumps = json.dumps
    head = {"format": archive.FORMAT, "version": archive.FORMAT_VERSION, "exported_at": clock.iso(),
            "workspace": {"id": ws["id"], "name": ws["name"], "slug": ws["slug"]}}
    put(dumps(head, ensure_ascii=False)[:-1])
    by_id = {r["id"]: r for r in folder_rows}
    put(',"folders":[')
    for n, f in enumerate(folders.values()):
        row = by_id[f.id]
        put(("," if n else "") + dumps({"id": f.id, "name": f.name, "parent_id": f.parent_id, "position": f.position,
                                        "path": f.path, "created_at": row["created_at"],
                                        "updated_at": row["updated_at"]}, ensure_ascii=False))
    put('],"documents":[')

    def entries() -> Iterator[tuple[str, str]]:
        """(document id, its entry as JSON text up to its versions): a batch of them is held while
        their versions are read, so each is kept as the short text it will be"""
        for placed in _placed(tx, ws["id"], folders):
            d = placed.doc
            yield d["id"], dumps({
                "id": d["id"], "title": d["title"], "folder_id": placed.doc["folder_id"] if placed.directory else None,
                "position": d["position"], "kind": d["kind"], "content_model": d["content_model"],
                "path": placed.path, "created_at": d["created_at"], "updated_at": d["updated_at"]},
                ensure_ascii=False)[:-1]

    n = 0
    for batch in _batches(entries(), lambda entry: 0):
        versions = _versions(tx, [doc_id for doc_id, _ in batch])
        for doc_id, entry in batch:
            put(("," if n else "") + entry + ', "versions": ' + dumps(versions[doc_id], ensure_ascii=False) + "}")
            n += 1
    put('],"attachments":[')
    for n, a in enumerate(attachments):
        put(("," if n else "") + dumps(a, ensure_ascii=False))
    # comments: threads with their anchors once the comments feature exists (format reserved)
    put('],"comments":[]}')


# -- markdown readers ----------------------------------------------------------------------------
def stored_reader(tx: Tx) -> MarkdownReader:
    """Offline (the CLI): a document's markdown from its Yjs state when it has one (updates
    are committed within 1 s, while the stored projection may trail a live room), else the stored
    markdown. A `tiptap` document's fragment is rendered as GET content renders it."""
    from pycrdt import Doc, Text

    from mdsync.collab.room import TEXT_NAME
    from mdsync.tiptap import yxml
    from mdsync.tiptap.render import render

    def from_state(placed: Placed) -> bool:
        return placed.has_state and placed.doc["content_model"] in ("text", "tiptap")

    def read_all(items: Iterable[Placed]) -> Iterator[tuple[Placed, str]]:
        for batch in _batches(items, lambda placed: 0 if from_state(placed) else placed.doc["size"]):
            stored = stored_markdowns(tx, [placed.doc["id"] for placed in batch if not from_state(placed)])
            states = _yjs_states(tx, [placed.doc["id"] for placed in batch if from_state(placed)])
            part: dict[str, list[bytes]] = {}
            for placed in batch:
                doc_id = placed.doc["id"]
                if not from_state(placed):
                    yield placed, stored.get(doc_id, "")
                    continue
                if doc_id not in part:
                    part = next(states)   # the next part of the batch's states holds it
                markdown = None
                if part[doc_id]:
                    ydoc = Doc()
                    for update in part.pop(doc_id):
                        ydoc.apply_update(update)
                    if placed.doc["content_model"] == "text":
                        markdown = str(ydoc.get(TEXT_NAME, type=Text))
                    else:
                        markdown = render(yxml.read_blocks(yxml.fragment(ydoc)))
                yield placed, markdown if markdown is not None else stored_markdown(tx, doc_id)

    return read_all


def loop_reader(loop: asyncio.AbstractEventLoop, content: Any, tx: Tx,
                stop: threading.Event) -> MarkdownReader:
    """In the export thread: the markdown of each document that has Yjs state comes from the
    content backend on the event loop (`content.markdown(doc)`: the live text when its room is
    loaded), READ_AHEAD documents ahead.
    A document without Yjs state was never opened: its stored markdown IS its content (a room
    would be seeded from it), so it is read from the snapshot and no room is loaded for it.
    A document deleted since the snapshot was taken is exported as the snapshot holds it, so
    mdsync.json and the files agree."""

    def wait(placed: Placed, future, stored: _StoredBatch | None) -> tuple[Placed, str]:
        if future is None:
            return placed, stored.take(placed.doc["id"])
        while True:
            try:
                return placed, future.result(timeout=0.5)
            except TimeoutError:
                if stop.is_set():
                    future.cancel()
                    raise ExportCancelled() from None
            except NotFound:
                return placed, stored_markdown(tx, placed.doc["id"])

    read = content.markdown
    def read_all(items: Iterable[Placed]) -> Iterator[tuple[Placed, str]]:
        pending: deque = deque()
        for batch in _batches(items, lambda placed: 0 if placed.has_state else placed.doc["size"]):
            stored = _StoredBatch(tx, [placed.doc["id"] for placed in batch if not placed.has_state])
            for placed in batch:
                if stop.is_set():
                    raise ExportCancelled()
                future = asyncio.run_coroutine_threadsafe(read(placed.doc), loop) if placed.has_state else None
                pending.append((placed, future, None if placed.has_state else stored))
                if len(pending) >= READ_AHEAD:
                    yield wait(*pending.popleft())
        while pending:
            yield wait(*pending.popleft())

    return read_all


# -- streaming to an HTTP response ------------------------------------------------------------------
class _ChunkSink(io.RawIOBase):
    """The non-seekable file the zip is written to: hands out chunks of CHUNK_BYTES."""

    def __init__(self, emit: Callable[[bytes], None]):
        super().__init__()
        self.emit = emit
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.buffer += data
        if len(self.buffer) >= CHUNK_BYTES:
            self.emit(bytes(self.buffer))
            self.buffer.clear()
        return len(data)

    def drain(self) -> None:
        if self.buffer:
            self.emit(bytes(self.buffer))
            self.buffer.clear()


@dataclass
class _End:
    error: BaseException | None = None


class _Pipe:
    """Chunks from the export thread to the event loop; at most PIPE_DEPTH waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.slots = threading.Semaphore(PIPE_DEPTH)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.stop = threading.Event()

    def put(self, chunk: bytes) -> None:  # export thread
        while not self.slots.acquire(timeout=0.5):
            if self.stop.is_set():
                raise ExportCancelled()
        if self.stop.is_set():
            raise ExportCancelled()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)

    def end(self, error: BaseException | None = None) -> None:  # export thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, _End(error))

    async def get(self) -> bytes | _End:  # event loop
        item = await self.queue.get()
        if not isinstance(item, _End):
            self.slots.release()
        return item


async def stream_export(write: Callable[[bytes], Any], settings: Settings, workspace_id: str, content: Any,
                        storage: Any = None) -> None:
    """Run the export in its own thread and `await write(chunk)` each chunk on the loop. Raises
    whatever stopped the export; stops the thread if the caller is cancelled."""
    loop = asyncio.get_running_loop()
    pipe = _Pipe(loop)

    def work() -> None:
        try:
            tx = open_snapshot(settings)
        except BaseException as exc:
            pipe.end(exc)
            return
        try:
            sink = _ChunkSink(pipe.put)
            read_file = None
            if storage is not None:
                from mdsync.transfer.attachments import loop_file_reader
                read_file = loop_file_reader(loop, storage, pipe.stop)
            write_export(sink, tx, workspace_id, loop_reader(loop, content, tx, pipe.stop), read_file=read_file)
            sink.drain()
            pipe.end()
        except BaseException as exc:  # the loop side re-raises it
            pipe.end(exc)
        finally:
            tx.conn.close()

    thread = threading.Thread(target=work, name="mdsync-export", daemon=True)
    thread.start()
    sent, finished = 0, False
    try:
        while True:
            item = await pipe.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                finished = True
                return
            await write(item)
            sent += len(item)
    finally:
        pipe.stop.set()  # the thread notices within 0.5 s, rolls back its snapshot and ends
        if not finished:
            log.info("export of workspace %s stopped after %d bytes: the client went away or it failed",
                     workspace_id, sent)

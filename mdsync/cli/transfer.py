"""`mdsync export` and `mdsync import`: a workspace to and from a zip of markdown (the work is
in mdsync/transfer; the import runs the same `importer.run` as the HTTP route)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from pathlib import Path

import click

from mdsync import config
from mdsync.api.errors import ApiError
from mdsync.cli.datadir import fail, offline, reading, settings_options, workspace_or_fail
from mdsync.transfer import export, importer


@click.command("export")
@click.option("--workspace", "workspace", required=True, help="the workspace (id or slug)")
@click.argument("out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@settings_options
def export_command(workspace, out, settings) -> None:
    """Write a workspace as a zip of markdown: folders as directories, documents as .md with
    front matter, mdsync.json. OUT "-" writes the zip to stdout."""
    with reading(settings) as tx:
        ws = workspace_or_fail(tx, workspace, deleted=False)
        total = export.count_documents(tx, ws["id"])
        to_stdout = str(out) == "-"
        partial = None if to_stdout else out.with_name(out.name + ".partial")
        target = sys.stdout.buffer if to_stdout else open(partial, "wb")
        try:
            with click.progressbar(length=total, label=f"exporting {ws['name']}", file=sys.stderr,
                                   show_pos=True) as bar, _storage_reader(settings) as read_file:
                summary = export.write_export(target, tx, ws["id"], export.stored_reader(tx), bar.update,
                                              read_file=read_file)
            if not to_stdout:
                target.close()
                partial.replace(out)
        except BaseException:
            if not to_stdout:
                target.close()
                partial.unlink(missing_ok=True)
            raise
    click.echo(f"exported {summary.documents} documents, {summary.folders} folders and {summary.attachments} "
               f"attachments of {ws['name']} to {out}", err=to_stdout)


@click.command("import")
@click.option("--workspace", "workspace", required=True, help="the workspace (id or slug) to import into")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@settings_options
def import_command(workspace, source, settings) -> None:
    """Import a zip (an mdsync export, or any zip of .md files) or a folder of .md files (an
    Obsidian-style vault) into a workspace. All or nothing: a refused import writes nothing.
    Beside a running server, send big imports through the API instead: this command holds the
    database's write lock while it writes, and the server's writes wait at most 5 s for it."""
    limits = importer.Limits(settings.limits.max_import_bytes, settings.limits.max_document_bytes)
    handle = None
    try:
        if source.is_dir():
            src = importer.DirectorySource(source)
        else:
            handle = open(source, "rb")
            src = importer.ZipSource(handle)
        plan = importer.plan(src, limits)
        ws = offline(settings, lambda tx: workspace_or_fail(tx, workspace, deleted=False))
        counts = asyncio.run(_run_import(settings, ws["id"], plan, src, limits))
    except importer.ImportRefused as exc:
        fail(f"nothing was imported: {exc}")
    finally:
        if handle is not None:
            handle.close()
    click.echo(f"imported {counts['documents']} documents, {counts['folders']} folders and "
               f"{counts['attachments']} attachments into {ws['name']}")
    if plan.skipped_total:
        click.echo(f"skipped {plan.skipped_total} files:", err=True)
        for item in plan.skipped:
            click.echo(f"  {item['path']}: {item['reason']}", err=True)


@contextlib.contextmanager
def _storage_reader(settings):
    """Read attachment files for an export from the configured storage. Its client is async, so
    it lives on an event loop in a thread of its own, as the server's lives on the server's loop."""
    from mdsync.attachments.storage import open_storage
    from mdsync.transfer.attachments import loop_file_reader

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mdsync-export-storage", daemon=True)
    thread.start()
    storage = open_storage(settings)
    try:
        yield loop_file_reader(loop, storage, threading.Event())
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(storage.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def _run_import(settings, workspace_id: str, plan, src, limits) -> dict:
    """The API's import path (`importer.run`) against the data dir, with a database and an
    attachment store of its own."""
    from mdsync.attachments.service import Attachments
    from mdsync.attachments.signing import Signer
    from mdsync.attachments.storage import open_storage
    from mdsync.db import database_for

    db = database_for(settings, readers=1)
    await db.open()
    storage = open_storage(settings)
    try:
        files = Attachments(db, settings, storage, Signer(config.ensure_secret(settings), settings.public_url,
                                                          settings.storage.signed_url_ttl))
        return await importer.run(db, files, plan, src, workspace_id, None, limits, via="cli")
    except ApiError as exc:
        fail(exc.detail)
    finally:
        await storage.close()
        await db.close()

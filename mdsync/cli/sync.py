"""`mdsync sync DIR`: keep a folder of .md files in two-way sync with a workspace (the work is in
mdsync/syncclient; docs/sync.md). The token comes from MDSYNC_TOKEN or --token-file, never from
the command line, and is never written into DIR. Exit codes: 0 in sync, 1 some items failed
(each named), 2 wrong usage or DIR bound to another server or workspace, 3 token refused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from mdsync.syncclient.engine import Refused, UsageError, sync_once
from mdsync.syncclient.http import HttpError
from mdsync.syncclient.report import Report
from mdsync.syncclient.watch import watch as watch_loop

TOKEN_ENV = "MDSYNC_TOKEN"


def _token(token_file: Path | None) -> str:
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.UsageError(f"--token-file: {exc.strerror or exc}") from None
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise click.UsageError(f"a personal access token is needed: set {TOKEN_ENV} or give --token-file")
    return token


@click.command("sync")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--server", help="the server's base URL (kept in DIR/.mdsync after the first sync)")
@click.option("--workspace", help="the workspace: id, slug or name (kept in DIR/.mdsync after the first sync)")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"read the personal access token from this file (else ${TOKEN_ENV})")
@click.option("--watch", is_flag=True, help="keep syncing until SIGINT/SIGTERM (saves pushed when quiet, remote edits pulled as they come)")
@click.option("--dry-run", is_flag=True, help="print what would be done, change nothing")
@click.option("-q", "--quiet", is_flag=True, help="print only failures")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per action")
def sync(directory: Path, server, workspace, token_file, watch, dry_run, quiet, as_json) -> None:
    """Sync DIR, a folder of .md files, with a workspace both ways: one pass. Local edits are
    merged with remote ones by CRDT (no conflict copies); deletes go to the trash (a remote one
    leaves a copy in DIR/.mdsync/trash/). One pass, or with --watch until SIGINT/SIGTERM."""
    token = _token(token_file)
    if watch and dry_run:
        raise click.UsageError("--watch and --dry-run do not go together")
    if directory.exists() and not directory.is_dir():
        raise click.UsageError(f"{directory} is not a directory")
    if not dry_run:
        directory.mkdir(parents=True, exist_ok=True)
    report = Report(quiet=quiet, as_json=as_json, dry_run=dry_run, progress=sys.stderr.isatty())
    try:
        if watch:
            code = watch_loop(directory.resolve(), server, workspace, token, report)
        else:
            code = sync_once(directory.resolve(), server, workspace, token, report, dry_run=dry_run)
    except UsageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Refused as exc:
        click.echo(f"error: {exc}; the files in {directory} are kept", err=True)
        sys.exit(3)
    except HttpError as exc:  # the pass could not go on (the server unreachable after retries)
        click.echo(f"error: {exc}; the pass stopped, the next one resumes it", err=True)
        sys.exit(1)
    if report.failed:
        click.echo(f"{len(report.failed)} item(s) not synced: " + ", ".join(report.failed), err=True)
    sys.exit(code)

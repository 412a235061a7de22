"""`mdsync versions prune`: thin old automatic versions (versions/service.py `prune`)."""

from __future__ import annotations

import click

from mdsync.cli.datadir import offline, settings_options


@click.group()
def versions() -> None:
    """Version history maintenance."""


@versions.command("prune")
@click.option("--dry-run", is_flag=True, help="only print what would be removed")
@settings_options
def versions_prune(dry_run, settings) -> None:
    """Thin old automatic versions (all of the last 24 h, one per hour for 7 days, then one per
    day; named, restore and import versions are kept). Prints every version removed."""
    from mdsync import clock
    from mdsync.versions.service import prune

    removed = offline(settings, prune, clock.now(), dry_run)
    verb = "would remove" if dry_run else "removed"
    for row in removed:
        click.echo(f"{verb} {row['id']}\tdocument {row['document_id']}\t{row['created_at']}")
    click.echo(f"{verb} {len(removed)} automatic version{'s' if len(removed) != 1 else ''}"
               if removed else "nothing to prune")

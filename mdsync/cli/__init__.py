"""The `mdsync` command: serve, migrate, and the admin commands, one module per command group.

- `serve.py`       serve, migrate
- `users.py`       users create / list / disable / enable / reset-password / set-admin / delete /
                   setup-token
- `workspaces.py`  workspaces list / create / add-member / remove-member
- `ops.py`         backup, restore, doctor, migrate-db (SQLite → PostgreSQL)
- `transfer.py`    export, import
- `versions.py`    versions prune
- `sync.py`        sync DIR: a folder of .md files in two-way sync with a workspace (a client of
                   the HTTP API, not of the data dir: exit 3 when its token is refused)
- `datadir.py`     what they share: --config/--data-dir, running a job on the database, finding
                   the user or workspace named on the command line

Admin commands work on the data dir directly (also while a server runs on it) and call the same
service functions as the HTTP routes. Exit codes: 0 done, 1 refused or failed (the message says
why), 2 wrong usage.
"""

from __future__ import annotations

import click

from mdsync.cli import ops, serve, sync, transfer, users, versions, workspaces


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdsync")
def main() -> None:
    """mdsync: the self-hosted backend of a collaborative markdown editor."""


for command in (serve.serve, serve.migrate, users.users, ops.backup, ops.restore, ops.doctor, ops.migrate_db,
                workspaces.workspaces, transfer.export_command, transfer.import_command, versions.versions,
                sync.sync):
    main.add_command(command)

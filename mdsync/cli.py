"""The `mdsync` command: serve, migrate, and the admin commands (users, …).

Admin commands work on the data dir directly (also while a server runs on it). Exit codes:
0 done, 1 refused or failed (the message says why), 2 wrong usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
from pathlib import Path

import click

from mdsync import audit, config
from mdsync.auth import store as user_store
from mdsync.auth.passwords import Passwords
from mdsync.db import run_offline
from mdsync.db.migrate import SchemaTooNew


def settings_options(fn):
    """--config and --data-dir, shared by every command that touches a data dir."""

    @click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                  help="config.toml to read (default: $MDSYNC_CONFIG, else built-in defaults)")
    @click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="data directory (overrides server.data_dir)")
    @functools.wraps(fn)
    def wrapper(*args, config_file=None, data_dir=None, **kwargs):
        kwargs["settings"] = load_settings(config_file, {"server.data_dir": data_dir})
        return fn(*args, **kwargs)

    return wrapper


def load_settings(config_file, overrides) -> config.Settings:
    try:
        return config.load(config_file, overrides=overrides)
    except config.ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def fail(message: str) -> None:
    raise click.ClickException(message)


def offline(settings: config.Settings, fn, *args):
    try:
        return run_offline(settings.db_path, fn, *args, autocheckpoint=settings.replica.url is None)
    except SchemaTooNew as exc:
        fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdsync")
def main() -> None:
    """mdsync: the self-hosted backend of a collaborative markdown editor."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="config.toml to read (default: $MDSYNC_CONFIG, else built-in defaults)")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="data directory (overrides server.data_dir)")
@click.option("--host", default=None, help="bind address (overrides server.host)")
@click.option("--port", type=int, default=None, help="bind port (overrides server.port; 0 picks a free one)")
def serve(config_file, data_dir, host, port) -> None:
    """Run the server until SIGTERM or Ctrl-C."""
    from mdsync.serve import run

    settings = load_settings(config_file, {"server.data_dir": data_dir, "server.host": host, "server.port": port})
    try:
        run(settings)
    except SchemaTooNew as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")


@main.command()
@settings_options
def migrate(settings) -> None:
    """Apply pending database migrations and exit."""
    from mdsync.db import connect
    from mdsync.db.migrate import apply_migrations

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.server.backup_before_migrate:
        from mdsync.ops.backup import backup_before_migrate

        saved = backup_before_migrate(settings, _progress)
        if saved:
            click.echo(f"backed up the database before migrating: {saved}")
    conn = connect(settings.db_path, autocheckpoint=settings.replica.url is None)
    try:
        done = apply_migrations(conn)
    except SchemaTooNew as exc:
        fail(str(exc))
    finally:
        conn.close()
    if done:
        for m in done:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("the database is up to date")


# -- users ---------------------------------------------------------------------------------------
@main.group()
def users() -> None:
    """Create, list, disable and manage user accounts."""


def read_password(password_stdin: bool, min_length: int) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        fail("no terminal to ask for a password: pipe it with --password-stdin")
    if len(password) < min_length:
        fail(f"the password must be at least {min_length} characters")
    return password


def _user_or_fail(tx, email: str):
    user = user_store.user_by_email_tx(tx, email.strip().lower())
    if user is None:
        raise click.ClickException(f"no user with email {email}")
    return user


def _hasher(settings: config.Settings) -> Passwords:
    a = settings.auth
    return Passwords(a.argon2_time_cost, a.argon2_memory_cost, a.argon2_parallelism)


@users.command("create")
@click.argument("email")
@click.option("--name", default=None, help="display name (default: the part of the email before @)")
@click.option("--admin", is_flag=True, help="make the user a server admin")
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of stdin")
@settings_options
def users_create(email, name, admin, password_stdin, settings) -> None:
    """Create a user account."""
    from mdsync.api.models import Email, Name
    from pydantic import TypeAdapter, ValidationError

    # the same rules as the API's, so the CLI cannot create an account the API would refuse
    try:
        email = TypeAdapter(Email).validate_python(email)
    except ValidationError as exc:
        fail(f"{email!r} is not an email address ({exc.errors()[0]['msg']})")
    try:
        name = TypeAdapter(Name).validate_python(name or email.split("@")[0])
    except ValidationError as exc:
        fail(f"the name is not valid: {exc.errors()[0]['msg']} (1-500 characters, no control characters)")
    password = read_password(password_stdin, settings.auth.password_min_length)
    password_hash = _hasher(settings).hash_sync(password)

    def create(tx):
        try:
            user = user_store.insert_user(tx, email, name, password_hash, is_admin=admin)
        except user_store.EmailTaken:
            raise click.ClickException(f"a user with email {email} already exists") from None
        audit.record(tx, "admin.user_create", target_type="user", target_id=user["id"],
                     detail={"via": "cli", "admin": admin})
        return user

    user = offline(settings, create)
    click.echo(f"created {'admin ' if admin else ''}user {user['email']} ({user['id']})")


@users.command("list")
@settings_options
def users_list(settings) -> None:
    """List every user, one per line."""
    rows = offline(settings, user_store.list_users)
    if not rows:
        click.echo("no users yet: mdsync users create EMAIL --admin")
    for row in rows:
        flags = [f for f, on in (("admin", row["is_admin"]), ("disabled", row["disabled_at"])) if on]
        click.echo(f"{row['email']}\t{row['name']}\t{','.join(flags) or '-'}\t{row['created_at']}\t{row['id']}")


def _set_disabled(settings, email: str, disabled: bool) -> None:
    from mdsync import clock

    def change(tx):
        user = _user_or_fail(tx, email)
        user_store.update_user(tx, user["id"], disabled_at=clock.iso() if disabled else None)
        if disabled:
            user_store.revoke_sessions_of(tx, user["id"])
        audit.record(tx, "admin.user_disable" if disabled else "admin.user_enable", target_type="user",
                     target_id=user["id"], detail={"via": "cli"})

    offline(settings, change)
    click.echo(f"{'disabled' if disabled else 'enabled'} {email}")


@users.command("disable")
@click.argument("email")
@settings_options
def users_disable(email, settings) -> None:
    """Disable a user: sign-in refused, sessions ended."""
    _set_disabled(settings, email, True)


@users.command("enable")
@click.argument("email")
@settings_options
def users_enable(email, settings) -> None:
    """Enable a disabled user again."""
    _set_disabled(settings, email, False)


@users.command("reset-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="read the new password from the first line of stdin")
@settings_options
def users_reset_password(email, password_stdin, settings) -> None:
    """Set a new password; the user's sessions are signed out."""
    password = read_password(password_stdin, settings.auth.password_min_length)
    password_hash = _hasher(settings).hash_sync(password)

    def reset(tx):
        user = _user_or_fail(tx, email)
        user_store.update_user(tx, user["id"], password_hash=password_hash)
        user_store.revoke_sessions_of(tx, user["id"])
        audit.record(tx, "admin.password_reset", target_type="user", target_id=user["id"], detail={"via": "cli"})

    offline(settings, reset)
    click.echo(f"password of {email} reset; their sessions were signed out")


@users.command("set-admin")
@click.argument("email")
@click.option("--revoke", is_flag=True, help="take server admin rights away instead")
@settings_options
def users_set_admin(email, revoke, settings) -> None:
    """Grant (or with --revoke, take away) server admin rights."""
    def change(tx):
        user = _user_or_fail(tx, email)
        user_store.update_user(tx, user["id"], is_admin=0 if revoke else 1)
        audit.record(tx, "admin.set_admin", target_type="user", target_id=user["id"],
                     detail={"via": "cli", "admin": not revoke})

    offline(settings, change)
    click.echo(f"{email} is {'no longer' if revoke else 'now'} a server admin")


@users.command("delete")
@click.argument("email")
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@settings_options
def users_delete(email, yes, settings) -> None:
    """Delete a user and their sessions and tokens."""
    if not yes:
        if not sys.stdin.isatty():
            fail("refusing to delete without confirmation: add --yes")
        click.confirm(f"Delete {email} for good?", abort=True)

    def delete(tx):
        user = _user_or_fail(tx, email)
        for check in USER_DELETE_CHECKS:
            check(tx, user["id"])
        user_store.delete_user(tx, user["id"])
        audit.record(tx, "admin.user_delete", target_type="user", target_id=user["id"],
                     detail={"via": "cli", "email": user["email"]})

    offline(settings, delete)
    click.echo(f"deleted {email}")


# Features add checks that refuse a deletion (e.g. the last owner of a workspace): fn(tx, user_id),
# raising click.ClickException with the reason.
USER_DELETE_CHECKS: list = []


# -- backups, restore, doctor (mdsync/ops) ------------------------------------------------------
def _progress(message: str) -> None:
    click.echo(message, err=True)


@main.command()
@click.option("--to", "dest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="backup file to write (a tar; .tar.gz / .tgz compresses it)")
@settings_options
def backup(dest, settings) -> None:
    """Write a consistent backup (database + attachments) while the server keeps running."""
    from mdsync.ops.backup import BackupError, create_backup

    try:
        manifest = create_backup(settings, dest, _progress)
    except BackupError as exc:
        fail(str(exc))
    click.echo(f"backup written to {manifest['path']}: {manifest['bytes'] // 1024} KiB, schema "
               f"{manifest['schema_version']}, {manifest['files']['count']} attachments, {manifest['seconds']:.1f} s")


@main.command()
@click.option("--from-replica", is_flag=True, help="restore from the litestream replica (replica.url)")
@click.option("--from-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="restore from a file written by `mdsync backup`")
@click.option("--timestamp", default=None, help="with --from-replica: the state as of this time (RFC 3339)")
@click.option("--force", is_flag=True, help="replace the database in a data dir that has one (it is moved aside)")
@settings_options
def restore(from_replica, from_file, timestamp, force, settings) -> None:
    """Restore a data dir from the replica or a backup file, then verify it (as `mdsync doctor`)."""
    from mdsync.ops import doctor
    from mdsync.ops.restore import RestoreError, restore as run_restore

    try:
        result = run_restore(settings, from_replica=from_replica, from_file=from_file, timestamp=timestamp,
                             force=force, progress=_progress)
    except RestoreError as exc:
        fail(str(exc))
    click.echo(f"restored {settings.db_path} from {result['source']} (schema {result['schema_version']})")
    if result["moved_aside"]:
        click.echo(f"the data it replaced is in {result['moved_aside']}")
    checks = doctor.run(settings)
    for check in checks:
        click.echo(check.line())
    if any(c.status == "FAIL" for c in checks):
        fail("the restored data dir does not pass every check (see FAIL above)")


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="config.toml to read (default: $MDSYNC_CONFIG, else built-in defaults)")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="data directory (overrides server.data_dir)")
def doctor(config_file, data_dir) -> None:
    """Check config, database, migrations, disk, storage, replica and clock: PASS/FAIL lines."""
    from mdsync.ops import doctor as checks_module

    try:
        settings = config.load(config_file, overrides={"server.data_dir": data_dir})
    except config.ConfigError as exc:
        click.echo(checks_module.Check("config", "FAIL", str(exc)).line())
        sys.exit(1)
    checks = checks_module.run(settings)
    for check in checks:
        click.echo(check.line())
    failed = [c.name for c in checks if c.status == "FAIL"]
    if failed:
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        sys.exit(1)
    click.echo("all checks passed")


# -- workspaces (mdsync/workspaces) -------------------------------------------------------------
def _refuse_sole_owner(tx, user_id: str) -> None:
    from mdsync.workspaces.service import sole_owner_workspaces

    owned = sole_owner_workspaces(tx, user_id)
    if owned:
        names = ", ".join(f"{row['name']} ({row['id']})" for row in owned)
        raise click.ClickException(f"this user is the only owner of: {names}; make someone else owner "
                                   "(mdsync workspaces add-member WS EMAIL --role owner) or delete the workspace first")


USER_DELETE_CHECKS.append(_refuse_sole_owner)


@main.group()
def workspaces() -> None:
    """List and create workspaces, add and remove members."""


def _workspace_or_fail(tx, ref: str):
    row = tx.one("SELECT * FROM workspaces WHERE id = ? OR slug = ?", (ref, ref))
    if row is None:
        raise click.ClickException(f"no workspace with id or slug {ref}")
    return row


def _offline_api(settings, fn, *args):
    """Run a write job whose refusals are API errors (409 last owner, ...) as a CLI failure."""
    from mdsync.api.errors import ApiError

    try:
        return offline(settings, fn, *args)
    except ApiError as exc:
        fail(exc.detail)


@workspaces.command("list")
@settings_options
def workspaces_list(settings) -> None:
    """List every workspace: id, slug, name, members, owners (one per line)."""
    def read(tx):
        return tx.all(
            "SELECT w.id, w.slug, w.name, w.deleted_at, count(m.user_id) AS members,"
            " group_concat(CASE WHEN m.role = 'owner' THEN u.email END, ',') AS owners"
            " FROM workspaces w LEFT JOIN members m ON m.workspace_id = w.id LEFT JOIN users u ON u.id = m.user_id"
            " GROUP BY w.id ORDER BY w.name, w.id")

    rows = offline(settings, read)
    if not rows:
        click.echo("no workspaces yet: mdsync workspaces create NAME --owner EMAIL")
    for row in rows:
        state = f"deleted {row['deleted_at']}" if row["deleted_at"] else "-"
        click.echo(f"{row['id']}\t{row['slug']}\t{row['name']}\t{row['members']} members\t"
                   f"owners: {row['owners'] or '-'}\t{state}")


@workspaces.command("create")
@click.argument("name")
@click.option("--owner", "owner_email", required=True, help="email of the user who will own it")
@settings_options
def workspaces_create(name, owner_email, settings) -> None:
    """Create a workspace owned by an existing user."""
    from mdsync.workspaces.service import insert_workspace

    name = name.strip()
    if not 1 <= len(name) <= 500:
        fail("the name must be 1-500 characters")

    def create(tx):
        owner = _user_or_fail(tx, owner_email)
        return insert_workspace(tx, name, owner["id"])

    row = _offline_api(settings, create)
    click.echo(f"created workspace {row['name']} ({row['id']}, slug {row['slug']}) owned by {owner_email}")


@workspaces.command("add-member")
@click.argument("workspace")
@click.argument("email")
@click.option("--role", type=click.Choice(["viewer", "commenter", "editor", "admin", "owner"]), default="editor",
              show_default=True, help="their role (an existing member gets this role instead)")
@settings_options
def workspaces_add_member(workspace, email, role, settings) -> None:
    """Add a user to a workspace (by id or slug), or change an existing member's role."""
    from mdsync.workspaces.service import add_member, member_role, set_role

    def add(tx):
        ws = _workspace_or_fail(tx, workspace)
        user = _user_or_fail(tx, email)
        if member_role(tx, ws["id"], user["id"]) is None:
            add_member(tx, ws["id"], user["id"], role, actor_id=None, via="cli")
            return "added"
        set_role(tx, ws["id"], user["id"], role, actor_id=None)
        return "changed"

    done = _offline_api(settings, add)
    click.echo(f"{'added' if done == 'added' else 'set the role of'} {email} {'as' if done == 'added' else 'to'} {role}")


@workspaces.command("remove-member")
@click.argument("workspace")
@click.argument("email")
@settings_options
def workspaces_remove_member(workspace, email, settings) -> None:
    """Remove a user from a workspace (refused for its only owner)."""
    from mdsync.workspaces.service import remove_member

    def remove(tx):
        ws = _workspace_or_fail(tx, workspace)
        user = _user_or_fail(tx, email)
        remove_member(tx, ws["id"], user["id"], actor_id=None)

    _offline_api(settings, remove)
    click.echo(f"removed {email} from {workspace}")


# -- export / import (mdsync/transfer) ----------------------------------------------------------
def _export_target(tx, ref: str):
    row = tx.execute("SELECT id, slug, name FROM workspaces WHERE (id = ? OR slug = ?) AND deleted_at IS NULL",
                     (ref, ref)).fetchone()
    if row is None:
        raise click.ClickException(f"no workspace with id or slug {ref}")
    return row


@main.command("export")
@click.option("--workspace", "workspace", required=True, help="the workspace (id or slug)")
@click.argument("out", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@settings_options
def export_command(workspace, out, settings) -> None:
    """Write a workspace as a zip of markdown: folders as directories, documents as .md with
    front matter, mdsync.json. OUT "-" writes the zip to stdout."""
    from mdsync.db import connect
    from mdsync.transfer import export

    if not settings.db_path.exists():
        fail(f"no database at {settings.db_path}")
    conn = connect(settings.db_path, autocheckpoint=settings.replica.url is None)
    try:
        conn.execute("PRAGMA query_only = ON")
        ws = _export_target(conn, workspace)
        total = export.count_documents(conn, ws["id"])
        to_stdout = str(out) == "-"
        partial = None if to_stdout else out.with_name(out.name + ".partial")
        target = sys.stdout.buffer if to_stdout else open(partial, "wb")
        try:
            with click.progressbar(length=total, label=f"exporting {ws['name']}", file=sys.stderr,
                                   show_pos=True) as bar, _storage_reader(settings) as read_file:
                summary = export.write_export(target, conn, ws["id"], export.stored_reader(conn), bar.update,
                                              read_file=read_file)
            if not to_stdout:
                target.close()
                partial.replace(out)
        except BaseException:
            if not to_stdout:
                target.close()
                partial.unlink(missing_ok=True)
            raise
    finally:
        conn.close()
    click.echo(f"exported {summary.documents} documents, {summary.folders} folders and {summary.attachments} "
               f"attachments of {ws['name']} to {out}", err=to_stdout)


@main.command("import")
@click.option("--workspace", "workspace", required=True, help="the workspace (id or slug) to import into")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@settings_options
def import_command(workspace, source, settings) -> None:
    """Import a zip (an mdsync export, or any zip of .md files) or a folder of .md files (an
    Obsidian-style vault) into a workspace. All or nothing: a refused import writes nothing.
    Beside a running server, send big imports through the API instead: this command holds the
    database's write lock while it writes, and the server's writes wait at most 5 s for it."""
    from mdsync.transfer import importer

    limits = importer.Limits(settings.limits.max_import_bytes, settings.limits.max_document_bytes)
    handle = None
    try:
        if source.is_dir():
            src = importer.DirectorySource(source)
        else:
            handle = open(source, "rb")
            src = importer.ZipSource(handle)
        plan = importer.plan(src, limits)
        ws, counts = asyncio.run(_import_with_attachments(settings, workspace, plan, src, limits))
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


async def _import_with_attachments(settings, workspace, plan, src, limits):
    """The API's import path, run against the data dir: attachment files into storage first, then
    every row in one transaction through the writer (or the stored files are removed again)."""
    from mdsync.api.errors import ApiError
    from mdsync.attachments.service import Attachments
    from mdsync.attachments.signing import Signer
    from mdsync.attachments.storage import open_storage
    from mdsync.db import Database
    from mdsync.transfer import attachments as transfer_attachments
    from mdsync.transfer import importer

    db = Database(settings.db_path, readers=1, autocheckpoint=settings.replica.url is None)
    await db.open()
    storage = open_storage(settings)
    try:
        ws = await db.one("SELECT id, slug, name FROM workspaces WHERE (id = ? OR slug = ?) AND deleted_at IS NULL",
                          (workspace, workspace))
        if ws is None:
            raise click.ClickException(f"no workspace with id or slug {workspace}")
        files = Attachments(db, settings, storage, Signer(config.ensure_secret(settings), settings.public_url,
                                                          settings.storage.signed_url_ttl))
        stored = await transfer_attachments.store(plan, src, files)
        try:
            counts = await db.write(functools.partial(importer.write, attachments=stored, via="cli"),
                                    plan, src, ws["id"], None, limits)
        except BaseException:
            await transfer_attachments.discard(files, stored)
            raise
        return ws, counts
    except ApiError as exc:
        raise click.ClickException(exc.detail) from None
    finally:
        await storage.close()
        await db.close()


@main.group()
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


if __name__ == "__main__":
    main()

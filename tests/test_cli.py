"""The admin CLI against a real data dir: `mdsync users ...`, `mdsync migrate`, `--help`
everywhere, exit codes, and changes taking effect at once on a running server."""

from __future__ import annotations

import os
import pty
import re
import select
import sqlite3
import subprocess
import sys
import time

import click
import pytest
from click.testing import CliRunner

from mdsync import cli
from mdsync.db import run_offline
from mdsync.db.migrate import available
from tests import engines
from tests.builders import PASSWORD, make_settings
from tests.processes import MDSYNC, ROOT, subprocess_env
from tests.processes import cli as run  # `cli` here is the package under test
from tests.processes import cli_async as arun
from tests.readers import settings_rows
from tests.waiting import eventually

pytestmark = pytest.mark.both_engines


def create(data_dir, email: str, *extra: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return run(data_dir, "users", "create", email, "--password-stdin", *extra, stdin=password + "\n")


def audit(data_dir) -> list[tuple[str, str | None]]:
    return [tuple(row) for row in settings_rows(make_settings(data_dir), "SELECT action, detail FROM audit_log ORDER BY id")]


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


# -- users create / list ----------------------------------------------------------------------
def test_create_and_list(data_dir):
    result = run(data_dir, "users", "list")
    assert result.returncode == 0, result.stderr
    assert "no users yet" in result.stdout

    result = create(data_dir, "Ada@Example.com", "--name", "Ada Lovelace", "--admin")
    assert result.returncode == 0, result.stderr
    assert "created admin user ada@example.com" in result.stdout
    assert create(data_dir, "grace@example.com").returncode == 0

    result = run(data_dir, "users", "list")
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    ada = next(line for line in lines if "ada@example.com" in line)
    grace = next(line for line in lines if "grace@example.com" in line)
    assert "Ada Lovelace" in ada and "admin" in ada
    assert "grace" in grace and "admin" not in grace  # the default name is the part before @
    assert PASSWORD not in result.stdout


def test_create_refusals_exit_1_with_a_message(data_dir):
    assert create(data_dir, "ada@example.com").returncode == 0
    result = create(data_dir, "ADA@example.com")
    assert result.returncode == 1
    assert "already exists" in result.stderr
    result = create(data_dir, "not-an-email")
    assert result.returncode == 1 and "not an email address" in result.stderr
    result = create(data_dir, "short@example.com", password="short")
    assert result.returncode == 1 and "at least 8 characters" in result.stderr
    result = create(data_dir, "name@example.com", "--name", "x" * 501)
    assert result.returncode == 1 and "name" in result.stderr
    result = create(data_dir, "name@example.com", "--name", "evil\u202ename")
    assert result.returncode == 1 and "name" in result.stderr
    result = create(data_dir, "zero\u200bwidth@example.com")
    assert result.returncode == 1 and "not an email address" in result.stderr
    # no terminal and no --password-stdin: refuse instead of hanging
    result = run(data_dir, "users", "create", "tty@example.com", stdin="")
    assert result.returncode == 1 and "--password-stdin" in result.stderr
    listing = run(data_dir, "users", "list").stdout
    assert listing.count("@") == 1


def test_workspace_names_follow_the_apis_rules(data_dir):
    """A name the API refuses (a bidi override, a control character, over 500 characters, blank)
    is refused by `mdsync workspaces create` too, and no workspace is made; one it accepts is
    stored as the API stores it (trimmed)."""
    assert create(data_dir, "ann@example.com").returncode == 0
    for name in ("evil\u202eexe.md", "tab\there", "x" * 501, "   "):
        result = run(data_dir, "workspaces", "create", name, "--owner", "ann@example.com")
        assert result.returncode == 1, (name, result.stdout)
        assert "name" in result.stderr and "Traceback" not in result.stderr
    assert "no workspaces yet" in run(data_dir, "workspaces", "list").stdout
    result = run(data_dir, "workspaces", "create", "  Plain \u200fname  ", "--owner", "ann@example.com")
    assert result.returncode == 0, result.stderr
    assert "\tPlain \u200fname\t" in run(data_dir, "workspaces", "list").stdout


def _pty_session(args: list[str], env: dict, answers: list[tuple[str, str]], timeout: float = 30) -> tuple[int, str]:
    """Run `args` on a pseudo-terminal; answer each prompt (text -> reply); return (exit code, screen)."""
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, as in an interactive shell
        try:
            os.chdir(ROOT)
            os.execve(args[0], args, env)
        finally:
            os._exit(127)
    screen = ""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(fd, 4096).decode(errors="replace")
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            if pending and pending[0][0] in screen.rsplit("\n", 1)[-1]:
                os.write(fd, (pending.pop(0)[1] + "\n").encode())
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return os.waitstatus_to_exitcode(status), screen


def test_password_prompt_never_echoes(data_dir):
    secret = "typed on a terminal 42"
    code, screen = _pty_session(
        [*MDSYNC, "users", "create", "tty@example.com", "--data-dir", str(data_dir)], subprocess_env(data_dir),
        [("Password", secret), ("Repeat", secret)])
    assert code == 0, screen
    assert "Password" in screen and "created user tty@example.com" in screen
    assert secret not in screen
    # a mismatched confirmation asks again instead of creating the user with a typo
    code, screen = _pty_session(
        [*MDSYNC, "users", "reset-password", "tty@example.com", "--data-dir", str(data_dir)], subprocess_env(data_dir),
        [("Password", "first attempt 1"), ("Repeat", "first attempt 2"), ("Password", "second try!"),
         ("Repeat", "second try!")])
    assert code == 0, screen
    assert "do not match" in screen.lower()
    assert "first attempt" not in screen and "second try" not in screen


# -- changes on the data dir of a running server -------------------------------------------------
async def login(client, email: str, password: str = PASSWORD):
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_admin_commands_take_effect_on_a_running_server(client, settings):
    # the server sees another process's changes within a second (auth/principals.py): waited for
    # with a bound of a few seconds
    async def me_soon(headers, **expected) -> dict:
        seen = {}

        async def check() -> bool:
            resp = await client.get("/api/v1/me", headers=headers)
            seen.clear()
            seen.update(await resp.json(), status=resp.status)
            return all(seen.get(k) == v for k, v in expected.items())

        await eventually(check, timeout=5.0, interval=0.05)
        return {k: seen.get(k) for k in expected}

    data = settings.data_dir
    code, out = await arun(data, "users", "create", "ops@example.com", "--password-stdin", stdin=PASSWORD + "\n")
    assert code == 0, out
    resp = await login(client, "ops@example.com")
    assert resp.status == 200
    pair = await resp.json()
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    assert pair["user"]["is_admin"] is False

    code, out = await arun(data, "users", "set-admin", "ops@example.com")
    assert code == 0 and "now a server admin" in out
    assert await me_soon(headers, is_admin=True) == {"is_admin": True}
    code, out = await arun(data, "users", "set-admin", "ops@example.com", "--revoke")
    assert code == 0 and "no longer" in out
    assert await me_soon(headers, is_admin=False) == {"is_admin": False}

    code, out = await arun(data, "users", "disable", "ops@example.com")
    assert code == 0, out
    code, out = await arun(data, "users", "list")
    assert "disabled" in next(line for line in out.splitlines() if "ops@example.com" in line)
    assert (await login(client, "ops@example.com")).status == 401
    assert await me_soon(headers, status=401) == {"status": 401}
    code, out = await arun(data, "users", "enable", "ops@example.com")
    assert code == 0, out
    assert (await login(client, "ops@example.com")).status == 200

    other = await (await login(client, "ops@example.com")).json()
    code, out = await arun(data, "users", "reset-password", "ops@example.com", "--password-stdin",
                           stdin="a brand new password\n")
    assert code == 0, out
    assert (await login(client, "ops@example.com")).status == 401
    assert (await login(client, "ops@example.com", "a brand new password")).status == 200
    refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    assert refresh.status == 401  # a reset signs the user out everywhere

    code, out = await arun(data, "users", "delete", "ops@example.com")
    assert code == 1 and "--yes" in out  # no terminal to confirm on
    code, out = await arun(data, "users", "delete", "ops@example.com", "--yes")
    assert code == 0, out
    assert (await login(client, "ops@example.com", "a brand new password")).status == 401
    code, out = await arun(data, "users", "list")
    assert "ops@example.com" not in out

    actions = [a for a, _ in audit(data)]
    for expected in ("admin.user_create", "admin.set_admin", "admin.user_disable", "admin.user_enable",
                     "admin.password_reset", "admin.user_delete"):
        assert expected in actions
    assert all("cli" in (detail or "") for action, detail in audit(data) if action.startswith("admin."))
    assert all(PASSWORD not in (detail or "") and "brand new" not in (detail or "") for _, detail in audit(data))


async def test_users_setup_token_prints_one_that_replaces_the_served_one(client, settings):
    """`mdsync users setup-token`: the way to a setup token when the output of the node that printed
    one is out of reach. The new one works on the running server; the one it replaced stops working."""
    from mdsync.auth.routes import AUTH

    served = await client.app[AUTH].prepare_setup()   # what `mdsync serve` printed
    code, out = await arun(settings.data_dir, "users", "setup-token")
    assert code == 0, out
    token = re.search(r'"setup_token": "([A-Za-z0-9_-]{20,})"', out).group(1)
    assert "`mdsync serve` on" in out and "no longer works" in out   # names the one it replaced
    admin = {"email": "root@example.com", "password": PASSWORD, "name": "Root"}
    resp = await client.post("/api/v1/auth/setup", json={**admin, "setup_token": served})
    assert resp.status == 403
    resp = await client.post("/api/v1/auth/setup", json={**admin, "setup_token": token})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["user"]["is_admin"] is True
    code, out = await arun(settings.data_dir, "users", "setup-token")
    assert code == 1 and "setup is done" in out and "setup_token" not in out


@pytest.mark.parametrize("command", ["disable", "enable", "reset-password", "set-admin", "delete"])
def test_unknown_user_exits_1(data_dir, command):
    extra = {"reset-password": ["--password-stdin"], "delete": ["--yes"]}.get(command, [])
    result = run(data_dir, "users", command, "ghost@example.com", *extra, stdin=PASSWORD + "\n")
    assert result.returncode == 1
    assert "no user with email ghost@example.com" in result.stderr


# -- migrate ----------------------------------------------------------------------------------------
def test_migrate_applies_and_records_every_migration(data_dir, engine):
    if engine == "postgresql":
        engines.empty_database_url(data_dir)  # not the test databases' template, migrated already
    result = run(data_dir, "migrate")
    assert result.returncode == 0, result.stderr
    known = available(engine)
    for migration in known:
        assert f"applied {migration.version:04d}_{migration.name}" in result.stdout
    rows = settings_rows(make_settings(data_dir), "SELECT version, name FROM schema_migrations ORDER BY version")
    assert [tuple(row) for row in rows] == [(m.version, m.name) for m in known]
    if engine == "sqlite":
        conn = sqlite3.connect(data_dir / "mdsync.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
    result = run(data_dir, "migrate")
    assert result.returncode == 0 and "up to date" in result.stdout


def test_migrate_refuses_a_newer_schema(data_dir):
    assert run(data_dir, "migrate").returncode == 0
    run_offline(make_settings(data_dir), lambda tx: tx.execute(
        "INSERT INTO schema_migrations VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z')"))
    for args in (["migrate"], ["users", "list"]):
        result = run(data_dir, *args)
        assert result.returncode == 1
        assert "9999" in result.stderr and "newer" in result.stderr
        assert "Traceback" not in result.stderr


# -- help and usage ----------------------------------------------------------------------------------
def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*prefix, name))


def test_every_command_has_help():
    runner = CliRunner()
    commands = list(_commands(cli.main))
    assert ("users", "create") in commands and ("serve",) in commands and ("migrate",) in commands
    for path in [(), *commands]:
        result = runner.invoke(cli.main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
        command = cli.main
        for name in path:
            command = command.commands[name]
        assert command.help, f"mdsync {' '.join(path)} has no description"


def test_help_and_usage_errors_in_a_real_process():
    result = subprocess.run([*MDSYNC, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and "users" in result.stdout and "serve" in result.stdout
    result = subprocess.run([*MDSYNC, "no-such-command"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2
    result = subprocess.run([*MDSYNC, "users", "create"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 2 and "EMAIL" in result.stderr
    result = subprocess.run([sys.executable, "-m", "mdsync", "--version"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0 and "version" in result.stdout

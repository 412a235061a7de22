"""Shared fixtures: a real app on a temp data dir (in-process, over real HTTP via aiohttp's test
server), real `mdsync serve` subprocesses, and the authorization tables' world of every role.

Helpers live in modules of their own, never in a test file: tests/builders.py (state through the
API), tests/readers.py (what the server holds), tests/processes.py (child processes: server, CLI,
Caddy), tests/s3server.py (moto), tests/yclient.py (a Yjs socket client), tests/waiting.py,
tests/authz_world.py, tests/nodeclients.py (the npm clients), tests/prerequisites.py, tests/pgserver.py and
tests/engines.py (PostgreSQL), tests/redisserver.py, tests/cluster.py (several nodes)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from mdsync import clock, config
from mdsync.app import create_app
from tests import cluster, engines, pgserver, prerequisites, redisserver
from tests.authz_world import World, build_world
from tests.builders import make_settings
from tests.processes import ServerProcess
from tests.s3server import S3Server


def pytest_addoption(parser):
    parser.addoption("--engine", choices=("sqlite", "postgresql", "both"), default="both",
                     help="database engine(s) for the modules marked both_engines (tests/engines.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", "prerequisite(reason_missing): the test needs a program or package that "
                            "may be missing (tests/prerequisites.py: skipped here, failed in CI)")
    config.addinivalue_line("markers", "both_engines: run the module's tests on SQLite and on PostgreSQL "
                            "(tests/engines.py)")
    config.addinivalue_line("markers", "postgresql_only: run the module's tests on PostgreSQL alone, as "
                            "`test_x[postgresql]` (several nodes need it: tests/cluster.py)")
    config.addinivalue_line("markers", "serial: keeps promises in wall-clock time (a stop within 10 s) or takes the "
                            "whole machine (the several-node drill): .ci/run runs these after the parallel part, "
                            "alone on the machine")


def pytest_generate_tests(metafunc):
    if "engine" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("engine")
    if metafunc.definition.get_closest_marker("postgresql_only") is not None:
        names = ["postgresql"] if chosen != "sqlite" else [
            pytest.param("postgresql", marks=pytest.mark.skip(reason="PostgreSQL only, and --engine sqlite"))]
    elif metafunc.definition.get_closest_marker("both_engines") is None:
        return  # SQLite only (the `engine` fixture's default), under the test's plain name
    else:
        names = list(engines.ENGINES) if chosen == "both" else [chosen]
    metafunc.parametrize("engine", names, indirect=True, scope="function")


def pytest_sessionfinish(session):
    engines.shutdown()  # the PostgreSQL cluster, if a test started it: stopped by its pid


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    prerequisites.check(item)


@pytest.fixture(autouse=True)
def engine(request):
    """The database engine of this test (parametrized: tests/engines.py)."""
    name = getattr(request, "param", "sqlite")
    if name == "postgresql":
        reason = pgserver.missing_reason()
        if reason:
            prerequisites.missing(reason)
    engines.current = name
    yield name
    engines.current = "sqlite"
    engines.finish_test()


@pytest.fixture(autouse=True)
def _reset_clock():
    clock.reset()
    yield
    clock.reset()


@pytest.fixture
def settings(tmp_path) -> config.Settings:
    return make_settings(tmp_path / "data")


async def serve(aiohttp_client, app):
    """`aiohttp_client(app)`, and when the app fails to start, what it had started is stopped (its
    database pool, its tasks) before the error propagates: else the test's event loop would wait
    for them at teardown."""
    try:
        return await aiohttp_client(app)
    except BaseException:
        try:
            await asyncio.wait_for(app.cleanup(), 10)
        except Exception:  # noqa: S110 - the start's own error is the one to report
            pass
        raise


@pytest.fixture
async def client(aiohttp_client, settings):
    """A test client on a real app (real database: SQLite in a temp dir, or PostgreSQL) over real HTTP."""
    return await serve(aiohttp_client, create_app(settings))


@pytest.fixture
def make_client(aiohttp_client, tmp_path):
    """Build a client with other settings: `await make_client(auth__registration="invite")`."""
    async def build(**overrides):
        data_dir = overrides.pop("data_dir", tmp_path / f"data-{uuid.uuid4().hex[:6]}")
        return await serve(aiohttp_client, create_app(make_settings(data_dir, **overrides)))
    return build


@pytest.fixture
async def world(client) -> World:
    """A workspace with a member of every role, an outsider and a share-link holder
    (tests/authz_world.py), on the test's `client`."""
    return await build_world(client)


@pytest.fixture
def redis(tmp_path):
    """A Redis of the test's own (tests/redisserver.py), stopped by pid after it (resumed first if
    the test paused it)."""
    server = redisserver.RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster_s3(tmp_path_factory):
    """moto S3 with the bucket the in-process nodes of tests/cluster.py's `node_settings` use,
    one per test module."""
    with S3Server(tmp_path_factory.mktemp("moto")) as server:
        server.create_bucket(cluster.BUCKET)
        yield server


@pytest.fixture
def server_process(tmp_path):
    """Start real servers with `server_process(env={...})`; every one is stopped by pid afterwards."""
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, env: dict[str, str] | None = None, args: list[str] | None = None):
        data_dir = data_dir or tmp_path / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(data_dir, env, args)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()

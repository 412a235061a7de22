"""`GET /metrics` (Prometheus text): HTTP requests by route template, DB writer, process memory,
who may read it, one registry per app, the API features use to add metrics — and that the JSON
logs never carry a token or a password."""

from __future__ import annotations

import pytest

import json
import re

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mdsync.app import create_app
from mdsync.ops.metrics import METRICS
from tests.builders import PASSWORD, make_settings, register

pytestmark = pytest.mark.both_engines


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found, name: str, **labels) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


async def test_http_db_and_process_metrics(client, engine):
    account = await register(client)
    resp = await client.post("/api/v1/workspaces", json={"name": "M"}, headers=account.headers)
    ws = (await resp.json())["id"]
    for _ in range(3):
        assert (await client.get(f"/api/v1/workspaces/{ws}", headers=account.headers)).status == 200
    assert (await client.get("/api/v1/workspaces/no-such-id", headers=account.headers)).status == 404
    assert (await client.get("/definitely/not/a/route")).status == 404

    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    found = samples(await resp.text())
    # by route *template*: ids never become label values
    assert value(found, "mdsync_http_requests_total", route="/api/v1/workspaces/{ws}", method="GET",
                 status="200") == 3
    assert value(found, "mdsync_http_requests_total", route="/api/v1/workspaces/{ws}", method="GET",
                 status="404") == 1
    assert value(found, "mdsync_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(found, "mdsync_http_requests_total", route="/api/v1/auth/register", method="POST",
                 status="201") == 1
    assert not any(ws in str(key) for key in found)
    assert value(found, "mdsync_http_request_duration_seconds_count", route="/api/v1/workspaces/{ws}",
                 method="GET") == 4
    # the database writer
    assert value(found, "mdsync_db_write_jobs_total") >= 2
    assert value(found, "mdsync_db_write_batches_total") >= 1
    assert value(found, "mdsync_db_write_queue_depth") == 0
    assert value(found, "mdsync_db_commit_seconds_total") > 0
    if engine == "sqlite":  # the file's sizes
        assert value(found, "mdsync_db_size_bytes") > 0 and value(found, "mdsync_db_wal_bytes") >= 0
    else:  # the read pool (the file is PostgreSQL's)
        assert value(found, "mdsync_db_pool_connections") >= 1
        assert value(found, "mdsync_db_pool_available") >= 0 and value(found, "mdsync_db_pool_waiting") == 0
        assert value(found, "mdsync_db_size_bytes") is None
    # the process
    assert value(found, "process_resident_memory_bytes") > 10_000_000
    # no replica configured: no replica metrics
    assert not any(name.startswith("mdsync_replica") for name, _ in found)


async def test_metrics_are_for_loopback_or_the_token(make_client):
    client = await make_client(metrics__token="scrape-secret-123")
    assert (await client.get("/metrics")).status == 200  # loopback
    # through the trusted proxy (Caddy on 127.0.0.1) for a client on the internet: not loopback
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    resp = await client.get("/metrics", headers=forwarded)
    assert resp.status == 403 and resp.content_type == "application/problem+json"
    resp = await client.get("/metrics", headers={**forwarded, "Authorization": "Bearer wrong"})
    assert resp.status == 403
    resp = await client.get("/metrics", headers={**forwarded, "Authorization": "Bearer scrape-secret-123"})
    assert resp.status == 200 and "mdsync_http_requests_total" in await resp.text()

    no_token = await make_client()
    assert (await no_token.get("/metrics", headers={**forwarded, "Authorization": "Bearer "})).status == 403


async def test_each_app_has_its_own_registry_and_features_can_add_metrics(aiohttp_client, tmp_path):
    one = await aiohttp_client(create_app(make_settings(tmp_path / "one")))
    two = await aiohttp_client(create_app(make_settings(tmp_path / "two")))
    for _ in range(5):
        await one.get("/healthz")
    await two.get("/healthz")

    metrics = one.server.app[METRICS]
    rooms = metrics.gauge("mdsync_test_rooms", "Open rooms (test)")
    assert metrics.gauge("mdsync_test_rooms", "asked again") is rooms  # get-or-create
    updates = metrics.counter("mdsync_test_updates_total", "Updates (test)", ["kind"])
    updates.labels("sync").inc(7)
    live = {"rooms": 0}
    metrics.on_scrape(lambda: rooms.set(live["rooms"]))
    live["rooms"] = 4

    found_one = samples(await (await one.get("/metrics")).text())
    found_two = samples(await (await two.get("/metrics")).text())
    assert value(found_one, "mdsync_http_requests_total", route="/healthz", method="GET", status="200") == 5
    assert value(found_two, "mdsync_http_requests_total", route="/healthz", method="GET", status="200") == 1
    assert value(found_one, "mdsync_test_rooms") == 4
    assert value(found_one, "mdsync_test_updates_total", kind="sync") == 7
    assert value(found_two, "mdsync_test_rooms") is None


async def test_logs_never_carry_tokens_or_passwords(server_process):
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open", "MDSYNC_LOG__LEVEL": "debug",
                                 "MDSYNC_LOG__FORMAT": "json"})
    secrets_seen: list[str] = [PASSWORD, "wrong-password-xyz"]
    async with aiohttp.ClientSession() as http:
        base = server.base
        async with http.post(f"{base}/api/v1/auth/register",
                             json={"email": "logs@example.com", "password": PASSWORD, "name": "L"}) as resp:
            pair = await resp.json()
        async with http.post(f"{base}/api/v1/auth/login",
                             json={"email": "logs@example.com", "password": "wrong-password-xyz"}) as resp:
            assert resp.status == 401
        async with http.post(f"{base}/api/v1/auth/login",
                             json={"email": "logs@example.com", "password": PASSWORD}) as resp:
            login = await resp.json()
        async with http.post(f"{base}/api/v1/auth/refresh", json={"refresh_token": login["refresh_token"]}) as resp:
            refreshed = await resp.json()
        headers = {"Authorization": f"Bearer {refreshed['access_token']}"}
        async with http.get(f"{base}/api/v1/me", headers=headers) as resp:
            assert resp.status == 200
        async with http.post(f"{base}/api/v1/me/tokens", json={"name": "ci"}, headers=headers) as resp:
            pat = (await resp.json()).get("token", "") if resp.status == 201 else ""
        # WebSocket-style URLs carry the token in the query string
        token = refreshed["access_token"]
        async with http.get(f"{base}/ws/docs/00000000-0000-4000-8000-000000000000?token={token}") as resp:
            pass
        async with http.get(f"{base}/api/v1/me?access_token={token}&token={token}") as resp:
            pass
        async with http.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}) as resp:
            pass
    secrets_seen += [pair["access_token"], pair["refresh_token"], login["access_token"], login["refresh_token"],
                     refreshed["access_token"], refreshed["refresh_token"]]
    if pat:
        secrets_seen.append(pat)
    assert server.terminate() == 0
    output = server.rest_of_output()
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    paths = [entry.get("path", "") for entry in lines]
    assert any(p.startswith("/ws/docs/") for p in paths), "the access log did not record the socket request"
    assert any(p == "/api/v1/auth/login" for p in paths)
    for secret in secrets_seen:
        assert secret not in output, f"a secret ({secret[:6]}…) appears in the logs"
    # and no JWT-looking string at all
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.", output)


def test_request_series_read_as_a_prometheus_counter_and_histogram_would():
    """The HTTP series are counted in plain Python (ops/metrics.py `_HttpRequests`): their text is
    what a prometheus-client Counter and Histogram fed the same requests expose."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from mdsync.ops.metrics import LATENCY_BUCKETS, Metrics

    class Route:  # hashable, as aiohttp's routes are
        def __init__(self, template: str):
            self.resource = SimpleNamespace(canonical=template)

    def request(method: str, template: str | None):
        route = Route(template) if template else None
        info = SimpleNamespace(route=route, http_exception=None if template else Exception())
        return SimpleNamespace(method=method, match_info=info)

    me, doc, nothing = request("GET", "/api/v1/me"), request("POST", "/d/{id}"), request("GET", None)
    answers = [(me, 200, 0.0004), (me, 200, 0.001), (me, 200, 0.0031), (me, 401, 0.02), (doc, 201, 7.5),
               (doc, 101, 120.0), (nothing, 404, 0.0001), (me, 200, 11.0), (doc, 201, 0.005)]
    metrics = Metrics()
    registry = CollectorRegistry()
    counter = Counter("mdsync_http_requests_total", "HTTP requests answered, by route template, method and status",
                      ["route", "method", "status"], registry=registry)
    histogram = Histogram("mdsync_http_request_duration_seconds",
                          "Time to answer an HTTP request (WebSocket upgrades excluded)", ["route", "method"],
                          buckets=LATENCY_BUCKETS, registry=registry)
    for req, status, seconds in answers:
        metrics.observe_request(req, status, seconds)
        route = req.match_info.route.resource.canonical if req.match_info.route else "unmatched"
        counter.labels(route, req.method, str(status)).inc()
        child = histogram.labels(route, req.method)
        if status != 101:
            child.observe(seconds)
    ours = [line for line in metrics.render().decode().splitlines() if "mdsync_http_request" in line]
    theirs = [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
    assert sorted(ours) == sorted(theirs)
    assert value(samples("\n".join(ours) + "\n"), "mdsync_http_request_duration_seconds_count",
                 route="/d/{id}", method="POST") == 2  # the upgrade counted, not timed

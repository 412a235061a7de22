"""Prometheus metrics: one registry per application, the HTTP middleware, and `GET /metrics`.

Every app gets its own `CollectorRegistry` (never prometheus-client's global one), so many apps in
one test process do not collide. Features add their own instruments through `app[METRICS]`:

    from mdsync.ops.metrics import METRICS
    metrics = app[METRICS]
    rooms = metrics.gauge("mdsync_collab_rooms", "Open collaboration rooms")
    updates = metrics.counter("mdsync_collab_updates_total", "Yjs updates applied", ["kind"])
    metrics.on_scrape(lambda: rooms.set(len(manager.rooms)))   # refreshed right before each scrape

Asking twice for the same name returns the same instrument (so a feature may ask lazily). Names
should start with `mdsync_`; label values must come from a small fixed set (never ids or paths).

`/metrics` answers loopback clients, or anyone presenting `Authorization: Bearer <metrics.token>`.
Behind a trusted proxy (Caddy on 127.0.0.1), the forwarded client address is what counts, so a
request from the internet through Caddy is not "loopback".
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mdsync.api import errors
from mdsync.api.routing import AUTHENTICATOR, Routes

log = logging.getLogger("mdsync.metrics")
# `*_created` series double the output for nothing a dashboard uses (process-wide switch)
disable_created_metrics()
routes = Routes("ops")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The application's registry and a get-or-create API for instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._instruments: dict[str, object] = {}
        self._scrape_hooks: list[Callable[[], None]] = []
        self.token: str | None = None  # metrics.token: lets non-loopback scrapers in
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, open fds
        self.http_requests = self.counter(
            "mdsync_http_requests_total", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"])
        self.http_latency = self.histogram(
            "mdsync_http_request_duration_seconds", "Time to answer an HTTP request (WebSocket upgrades excluded)",
            ["route", "method"], buckets=LATENCY_BUCKETS)

    # -- instruments -----------------------------------------------------------------------
    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return self._get_or_create(Counter, name, documentation, labels)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return self._get_or_create(Gauge, name, documentation, labels)

    def histogram(self, name: str, documentation: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        return self._get_or_create(Histogram, name, documentation, labels, buckets=tuple(buckets))

    def _get_or_create(self, kind, name, documentation, labels, **extra):
        existing = self._instruments.get(name)
        if existing is not None:
            if not isinstance(existing, kind):
                raise ValueError(f"metric {name} already exists as a {type(existing).__name__}")
            return existing
        instrument = kind(name, documentation, list(labels), registry=self.registry, **extra)
        self._instruments[name] = instrument
        return instrument

    def register(self, collector) -> None:
        """Add a custom collector (an object with `collect()` yielding metric families)."""
        self.registry.register(collector)

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run `hook` right before every scrape (to set gauges from live state)."""
        self._scrape_hooks.append(hook)

    # -- output ----------------------------------------------------------------------------
    def render(self) -> bytes:
        for hook in self._scrape_hooks:
            try:
                hook()
            except Exception:  # one broken gauge must not hide all the others
                log.exception("metrics scrape hook failed")
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


class WriterCollector:
    """The database writer's counters (`db.stats`), read at scrape time.

    Mean batch size is rate(jobs)/rate(batches); mean commit latency is
    rate(commit_seconds)/rate(batches).
    """

    def __init__(self, db) -> None:
        self.db = db

    def collect(self):
        stats = self.db.stats
        yield GaugeMetricFamily("mdsync_db_write_queue_depth", "Write jobs queued and not yet committed",
                                value=max(stats.depth, 0))
        yield CounterMetricFamily("mdsync_db_write_jobs", "Write jobs committed or failed", value=stats.jobs)
        yield CounterMetricFamily("mdsync_db_write_batches", "Write transactions (group commits)",
                                  value=stats.batches)
        yield CounterMetricFamily("mdsync_db_commit_seconds", "Time spent running and committing write batches",
                                  value=stats.commit_seconds_total)
        yield GaugeMetricFamily("mdsync_db_last_commit_seconds", "Duration of the latest write batch",
                                value=stats.last_commit_seconds)
        yield GaugeMetricFamily("mdsync_db_max_wait_seconds", "Longest time a job waited from queueing to commit",
                                value=stats.max_wait_seconds)
        batches = stats.batches or 1
        yield GaugeMetricFamily("mdsync_db_mean_batch_size", "Jobs per write batch since start",
                                value=stats.jobs / batches)
        # a WAL that keeps growing means nobody checkpoints (with a replica: litestream is down)
        for name, path in (("mdsync_db_size_bytes", self.db.path),
                           ("mdsync_db_wal_bytes", self.db.path.with_name(self.db.path.name + "-wal"))):
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0
            yield GaugeMetricFamily(name, f"Size of {path.name} on disk", value=size)


def middleware(metrics: Metrics):
    """Count every request by its route template (bounded cardinality) and time it."""

    @web.middleware
    async def measure(request: web.Request, handler):
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = _route_template(request)
            metrics.http_requests.labels(route, request.method, str(status)).inc()
            if status != 101:  # a WebSocket's "duration" is its whole life, not a latency
                metrics.http_latency.labels(route, request.method).observe(time.perf_counter() - started)

    return measure


def _route_template(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    return resource.canonical


# -- GET /metrics --------------------------------------------------------------------------------
def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _allowed(request: web.Request) -> bool:
    token = request.app[METRICS].token
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode()):
        return True
    authenticator = request.app.get(AUTHENTICATOR)
    client = authenticator.client_address(request) if authenticator is not None else request.remote
    return _is_loopback(client) and _is_loopback(request.remote)


@routes.get("/metrics", "Prometheus metrics (loopback clients, or `Authorization: Bearer <metrics.token>`)",
            auth="none", raw_response="text/plain; version=0.0.4")
async def metrics_endpoint(request: web.Request) -> web.Response:
    if not _allowed(request):
        raise errors.Forbidden("metrics are served to loopback clients or with the metrics token")
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def setup(app: web.Application, settings, db, metrics: Metrics | None = None) -> Metrics:
    """Put the app's registry at app[METRICS] (early in create_app, before features that add
    metrics); `metrics` is the one the middleware was built with."""
    metrics = metrics or Metrics()
    app[METRICS] = metrics
    metrics.token = settings.metrics.token
    metrics.register(WriterCollector(db))
    return metrics

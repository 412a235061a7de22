"""Prometheus metrics: one registry per application, the HTTP request series, and `GET /metrics`.

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
import itertools
import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from mdsync.api import errors
from mdsync.api.routing import AUTHENTICATOR, Routes

log = logging.getLogger("mdsync.metrics")
# `*_created` series double the output for nothing a dashboard uses (process-wide switch)
disable_created_metrics()
routes = Routes("ops")

# (kind "gauge" | "counter", name, help, read): one series read at scrape time
Reading = tuple[str, str, str, Callable[[], float]]
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The application's registry and a get-or-create API for instruments."""

    def __init__(self, token: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._instruments: dict[str, object] = {}
        self._scrape_hooks: list[Callable[[], None]] = []
        self.token = token  # metrics.token: lets non-loopback scrapers in
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, open fds
        # mdsync_http_requests_total and mdsync_http_request_duration_seconds: counted in plain
        # Python per request, made into series at scrape time (_HttpRequests)
        self.http = _HttpRequests()
        self.registry.register(self.http)

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

    def read_at_scrape(self, readings: Sequence[Reading]) -> None:
        """Series whose values a feature already counts: each (kind "gauge" or "counter", name,
        help, read) is read at every scrape (a counter named `x` is exposed as `x_total`)."""
        self.registry.register(_Readings(readings))

    def on_scrape(self, hook: Callable[[], None]) -> None:
        """Run `hook` right before every scrape (to set gauges from live state)."""
        self._scrape_hooks.append(hook)

    # -- HTTP requests (called by the one HTTP middleware, mdsync/api/middleware.py) -----------
    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        """Count a request by its route template (bounded cardinality) and time it (not a
        WebSocket: its "duration" is its whole life). Plain additions on the series of its (route,
        method, status), looked up once and kept: prometheus-client's `labels()`, `inc()` and
        `observe()` (a lock each, a loop over the buckets) cost more than the request's own
        routing (bench/README.md, "REST per-request cost"); the exposition is the same."""
        info = request.match_info
        # an unmatched request's route is made per request: it must not become a key of its own
        route = None if getattr(info, "http_exception", None) is not None else getattr(info, "route", None)
        key = (route, request.method, status)
        series = self.http.series.get(key)
        if series is None:
            series = self.http.series[key] = _RequestSeries(_route_template(request), request.method, str(status))
        series.count += 1
        if status != 101:
            series.seconds += seconds
            series.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1

    # -- output ----------------------------------------------------------------------------
    def render(self) -> bytes:
        for hook in self._scrape_hooks:
            try:
                hook()
            except Exception:  # one broken gauge must not hide all the others
                log.exception("metrics scrape hook failed")
        return generate_latest(self.registry)


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)


class _RequestSeries:
    """The requests of one (route, method, status) so far: how many, and their latencies."""

    __slots__ = ("route", "method", "status", "count", "seconds", "buckets")

    def __init__(self, route: str, method: str, status: str):
        self.route, self.method, self.status = route, method, status
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; the last: +Inf


class _HttpRequests:
    """The collector of the HTTP request series (what a Counter and a Histogram would expose)."""

    def __init__(self):
        self.series: dict[tuple, _RequestSeries] = {}

    def collect(self):
        requests = CounterMetricFamily("mdsync_http_requests",
                                       "HTTP requests answered, by route template, method and status",
                                       labels=["route", "method", "status"])
        latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        for series in self.series.values():
            requests.add_metric([series.route, series.method, series.status], series.count)
            counts, total = latency.setdefault((series.route, series.method),
                                               ([0] * (len(LATENCY_BUCKETS) + 1), [0.0]))
            for i, n in enumerate(series.buckets):
                counts[i] += n
            total[0] += series.seconds
        yield requests
        durations = HistogramMetricFamily("mdsync_http_request_duration_seconds",
                                          "Time to answer an HTTP request (WebSocket upgrades excluded)",
                                          labels=["route", "method"])
        for (route, method), (counts, total) in latency.items():
            cumulative = list(itertools.accumulate(counts))
            durations.add_metric([route, method], buckets=[
                *((floatToGoString(bound), n) for bound, n in zip(LATENCY_BUCKETS, cumulative)),
                ("+Inf", cumulative[-1])], sum_value=total[0])
        yield durations


class _Readings:
    """The collector behind `Metrics.read_at_scrape`."""

    def __init__(self, rows: Sequence[Reading]):
        self.rows = list(rows)

    def collect(self):
        for kind, name, documentation, read in self.rows:
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            yield family(name, documentation, value=read())


def database_readings(db) -> list[Reading]:
    """The database writer's counters (`db.stats`) and the files' sizes.

    Mean batch size is rate(jobs)/rate(batches); mean commit latency is
    rate(commit_seconds)/rate(batches). A WAL that keeps growing means nobody checkpoints (with a
    replica: litestream is down)."""
    stats = db.stats
    common: list[Reading] = [
        ("gauge", "mdsync_db_write_queue_depth", "Write jobs queued and not yet committed", lambda: max(stats.depth, 0)),
        ("counter", "mdsync_db_write_jobs", "Write jobs committed or failed", lambda: stats.jobs),
        ("counter", "mdsync_db_write_batches", "Write transactions (group commits)", lambda: stats.batches),
        ("counter", "mdsync_db_write_retries", "Write transactions run again after losing to another writer"
         " (PostgreSQL deadlock or serialization failure)", lambda: stats.retries),
        ("counter", "mdsync_db_commit_seconds", "Time spent running and committing write batches",
         lambda: stats.commit_seconds_total),
        ("gauge", "mdsync_db_last_commit_seconds", "Duration of the latest write batch",
         lambda: stats.last_commit_seconds),
        ("gauge", "mdsync_db_max_wait_seconds", "Longest time a job waited from queueing to commit",
         lambda: stats.max_wait_seconds),
        ("gauge", "mdsync_db_mean_batch_size", "Jobs per write batch since start",
         lambda: stats.jobs / (stats.batches or 1)),
    ]
    if db.engine == "postgresql":
        return common + [
            ("gauge", "mdsync_db_pool_connections", "PostgreSQL read connections open",
             lambda: db.pool_stats().get("pool_size", 0)),
            ("gauge", "mdsync_db_pool_available", "PostgreSQL read connections idle",
             lambda: db.pool_stats().get("pool_available", 0)),
            ("gauge", "mdsync_db_pool_waiting", "Reads waiting for a PostgreSQL connection",
             lambda: db.pool_stats().get("requests_waiting", 0)),
        ]
    wal = db.path.with_name(db.path.name + "-wal")
    return common + [
        ("gauge", "mdsync_db_size_bytes", f"Size of {db.path.name} on disk", lambda: _file_size(db.path)),
        ("gauge", "mdsync_db_wal_bytes", f"Size of {wal.name} on disk", lambda: _file_size(wal)),
    ]


def _file_size(path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


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
    client = request.app[AUTHENTICATOR].client_address(request)
    return _is_loopback(client) and _is_loopback(request.remote)


@routes.get("/metrics", "Prometheus metrics (loopback clients, or `Authorization: Bearer <metrics.token>`)",
            auth="none", raw_response="text/plain; version=0.0.4")
async def metrics_endpoint(request: web.Request) -> web.Response:
    if not _allowed(request):
        raise errors.Forbidden("metrics are served to loopback clients or with the metrics token")
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

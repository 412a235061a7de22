"""The sync client's HTTP: a few blocking calls with a PAT (http.client; the client runs one pass
at a time, so nothing here needs an event loop). Connections are kept alive: one per thread and
per server (the initial pull fetches on a small thread pool), reused by the next request; one the
server closed meanwhile (its idle timeout, a restart) is replaced without counting as a failure.
Transient failures (connection refused, 502-504) are retried a bounded number of times; every
other answer is returned or raised as `HttpError`. Once a request has given up on an unreachable
server, the next ones try once each (no backoff) until one gets through: a server that died
mid-pass fails the rest of the pass's items in moments, each named, instead of minutes of retries
per item. As urllib did before: the proxy named by `https_proxy` / `http_proxy` (`no_proxy`
honoured), and redirects followed for GET."""

from __future__ import annotations

import base64
import http.client
import json
import select
import ssl
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

RETRIES = 4            # attempts after the first for a transient failure
BACKOFF = 0.5          # seconds before the first retry, doubled each time
TIMEOUT = 90.0         # seconds for one request (a long-poll asks for less)
REDIRECTS = 10         # redirects followed for one GET at most (urllib's limit)
USER_AGENT = "mdsync-sync"

Origin = tuple[str, str, int]  # scheme, host, port


class HttpError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(f"{status} {detail}".strip())
        self.status = status
        self.detail = detail


class Unauthorized(HttpError):
    """The token was refused (401): exit 3."""


def _detail(body: bytes) -> str:
    try:
        problem = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if not isinstance(problem, dict):
        return ""
    text = problem.get("detail") or problem.get("title") or ""
    fields = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or [] if isinstance(e, dict)]
    return "; ".join([text, *fields]) if fields else text


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive connection the server has closed (or written to out of turn): readable."""
    try:
        if hasattr(select, "poll"):  # any descriptor number (select() stops at 1024)
            poller = select.poll()
            poller.register(conn.sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([conn.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """(host, port, headers) of the proxy urllib would use for this server, or None."""
    proxy = urllib.request.getproxies().get(scheme)
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    parts = urllib.parse.urlsplit(proxy)
    headers = {}
    if parts.username is not None:
        creds = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode("ascii")
    return parts.hostname or "", parts.port or 80, headers


class Api:
    def __init__(self, server: str, token: str):
        self.base = server.rstrip("/") + "/api/v1"
        self.token = token
        self.down = False  # the last request gave up on an unreachable server
        self._local = threading.local()  # .conns: {origin: HTTPConnection} of this thread
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []  # every thread's, for close()
        self._tls: ssl.SSLContext | None = None
        self._proxies: dict[Origin, tuple[str, int, dict[str, str]] | None] = {}

    # -- connections ---------------------------------------------------------------------------
    def _conns(self) -> dict[Origin, http.client.HTTPConnection]:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _connect(self, origin: Origin, timeout: float) -> http.client.HTTPConnection:
        scheme, host, port = origin
        proxy = self._proxy(origin)
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            if proxy:
                conn = http.client.HTTPSConnection(proxy[0], proxy[1], timeout=timeout, context=self._tls)
                conn.set_tunnel(host, port, headers=proxy[2])
            else:
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(*(proxy[:2] if proxy else (host, port)), timeout=timeout)
        with self._lock:
            self._all.append(conn)
        return conn

    def _proxy(self, origin: Origin) -> tuple[str, int, dict[str, str]] | None:
        if origin not in self._proxies:
            self._proxies[origin] = _proxy_for(origin[0], origin[1])
        return self._proxies[origin]

    def _drop(self, origin: Origin) -> None:
        conn = self._conns().pop(origin, None)
        if conn is not None:
            conn.close()
            with self._lock:
                if conn in self._all:
                    self._all.remove(conn)

    def close(self) -> None:
        """Close every thread's kept-alive connection."""
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def _exchange(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                  timeout: float) -> tuple[int, bytes, http.client.HTTPMessage]:
        """One request and its whole answer on this thread's connection to the URL's server: a
        kept-alive one the server closed is replaced, also when that shows only once the request
        is sent (the server closed it meanwhile: it never read the request)."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(0, f"not an http:// or https:// URL: {url}")
        origin = (scheme, parts.hostname, parts.port or (443 if scheme == "https" else 80))
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conns = self._conns()
        conn = conns.get(origin)
        if conn is not None and (conn.sock is None or _closed_by_peer(conn)):
            self._drop(origin)
            conn = None
        reused = conn is not None
        if conn is None:
            conn = conns[origin] = self._connect(origin, timeout)
        proxy = self._proxy(origin)
        if proxy is not None and scheme == "http":  # a plain-http proxy takes the absolute URL
            target, headers = url, {**headers, **proxy[2]}
        try:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self._drop(origin)
            if reused:
                return self._exchange(method, url, body, headers, timeout)  # on a new connection, once
            raise
        except BaseException:
            self._drop(origin)
            raise
        if resp.will_close:
            self._drop(origin)
        return resp.status, data, resp.headers

    # -- requests ------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict | None = None, body: bytes | None = None,
                content_type: str | None = None, timeout: float = TIMEOUT) -> tuple[int, bytes, Any]:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}", "User-Agent": USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        delay = BACKOFF
        retries = 0 if self.down else RETRIES
        for attempt in range(retries + 1):
            try:
                status, data, resp_headers = self._follow(method, url, body, headers, timeout)
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS, DNS
                if attempt < retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                self.down = True
                raise HttpError(0, f"server unreachable: {exc}") from None
            self.down = False
            if 200 <= status < 300:
                return status, data, resp_headers
            if status in (502, 503, 504) and attempt < retries:
                time.sleep(delay)
                delay *= 2
                continue
            if status == 401:
                raise Unauthorized(401, _detail(data))
            raise HttpError(status, _detail(data))
        raise AssertionError("unreachable")

    def _follow(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> tuple[int, bytes, http.client.HTTPMessage]:
        """The answer, past the redirects of a GET (the token kept for the same host only)."""
        host = urllib.parse.urlsplit(url).hostname
        for _ in range(REDIRECTS + 1):
            status, data, resp_headers = self._exchange(method, url, body, headers, timeout)
            location = resp_headers.get("Location")
            if method not in ("GET", "HEAD") or status not in (301, 302, 303, 307, 308) or not location:
                return status, data, resp_headers
            url = urllib.parse.urljoin(url, location)
            if urllib.parse.urlsplit(url).hostname != host:
                headers = {k: v for k, v in headers.items() if k != "Authorization"}
        return status, data, resp_headers

    def json(self, method: str, path: str, payload: Any = None, **kw) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        _, data, _ = self.request(method, path, body=body, content_type="application/json" if body else None, **kw)
        return json.loads(data) if data else None

    def bytes(self, method: str, path: str, body: bytes | None = None, **kw) -> bytes:
        ctype = "application/octet-stream" if body is not None else None
        return self.request(method, path, body=body, content_type=ctype, **kw)[1]

    def json_body(self, method: str, path: str, body: bytes) -> Any:
        """Raw bytes in, JSON out (an upload)."""
        _, data, _ = self.request(method, path, body=body, content_type="application/octet-stream")
        return json.loads(data)

"""The sync client's HTTP: a few blocking calls with a PAT, on urllib3 (the client runs one pass at
a time, so nothing here needs an event loop). An `Api` keeps its connections alive in a pool per
server, shared by its threads (the initial pull's fetching threads; with --watch, every pass and
the change feed's long-poll); one the server closed while idle (its idle timeout, a restart) is
replaced before it is used, and one it closes just as a request leaves is sent again once,
neither counting as a failure. Transient failures (connection refused, reset, timed out, TLS,
429, 502-504) are retried a bounded number of times; every other answer is returned or raised as
`HttpError`. A 429 or 503 waits what its `Retry-After` asks (seconds or an HTTP date), at most
RETRY_AFTER_MAX a time, and the wait is told to the user (`notify`); without one, the backoff. A
create (a POST that makes something) is sent again only when the server surely did not act on it:
a 429 or 503 refusal, or a connection never made; not after a 502/504 or a lost answer, which the
server may have acted on (a document's create record makes the next pass adopt it, creates.py).
Once a request has given up on an unreachable server, the next ones try once each (no backoff)
until one gets through: a server that died mid-pass fails the rest of the pass's items in
moments, each named, instead of seconds of retries per item. As urllib did before: the proxy
named by `https_proxy` / `http_proxy` (`no_proxy` honoured), redirects followed for GET (the
token not sent to another server), https verified against the system's CA certificates."""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import urllib3
from urllib3.exceptions import InvalidHeader, MaxRetryError, ProtocolError

RETRIES = 4            # attempts after the first for a transient failure
BACKOFF = 0.5          # urllib3's backoff factor: the first retry at once, then after 1, 2, 4 s
TIMEOUT = 90.0         # seconds for one request (a long-poll asks for less)
REDIRECTS = 10         # redirects followed for one GET at most (urllib's limit)
POOL = 10              # connections kept per server: the initial pull's 8 threads, the pass's, the feed's
USER_AGENT = "mdsync-sync"
RETRY_AFTER_MAX = 30.0  # seconds waited at most for one Retry-After: a server asking for hours is not obeyed
# refusals: the server did not act on the request, so any request may be sent again (after its Retry-After)
REFUSALS = {429: "rate limited", 503: "server busy"}


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


class _Retry(urllib3.util.Retry):
    """urllib3's retries, plus one resend, not counted, of a request the server hung up on
    unanswered: a kept-alive connection it closed just as the request left (urllib3 checks an
    idle connection before reusing it, but that check can lose the race). http.client's
    RemoteDisconnected is a ConnectionResetError. Each wait after an answer is told (`notify`)."""

    RETRY_AFTER_STATUS_CODES = frozenset(REFUSALS)

    def __init__(self, *args, resent: bool = False, notify: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, **kw):
        super().__init__(*args, **kw)
        self.resent = resent
        self.notify = notify
        self.sleep_for = sleep

    def new(self, **kw) -> _Retry:
        return super().new(**{"resent": self.resent, "notify": self.notify, "sleep": self.sleep_for, **kw})

    def increment(self, method=None, url=None, response=None, error=None, **kw) -> _Retry:
        if (not self.resent and isinstance(error, ProtocolError) and error.args
                and isinstance(error.args[-1], (ConnectionResetError, BrokenPipeError))):
            return self.new(resent=True)
        return super().increment(method, url, response, error, **kw)

    def get_retry_after(self, response) -> float | None:
        """The wait a 429 or 503 asks for, at most RETRY_AFTER_MAX; None for another answer, or
        without a Retry-After that is seconds or an HTTP date (the backoff then)."""
        if response is None or response.status not in REFUSALS:
            return None
        try:
            wait = super().get_retry_after(response)
        except InvalidHeader:
            return None
        return None if wait is None else min(wait, RETRY_AFTER_MAX)

    def sleep(self, response=None) -> None:
        wait = self.get_retry_after(response)
        if wait is None:
            wait = self.get_backoff_time()
        if wait <= 0:
            return
        if response is not None and self.notify is not None:
            reason = REFUSALS.get(response.status, "server error")
            self.notify(f"{reason} ({response.status}), retrying in {math.ceil(wait)} s")
        self.sleep_for(wait)


def _retries(attempts: int, creates: bool, notify: Callable[[str], None] | None,
             sleep: Callable[[float], None]) -> _Retry:
    """`attempts` retries of each kind of transient failure; redirects counted apart. A create
    is not sent again once it may have arrived: no read retries, no 502/504."""
    return _Retry(total=None, connect=attempts, read=0 if creates else attempts, status=attempts, other=attempts,
                  redirect=REDIRECTS, status_forcelist=tuple(REFUSALS) if creates else (429, 502, 503, 504),
                  allowed_methods=None, backoff_factor=BACKOFF, raise_on_redirect=False, raise_on_status=False,
                  notify=notify, sleep=sleep)


def _pools(url: str) -> urllib3.PoolManager:
    """urllib3's pools for the server at `url`, through the proxy urllib would use for it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(0, f"not an http:// or https:// URL: {url}")
    kw: dict[str, Any] = {"maxsize": POOL}
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname):
        return urllib3.PoolManager(**kw)
    if "://" not in proxy:
        proxy = "http://" + proxy
    auth = urllib3.util.parse_url(proxy).auth
    if auth:
        kw["proxy_headers"] = urllib3.make_headers(proxy_basic_auth=urllib.parse.unquote(auth))
    try:
        return urllib3.proxy_from_url(proxy, **kw)
    except urllib3.exceptions.HTTPError as exc:  # a socks:// proxy, say
        raise HttpError(0, f"proxy {proxy}: {exc!r}") from None


class Api:
    def __init__(self, server: str, token: str, notify: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        """`notify`: told each wait before a retry (`Report.notice`); `sleep` waits (tests count)."""
        self.base = server.rstrip("/") + "/api/v1"
        self.token = token
        self.notify = notify
        self.sleep = sleep
        self.down = False  # the last request gave up on an unreachable server
        self._http = _pools(self.base)

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._http.clear()

    def request(self, method: str, path: str, *, params: dict | None = None, body: bytes | None = None,
                content_type: str | None = None, timeout: float = TIMEOUT,
                creates: bool = False) -> tuple[int, bytes, Any]:
        """`creates`: the request makes something (a POST of a document, folder, attachment)."""
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}", "User-Agent": USER_AGENT}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            resp = self._http.request(method, url, body=body, headers=headers, timeout=timeout,
                                      retries=_retries(0 if self.down else RETRIES, creates, self.notify, self.sleep),
                                      redirect=method in ("GET", "HEAD"))
        except MaxRetryError as exc:  # refused, reset, timed out, TLS, DNS: after the retries
            self.down = True
            raise HttpError(0, f"server unreachable: {exc.reason}") from None
        except urllib3.exceptions.HTTPError as exc:  # a redirect to a URL that is not one, ...
            raise HttpError(0, str(exc)) from None
        self.down = False
        if 200 <= resp.status < 300:
            return resp.status, resp.data, resp.headers
        if resp.status == 401:
            raise Unauthorized(401, _detail(resp.data))
        raise HttpError(resp.status, _detail(resp.data))

    def json(self, method: str, path: str, payload: Any = None, **kw) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        _, data, _ = self.request(method, path, body=body, content_type="application/json" if body else None, **kw)
        return json.loads(data) if data else None

    def bytes(self, method: str, path: str, body: bytes | None = None, **kw) -> bytes:
        ctype = "application/octet-stream" if body is not None else None
        return self.request(method, path, body=body, content_type=ctype, **kw)[1]

    def json_body(self, method: str, path: str, body: bytes, **kw) -> Any:
        """Raw bytes in, JSON out (an upload)."""
        _, data, _ = self.request(method, path, body=body, content_type="application/octet-stream", **kw)
        return json.loads(data)

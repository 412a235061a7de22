"""The sync client's HTTP: a few blocking calls with a PAT (urllib; the client runs one pass at a
time, so nothing here needs an event loop). Transient failures (connection refused, 502-504) are
retried a bounded number of times; every other answer is returned or raised as `HttpError`.
Once a request has given up on an unreachable server, the next ones try once each (no backoff)
until one gets through: a server that died mid-pass fails the rest of the pass's items in
moments, each named, instead of minutes of retries per item."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

RETRIES = 4            # attempts after the first for a transient failure
BACKOFF = 0.5          # seconds before the first retry, doubled each time
TIMEOUT = 90.0         # seconds for one request (a long-poll asks for less)


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


class Api:
    def __init__(self, server: str, token: str):
        self.base = server.rstrip("/") + "/api/v1"
        self.token = token
        self.down = False  # the last request gave up on an unreachable server

    def request(self, method: str, path: str, *, params: dict | None = None, body: bytes | None = None,
                content_type: str | None = None, timeout: float = TIMEOUT) -> tuple[int, bytes, Any]:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}"}
        if content_type:
            headers["Content-Type"] = content_type
        delay = BACKOFF
        retries = 0 if self.down else RETRIES
        for attempt in range(retries + 1):
            req = urllib.request.Request(url, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    self.down = False
                    return resp.status, resp.read(), resp.headers
            except urllib.error.HTTPError as exc:
                data = exc.read()
                self.down = False
                if exc.code in (502, 503, 504) and attempt < retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                if exc.code == 401:
                    raise Unauthorized(401, _detail(data)) from None
                raise HttpError(exc.code, _detail(data)) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                if attempt < retries:
                    time.sleep(delay)
                    delay *= 2
                    continue
                self.down = True
                raise HttpError(0, f"server unreachable: {getattr(exc, 'reason', exc)}") from None
        raise AssertionError("unreachable")

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

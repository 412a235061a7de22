"""The middleware every request passes through (`build`): request id, CORS preflights, errors
(any exception becomes problem+json; stack traces stay in the server log), metrics.

The headers every answer carries (request id, security headers, CORS for an allowed origin) are
set by `on_prepare`, the app's response-prepare signal, so streamed answers (SSE, the AI proxy)
carry them too: a stream's headers leave before its handler returns."""

from __future__ import annotations

import contextvars
import json
import logging
import itertools
import os
import re
import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from mdsync.api import errors
from mdsync.db import cancelled

log = logging.getLogger("mdsync.http")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
_SANE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# a request id the client did not send: 32 hex characters, a random prefix per process and a
# counter (an id correlates log lines, it is no secret; uuid4 per request cost ~10 µs under load)
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

ALLOW_HEADERS = ("Authorization, Content-Type, If-Match, If-None-Match, X-Request-Id, X-Mdsync-Workspace,"
                 " X-Mdsync-Context, X-Mdsync-Share, x-api-key, anthropic-version, anthropic-beta,"
                 " anthropic-dangerous-direct-browser-access, OpenAI-Organization, OpenAI-Project, OpenAI-Beta,"
                 " Idempotency-Key")
# the official OpenAI and Anthropic SDKs send x-stainless-* headers (os, runtime, retry count...):
# a preflight asking for them is answered with them
_SDK_HEADER = re.compile(r"^x-stainless-[a-z0-9-]{1,64}$")
EXPOSE_HEADERS = ("ETag, Retry-After, X-Request-Id, Location, Content-Disposition, x-should-retry, retry-after-ms,"
                  " request-id")
ALLOW_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_ORIGIN: web.RequestKey[str | None] = web.RequestKey("cors_origin", object)  # None: no CORS headers


def _allow_headers(requested: str) -> str:
    extra = [h.strip() for h in requested.split(",") if _SDK_HEADER.match(h.strip().lower())]
    return ", ".join([ALLOW_HEADERS, *extra])


# Path segments that are secrets in their own right: a share link's token is the whole credential
# (GET /api/v1/share/{token}), so a log line with the raw path would hand it out. Matched on the
# path itself, not on the route's parameters: a request no route matches (POST /share/{token},
# /share/{token}/) is logged too.
_SECRET_SEGMENT = re.compile(r"(/share/).*", re.DOTALL)  # the rest of the path, whatever it holds


def loggable_path(request: web.BaseRequest) -> str:
    """The request path for logs: without the query (WebSocket URLs carry `?token=`, signed
    attachment URLs `?sig=`) and with secret path segments replaced by `{token}`."""
    path = request.path
    return _SECRET_SEGMENT.sub(r"\1{token}", path) if "/share/" in path else path


def problem_response(error: errors.ApiError, request_id: str | None = None) -> web.Response:
    body = error.problem()
    if request_id:
        body["request_id"] = request_id
    resp = web.Response(status=error.status, text=json.dumps(body),
                        content_type="application/problem+json", headers=error.headers)
    return resp


def _from_http_exception(exc: web.HTTPException) -> errors.ApiError:
    """aiohttp's own 4xx/5xx (no route, wrong method, body over client_max_size, ...) as a problem."""
    cls = errors.BY_STATUS.get(exc.status)
    if exc.status == 404:
        detail = "no such resource"
    elif exc.status == 413:
        detail = "the request body is too large"
    elif exc.text and not exc.text.startswith(str(exc.status)):
        detail = exc.text
    else:
        detail = exc.reason
    # a plain ApiError dressed as the class of this status: their constructors differ
    error = errors.ApiError(detail)
    error.status = exc.status
    error.slug = cls.slug if cls else "http-error"
    error.title = cls.title if cls else exc.reason
    for name in ("Allow", "Retry-After"):
        if name in exc.headers:
            error.headers[name] = exc.headers[name]
    return error


def build(cors_origins: list[str], observe: Callable[[web.Request, int, float], None] | None = None):
    """The one middleware every request passes through. In order: the request id; a CORS
    preflight is answered here; the handler runs and any exception becomes problem+json (stack
    traces stay in the server log; a statement the database cancelled at its statement_timeout is
    503 `database-timeout`, on every route); `observe(request, status, seconds)` (the metrics) sees every
    answer, mapped errors and preflights included. One middleware rather than a chain of them:
    each link cost a coroutine and a wrapper per request (bench/README.md, "REST per-request cost")."""
    origins = frozenset(cors_origins)

    @web.middleware
    async def mdsync_middleware(request: web.Request, handler):
        # one coroutine for all of it: a nested one per request cost ~1 µs (bench/README.md)
        started = time.perf_counter()
        status = 500
        try:
            headers = request.headers
            incoming = headers.get("X-Request-Id")
            rid = incoming if incoming and _SANE_ID.match(incoming) else f"{_ID_PREFIX}{next(_id_counter):016x}"
            request[REQUEST_ID] = rid
            request_id_var.set(rid)
            origin = headers.get("Origin")
            allowed = origin is not None and origin in origins
            # on_prepare adds the CORS headers for an allowed origin (set either way: request.get()
            # of a missing key raises and catches a KeyError, ~1 µs per answer)
            request[CORS_ORIGIN] = origin if allowed else None
            if request.method == "OPTIONS" and "Access-Control-Request-Method" in headers:
                if not allowed:
                    response = web.Response(status=204)  # no CORS headers: the browser refuses
                else:
                    response = web.Response(status=204, headers={
                        "Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Methods": ALLOW_METHODS,
                        "Access-Control-Allow-Headers": _allow_headers(
                            headers.get("Access-Control-Request-Headers", "")),
                        "Access-Control-Max-Age": "600",
                        "Vary": "Origin",
                    })
                status = 204
                return response
            try:
                response = await handler(request)
            except errors.ApiError as exc:
                response = problem_response(exc, rid)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = problem_response(_from_http_exception(exc), rid)
            except HttpProcessingError as exc:
                # aiohttp's parser, raised while a handler reads the body: broken chunked encoding,
                # a multipart part with a bad or overlong header line. The client's fault, not ours.
                log.info("malformed request body in %s %s: %s", request.method, loggable_path(request),
                         exc.__class__.__name__)
                response = problem_response(errors.BadRequest("the request body is malformed HTTP"), rid)
            except ConnectionResetError as exc:
                # the client went away mid-request: nothing to answer
                log.info("connection lost during %s %s: %s", request.method, loggable_path(request),
                         exc.__class__.__name__)
                raise
            except Exception as exc:
                if cancelled(exc):
                    # statement_timeout: the database was slow or a row locked, the code is not
                    # wrong. The log line names the request, never the statement or its values.
                    log.warning("database statement timed out in %s %s (%s)", request.method,
                                loggable_path(request), exc.__class__.__name__)
                    error = errors.DatabaseTimeout()
                else:
                    log.exception("unhandled error in %s %s", request.method, loggable_path(request))
                    error = errors.Internal("an unexpected error occurred; see the server log")
                response = problem_response(error, rid)
            status = response.status
            return response
        except web.HTTPException as exc:  # a 101 upgrade and friends, raised past the error mapping
            status = exc.status
            return exc
        finally:
            if observe is not None:
                observe(request, status, time.perf_counter() - started)

    return mdsync_middleware


class _Done:
    """An awaitable that is already done: `on_prepare`'s receiver does its work when called, and
    aiohttp's signal awaits what it returns (a coroutine per answer cost more than the headers)."""

    __slots__ = ()

    def __await__(self):
        return iter(())


_DONE = _Done()


def on_prepare(hsts: bool):
    """The response-prepare signal: headers every answer carries, streamed or not (a handler's own
    value of any of them wins)."""
    static = (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
              ("Referrer-Policy", "no-referrer"),
              ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
              ("Cross-Origin-Opener-Policy", "same-origin"),
              *((("Strict-Transport-Security", "max-age=31536000"),) if hsts else ()))

    def add_headers(request: web.Request, resp: web.StreamResponse) -> _Done:
        headers = resp.headers
        try:  # both set by the middleware, before any answer can be prepared
            rid, origin = request[REQUEST_ID], request[CORS_ORIGIN]
        except KeyError:
            rid = origin = None
        if rid:
            headers.setdefault("X-Request-Id", rid)
        for name, value in static:
            headers.setdefault(name, value)
        if origin is not None and "Access-Control-Allow-Origin" not in headers:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            headers.add("Vary", "Origin")
        return _DONE

    return add_headers

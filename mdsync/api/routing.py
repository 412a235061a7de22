"""Route declarations. Each feature builds a `Routes` table; every entry names its method, path,
body/query/response models and whether it needs a signed-in caller. The same table registers the
aiohttp handlers and generates the OpenAPI document, so the two cannot drift apart.

The wrapper around every handler does the uniform parts, in order: authenticate (when the route
needs a caller), enforce the token's write scope, read and validate the body and the query.
Authorization on workspaces and documents is the feature's `require(...)` call in the handler.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from mdsync.api import errors
from mdsync.api.models import OPAQUE
from mdsync.appkeys import ROUTE_TABLES

Handler = Callable[..., Awaitable[web.StreamResponse]]
AuthMode = Literal["none", "user", "optional"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

class Authenticator(Protocol):
    """Who is calling (auth/service.py `AuthService`)."""

    async def authenticate(self, request: web.Request, optional: bool = False) -> Any: ...

    def client_address(self, request: web.Request) -> str: ...


AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator", Authenticator)
BODY_LIMIT: web.AppKey[int] = web.AppKey("body_limit", int)
# what the wrapper leaves on the request for the handler
PRINCIPAL: web.RequestKey[Any] = web.RequestKey("principal", object)
ROUTE_SPEC: web.RequestKey[Any] = web.RequestKey("route_spec", object)


@dataclass(frozen=True)
class RouteSpec:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    auth: AuthMode = "user"
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    raw_body: str | None = None        # content type of a non-JSON body (documented, read by the handler)
    raw_response: str | None = None    # content type of a non-JSON answer
    write_scope: bool | None = None    # None: needed for every method but GET/HEAD
    key_header: str | None = None      # a header that may carry the token instead (the Anthropic SDK's x-api-key)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_write_scope(self) -> bool:
        return self.method not in SAFE_METHODS if self.write_scope is None else self.write_scope


class Routes:
    def __init__(self, tag: str):
        self.tag = tag
        self.specs: list[RouteSpec] = []

    def route(self, method: str, path: str, summary: str, **options: Any):
        def decorate(handler: Handler) -> Handler:
            self.specs.append(RouteSpec(method, path, handler, summary, self.tag, **options))
            return handler
        return decorate

    def get(self, path, summary, **o): return self.route("GET", path, summary, **o)
    def post(self, path, summary, **o): return self.route("POST", path, summary, **o)
    def put(self, path, summary, **o): return self.route("PUT", path, summary, **o)
    def patch(self, path, summary, **o): return self.route("PATCH", path, summary, **o)
    def delete(self, path, summary, **o): return self.route("DELETE", path, summary, **o)

    def register(self, app: web.Application) -> None:
        for spec in self.specs:
            handler = _wrap(spec)
            app.router.add_route(spec.method, spec.path, handler)
            if spec.method == "GET":
                # HTTP semantics: HEAD is GET without a body (aiohttp leaves out a Response's
                # body; handlers that stream check `is_head` and end after the headers)
                app.router.add_route("HEAD", spec.path, handler)


def add_routes(app: web.Application, *tables: Routes) -> None:
    """Serve a feature's route tables and list them in `app[ROUTE_TABLES]` (the OpenAPI document
    and the tests enumerate routes from there)."""
    for table in tables:
        table.register(app)
        app[ROUTE_TABLES].append(table)


def is_head(request: web.BaseRequest) -> bool:
    """A HEAD request on a GET route: answer its status and headers, write no body, wait for nothing."""
    return request.method == "HEAD"


def _wrap(spec: RouteSpec) -> Handler:
    # what every call asks of the spec, asked once
    authenticated, optional, key_header = spec.auth != "none", spec.auth == "optional", spec.key_header
    needs_write = spec.needs_write_scope

    async def handler(request: web.Request) -> web.StreamResponse:
        if "%00" in request.raw_path:  # rare: only such a request pays for the look
            request = without_nul(request)
        request[ROUTE_SPEC] = spec
        if authenticated:
            principal = await request.app[AUTHENTICATOR].authenticate(request, optional=optional,
                                                                       key_header=key_header)
            request[PRINCIPAL] = principal
            if needs_write and principal is not None and not principal.can_write:
                raise errors.Forbidden("this token has the read scope only")
        kwargs: dict[str, Any] = {}
        if spec.body is not None:
            kwargs["body"] = await parse_json(request, spec.body)
        if spec.query is not None:
            kwargs["query"] = validate(spec.query, dict(request.query), location="query")
        return await spec.handler(request, **kwargs)

    handler.__name__ = spec.handler.__name__
    return handler


# No id, token, cursor or name the server issues holds a NUL character, and PostgreSQL text cannot
# hold one: a NUL in a path or query parameter is read as U+FFFD (as CommonMark reads a NUL), so
# the parameter names nothing and the request gets, on both engines, the answer any unknown id or
# malformed parameter gets (404, or 422 where the parameter's shape is checked).
NUL, REPLACEMENT = "\x00", "\ufffd"


def without_nul(request: web.Request) -> web.Request:
    """The request with every NUL in its path parameters and query read as U+FFFD."""
    info = request.match_info
    for name, value in info.items():
        if NUL in value:
            info[name] = value.replace(NUL, REPLACEMENT)  # the clone shares this match info
    return request.clone(rel_url=request.raw_path.replace("%00", "%EF%BF%BD"))


_JSON_TYPE = {"Content-Type": "application/json; charset=utf-8"}


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer, as `web.json_response` makes it (application/json; charset=utf-8) but
    encoded by orjson: ~15x faster than json.dumps on GET /me's body, a tenth of that request's
    cost (bench/README.md "REST per-request cost"). UTF-8 rather than \\u escapes, no spaces. The
    Content-Type header is given whole: aiohttp's content_type and charset arguments build it
    per answer (0.6 µs)."""
    return web.Response(body=orjson.dumps(data), status=status,
                        headers=_JSON_TYPE if headers is None else {**headers, **_JSON_TYPE})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw request body, refusing (413) anything over `limit` bytes before reading it all."""
    if request.content_length is not None and request.content_length > limit:
        raise errors.TooLarge(f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise errors.TooLarge(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_text(request: web.Request, limit: int) -> str:
    """A text body (markdown): UTF-8 without NUL characters (which PostgreSQL text cannot hold),
    else 422 naming the body."""
    raw = await read_body(request, limit)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ValidationFailed.field("body", "is not UTF-8 text") from None
    if NUL in text:
        raise errors.ValidationFailed.field("body", NUL_MESSAGE)
    return text


async def parse_json(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await read_body(request, request.app[BODY_LIMIT])
    if not raw.strip():
        data: Any = {}
    else:
        ctype = request.content_type
        if request.headers.get("Content-Type") and not (ctype == "application/json" or ctype.endswith("+json")):
            raise errors.UnsupportedMediaType(f"expected application/json, got {ctype}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.ValidationFailed.field("body", f"malformed JSON: {exc}") from None
        except RecursionError:
            raise errors.ValidationFailed.field("body", "malformed JSON: nested too deeply") from None
        if _ESCAPED_SURROGATE.search(raw) or b"\\u0000" in raw:
            try:
                if isinstance(data, dict):
                    opaque = _opaque_fields(model)
                    for key, item in data.items():
                        _refuse_characters(key, [])
                        _refuse_characters(item, [str(key)], nul_allowed=key in opaque)
                else:
                    _refuse_characters(data, [])
            except RecursionError:
                raise errors.ValidationFailed.field("body", "malformed JSON: nested too deeply") from None
    return validate(model, data)


# JSON may spell an unpaired UTF-16 surrogate as "\ud800"; no UTF-8 text (SQLite, argon2, other
# clients) can carry one, so it is refused here, naming the field, instead of failing deep inside.
# Likewise a NUL ("\u0000", the only way JSON can carry one): PostgreSQL text cannot hold it, so it
# is refused on both engines.
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")
NUL_MESSAGE = "must not contain NUL characters"


def _refuse_characters(value: Any, path: list[str], nul_allowed: bool = False) -> None:
    if isinstance(value, str):
        if NUL in value and not nul_allowed:
            raise errors.ValidationFailed.field(".".join(path) or "body", NUL_MESSAGE)
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            raise errors.ValidationFailed.field(".".join(path) or "body", "must not contain unpaired surrogates")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_characters(key, path)
            _refuse_characters(item, [*path, str(key)])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_characters(item, [*path, str(index)])


@functools.cache
def _opaque_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` typed as `models.OPAQUE` text (passwords), which may hold NUL."""
    def marked(annotation: Any) -> bool:
        return annotation is OPAQUE or any(marked(arg) for arg in get_args(annotation))

    return frozenset(field.alias or name for name, field in model.model_fields.items()
                     if OPAQUE in field.metadata or marked(field.annotation))


def validate(model: type[BaseModel], data: Any, location: str | None = None) -> BaseModel:
    if not isinstance(data, dict):
        raise errors.ValidationFailed.field(location or "body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            name = ".".join(str(p) for p in err["loc"]) or (location or "body")
            if location and name != location:
                name = name  # query parameters are named as sent
            problems.append({"field": name, "message": err["msg"]})
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise errors.ValidationFailed(summary, errors=problems) from None


_PATH_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")


def openapi_path(path: str) -> str:
    """aiohttp `{name:regex}` → OpenAPI `{name}`."""
    return _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", path)


def path_params(path: str) -> list[str]:
    return [m.group(1) for m in _PATH_PARAM.finditer(path)]

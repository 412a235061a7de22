"""HTTP routes of the AI proxy (docs/api.md "AI proxy").

POST /api/v1/ai/openai/v1/chat/completions · POST …/openai/v1/responses · GET …/openai/v1/models
POST /api/v1/ai/anthropic/v1/messages · GET …/anthropic/v1/models      the passthrough (editor+)
GET  /api/v1/ai/models                                                the models the caller may use
GET  /api/v1/ai/usage                                                 usage (admins: everyone's)
GET · PUT · DELETE /api/v1/workspaces/{ws}/ai/keys/{provider}         admin
GET · PUT          /api/v1/workspaces/{ws}/ai/limits                  admin

A passthrough call: the body read and checked (413, 422) → the paying workspace (400, 403) →
context (404, 413) → the body edits → the key (409) → the reservation (403 model, 429) → the
call. Every refusal of ours but a user limit carries `x-should-retry: false`, so the official
SDKs do not retry it.
"""

from __future__ import annotations

from functools import wraps

from aiohttp import web
from pydantic import Field, StrictInt

from mdsync.ai import ssrf
from mdsync.ai.keys import PROVIDERS
from mdsync.ai.ledger import NO_RETRY, Limits, UserLimited
from mdsync.ai.service import AI_KEY, AI
from mdsync.ai.splice import Body as JsonBody
from mdsync.ai.usage import check_date, report
from mdsync.api.errors import ApiError, NotFound, UnsupportedMediaType, ValidationFailed
from mdsync.api.models import Body, Out
from mdsync.api.routing import BODY_LIMIT, PRINCIPAL, Routes, read_body
from mdsync.appkeys import SETTINGS
from mdsync.workspaces.access import require

routes = Routes("ai")
OPENAI, ANTHROPIC = "/api/v1/ai/openai/v1", "/api/v1/ai/anthropic"


class KeyIn(Body):
    api_key: str = Field(min_length=1, max_length=4096)
    base_url: str | None = Field(None, max_length=2048)


class KeyOut(Out):
    provider: str
    last4: str
    base_url: str | None


class LimitsIn(Body):
    tokens_per_month: StrictInt | None = Field(None, ge=0)
    user_requests_per_minute: StrictInt | None = Field(None, ge=0)
    user_tokens_per_day: StrictInt | None = Field(None, ge=0)
    models: list[str] | None = Field(None, max_length=1000)


class LimitsOut(Out):
    tokens_per_month: int | None
    user_requests_per_minute: int | None
    user_tokens_per_day: int | None
    models: list[str] | None


class ModelOut(Out):
    provider: str
    id: str


class ModelList(Out):
    items: list[ModelOut]
    next_cursor: str | None = None


class UsageQuery(Body):
    workspace_id: str | None = None
    from_: str | None = Field(None, alias="from", description="first day, YYYY-MM-DD (UTC)")
    to: str | None = Field(None, description="last day, YYYY-MM-DD (UTC), inclusive")


class UsageOut(Out):
    workspace_id: str
    user_id: str
    provider: str
    model: str
    day: str
    requests: int
    input_tokens: int
    output_tokens: int
    estimated: bool


class UsageList(Out):
    items: list[UsageOut]
    next_cursor: str | None = None


def _ai(request: web.Request) -> AI:
    return request.app[AI_KEY]


def _no_retry(handler):
    """Our own refusals on the SDK-facing routes carry `x-should-retry: false` (a user limit,
    which passes with time, keeps only its Retry-After)."""
    @wraps(handler)
    async def wrapped(request: web.Request, **kwargs):
        try:
            return await handler(request, **kwargs)
        except ApiError as exc:
            if not isinstance(exc, UserLimited):
                exc.headers.update(NO_RETRY)
            raise
    return wrapped


# -- the passthrough ----------------------------------------------------------------------------
async def _json_body(request: web.Request) -> tuple[bytes, JsonBody]:
    raw = await read_body(request, request.app[BODY_LIMIT])
    ctype = request.content_type
    if request.headers.get("Content-Type") and not (ctype == "application/json" or ctype.endswith("+json")):
        raise UnsupportedMediaType(f"expected application/json, got {ctype}")
    try:
        return raw, JsonBody(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ValidationFailed.field("body", f"malformed JSON: {exc}") from None


async def _generate(request: web.Request, provider_name: str, path: str) -> web.StreamResponse:
    ai = _ai(request)
    provider = ai.providers[provider_name]
    raw, body = await _json_body(request)
    provider.check(path, body)
    access = await ai.paying_workspace(request)
    context = await ai.context(request, access.workspace_id)
    prepared = provider.prepare(path, body, raw, request.app[SETTINGS].ai.default_max_tokens, context)
    upstream = await ai.proxy.upstream(access.workspace_id, provider_name)
    call_id = await ai.ledger.reserve(access.workspace_id, access.user_id, provider_name, prepared.model,
                                      prepared.reserve)
    return await ai.proxy.call(request, provider, path, upstream, prepared, call_id)


async def _list_upstream(request: web.Request, provider_name: str, path: str) -> web.StreamResponse:
    ai = _ai(request)
    access = await ai.paying_workspace(request)
    upstream = await ai.proxy.upstream(access.workspace_id, provider_name)
    return await ai.proxy.call(request, ai.providers[provider_name], path, upstream)


PASS = dict(raw_body="application/json", raw_response="application/json", write_scope=True)


@routes.post(OPENAI + "/chat/completions", "OpenAI Chat Completions through the proxy (editor; stream or not)",
             **PASS)
@_no_retry
async def openai_chat(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "openai", "/chat/completions")


@routes.post(OPENAI + "/responses", "OpenAI Responses through the proxy (editor; stream or not)", **PASS)
@_no_retry
async def openai_responses(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "openai", "/responses")


@routes.get(OPENAI + "/models", "The OpenAI upstream's model list, unchanged (editor)",
            raw_response="application/json", write_scope=True)
@_no_retry
async def openai_models(request: web.Request) -> web.StreamResponse:
    return await _list_upstream(request, "openai", "/models")


@routes.post(ANTHROPIC + "/v1/messages", "Anthropic Messages through the proxy (editor; stream or not;"
             " the mdsync token in x-api-key or Bearer)", key_header="x-api-key", **PASS)
@_no_retry
async def anthropic_messages(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "anthropic", "/v1/messages")


@routes.get(ANTHROPIC + "/v1/models", "The Anthropic upstream's model list, unchanged (editor)",
            raw_response="application/json", write_scope=True, key_header="x-api-key")
@_no_retry
async def anthropic_models(request: web.Request) -> web.StreamResponse:
    return await _list_upstream(request, "anthropic", "/v1/models")


# -- models and usage ---------------------------------------------------------------------------
@routes.get("/api/v1/ai/models", "The models the caller may use in the paying workspace", response=ModelList)
async def models(request: web.Request) -> web.Response:
    ai = _ai(request)
    access = await ai.paying_workspace(request)
    return web.json_response({"items": await ai.models(access.workspace_id), "next_cursor": None})


@routes.get("/api/v1/ai/usage", "AI usage per user, provider, model and day (admins: everyone's)",
            query=UsageQuery, response=UsageList)
async def usage(request: web.Request, query: UsageQuery) -> web.Response:
    start, end = check_date(query.from_, "from"), check_date(query.to, "to")
    if query.workspace_id:
        await require(request, "viewer", workspace_id=query.workspace_id)
    items = await report(_ai(request).db, request[PRINCIPAL].user_id, query.workspace_id, start, end)
    return web.json_response({"items": items, "next_cursor": None}, headers={"Cache-Control": "no-store"})


# -- keys ---------------------------------------------------------------------------------------
def _provider(request: web.Request) -> str:
    provider = request.match_info["provider"]
    if provider not in PROVIDERS:
        raise NotFound("no such provider: openai or anthropic")
    return provider


KEY_PATH = "/api/v1/workspaces/{ws}/ai/keys/{provider}"


@routes.get(KEY_PATH, "A workspace's provider key as shown: provider, last four characters, base_url (admin)",
            response=KeyOut)
async def get_key(request: web.Request) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    shown = await _ai(request).keys.shown(access.workspace_id, _provider(request))
    if shown is None:
        raise NotFound("no key is set for this provider")
    return web.json_response(shown, headers={"Cache-Control": "no-store"})


@routes.put(KEY_PATH, "Store a workspace's provider key, encrypted, without calling the provider (admin)",
            body=KeyIn, status=204)
async def put_key(request: web.Request, body: KeyIn) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    provider = _provider(request)
    api_key = body.api_key.strip()
    if not api_key:
        raise ValidationFailed.field("api_key", "must not be blank")
    ai = _ai(request)
    base_url = body.base_url.strip() if body.base_url else None
    if base_url:
        await ssrf.check_base_url(base_url, ai.settings.allowed_base_urls, ai.proxy.lookup)
    await ai.keys.put(access.workspace_id, provider, api_key, base_url)
    return web.Response(status=204)


@routes.delete(KEY_PATH, "Remove a workspace's provider key (admin)", status=204)
async def delete_key(request: web.Request) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    if not await _ai(request).keys.delete(access.workspace_id, _provider(request)):
        raise NotFound("no key is set for this provider")
    return web.Response(status=204)


# -- limits -------------------------------------------------------------------------------------
LIMITS_PATH = "/api/v1/workspaces/{ws}/ai/limits"


@routes.get(LIMITS_PATH, "A workspace's AI limits (admin; null: unlimited / all)", response=LimitsOut)
async def get_limits(request: web.Request) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    return web.json_response((await _ai(request).ledger.limits(access.workspace_id)).json())


@routes.put(LIMITS_PATH, "Replace a workspace's AI limits, all four (admin; a missing field becomes null)",
            body=LimitsIn, response=LimitsOut)
async def put_limits(request: web.Request, body: LimitsIn) -> web.Response:
    access = await require(request, "admin", workspace_id=request.match_info["ws"])
    models = None if body.models is None else list(dict.fromkeys(m.strip() for m in body.models if m.strip()))
    limits = Limits(body.tokens_per_month, body.user_requests_per_minute, body.user_tokens_per_day, models)
    await _ai(request).ledger.set_limits(access.workspace_id, limits)
    return web.json_response(limits.json())

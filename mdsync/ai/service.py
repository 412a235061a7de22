"""The AI feature's service (`app[AI]`): which workspace pays for a call, the context documents
a call carries, the model list, and the parts it is made of (keys, ledger, proxy)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import aiohttp
from aiohttp import web

from mdsync.ai.anthropic import Anthropic
from mdsync.ai.keys import KeyStore
from mdsync.ai.ledger import NO_RETRY, Ledger
from mdsync.cluster import CLUSTER
from mdsync.ai.openai import OpenAI
from mdsync.ai.provider import Provider
from mdsync.ai.proxy import AIProxy, Target
from mdsync.api.errors import BadRequest, Forbidden, NotFound, TooLarge
from mdsync.api.routing import PRINCIPAL
from mdsync.config import Settings
from mdsync.db import Database
from mdsync.documents.content import CONTENT
from mdsync.ops.metrics import METRICS
from mdsync.workspaces.access import require, resolve

log = logging.getLogger("mdsync.ai")
WORKSPACE_HEADER = "X-Mdsync-Workspace"
CONTEXT_HEADER = "X-Mdsync-Context"
MAX_CONTEXT_DOCUMENTS = 100
MODELS_TTL = 600.0          # docs/api.md "AI proxy": upstream model lists are cached 10 minutes
MODELS_FAILURE_TTL = 60.0   # an upstream that could not be reached is asked again after a minute
MODELS_TIMEOUT = 5.0


class AI:
    def __init__(self, app: web.Application, settings: Settings, db: Database, secret: str):
        self.app = app
        self.settings = settings.ai
        self.db = db
        self.keys = KeyStore(db, secret)
        self.ledger = Ledger(db, app[CLUSTER].node_id)
        self.proxy = AIProxy(settings.ai, self.keys, self.ledger)
        self.providers: dict[str, Provider] = {"openai": OpenAI(), "anthropic": Anthropic()}
        calls = app[METRICS].counter("mdsync_ai_calls_total", "AI proxy calls by provider and outcome"
                                     " (2xx/4xx/5xx: the upstream's status; unreachable; client_gone)",
                                     ("provider", "outcome"))
        tokens = app[METRICS].counter("mdsync_ai_tokens_total", "AI tokens recorded (input, output;"
                                      " estimated ones included)", ("provider", "kind"))

        def observe(provider: str, outcome: str, usage) -> None:
            calls.labels(provider, outcome).inc()
            tokens.labels(provider, "input").inc(usage.input_tokens)
            tokens.labels(provider, "output").inc(usage.output_tokens)

        self.proxy.observe = observe
        self._models: dict[tuple, tuple[float, list[str]]] = {}

    # -- who pays --------------------------------------------------------------------------------
    async def paying_workspace(self, request: web.Request):
        """The caller's access to the workspace that pays: `X-Mdsync-Workspace`, else their only
        workspace (none or several: 400 naming the header). Not a member, or below editor: 403
        (AI output is meant for writing)."""
        workspace_id = request.headers.get(WORKSPACE_HEADER, "").strip()
        if not workspace_id:
            rows = await self.db.all("SELECT m.workspace_id FROM members m JOIN workspaces w ON w.id = m.workspace_id"
                                     " WHERE m.user_id = ? AND w.deleted_at IS NULL LIMIT 2",
                                     (request[PRINCIPAL].user_id,))
            if len(rows) != 1:
                raise BadRequest(f"send {WORKSPACE_HEADER}: the id of the workspace that pays for this call"
                                 f" (you are in {'no' if not rows else 'more than one'} workspace)",
                                 errors=[{"field": WORKSPACE_HEADER, "message": "is required"}], headers=NO_RETRY)
            workspace_id = rows[0]["workspace_id"]
        try:
            return await require(request, "editor", workspace_id=workspace_id)
        except NotFound:
            # a header naming a workspace the caller is not in: refused like a role too low
            raise Forbidden(f"you are not a member of the workspace in {WORKSPACE_HEADER}") from None

    # -- context ---------------------------------------------------------------------------------
    async def context(self, request: web.Request, workspace_id: str) -> str | None:
        """The markdown of the documents named in `X-Mdsync-Context`, joined by blank lines; 404 for
        any id the caller cannot read in the paying workspace (one answer for every reason)."""
        header = request.headers.get(CONTEXT_HEADER)
        if header is None:
            return None
        ids = list(dict.fromkeys(part.strip() for part in header.split(",") if part.strip()))
        if not ids:
            return None
        limit = self.settings.context_max_chars
        if len(ids) > MAX_CONTEXT_DOCUMENTS:
            raise TooLarge(f"{CONTEXT_HEADER} names more than {MAX_CONTEXT_DOCUMENTS} documents", headers=NO_RETRY)
        parts, size = [], 0
        for doc_id in ids:
            try:
                access = await resolve(self.db, request[PRINCIPAL], document_id=doc_id, workspace_id=workspace_id)
            except NotFound:
                raise NotFound(f"no such document in {CONTEXT_HEADER}: {doc_id[:64]}", headers=NO_RETRY) from None
            markdown, _ = await self.app[CONTENT].read(access.document)
            size += len(markdown) + (2 if parts else 0)
            if size > limit:
                raise TooLarge(f"the documents in {CONTEXT_HEADER} pass ai.context_max_chars ({limit} characters)",
                               headers=NO_RETRY)
            parts.append(markdown)
        return "\n\n".join(parts)

    # -- models ----------------------------------------------------------------------------------
    async def models(self, workspace_id: str) -> list[dict]:
        """The models the workspace may use: its `models` limit, else each keyed provider's list."""
        keyed: dict[str, Target] = {}
        for name in self.providers:
            try:
                keyed[name] = await self.proxy.upstream(workspace_id, name)
            except Exception:  # no key (409) or a base_url no longer allowed: nothing to list
                continue
        allowed = (await self.ledger.limits(workspace_id)).models
        if allowed is not None:
            return [{"provider": _provider_of(model, keyed), "id": model} for model in allowed]
        lists = await asyncio.gather(*(self._upstream_models(name, up) for name, up in keyed.items()))
        return [{"provider": name, "id": model} for name, ids in zip(keyed, lists) for model in ids]

    async def _upstream_models(self, provider: str, upstream: Target) -> list[str]:
        cache_key = (provider, upstream.base_url, hashlib.sha256(upstream.api_key.encode()).hexdigest())
        cached = self._models.get(cache_key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        impl = self.providers[provider]
        path = "/models" if provider == "openai" else "/v1/models?limit=1000"
        headers = dict(impl.key_headers(upstream.api_key))
        if provider == "anthropic":
            headers["anthropic-version"] = "2023-06-01"
        ids: list[str] | None = None
        try:
            async with upstream.session.get(upstream.base_url.rstrip("/") + path, headers=headers,
                                            allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=MODELS_TIMEOUT)) as resp:
                if resp.status == 200:
                    body = await resp.json(content_type=None)
                    ids = [m["id"] for m in body.get("data") or [] if isinstance(m, dict) and isinstance(m.get("id"), str)]
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError) as exc:
            log.info("AI model list of %s unavailable: %s", provider, exc.__class__.__name__)
        ttl = MODELS_TTL if ids is not None else MODELS_FAILURE_TTL
        self._models[cache_key] = (time.monotonic() + ttl, ids or [])
        return ids or []


def _provider_of(model: str, keyed: dict) -> str:
    if len(keyed) == 1:
        return next(iter(keyed))
    return "anthropic" if model.startswith("claude") else "openai"


AI_KEY: web.AppKey[AI] = web.AppKey("ai", AI)

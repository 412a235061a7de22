"""The AI proxy (docs/api.md "AI proxy"): the editor's OpenAI and Anthropic SDKs talk to
mdsync with their mdsync token; mdsync holds the provider keys, enforces limits and records usage.

routes.py    the HTTP routes (passthrough, models, usage, keys, limits)
service.py   who pays (X-Mdsync-Workspace), context documents (X-Mdsync-Context), the model list
proxy.py     the passthrough itself: key choice, headers, relaying answers and streams, client gone
provider.py  the interface a provider implements, the stream splitter, the usage meter
openai.py    OpenAI wire format (Chat Completions, Responses; Ollama and vLLM alike)
anthropic.py Anthropic wire format (Messages)
splice.py    in-place JSON edits: every byte not edited passes unchanged
keys.py      workspace keys, encrypted with a key derived from the server secret
ssrf.py      where a workspace's base_url may point, checked on PUT and on every call
ledger.py    limits, and reserve-then-settle budgets in one transaction of the single writer
usage.py     the usage report
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from mdsync.ai.routes import routes
from mdsync.api.routing import add_routes
from mdsync.ai.service import AI, AI_KEY
from mdsync.appkeys import DB
from mdsync.cluster import CLUSTER, nodes
from mdsync.config import Settings, ensure_secret

__all__ = ["install", "routes", "AI_KEY"]

log = logging.getLogger("mdsync.ai")


def install(app: web.Application, settings: Settings) -> None:
    """The AI service at app[AI_KEY] and its routes; its HTTP client sessions live as long as the
    app, and it releases the budget reservations a stopped process held (once the database is open;
    with several nodes, those of dead nodes, whenever one dies)."""
    ai = AI(app, settings, app[DB], ensure_secret(settings))
    app[AI_KEY] = ai
    add_routes(app, routes)

    async def sessions(app: web.Application):
        await ai.proxy.start()
        sweep = None
        if app[CLUSTER].enabled:   # other nodes' calls: only a dead node's, and a node may die any time
            await ai.ledger.release_abandoned(nodes.alive_after())
            sweep = asyncio.get_running_loop().create_task(_release_dead_nodes_calls(ai))
        else:
            await ai.ledger.release_abandoned()
        yield
        if sweep is not None:
            sweep.cancel()
            await asyncio.gather(sweep, return_exceptions=True)
        await ai.proxy.stop()

    app.cleanup_ctx.append(sessions)


async def _release_dead_nodes_calls(ai: AI) -> None:
    while True:
        await asyncio.sleep(nodes.LEASE_SECONDS)
        try:
            await ai.ledger.release_abandoned(nodes.alive_after())
        except Exception as exc:   # the database away: the next round tries again
            log.warning("releasing dead nodes' AI calls failed: %s", exc)

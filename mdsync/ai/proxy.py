"""The passthrough: one call from the editor's SDK to its provider, with mdsync's key.

`AIProxy.call` runs a request that has passed our own checks: the key is chosen (the workspace's
own, else the server's; neither: 409), the call reserved in the ledger, the request sent with
the client's headers less hop-by-hop ones and its mdsync token, and the answer relayed as it
arrives (streams chunk by chunk) while the provider's meter reads usage alongside. Whatever
happens after the reservation (an upstream error, an idle stream, the client going away) ends
in `finally` with the call settled. A client that goes away is noticed within a fraction of a
second even while the upstream is silent (`ClientWatch`), and the upstream request is ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from mdsync.ai import ssrf
from mdsync.ai.keys import KeyStore
from mdsync.ai.ledger import NO_RETRY, Ledger
from mdsync.ai.provider import Meter, Prepared, Provider, Usage
from mdsync.api.errors import Conflict, Upstream
from mdsync.config import AISettings

log = logging.getLogger("mdsync.ai")

# never forwarded upstream: hop-by-hop headers, the caller's own credentials and browser context,
# mdsync's own headers; Content-Length and Accept-Encoding are set by the client library
_REQUEST_DROP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "authorization", "x-api-key",
    "cookie", "origin", "referer", "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
    "x-real-ip", "x-request-id", "x-mdsync-workspace", "x-mdsync-context", "x-mdsync-share",
})
# never relayed back: hop-by-hop, framing (the answer is re-framed, decompressed), cookies, and the
# headers our own middleware owns
_RESPONSE_DROP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "te", "trailer", "trailers", "transfer-encoding",
    "upgrade", "content-length", "content-encoding", "set-cookie", "date", "server", "vary",
    "strict-transport-security", "alt-svc",
})
MAX_ANSWER_BYTES = 64 * 1024 * 1024
WATCH_INTERVAL = 0.1


@dataclass(frozen=True)
class Target:
    base_url: str
    api_key: str
    session: aiohttp.ClientSession
    held_by: str  # "workspace" or "server": named in our own words when the provider refuses it


def request_headers(incoming, provider: Provider, api_key: str) -> CIMultiDict:
    named_hop = {h.strip().lower() for h in incoming.get("Connection", "").split(",")}
    headers = CIMultiDict((k, v) for k, v in incoming.items()
                          if k.lower() not in _REQUEST_DROP and k.lower() not in named_hop
                          and not k.lower().startswith("sec-"))
    headers.update(provider.key_headers(api_key))
    if provider.name == "anthropic" and "anthropic-version" not in headers:
        headers["anthropic-version"] = "2023-06-01"
    return headers


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict:
    return CIMultiDict((k, v) for k, v in upstream.headers.items()
                       if k.lower() not in _RESPONSE_DROP and not k.lower().startswith("access-control-"))


class ClientGone(Exception):
    pass


class ClientWatch:
    """One task for the whole proxy that looks at the connections of the calls in flight every
    WATCH_INTERVAL and cancels the exchange of each whose client has gone (aiohttp cancels no
    handler for that), so its upstream request ends at once. One timer for all calls: a task
    per call would wake 2 000 times a second at 200 calls in flight."""

    def __init__(self):
        self._calls: dict[asyncio.Task, web.Request] = {}
        self._gone: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def watch(self, work: asyncio.Task, request: web.Request) -> None:
        self._calls[work] = request
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def forget(self, work: asyncio.Task) -> bool:
        """Stop watching; whether the watch cancelled it because its client went away."""
        self._calls.pop(work, None)
        if work in self._gone:
            self._gone.discard(work)
            return True
        return False

    async def _run(self) -> None:
        while self._calls:
            await asyncio.sleep(WATCH_INTERVAL)
            for work, request in list(self._calls.items()):
                transport = request.transport
                if (transport is None or transport.is_closing()) and not work.done():
                    self._gone.add(work)
                    work.cancel()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass
class Exchange:
    """What one call got from upstream so far: for the settlement."""

    status: int = 0
    response: web.StreamResponse | None = None


class AIProxy:
    def __init__(self, settings: AISettings, keys: KeyStore, ledger: Ledger):
        self.settings = settings
        self.keys = keys
        self.ledger = ledger
        self.lookup: ssrf.Lookup = ssrf.system_lookup  # tests map names to addresses here
        self.trusted: aiohttp.ClientSession | None = None
        self.checked: aiohttp.ClientSession | None = None
        self.watcher = ClientWatch()
        # (provider, outcome, usage) after each call: the AI feature counts them for /metrics
        self.observe: Callable[[str, str, Usage], None] = lambda provider, outcome, usage: None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.idle_timeout)
        self.trusted = aiohttp.ClientSession(timeout=timeout, auto_decompress=True, trust_env=False,
                                             connector=aiohttp.TCPConnector(limit=0))
        # workspace base URLs: every connection resolves anew through the address check
        self.checked = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=True, trust_env=False,
            connector=aiohttp.TCPConnector(limit=0, use_dns_cache=False,
                                           resolver=ssrf.CheckedResolver(lambda: self.lookup)))

    async def stop(self) -> None:
        await self.watcher.stop()
        for session in (self.trusted, self.checked):
            if session is not None:
                await session.close()

    def server_base(self, provider: str) -> str:
        return getattr(self.settings, provider).base_url

    async def upstream(self, workspace_id: str, provider: str) -> Target:
        """The key that pays: the workspace's own, else the server's; neither → 409."""
        stored = await self.keys.get(workspace_id, provider)
        if stored is not None:
            base = stored.base_url or self.server_base(provider)
            session = self.trusted
            if stored.base_url and ssrf.must_check(stored.base_url, self.settings.allowed_base_urls):
                if not stored.base_url.lower().startswith("https://") or not ssrf.literal_is_public(stored.base_url):
                    raise Upstream("this workspace's base_url is no longer allowed; an admin must set it again",
                                   headers=NO_RETRY)
                session = self.checked
            return Target(base, stored.api_key, session, "workspace")
        server_key = getattr(self.settings, provider).api_key
        if server_key:
            return Target(self.server_base(provider), server_key, self.trusted, "server")
        raise Conflict(f"no {provider} key is set for this workspace, and the server has none", headers=NO_RETRY)

    async def call(self, request: web.Request, provider: Provider, path: str, upstream: Target,
                   prepared: Prepared | None = None, call_id: int | None = None) -> web.StreamResponse:
        """Send the request upstream and relay the answer; settle `call_id` whatever happens.

        The exchange runs as its own task beside a watch on the client's connection: when the
        client goes, the exchange is cancelled, which closes the upstream connection at once."""
        meter = provider.meter(path, prepared) if prepared is not None else None
        got = Exchange()
        gone = False
        work = asyncio.ensure_future(self._exchange(request, provider, path, upstream, prepared, meter, got))
        self.watcher.watch(work, request)
        try:
            try:
                return await asyncio.shield(work)
            except ClientGone:
                gone = True
            except asyncio.CancelledError:
                if not self.watcher.forget(work) or not work.done():
                    raise  # not the watch: this handler itself was cancelled
                gone = True
            log.info("AI client went away during %s %s; upstream request ended", request.method, path)
            return got.response if got.response is not None else web.Response(status=499)
        except asyncio.CancelledError:  # the server cancelled this handler: its client went away, or shutdown
            gone = True
            raise
        finally:
            self.watcher.forget(work)
            if not work.done():
                work.cancel()
            usage = _usage(meter, prepared, got.status, gone)
            if call_id is not None:
                await self.ledger.settle(call_id, got.status, usage)
            self.observe(provider.name, _outcome(got.status, gone), usage)

    async def _exchange(self, request: web.Request, provider: Provider, path: str, upstream: Target,
                        prepared: Prepared | None, meter: Meter | None, got: Exchange) -> web.StreamResponse:
        url = upstream.base_url.rstrip("/") + path + (f"?{request.query_string}" if request.query_string else "")
        try:
            method = "GET" if request.method == "HEAD" else request.method  # HEAD: the GET's answer, no body
            answer = await upstream.session.request(
                method, url, data=prepared.body if prepared is not None else None, allow_redirects=False,
                headers=request_headers(request.headers, provider, upstream.api_key))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("AI upstream %s unreachable: %s", provider.name, exc.__class__.__name__)
            raise Upstream(f"the {provider.name} upstream cannot be reached", headers=NO_RETRY) from None
        try:
            got.status = status = answer.status
            if status == 401:
                log.warning("AI upstream %s refused the %s's key (401)", provider.name, upstream.held_by)
                raise Upstream(f"the {provider.name} provider refused the key this {upstream.held_by} holds;"
                               " an admin must replace it", headers=NO_RETRY)
            if answer.content_type == "text/event-stream":
                got.response = web.StreamResponse(status=status, headers=response_headers(answer))
                await self._relay(request, got.response, answer, meter if 200 <= status < 300 else None)
                return got.response
            raw = await self._read(answer)
            if meter is not None and 200 <= status < 300:
                meter.read_body(raw)
            return web.Response(status=status, body=raw, headers=response_headers(answer))
        finally:
            answer.close()

    async def _relay(self, request: web.Request, response: web.StreamResponse, answer: aiohttp.ClientResponse,
                     meter: Meter | None) -> None:
        await response.prepare(request)
        try:
            async for chunk in answer.content.iter_any():
                out = meter.feed(chunk) if meter is not None else chunk
                if out:
                    await _write(response, out)
            if meter is not None and (tail := meter.end()):
                await _write(response, tail)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            # the upstream broke off or went idle past ai.idle_timeout: end our stream there
            log.info("AI upstream stream ended early: %s", exc.__class__.__name__)
            answer.close()
        try:
            await response.write_eof()
        except ConnectionError:
            raise ClientGone() from None

    @staticmethod
    async def _read(answer: aiohttp.ClientResponse) -> bytes:
        chunks, size = [], 0
        async for chunk in answer.content.iter_any():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise Upstream("the provider's answer is too large to relay", headers=NO_RETRY)
            chunks.append(chunk)
        return b"".join(chunks)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:  # the client went away between two looks of ClientWatch
        raise ClientGone() from None


def _outcome(status: int, gone: bool) -> str:
    if gone:
        return "client_gone"
    return f"{status // 100}xx" if status else "unreachable"


def _usage(meter: Meter | None, prepared: Prepared | None, status: int, gone: bool) -> Usage:
    if meter is None or prepared is None:
        return Usage(0, 0, False)
    if 200 <= status < 300:
        return meter.usage(prepared.prompt_chars)
    if status == 0 and gone:  # sent, and the client left before any answer: the prompt was paid for
        return meter.usage(prepared.prompt_chars)
    return Usage(0, 0, False)  # refused upstream or never sent: nothing to pay, the reservation is released

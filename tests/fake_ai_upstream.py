"""A fake OpenAI + Anthropic upstream for the AI proxy's tests and bench: aiohttp on 127.0.0.1:0.

It answers from the fixtures in tests/fixtures/ai/ (written for it after the providers' wire
formats): OpenAI Chat Completions and Responses, Anthropic Messages, streamed or not, and the
model lists. OpenAI routes are under `/openai/v1`, Anthropic's under `/anthropic`, so
`ai.openai.base_url = f"{fake.url}/openai/v1"` and `ai.anthropic.base_url = f"{fake.url}/anthropic"`.

The model name picks a behaviour:
  fake-401 / fake-429 / fake-500   that status, with the provider's error body and retry headers
  fake-inband-error               a 200 stream that breaks off with an in-band error event
  fake-slow                       a stream of 40 content chunks, one every 0.25 s
  fake-idle                       two chunks, then silence until the connection closes
  fake-chunks-N                   a chat stream of N content chunks, written one by one
  fake-hold                       waits until `release()` before answering (concurrency tests)
  anything else                   the fixture answer
A key outside `keys` is a 401 (Ollama mode: any key). Ollama mode (`ollama=True`) also ignores
`stream_options.include_usage`: its chat streams never carry usage.

Every request is recorded (`requests`: method, path, headers, raw body, and when its connection
was seen closed: `closed_at`, by polling the transport while the answer is in progress).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "ai"
OPENAI_KEY = "sk-fake-openai-server-key-0001"
ANTHROPIC_KEY = "sk-ant-fake-server-key-0002"
CHAT_USAGE = (12, 5)
RESPONSES_USAGE = (12, 5)
MESSAGES_USAGE = (15, 7)  # input 10 + cache writes 2 + cache reads 3; output 7


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def sse_events(raw: bytes) -> list[bytes]:
    """The events of an SSE body, each with its terminating blank line."""
    return [part + b"\n\n" for part in raw.split(b"\n\n") if part.strip()]


def is_usage_chunk(event: bytes) -> bool:
    text = event.decode().strip()
    if not text.startswith("data: {"):
        return False
    payload = json.loads(text[6:])
    return payload.get("choices") == [] and "usage" in payload


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    closed_at: float | None = None
    chunks_sent: int = 0

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class FakeUpstream:
    keys: set[str] = field(default_factory=lambda: {OPENAI_KEY, ANTHROPIC_KEY})
    ollama: bool = False
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""
    slow_interval: float = 0.25
    _runner: web.AppRunner | None = None
    _hold: asyncio.Event | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> FakeUpstream:
        app = web.Application()
        app.router.add_post("/openai/v1/chat/completions", self.chat)
        app.router.add_post("/openai/v1/responses", self.responses)
        app.router.add_get("/openai/v1/models", self.openai_models)
        app.router.add_post("/anthropic/v1/messages", self.messages)
        app.router.add_get("/anthropic/v1/models", self.anthropic_models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
        self.url = f"http://127.0.0.1:{port}"
        self._hold = asyncio.Event()
        return self

    async def stop(self) -> None:
        if self._hold is not None:
            self._hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def openai_base(self) -> str:
        return f"{self.url}/openai/v1"

    @property
    def anthropic_base(self) -> str:
        return f"{self.url}/anthropic"

    def settings(self) -> dict:
        """Overrides for tests/builders.make_settings: mdsync's `ai.*` pointed here, with server keys."""
        return {"ai__openai__base_url": self.openai_base, "ai__openai__api_key": OPENAI_KEY,
                "ai__anthropic__base_url": self.anthropic_base, "ai__anthropic__api_key": ANTHROPIC_KEY}

    def environment(self) -> dict[str, str]:
        """The same for an `mdsync serve` process."""
        return {"MDSYNC_AI__OPENAI__BASE_URL": self.openai_base, "MDSYNC_AI__OPENAI__API_KEY": OPENAI_KEY,
                "MDSYNC_AI__ANTHROPIC__BASE_URL": self.anthropic_base, "MDSYNC_AI__ANTHROPIC__API_KEY": ANTHROPIC_KEY}

    def release(self) -> None:
        """Let every `fake-hold` request answer."""
        self._hold.set()

    # -- helpers --------------------------------------------------------------------------------
    async def _record(self, request: web.Request) -> Recorded:
        rec = Recorded(request.method, request.path_qs, dict(request.headers), await request.read(), time.monotonic())
        self.requests.append(rec)
        return rec

    def _key_ok(self, request: web.Request, anthropic: bool) -> bool:
        if self.ollama:
            return True
        if anthropic:
            return request.headers.get("x-api-key") in self.keys
        auth = request.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.keys

    @staticmethod
    def _error(status: int, anthropic: bool) -> web.Response:
        kinds = {401: ("authentication_error", "invalid_api_key", "Incorrect API key provided: sk-...yek (fake)"),
                 429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached for requests (fake)"),
                 500: ("api_error", "server_error", "The server had an error (fake)")}
        kind, code, message = kinds[status]
        body = ({"type": "error", "error": {"type": kind, "message": message}} if anthropic
                else {"error": {"message": message, "type": kind, "param": None, "code": code}})
        headers = {"x-request-id": f"req_fake_{status}"}
        if status in (429, 500):
            headers.update({"retry-after": "7", "retry-after-ms": "7000", "x-ratelimit-remaining-requests": "0"})
        if anthropic:
            headers["request-id"] = f"req_fake_{status}"
        return web.json_response(body, status=status, headers=headers)

    async def _closed_watch(self, request: web.Request, rec: Recorded) -> None:
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                rec.closed_at = time.monotonic()
                return
            await asyncio.sleep(0.01)

    async def _stream(self, request: web.Request, rec: Recorded, events: list[bytes], interval: float = 0.0,
                      then_idle: bool = False) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "x-request-id": "req_fake_stream"})
        await resp.prepare(request)
        watch = asyncio.ensure_future(self._closed_watch(request, rec))
        try:
            for event in events:
                if rec.closed_at is not None:
                    break
                await resp.write(event)
                rec.chunks_sent += 1
                if interval:
                    await asyncio.sleep(interval)
            if then_idle:
                await asyncio.wait_for(watch, 600)
            else:
                await resp.write_eof()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            if not then_idle:
                await asyncio.sleep(0)
            watch.cancel()
            if rec.closed_at is None and (request.transport is None or request.transport.is_closing()):
                rec.closed_at = time.monotonic()
        return resp

    async def _special(self, request: web.Request, rec: Recorded, model: str, anthropic: bool,
                       events: list[bytes]) -> web.StreamResponse | None:
        if model in ("fake-401", "fake-429", "fake-500"):
            return self._error(int(model[5:]), anthropic)
        if model == "fake-hold":
            watch = asyncio.ensure_future(self._closed_watch(request, rec))
            try:
                await asyncio.wait_for(self._hold.wait(), 60)
            finally:
                watch.cancel()
            return None
        if model == "fake-slow":
            content = [e for e in events if b'"content":"' in e or b"text_delta" in e]
            return await self._stream(request, rec, events[:2] + content * 8 + events[-2:], interval=self.slow_interval)
        if model == "fake-idle":
            return await self._stream(request, rec, events[:3], then_idle=True)
        if model == "fake-inband-error":
            error = (b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
                     if anthropic else b'data: {"error":{"message":"The server is overloaded (fake)","type":"server_error",'
                                       b'"param":null,"code":null}}\n\n')
            return await self._stream(request, rec, events[:3] + [error])
        match = re.fullmatch(r"fake-chunks-(\d+)", model)
        if match and not anthropic:
            many = _many_chunks(int(match.group(1)))
            if not any(is_usage_chunk(e) for e in events):  # the client did not ask for usage
                many = [e for e in many if not is_usage_chunk(e)]
            return await self._stream(request, rec, many)
        return None

    # -- routes ---------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if not self._key_ok(request, anthropic=False):
            return self._error(401, False)
        body = rec.json()
        events = sse_events(fixture("chat_stream.sse"))
        wants_usage = bool((body.get("stream_options") or {}).get("include_usage")) and not self.ollama
        if not wants_usage:
            events = [e for e in events if not is_usage_chunk(e)]
        special = await self._special(request, rec, body.get("model", ""), False, events)
        if special is not None:
            return special
        if body.get("stream"):
            return await self._stream(request, rec, events)
        return web.Response(body=fixture("chat.json"), content_type="application/json",
                            headers={"x-request-id": "req_fake_chat"})

    async def responses(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if not self._key_ok(request, anthropic=False):
            return self._error(401, False)
        body = rec.json()
        events = sse_events(fixture("responses_stream.sse"))
        special = await self._special(request, rec, body.get("model", ""), False, events)
        if special is not None:
            return special
        if body.get("stream"):
            return await self._stream(request, rec, events)
        return web.Response(body=fixture("responses.json"), content_type="application/json",
                            headers={"x-request-id": "req_fake_responses"})

    async def messages(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        if not self._key_ok(request, anthropic=True):
            return self._error(401, True)
        body = rec.json()
        events = sse_events(fixture("messages_stream.sse"))
        special = await self._special(request, rec, body.get("model", ""), True, events)
        if special is not None:
            return special
        if body.get("stream"):
            return await self._stream(request, rec, events)
        return web.Response(body=fixture("messages.json"), content_type="application/json",
                            headers={"request-id": "req_fake_messages"})

    async def openai_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._key_ok(request, anthropic=False):
            return self._error(401, False)
        return web.Response(body=fixture("openai_models.json"), content_type="application/json")

    async def anthropic_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._key_ok(request, anthropic=True):
            return self._error(401, True)
        return web.Response(body=fixture("anthropic_models.json"), content_type="application/json")


def _many_chunks(n: int) -> list[bytes]:
    head = b'data: {"id":"chatcmpl-many","object":"chat.completion.chunk","created":1764000000,"model":"gpt-fake","choices":[{"index":0,"delta":{"content":"'
    tail = b'"},"finish_reason":null}]}\n\n'
    events = [head + f"w{i} ".encode() + tail for i in range(n)]
    events.append(b'data: {"id":"chatcmpl-many","object":"chat.completion.chunk","created":1764000000,"model":"gpt-fake",'
                  b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":' + str(n).encode()
                  + b',"total_tokens":' + str(n + 12).encode() + b'}}\n\n')
    events.append(b"data: [DONE]\n\n")
    return events


@pytest.fixture
async def fake_ai():
    """A running fake upstream (stopped afterwards)."""
    fake = await FakeUpstream().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fake_ollama():
    """A fake in Ollama mode: any key, no usage in streams."""
    fake = await FakeUpstream(ollama=True).start()
    yield fake
    await fake.stop()


def main() -> None:
    """`python -m tests.fake_ai_upstream`: serve until stopped, printing `fake upstream on URL`
    (the bench runs it as a process of its own, beside `mdsync serve`)."""
    async def run() -> None:
        fake = await FakeUpstream().start()
        print(f"fake upstream on {fake.url}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await fake.stop()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

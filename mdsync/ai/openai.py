"""OpenAI wire format (also Ollama, vLLM and other OpenAI-compatible upstreams): Chat
Completions and Responses, streamed or not; `GET /models` passes through.

Chat streams get `stream_options.include_usage` upstream, and the usage-only chunk is dropped
when the client did not ask for it. Responses report usage in `response.completed`,
`.incomplete` or `.failed` (streams) or in the answer's `usage`.
"""

from __future__ import annotations

from mdsync.ai.provider import Meter, Prepared, prompt_reservation, text_length
from mdsync.ai.splice import Body
from mdsync.api.errors import ValidationFailed

CHAT, RESPONSES = "/chat/completions", "/responses"


def _model(body: Body) -> str:
    model = body.value.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValidationFailed.field("model", "is required: the provider's model id")
    return model


def _cap(body: Body, *names: str) -> int | None:
    for name in names:
        value = body.value.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValidationFailed.field(name, "must be a positive integer")
        return value
    return None


class OpenAI:
    name = "openai"
    prefix = "/api/v1/ai/openai/v1"
    key_header = "authorization"

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def check(self, path: str, body: Body) -> None:
        _model(body)
        if path == CHAT:
            if not isinstance(body.value.get("messages"), list):
                raise ValidationFailed.field("messages", "must be a list of messages")
            _cap(body, "max_completion_tokens", "max_tokens")
        else:
            _cap(body, "max_output_tokens")

    def prepare(self, path: str, body: Body, raw: bytes, default_cap: int, context: str | None) -> Prepared:
        self.check(path, body)
        model = _model(body)
        stream = body.value.get("stream") is True
        if path == CHAT:
            return self._chat(body, model, stream, default_cap, context)
        return self._responses(body, model, stream, default_cap, context)

    def _chat(self, body: Body, model: str, stream: bool, default_cap: int, context: str | None) -> Prepared:
        messages = body.value.get("messages")
        if not isinstance(messages, list):
            raise ValidationFailed.field("messages", "must be a list of messages")
        cap = _cap(body, "max_completion_tokens", "max_tokens")
        if cap is None:
            cap = default_cap
            body.set("max_completion_tokens", cap)
        wants_usage = True
        if stream:
            options = body.value.get("stream_options")
            wants_usage = isinstance(options, dict) and options.get("include_usage") is True
            if not wants_usage:
                body.set("stream_options", {**(options if isinstance(options, dict) else {}), "include_usage": True})
        if context is not None:
            body.prepend_to_list("messages", {"role": "system", "content": context})
        sent = body.render().encode()
        return Prepared(sent, model, stream, prompt_reservation(sent, len(messages) + 1) + cap,
                        text_length(messages) + len(context or ""), wants_usage)

    def _responses(self, body: Body, model: str, stream: bool, default_cap: int, context: str | None) -> Prepared:
        cap = _cap(body, "max_output_tokens")
        if cap is None:
            cap = default_cap
            body.set("max_output_tokens", cap)
        instructions = body.value.get("instructions")
        if context is not None:
            body.set("instructions", context + "\n\n" + instructions if isinstance(instructions, str) and instructions
                     else context)
        items = body.value.get("input")
        count = len(items) if isinstance(items, list) else 1
        sent = body.render().encode()
        chars = text_length(items) + text_length(body.value.get("instructions"))
        return Prepared(sent, model, stream, prompt_reservation(sent, count + 1) + cap, chars)

    def meter(self, path: str, prepared: Prepared) -> Meter:
        if path == CHAT:
            return ChatMeter(drop_usage_chunk=prepared.stream and not prepared.client_wants_usage)
        return ResponsesMeter()


class ChatMeter(Meter):
    def on_event(self, name, payload) -> bool:
        choices = payload.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict):
                    self.output_chars += _delta_chars(choice.get("delta"))
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self._take(usage)
            if self._drop and not choices:
                return False  # the usage-only chunk the client did not ask for
        return True

    def on_answer(self, payload: dict) -> None:
        for choice in payload.get("choices") or []:
            if isinstance(choice, dict):
                self.output_chars += _delta_chars(choice.get("message"))
        if isinstance(payload.get("usage"), dict):
            self._take(payload["usage"])

    def _take(self, usage: dict) -> None:
        inp, out = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(inp, int) and isinstance(out, int):
            self.input_tokens, self.output_tokens, self.complete = inp, out, True


def _delta_chars(delta) -> int:
    if not isinstance(delta, dict):
        return 0
    chars = sum(len(delta[k]) for k in ("content", "refusal", "reasoning_content", "reasoning")
                if isinstance(delta.get(k), str))
    for call in delta.get("tool_calls") or []:
        if isinstance(call, dict):
            chars += text_length(call.get("function"))
    return chars


class ResponsesMeter(Meter):
    FINAL = ("response.completed", "response.incomplete", "response.failed")

    def on_event(self, name, payload) -> bool:
        kind = payload.get("type") or name
        if isinstance(kind, str) and kind.endswith(".delta") and isinstance(payload.get("delta"), str):
            self.output_chars += len(payload["delta"])
        if kind in self.FINAL and isinstance(payload.get("response"), dict):
            self._take(payload["response"].get("usage"))
        return True

    def on_answer(self, payload: dict) -> None:
        for item in payload.get("output") or []:
            if isinstance(item, dict):
                self.output_chars += sum(len(c["text"]) for c in item.get("content") or []
                                         if isinstance(c, dict) and isinstance(c.get("text"), str))
        self._take(payload.get("usage"))

    def _take(self, usage) -> None:
        if isinstance(usage, dict) and isinstance(usage.get("input_tokens"), int) \
                and isinstance(usage.get("output_tokens"), int):
            self.input_tokens, self.output_tokens, self.complete = usage["input_tokens"], usage["output_tokens"], True

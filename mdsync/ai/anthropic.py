"""Anthropic wire format: Messages, streamed or not; `GET /v1/models` passes through.

Usage: `message_start` carries the input (cache reads and writes count as input), each
`message_delta` the cumulative output (the last one wins); a whole answer has `usage`.
"""

from __future__ import annotations

from mdsync.ai.openai import _cap, _model
from mdsync.ai.provider import Meter, Prepared, prompt_reservation, text_length
from mdsync.ai.splice import Body
from mdsync.api.errors import ValidationFailed

MESSAGES = "/v1/messages"
DEFAULT_VERSION = "2023-06-01"


class Anthropic:
    name = "anthropic"
    prefix = "/api/v1/ai/anthropic"
    key_header = "x-api-key"

    def key_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key}

    def check(self, path: str, body: Body) -> None:
        _model(body)
        if not isinstance(body.value.get("messages"), list):
            raise ValidationFailed.field("messages", "must be a list of messages")
        _cap(body, "max_tokens")

    def prepare(self, path: str, body: Body, raw: bytes, default_cap: int, context: str | None) -> Prepared:
        self.check(path, body)
        model = _model(body)
        messages = body.value["messages"]
        cap = _cap(body, "max_tokens")
        if cap is None:
            cap = default_cap
            body.set("max_tokens", cap)
        system = body.value.get("system")
        if context is not None:
            if isinstance(system, str) and system:
                body.set("system", system + "\n\n" + context)
            elif isinstance(system, list) and system:
                body.append_to_list("system", {"type": "text", "text": context})
            else:
                body.set("system", context)
        sent = body.render().encode()
        chars = text_length(messages) + text_length(body.value.get("system"))
        return Prepared(sent, model, body.value.get("stream") is True,
                        prompt_reservation(sent, len(messages) + 1) + cap, chars)

    def meter(self, path: str, prepared: Prepared) -> Meter:
        return MessagesMeter()


def _input(usage: dict) -> int | None:
    if not isinstance(usage.get("input_tokens"), int):
        return None
    return usage["input_tokens"] + sum(usage.get(k) or 0 for k in ("cache_creation_input_tokens",
                                                                    "cache_read_input_tokens")
                                       if isinstance(usage.get(k) or 0, int))


class MessagesMeter(Meter):
    def on_event(self, name, payload) -> bool:
        kind = payload.get("type") or name
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            usage = payload["message"].get("usage")
            if isinstance(usage, dict):
                self.input_tokens = _input(usage)
                if isinstance(usage.get("output_tokens"), int):
                    self.output_tokens = usage["output_tokens"]
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            delta = payload["delta"]
            self.output_chars += sum(len(delta[k]) for k in ("text", "partial_json", "thinking")
                                     if isinstance(delta.get(k), str))
        elif kind == "message_delta" and isinstance(payload.get("usage"), dict):
            usage = payload["usage"]
            if isinstance(usage.get("output_tokens"), int):
                self.output_tokens = usage["output_tokens"]
                self.complete = self.input_tokens is not None
            if _input(usage) is not None:  # newer API versions repeat the input, cumulative
                self.input_tokens = max(self.input_tokens or 0, _input(usage))
        return True

    def on_answer(self, payload: dict) -> None:
        for block in payload.get("content") or []:
            if isinstance(block, dict):
                self.output_chars += len(block.get("text") or "") if isinstance(block.get("text"), str) else 0
        usage = payload.get("usage")
        if isinstance(usage, dict) and _input(usage) is not None and isinstance(usage.get("output_tokens"), int):
            self.input_tokens, self.output_tokens, self.complete = _input(usage), usage["output_tokens"], True

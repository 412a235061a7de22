"""The one small interface each provider module (openai.py, anthropic.py) implements, and the
parts they share: the server-sent-events splitter and the meter that reads usage alongside.

A provider knows its wire format: where a request's model and output cap are, how to add the
default cap, `include_usage` and context, which header carries the key, and where the answer
reports usage. The proxy (proxy.py) knows nothing of either format.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Protocol

from mdsync.ai.splice import Body

MAX_EVENT_BYTES = 4 * 1024 * 1024  # an unterminated "event" longer than this is relayed without waiting
# a message's share of the prompt the provider counts beyond its text (role, separators)
PER_MESSAGE_TOKENS = 16


@dataclass
class Usage:
    input_tokens: int
    output_tokens: int
    estimated: bool


def estimate_tokens(chars: int) -> int:
    """docs/api.md "AI proxy": where the provider reports no usage, characters / 4."""
    return math.ceil(chars / 4)


def text_length(value: Any) -> int:
    """Characters of every string inside `value` (a prompt's messages, system, input...)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_length(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_length(v) for v in value)
    return 0


def prompt_reservation(raw: bytes, messages: int) -> int:
    """What a prompt may cost at most: its UTF-8 bytes (a token is never shorter than one byte
    of the text it stands for) plus an allowance per message and per request."""
    return len(raw) + PER_MESSAGE_TOKENS * (messages + 1)


@dataclass
class Prepared:
    """A request ready to go upstream."""

    body: bytes           # the body as sent upstream
    model: str
    stream: bool
    reserve: int          # tokens to reserve: prompt estimate + output cap
    prompt_chars: int     # characters of the prompt (the estimate's input when no usage comes)
    client_wants_usage: bool = True  # chat streams: whether the client asked for the usage chunk


class Meter:
    """Reads an answer alongside the proxy: usage when the provider reports it, the characters
    of output received otherwise. For streams, `feed` answers the bytes to forward now (events
    are forwarded whole, so one can be dropped)."""

    def __init__(self, drop_usage_chunk: bool = False):
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.complete = False        # the provider's final counts arrived
        self.output_chars = 0
        self._buffer = b""
        self._drop = drop_usage_chunk

    # -- streams --------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out = []
        start = 0
        # one left-to-right scan: a read often holds many events (a fast upstream)
        while (match := _EVENT_END.search(self._buffer, start)) is not None:
            if self._read_event(self._buffer[start:match.start()]) and self._drop:
                out.append(self._buffer[start:match.end()])
            start = match.end()
        if start:
            self._buffer = self._buffer[start:]
        if len(self._buffer) > MAX_EVENT_BYTES:
            # no event is this long: not an event stream after all; relay it as it comes, unread
            if self._drop:
                out.append(self._buffer)
            self._buffer = b""
            forward, self._drop = (b"".join(out) if self._drop else chunk), False
            return forward
        # with nothing to drop, every byte goes on the moment it arrives (events are read once whole)
        return b"".join(out) if self._drop else chunk

    def end(self) -> bytes:
        """The stream ended: read an unterminated last event; the bytes still to forward."""
        rest, self._buffer = self._buffer, b""
        if rest.strip():
            self._read_event(rest)
        return rest if self._drop else b""

    def _read_event(self, raw: bytes) -> bool:
        """Read one event; False to drop it (only the usage-only chat chunk, when asked)."""
        name, data = None, []
        for line in raw.decode("utf-8", "replace").splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if not data:
            return True
        text = "\n".join(data)
        if text == "[DONE]":
            return True
        try:
            payload = json.loads(text)
        except ValueError:
            return True
        if not isinstance(payload, dict):
            return True
        return self.on_event(name or payload.get("type"), payload)

    def on_event(self, name: str | None, payload: dict) -> bool:
        raise NotImplementedError

    # -- whole answers --------------------------------------------------------------------------
    def read_body(self, raw: bytes) -> None:
        try:
            payload = json.loads(raw)
        except ValueError:
            return
        if isinstance(payload, dict):
            self.on_answer(payload)

    def on_answer(self, payload: dict) -> None:
        raise NotImplementedError

    # -- the result -----------------------------------------------------------------------------
    def usage(self, prompt_chars: int) -> Usage:
        if self.complete and self.input_tokens is not None and self.output_tokens is not None:
            return Usage(self.input_tokens, self.output_tokens, False)
        inp = self.input_tokens if self.input_tokens is not None else estimate_tokens(prompt_chars)
        return Usage(inp, estimate_tokens(self.output_chars), True)


# the blank line that ends a server-sent event (any of the three line endings SSE allows)
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class Provider(Protocol):
    name: str
    prefix: str                          # the route prefix the path after which goes upstream
    key_header: str                      # the header the provider reads its key from

    def key_headers(self, api_key: str) -> dict[str, str]:
        """Headers carrying the provider key."""

    def check(self, path: str, body: Body) -> None:
        """422 naming the field for a request the provider would refuse for its shape (no model...)."""

    def prepare(self, path: str, body: Body, raw: bytes, default_cap: int, context: str | None) -> Prepared:
        """Make the edits docs/api.md "AI proxy" lists (output cap, include_usage, context) and size the reservation."""

    def meter(self, path: str, prepared: Prepared) -> Meter:
        """A meter for the answer to this request."""

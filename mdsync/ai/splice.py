"""The few edits the proxy makes to a JSON request body, made in the text itself so that every
byte it does not edit reaches the provider as the client sent it (docs/api.md "AI proxy": only the
default output cap, `stream_options.include_usage` and `X-Mdsync-Context` change a body).

`Body(text)` scans the top-level object once (with the standard JSON decoder, so what it accepts
is exactly JSON) and remembers where each member's value starts and ends. Edits are collected
and applied together, back to front, so their offsets stay valid.
"""

from __future__ import annotations

import json
from typing import Any

_decoder = json.JSONDecoder()
_WS = " \t\n\r"


class NotAnObject(ValueError):
    pass


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


class Body:
    def __init__(self, text: str):
        self.text = text
        self.value: dict[str, Any] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # member name -> (value start, value end)
        self._edits: list[tuple[int, int, str]] = []
        self._added = 0
        i = _skip(text, 0)
        if i >= len(text) or text[i] != "{":
            raise NotAnObject("must be a JSON object")
        i = _skip(text, i + 1)
        self.open_at = i - 1
        if i < len(text) and text[i] == "}":
            self.close_at = i
        else:
            while True:
                if i >= len(text) or text[i] != '"':
                    raise ValueError(f"expected a member name at character {i}")
                key, i = _decoder.raw_decode(text, i)
                i = _skip(text, i)
                if i >= len(text) or text[i] != ":":
                    raise ValueError(f"expected ':' at character {i}")
                start = _skip(text, i + 1)
                value, end = _decoder.raw_decode(text, start)
                self.value[key] = value
                self.spans[key] = (start, end)
                i = _skip(text, end)
                if i < len(text) and text[i] == ",":
                    i = _skip(text, i + 1)
                    continue
                if i < len(text) and text[i] == "}":
                    self.close_at = i
                    break
                raise ValueError(f"expected ',' or '}}' at character {i}")
        if _skip(text, self.close_at + 1) != len(text):
            raise ValueError("extra data after the JSON object")

    # -- edits ------------------------------------------------------------------------------------
    def set(self, key: str, value: Any) -> None:
        """Replace a member's value, or add the member at the end of the object."""
        encoded = json.dumps(value, ensure_ascii=False)
        if key in self.spans:
            start, end = self.spans[key]
            self._edits.append((start, end, encoded))
        else:
            sep = "," if self.spans or self._added else ""
            self._added += 1
            self._edits.append((self.close_at, self.close_at, f"{sep}{json.dumps(key)}:{encoded}"))
        self.value[key] = value

    def prepend_to_list(self, key: str, item: Any) -> None:
        """Insert `item` as the first element of the list member `key`."""
        start, _ = self.spans[key]
        encoded = json.dumps(item, ensure_ascii=False)
        tail = "," if self.value[key] else ""
        self._edits.append((start + 1, start + 1, encoded + tail))

    def append_to_list(self, key: str, item: Any) -> None:
        """Add `item` as the last element of the list member `key`."""
        _, end = self.spans[key]
        encoded = json.dumps(item, ensure_ascii=False)
        head = "," if self.value[key] else ""
        self._edits.append((end - 1, end - 1, head + encoded))

    @property
    def edited(self) -> bool:
        return bool(self._edits)

    def render(self) -> str:
        text = self.text
        # back to front; of two edits at one place the later goes in first, so it ends up after
        ordered = sorted(enumerate(self._edits), key=lambda e: (e[1][0], e[0]), reverse=True)
        for _, (start, end, new) in ordered:
            text = text[:start] + new + text[end:]
        return text

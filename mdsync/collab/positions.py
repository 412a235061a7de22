"""Yjs relative positions in Y.Text('markdown'), byte for byte as the npm clients make and read
them (`Y.createRelativePositionFromTypeIndex` + `Y.encodeRelativePosition`, and back with
`Y.decodeRelativePosition` + `Y.createAbsolutePositionFromRelativePosition`).

A relative position names an item (client, clock) and an `assoc`: 0 sticks to the character at
the index (text typed there lands after the position), -1 to the character before it. Yjs
counts clocks in UTF-16 code units. pycrdt's `StickyIndex` writes the same format, but its text
offsets are UTF-8 bytes and it adds them to clocks unconverted: right for ASCII, wrong after the
first "é" or emoji. So positions are made and read on a shadow of the document: the same items,
ids and origins, every string replaced by as many `x` as it has UTF-16 units
(`updates.ascii_shadow`), where bytes, UTF-16 units and characters coincide. Checked against
yjs 13.6 on text written by two clients with accents, emoji, CJK and deletions (every index,
both assocs: identical bytes).

The format: varuint 0 + client + clock (an item), 1 + varstring (the end of a root type), or
2 + client + clock (the end of a nested type), then an optional signed varint `assoc`.
"""

from __future__ import annotations

import asyncio

from pycrdt import Assoc, Doc, StickyIndex, Text

from mdsync.collab import protocol as p
from mdsync.collab.protocol import ProtocolError
from mdsync.collab.room import TEXT_NAME, decode_state_vector
from mdsync.collab.updates import ascii_shadow

MAX_POSITION_BYTES = 64  # two varuints (client, clock), a tag and an assoc: ~25 bytes at most here
AFTER, BEFORE = 0, -1


def utf16_index(text: str, char_index: int) -> int:
    """The UTF-16 offset (what Yjs indexes by) of code point `char_index` of `text`."""
    prefix = text[:char_index]
    return len(prefix) + sum(1 for ch in prefix if ord(ch) > 0xFFFF)


def char_index(text: str, utf16: int) -> int:
    """The code point index of UTF-16 offset `utf16` (inside a surrogate pair: after it)."""
    units = 0
    for i, ch in enumerate(text):
        if units >= utf16:
            return i
        units += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def check(encoded: bytes) -> None:
    """Raise ValueError unless `encoded` is one well-formed relative position."""
    if not encoded or len(encoded) > MAX_POSITION_BYTES:
        raise ValueError("is not a Yjs relative position")
    try:
        tag, pos = p.read_varuint(encoded, 0)
        if tag in (0, 2):
            _, pos = p.read_varuint(encoded, pos)
            _, pos = p.read_varuint(encoded, pos)
        elif tag == 1:
            _, pos = p.read_varstring(encoded, pos)
        else:
            raise ValueError("is not a Yjs relative position")
        if pos < len(encoded):  # assoc: a lib0 signed varint, the last bytes
            while encoded[pos] & 0x80:
                pos += 1
            pos += 1
        if pos != len(encoded):
            raise ValueError("is not a Yjs relative position")
    except (ProtocolError, IndexError):
        raise ValueError("is not a Yjs relative position") from None


class Shadow:
    """A document's text structure at one instant, for making and reading positions."""

    def __init__(self, doc: Doc):
        shadow = Doc()
        shadow.apply_update(ascii_shadow(doc.get_update()))
        self.text = shadow.get(TEXT_NAME, type=Text)
        self.length = len(self.text)  # bytes of all-ASCII text: UTF-16 units
        self.clocks = decode_state_vector(shadow.get_state())

    def position(self, utf16: int, assoc: int) -> bytes:
        """The encoded relative position of UTF-16 index `utf16`."""
        if assoc == AFTER and utf16 >= self.length:
            # the end of the text: Yjs names the root type itself (pycrdt panics here)
            return b"\x01" + p.varbytes(TEXT_NAME.encode()) + b"\x00"
        return StickyIndex.new(self.text, utf16, Assoc.AFTER if assoc == AFTER else Assoc.BEFORE).encode()

    def resolve(self, encoded: bytes) -> int | None:
        """The UTF-16 index a position stands for now; None when it names nothing here (an item
        this document has not seen)."""
        check(encoded)
        tag, pos = p.read_varuint(encoded, 0)
        if tag == 0:  # an item: one this document holds (pycrdt panics on others)
            client, pos = p.read_varuint(encoded, pos)
            clock, pos = p.read_varuint(encoded, pos)
            if clock >= self.clocks.get(client, 0):
                return None
        elif tag != 1 or p.read_varstring(encoded, pos)[0] != TEXT_NAME:
            return None  # the end of another type
        try:
            return StickyIndex.decode(encoded, self.text).get_index()
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException:  # pyo3 panics are BaseExceptions: a position it cannot follow
            return None

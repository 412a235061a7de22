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
from mdsync.collab.updates import ascii_shadow, rewrite, xml_text_ids, xml_text_root

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


class Positions:
    """Making and reading positions in one Y.Text of a shadow document (see the module's doc):
    `text`, the root type `name` in a Doc whose strings are all ASCII; `end`, the encoded start of
    a position at the end of that type as Yjs writes it (the root type's name, or the id of the
    item holding the type where the real document nests it)."""

    def __init__(self, text: Text, name: str, end: bytes):
        self.text = text
        self.name = name
        self.end = end
        self.length = len(text)  # bytes of all-ASCII text: UTF-16 units
        self.clocks = decode_state_vector(text.doc.get_state())

    def position(self, utf16: int, assoc: int) -> bytes:
        """The encoded relative position of UTF-16 index `utf16`."""
        if assoc == AFTER and utf16 >= self.length:
            # the end of the text: Yjs names the type itself (pycrdt panics here)
            return self.end + b"\x00"
        raw = StickyIndex.new(self.text, utf16, Assoc.AFTER if assoc == AFTER else Assoc.BEFORE).encode()
        if raw[0] == 1 and self.end[0] != 1:  # pycrdt named the (rerooted) type: say it as Yjs does
            _, pos = p.read_varstring(raw, 1)
            raw = self.end + raw[pos:]
        return raw

    def resolve(self, encoded: bytes) -> int | None:
        """The UTF-16 index a position stands for now; None when it names nothing here (an item
        this document has not seen, another type)."""
        check(encoded)
        tag, pos = p.read_varuint(encoded, 0)
        if tag == 0:  # an item: one this document holds (pycrdt panics on others)
            client, pos = p.read_varuint(encoded, pos)
            clock, pos = p.read_varuint(encoded, pos)
            if clock >= self.clocks.get(client, 0):
                return None
        elif not encoded.startswith(self.end):
            return None  # the end of another type
        else:
            encoded = b"\x01" + p.varbytes(self.name.encode()) + encoded[len(self.end):]
        try:
            return StickyIndex.decode(encoded, self.text).get_index()
        except (KeyboardInterrupt, SystemExit, asyncio.CancelledError, GeneratorExit):
            raise
        except BaseException:  # pyo3 panics are BaseExceptions: a position it cannot follow
            return None


class Shadow(Positions):
    """Positions in a document's Y.Text('markdown'), at one instant."""

    def __init__(self, doc: Doc):
        shadow = Doc()
        shadow.apply_update(ascii_shadow(doc.get_update()))
        super().__init__(shadow.get(TEXT_NAME, type=Text), TEXT_NAME, b"\x01" + p.varbytes(TEXT_NAME.encode()))


class XmlTextShadows:
    """Positions in every Y.XmlText of a document (TipTap's runs of text), at one instant: each
    XmlText's content moved into a root Y.Text of its own (`updates.rewrite(reroot=…)`), once
    with its text (`texts`: item id → text) and once as the ASCII shadow (`positions(id)`)."""

    def __init__(self, doc: Doc):
        update = doc.get_update()
        self.ids = xml_text_ids(update)
        rooted, shadow = Doc(), Doc()
        rooted.apply_update(rewrite(update, reroot=set(self.ids)))
        shadow.apply_update(rewrite(update, ascii=True, reroot=set(self.ids)))
        self.texts = {i: str(rooted.get(xml_text_root(i), type=Text)) for i in self.ids}
        self._shadow = shadow

    def positions(self, item_id: tuple[int, int]) -> Positions:
        name = xml_text_root(item_id)
        return Positions(self._shadow.get(name, type=Text), name,
                         b"\x02" + p.varuint(item_id[0]) + p.varuint(item_id[1]))

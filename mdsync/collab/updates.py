"""The gate every client's Yjs update passes before pycrdt sees it, and what an update covers.

`apply(doc, update)` is the only way an update from outside reaches a live `Doc`: `check` reads the
whole update first and refuses (ProtocolError, a ValueError) anything pycrdt could choke on, then
pycrdt's own errors (ValueError, RuntimeError, a Rust panic) become ProtocolError too. Why a parser
of our own: yrs decodes nested values recursively, so a 60 KB update holding one value of 30 000
nested one-element arrays overflows the native stack and kills the process (no exception to catch);
a clock past 2^32 makes it panic. Every path that applies a client's bytes (POST …/yjs, /ws/docs,
/ws/hocuspocus, and the PUT content merge and the import through `Room.apply_update`) goes through
`Room._accept`, which calls `apply`. Stored rows and states the server made itself were gated
when they came in.

What `check` refuses, besides anything that does not parse or has bytes left over:
- a value (ContentAny, a subdocument's options, a JSON/embed/format string) nested deeper than
  MAX_DEPTH; an unknown value, content or type tag;
- a struct of length 0, and a clock (struct, origin, parent, delete range) past MAX_CLOCK;
- a client id past 2^53 (Yjs clients are JavaScript numbers);
- strings that are not UTF-8.
Counts (clients, structs, values) need no limit of their own: each costs at least one byte, and
the byte length is bounded by the caller (limits.max_ws_message_bytes, limits.max_document_bytes).

Also here, `struct_ends`: the clock ranges an update covers, per client. Needed because yrs'
`get_update()` leaves out structs it could not integrate yet (their dependencies have not arrived),
and `get_state(update)` only reports clients whose structs start at clock 0. Compaction uses it to
find logged updates the document has not fully integrated and carries them over instead of losing
them.

`ascii_shadow` rewrites an update with every string replaced by as many `x` as it has UTF-16
code units, items, ids and origins unchanged: a Doc built from it has the same structure with
UTF-8 bytes = UTF-16 units, which is how positions.py gets Yjs-compatible relative positions out
of pycrdt (whose text offsets are bytes).

The format (y-protocols/Yjs `writeClientsStructs`, v1): varuint client count; per client: varuint
struct count, varuint client id, varuint first clock, then the structs (GC, Skip, or an Item:
info byte, origins or parent, content); then the delete set: varuint client count, per client a
varuint client id and a varuint count of (clock, length) ranges. Content lengths count UTF-16
code units for strings.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from pycrdt import Doc

from mdsync.collab.protocol import ProtocolError, read_varuint, varuint

MAX_DEPTH = 64            # nesting of one value; editors store flat attributes, yrs recurses per level
MAX_CLOCK = 2**32 - 1     # yrs clocks are u32: a struct must end at or before this
MAX_CLIENT = 2**53 - 1    # Yjs client ids are JavaScript numbers
MAX_TYPE_REF = 6          # YArray, YMap, YText, YXmlElement, YXmlFragment, YXmlHook, YXmlText

# one varint as lib0 writes it: up to 9 continuation bytes, then its last byte
_VARUINT = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]")
# the tokens of a JSON text that matter for its depth: a string literal (to the end of the text
# when unterminated, so no match is ever retried: linear time) or a bracket
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def uint(self) -> int:
        value, self.pos = read_varuint(self.buf, self.pos)
        return value

    def clock(self) -> int:
        value = self.uint()
        if value > MAX_CLOCK:
            raise ProtocolError("clock out of range")
        return value

    def client(self) -> int:
        value = self.uint()
        if value > MAX_CLIENT:
            raise ProtocolError("client id out of range")
        return value

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ProtocolError("truncated update")
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ProtocolError("truncated update")
        self.pos += n

    def bytes_(self) -> bytes:
        n = self.uint()
        start = self.pos
        self.skip(n)
        return self.buf[start:self.pos]

    def string(self) -> str:
        try:
            return self.bytes_().decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None

    def json(self) -> None:
        """A JSON text (ContentJSON entries, embeds, format values): UTF-8, nested at most MAX_DEPTH."""
        _check_json_depth(self.string())

    def signed(self) -> None:
        for _ in range(10):            # lib0 varint: at most 64 bits
            if not self.byte() & 0x80:
                return
        raise ProtocolError("varint too long")

    def any_(self, depth: int = 1) -> None:
        if depth > MAX_DEPTH:
            raise ProtocolError(f"a value is nested deeper than {MAX_DEPTH} levels")
        kind = self.byte()
        if kind in (127, 126, 121, 120):       # undefined, null, false, true
            return
        if kind == 125:                        # integer
            self.signed()
        elif kind == 124:                      # float32
            self.skip(4)
        elif kind in (123, 122):               # float64, bigint64
            self.skip(8)
        elif kind == 119:                      # string
            self.string()
        elif kind == 118:                      # object
            for _ in range(self.uint()):
                self.string()
                self.any_(depth + 1)
        elif kind == 117:                      # array
            for _ in range(self.uint()):
                self.any_(depth + 1)
        elif kind == 116:                      # Uint8Array
            self.bytes_()
        else:
            raise ProtocolError(f"unknown value type {kind}")


def _skip_in_range(buf: bytes, pos: int, short: int, limit: int, what: str) -> int:
    """The position after the varint at `pos`, not decoded when at most `short` bytes long
    (then its length keeps it under `limit`), else checked against `limit`."""
    end = _skip_varuint(buf, pos)
    if end - pos > short:
        value, end = read_varuint(buf, pos)
        if value > limit:
            raise ProtocolError(f"{what} out of range")
    return end


def _skip_varuint(buf: bytes, pos: int) -> int:
    """The position after the varint at `pos`, its value not decoded."""
    found = _VARUINT.match(buf, pos)
    if found is None:
        raise ProtocolError("truncated or overlong varint")
    return found.end()


def _check_json_depth(text: str) -> None:
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise ProtocolError(f"a value is nested deeper than {MAX_DEPTH} levels")
        elif token in ("]", "}"):
            depth -= 1


def _content_length(r: _Reader, ref: int) -> int:
    if ref == 1:                               # deleted
        return r.uint()
    if ref == 2:                               # JSON
        n = r.uint()
        for _ in range(n):
            r.json()
        return n
    if ref == 3:                               # binary
        r.bytes_()
        return 1
    if ref == 4:                               # string: length in UTF-16 code units
        raw = r.bytes_()
        if raw.isascii():                      # the usual typed text: one unit a byte
            return len(raw)
        try:
            return len(raw.decode("utf-8").encode("utf-16-le")) // 2
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None
    if ref == 5:                               # embed
        r.json()
        return 1
    if ref == 6:                               # format: key, value
        r.string()
        r.json()
        return 1
    if ref == 7:                               # type
        type_ref = r.uint()
        if type_ref > MAX_TYPE_REF:
            raise ProtocolError(f"unknown type {type_ref}")
        if type_ref in (3, 5):                 # XmlElement name, XmlHook name
            r.string()
        return 1
    if ref == 8:                               # any
        n = r.uint()
        for _ in range(n):
            r.any_()
        return n
    if ref == 9:                               # subdocument: guid, options
        r.string()
        r.any_()
        return 1
    raise ProtocolError(f"unknown content type {ref}")


class Covered(NamedTuple):
    """What an update carries: per client, the clock right after its last struct (not counting
    skips), and the (start, end) clock ranges its delete set names; per client, the first clock
    of its structs."""
    ends: dict[int, int]
    deleted: dict[int, list[tuple[int, int]]]
    starts: dict[int, int]


class NotApplied(ProtocolError):
    """pycrdt refused an update that passed `check`: it may have integrated part of it, only
    structs of `covered.starts`' clients from those clocks on."""

    def __init__(self, message: str, covered: Covered):
        super().__init__(message)
        self.covered = covered


def check(update: bytes) -> Covered:
    """Read all of a v1 update; raise ProtocolError for anything `apply` must not hand to pycrdt."""
    # Every update every client sends passes here: a struct's header is read with locals (its
    # origin ids skipped, not decoded, when short enough to be in range); the rest through _Reader.
    r = _Reader(update)
    ends: dict[int, int] = {}
    starts: dict[int, int] = {}
    for _ in range(r.uint()):
        count = r.uint()
        client = r.client()
        clock = r.clock()
        starts[client] = min(clock, starts.get(client, clock))
        end = None
        for _ in range(count):
            info = r.byte()
            ref = info & 0x1F
            if ref == 0 or ref == 10:          # GC or Skip: a length
                length = r.uint()
            else:
                pos = r.pos
                for _ in range((info >> 7) + (info >> 6 & 1)):   # left, right origin ids
                    pos = _skip_in_range(update, pos, 7, MAX_CLIENT, "client id")   # 7 varint bytes: 49 bits
                    pos = _skip_in_range(update, pos, 4, MAX_CLOCK, "clock")        # 4: 28 bits
                r.pos = pos
                if not info & 0xC0:
                    if r.uint() == 1:          # parent is a root type name
                        r.string()
                    else:                      # parent is an item id
                        r.client(); r.clock()
                    if info & 0x20:
                        r.string()             # parent sub (map key)
                length = _content_length(r, ref)
            if length < 1 or clock + length > MAX_CLOCK:
                raise ProtocolError("struct length out of range")
            clock += length
            if ref != 10:
                end = clock
        if end is not None:
            ends[client] = max(end, ends.get(client, 0))
    deleted: dict[int, list[tuple[int, int]]] = {}
    for _ in range(r.uint()):                  # the delete set
        ranges = deleted.setdefault(r.client(), [])
        for _ in range(r.uint()):
            start = r.clock()
            length = r.uint()
            if length < 1 or start + length > MAX_CLOCK:
                raise ProtocolError("deleted range out of range")
            ranges.append((start, start + length))
    if r.pos != len(update):
        raise ProtocolError("bytes after the update")
    return Covered(ends, deleted, starts)


def apply(doc: Doc, update: bytes) -> Covered:
    """Apply a client's update to `doc` after `check`, and answer what it covers. Raises
    ProtocolError (a ValueError) when refused: NotApplied when pycrdt refused it, which may have
    integrated part of it."""
    covered = check(update)
    try:
        _integrate(doc, update)
    except (ValueError, RuntimeError) as exc:
        raise NotApplied(f"the update does not apply: {exc}", covered) from None
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":   # pyo3's, made on the first Rust panic
            raise
        raise NotApplied("the update does not apply", covered) from None
    return covered


def _integrate(doc: Doc, update: bytes) -> None:
    """`doc.apply_update(update)` in one yrs transaction of its own, without pycrdt's Python
    `Transaction` around it (half the cost of applying a typed character, paid per update per
    room). pycrdt's own path when that object matters: a transaction already open, a typed model,
    or a Doc shared between threads. Observers (none on a room's Doc but inside `Room.edit`,
    which does not apply client updates) would run at the commit without pycrdt's transaction
    object; pycrdt is pinned below 0.15 for these internals (tests/test_collab_update_gate.py
    checks them)."""
    if doc._txn is not None or doc._Model is not None or doc._allow_multithreading:  # noqa: SLF001
        doc.apply_update(update)
        return
    inner = doc._doc  # noqa: SLF001
    txn = inner.create_transaction()
    try:
        inner.apply_update(txn, update)
    finally:  # committed even when refused halfway, as pycrdt's own path does
        try:
            txn.commit()
        finally:
            txn.drop()


def struct_ends(update: bytes) -> dict[int, int]:
    """Per client, the clock right after the last struct (not counting skips) the update carries.
    Raises ProtocolError when it does not pass `check`."""
    return check(update).ends


XML_TEXT_REF = 6            # the type ref of a Y.XmlText in ContentType (Yjs YXmlTextRefID)
XML_TEXT_ROOT = "\x00xmltext:"  # root names given to Y.XmlTexts by `rewrite(reroot=...)`


def xml_text_root(item_id: tuple[int, int]) -> str:
    """The root type name `rewrite` gives the Y.XmlText held by item `item_id` (client, clock)."""
    return f"{XML_TEXT_ROOT}{item_id[0]}.{item_id[1]}"


def xml_text_ids(update: bytes) -> list[tuple[int, int]]:
    """The ids (client, clock) of the items that hold a Y.XmlText, in the update's order."""
    found: list[tuple[int, int]] = []
    _walk(update, found=found)
    return found


def ascii_shadow(update: bytes) -> bytes:
    """`update` with the text of every string item replaced by `x` × its UTF-16 length (the
    length Yjs counts clocks in); everything else byte for byte. Raises ProtocolError when it
    does not parse."""
    return rewrite(update, ascii=True)


def rewrite(update: bytes, *, ascii: bool = False, reroot: set[tuple[int, int]] | frozenset = frozenset()) -> bytes:
    """`update` rewritten: with `ascii`, as `ascii_shadow`; with `reroot`, the content of each
    Y.XmlText whose item id is in it moved into a root Y.Text named `xml_text_root(id)` (the
    items that name their parent, those without origins, name that root instead; the others
    follow their origins there), so pycrdt can treat that text as a Y.Text. Items, ids and
    origins are unchanged."""
    out = bytearray()
    copied = _walk(update, out=out, ascii=ascii, reroot=reroot)
    out += update[copied:]  # the delete set
    return bytes(out)


def _walk(update: bytes, *, found: list | None = None, out: bytearray | None = None, ascii: bool = False,
          reroot: set | frozenset = frozenset()) -> int:
    """Read every struct of `update`: collect XmlText item ids into `found`; with `out`, write the
    update up to the last rewritten span into it (strings made ASCII, parents rerooted) and
    answer how far it was copied."""
    r = _Reader(update)
    copied = 0

    def replace(start: int, replacement: bytes) -> None:
        nonlocal copied
        out.extend(update[copied:start])
        out.extend(replacement)
        copied = r.pos

    for _ in range(r.uint()):
        count = r.uint()
        client = r.uint()
        clock = r.uint()
        for _ in range(count):
            info = r.byte()
            ref = info & 0x1F
            if ref == 0 or ref == 10:          # GC or Skip
                clock += r.uint()
                continue
            if info & 0x80:
                r.uint(); r.uint()
            if info & 0x40:
                r.uint(); r.uint()
            if not info & 0xC0:
                parent_at = r.pos
                if r.uint() == 1:
                    r.bytes_()
                else:
                    parent = (r.uint(), r.uint())
                    if out is not None and parent in reroot and not info & 0x20:
                        replace(parent_at, b"\x01" + varuint(len(name := xml_text_root(parent).encode())) + name)
                if info & 0x20:
                    r.bytes_()
            if ref == 4 and out is not None and ascii:
                start = r.pos
                units = len(r.string().encode("utf-16-le", "surrogatepass")) // 2
                replace(start, varuint(units) + b"x" * units)
                clock += units
                continue
            if ref == 7 and found is not None:
                at = r.pos
                if r.uint() == XML_TEXT_REF:
                    found.append((client, clock))
                r.pos = at
            clock += _content_length(r, ref)
    return copied

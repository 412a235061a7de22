"""What a Yjs update (v1 encoding) covers: the clock ranges of its structs, per client.

Needed because yrs' `get_update()` leaves out structs it could not integrate yet (their
dependencies have not arrived), and `get_state(update)` only reports clients whose structs start
at clock 0. Compaction uses `struct_ends` to find logged updates the document has not fully
integrated and carries them over instead of losing them.

`ascii_shadow` rewrites an update with every string replaced by as many `x` as it has UTF-16
code units, items, ids and origins unchanged: a Doc built from it has the same structure with
UTF-8 bytes = UTF-16 units, which is how positions.py gets Yjs-compatible relative positions out
of pycrdt (whose text offsets are bytes).

The format (y-protocols/Yjs `writeClientsStructs`): varuint client count; per client: varuint
struct count, varuint client id, varuint first clock, then the structs (GC, Skip, or an Item:
info byte, origins or parent, content). Content lengths count UTF-16 code units for strings.
"""

from __future__ import annotations

from mdsync.collab.protocol import ProtocolError, read_varuint, varuint


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def uint(self) -> int:
        value, self.pos = read_varuint(self.buf, self.pos)
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

    def signed(self) -> None:
        while self.byte() & 0x80:
            pass

    def any_(self, depth: int = 0) -> None:
        if depth > 100:
            raise ProtocolError("value nested too deep")
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
            self.bytes_()
        elif kind == 118:                      # object
            for _ in range(self.uint()):
                self.bytes_()
                self.any_(depth + 1)
        elif kind == 117:                      # array
            for _ in range(self.uint()):
                self.any_(depth + 1)
        elif kind == 116:                      # Uint8Array
            self.bytes_()
        else:
            raise ProtocolError(f"unknown value type {kind}")


def _content_length(r: _Reader, ref: int) -> int:
    if ref == 1:                               # deleted
        return r.uint()
    if ref == 2:                               # JSON
        n = r.uint()
        for _ in range(n):
            r.bytes_()
        return n
    if ref == 3:                               # binary
        r.bytes_()
        return 1
    if ref == 4:                               # string: length in UTF-16 code units
        return len(r.string().encode("utf-16-le")) // 2
    if ref == 5:                               # embed
        r.bytes_()
        return 1
    if ref == 6:                               # format
        r.bytes_()
        r.bytes_()
        return 1
    if ref == 7:                               # type
        type_ref = r.uint()
        if type_ref in (3, 5):                 # XmlElement name, XmlHook name
            r.bytes_()
        return 1
    if ref == 8:                               # any
        n = r.uint()
        for _ in range(n):
            r.any_()
        return n
    if ref == 9:                               # subdocument
        r.bytes_()
        r.any_()
        return 1
    raise ProtocolError(f"unknown content type {ref}")


def struct_ends(update: bytes) -> dict[int, int]:
    """Per client, the clock right after the last struct (not counting skips) the update carries.
    Raises ProtocolError when it does not parse."""
    r = _Reader(update)
    ends: dict[int, int] = {}
    for _ in range(r.uint()):
        count = r.uint()
        client = r.uint()
        clock = r.uint()
        end = None
        for _ in range(count):
            info = r.byte()
            ref = info & 0x1F
            if ref == 0 or ref == 10:          # GC or Skip: a length
                length = r.uint()
                clock += length
                if ref == 0:
                    end = clock
                continue
            if info & 0x80:
                r.uint(); r.uint()             # left origin id
            if info & 0x40:
                r.uint(); r.uint()             # right origin id
            if not info & 0xC0:
                if r.uint() == 1:              # parent is a root type name
                    r.bytes_()
                else:                          # parent is an item id
                    r.uint(); r.uint()
                if info & 0x20:
                    r.bytes_()                 # parent sub (map key)
            clock += _content_length(r, ref)
            end = clock
        if end is not None:
            ends[client] = max(end, ends.get(client, 0))
    return ends


def ascii_shadow(update: bytes) -> bytes:
    """`update` with the text of every string item replaced by `x` × its UTF-16 length (the
    length Yjs counts clocks in); everything else byte for byte. Raises ProtocolError when it
    does not parse."""
    r = _Reader(update)
    out = bytearray()
    copied = 0
    for _ in range(r.uint()):
        count = r.uint()
        r.uint()                               # client
        r.uint()                               # first clock
        for _ in range(count):
            info = r.byte()
            ref = info & 0x1F
            if ref == 0 or ref == 10:          # GC or Skip
                r.uint()
                continue
            if info & 0x80:
                r.uint(); r.uint()
            if info & 0x40:
                r.uint(); r.uint()
            if not info & 0xC0:
                if r.uint() == 1:
                    r.bytes_()
                else:
                    r.uint(); r.uint()
                if info & 0x20:
                    r.bytes_()
            if ref != 4:
                _content_length(r, ref)
                continue
            start = r.pos
            units = len(r.string().encode("utf-16-le", "surrogatepass")) // 2
            out += update[copied:start]
            out += varuint(units)
            out += b"x" * units
            copied = r.pos
    out += update[copied:]  # the delete set
    return bytes(out)

"""The y-websocket wire protocol (y-protocols sync + awareness), parsed defensively.

A frame is a varint message type and a payload: `0` sync (inner `0` step 1 = state vector,
`1` step 2 = update, `2` update), `1` awareness (an awareness update), `2` auth (server →
client), `3` query-awareness. Everything a client sends is read with bounds checks: a malformed
frame raises `ProtocolError`, which closes only that socket.

Also here: `ws_frame`, the server → client WebSocket frame built once per broadcast, so one
update is framed once however many peers receive it.
"""

from __future__ import annotations

import json
import struct

MSG_SYNC = 0
MSG_AWARENESS = 1
MSG_AUTH = 2
MSG_QUERY_AWARENESS = 3

SYNC_STEP1 = 0
SYNC_STEP2 = 1
SYNC_UPDATE = 2

EMPTY_UPDATE = b"\x00\x00"
UPDATE_PREFIX = b"\x00\x02"
NULL_STATE = "null"
# awareness is presence (names, cursors, selections): kilobytes. Larger is abuse, and would be
# held in memory and sent to every joiner.
MAX_AWARENESS_BYTES = 256 * 1024


class ProtocolError(ValueError):
    """A client frame that does not follow the protocol."""


def varuint(n: int) -> bytes:
    out = bytearray()
    while n > 127:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varuint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); at most 53 bits like lib0, never past the end of `buf`."""
    value = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ProtocolError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 49:
            raise ProtocolError("varint too long")


def read_varbytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = read_varuint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise ProtocolError("truncated byte array")
    return buf[pos:end], end


def read_varstring(buf: bytes, pos: int) -> tuple[str, int]:
    raw, pos = read_varbytes(buf, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError:
        raise ProtocolError("string is not UTF-8") from None


def varbytes(data: bytes) -> bytes:
    return varuint(len(data)) + data


def sync_step1(state_vector: bytes) -> bytes:
    return b"\x00\x00" + varbytes(state_vector)


def sync_step2(update: bytes) -> bytes:
    return b"\x00\x01" + varbytes(update)


def update_message(update: bytes) -> bytes:
    return UPDATE_PREFIX + varbytes(update)


def sync_payload(frame: bytes) -> tuple[int, bytes, int]:
    """For a sync frame (`frame[0] == 0`): (inner type, payload, end of payload)."""
    if len(frame) < 2:
        raise ProtocolError("truncated sync message")
    inner = frame[1]
    if inner > SYNC_UPDATE:
        raise ProtocolError(f"unknown sync message type {inner}")
    payload, end = read_varbytes(frame, 2)
    return inner, payload, end


# -- awareness ------------------------------------------------------------------------------
def parse_awareness(frame: bytes) -> list[tuple[int, int, str]]:
    """The entries (client id, clock, JSON state text; "null" = gone) of an awareness frame.

    Each state must be valid JSON: peers JSON.parse it, and one bad state would break every
    other client's message handler.
    """
    update, _ = read_varbytes(frame, 1)
    if len(update) > MAX_AWARENESS_BYTES:
        raise ProtocolError("awareness update too large")
    count, pos = read_varuint(update, 0)
    if count > len(update):
        raise ProtocolError("awareness entry count larger than the message")
    entries = []
    for _ in range(count):
        client_id, pos = read_varuint(update, pos)
        clock, pos = read_varuint(update, pos)
        state, pos = read_varstring(update, pos)
        if state != NULL_STATE:
            try:
                json.loads(state)
            except ValueError:
                raise ProtocolError("awareness state is not JSON") from None
        entries.append((client_id, clock, state))
    return entries


def awareness_message(entries) -> bytes:
    """An awareness frame for (client id, clock, JSON state text) entries."""
    parts = [varuint(len(entries))]
    for client_id, clock, state in entries:
        parts.append(varuint(client_id))
        parts.append(varuint(clock))
        parts.append(varbytes(state.encode("utf-8")))
    return b"\x01" + varbytes(b"".join(parts))


# -- WebSocket framing ----------------------------------------------------------------------
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack


def ws_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed, final binary WebSocket frame (RFC 6455 §5.2) server → client."""
    n = len(payload)
    if n < 126:
        return bytes((0x82, n)) + payload
    if n < 65536:
        return _LEN2(0x82, 126, n) + payload
    return _LEN8(0x82, 127, n) + payload

"""The ETag of a Yjs document's state: what `YjsTextContent` serves with content and the
projection records with the markdown it stores.

A hash of the CRDT state's identity, its state vector and delete set (a pure deletion leaves the
state vector unchanged, so the vector alone would not do), canonically ordered.
"""

from __future__ import annotations

import base64
import hashlib

from pycrdt import Doc

from mdsync.collab import protocol as p
from mdsync.collab.room import decode_state_vector


def state_etag(doc: Doc) -> str:
    """The (unquoted) ETag of a Doc's current state: sha256 of its state vector and delete set,
    both sorted (yrs encodes them from hash maps, so two equal states may differ in byte order)."""
    sv = doc.get_state()
    h = hashlib.sha256(b"".join([b"%d:%d," % pair for pair in sorted(decode_state_vector(sv).items())]) + b"|")
    update = doc.get_update(sv)
    h.update(b"[]" if update == _NO_DELETES else _canonical_delete_set(update))
    return "y" + base64.urlsafe_b64encode(h.digest()[:18]).decode()


_NO_DELETES = b"\x00\x00"  # an update of no structs and an empty delete set (canonically "[]")


def _canonical_delete_set(update: bytes) -> bytes:
    """The delete set of a v1 update that carries no structs (`get_update(own state vector)`),
    as sorted text; the raw bytes when the update is not of that shape."""
    try:
        clients, pos = p.read_varuint(update, 0)
        if clients != 0:
            return update
        count, pos = p.read_varuint(update, pos)
        out = []
        for _ in range(count):
            client, pos = p.read_varuint(update, pos)
            ranges, pos = p.read_varuint(update, pos)
            spans = []
            for _ in range(ranges):
                start, pos = p.read_varuint(update, pos)
                length, pos = p.read_varuint(update, pos)
                spans.append((start, length))
            out.append((client, sorted(spans)))
        out.sort()
        return repr(out).encode()
    except Exception:
        return update

"""Made once across nodes: what the markdown projection and automatic versions use so that clients
editing one document on several nodes get one projection and one version, not one per node
(docs/architecture.md "The projection and automatic versions across nodes").

- `try_lock(tx, what, document_id)`: a per-document PostgreSQL advisory lock held to the end of
  the writer's transaction (`pg_try_advisory_xact_lock`: never waits, so it cannot deadlock with
  the change feed's head row; not got means another node is writing the same thing right now —
  the caller tries again later).
- `identity(doc)`: what a Yjs state holds — its state vector and its delete set — as bytes
  (stored as `content_heads.made_from`); `of_state(update)` reads the same from a whole state
  (a version's); `covers(a, b)`: state `a` holds every struct and every deletion `b` holds. Two
  nodes' rooms converge to one state, and a state that covers another is at least as new.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

from pycrdt import Doc

from mdsync.collab import protocol as p
from mdsync.collab import updates
from mdsync.collab.room import decode_state_vector
from mdsync.db import Tx


class Identity(NamedTuple):
    clocks: dict[int, int]                          # client -> clock after its last struct
    deleted: dict[int, list[tuple[int, int]]]       # client -> (start, end) deleted ranges


def try_lock(tx: Tx, what: str, document_id: str) -> bool:
    """This transaction holds `what` of the document until it ends (False: another node does)."""
    return bool(tx.value("SELECT pg_try_advisory_xact_lock(hashtextextended(?, 0))",
                         (f"mdsync:{what}:{document_id}",)))


def identity(doc: Doc) -> bytes:
    """The state vector and delete set of `doc` now: the state vector's length, the state vector,
    then an update without structs carrying the delete set."""
    sv = doc.get_state()
    return p.varuint(len(sv)) + sv + doc.get_update(sv)


def decode(made_from: bytes) -> Identity:
    length, pos = p.read_varuint(made_from, 0)
    clocks = decode_state_vector(made_from[pos:pos + length])
    return Identity(clocks, updates.check(made_from[pos + length:]).deleted)


def of_state(state: bytes) -> Identity:
    """The identity of a whole Yjs state (`Doc.get_update()`, as versions store it)."""
    covered = updates.check(state)
    return Identity(covered.ends, covered.deleted)


def covers(a: Identity, b: Identity) -> bool:
    """Whether state `a` holds everything state `b` holds."""
    if any(a.clocks.get(client, 0) < clock for client, clock in b.clocks.items()):
        return False
    for client, ranges in b.deleted.items():
        starts, ends = _merged(a.deleted.get(client, []))
        for start, end in ranges:
            at = bisect.bisect_right(starts, start) - 1
            if at < 0 or ends[at] < end:
                return False
    return True


def _merged(ranges: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(ranges):
        if ends and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends

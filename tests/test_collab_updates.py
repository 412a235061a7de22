"""The Yjs update parser (clock ranges per client) against updates pycrdt (yrs) produces."""

from __future__ import annotations

import random

import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from mdsync.collab.protocol import ProtocolError
from mdsync.collab.room import decode_state_vector
from mdsync.collab.updates import struct_ends


def edits(doc: Doc, rand: random.Random, n: int) -> None:
    text = doc.get("markdown", type=Text)
    meta = doc.get("meta", type=Map)
    items = doc.get("items", type=Array)
    frag = doc.get("default", type=XmlFragment)
    for i in range(n):
        choice = rand.random()
        if choice < 0.4:
            text.insert(rand.randint(0, len(text)), rand.choice(["a", "hello ", "x" * 50]))
            # non-ASCII (clocks count UTF-16 units; astral characters count twice): appended only
            other = doc.get("unicode", type=Text)
            other += rand.choice(["héllo", "日本語", "😀", "a😀b"])
        elif choice < 0.55 and len(text) > 4:
            start = rand.randint(0, len(text) - 2)
            del text[start:start + 2]
        elif choice < 0.7:
            meta[f"k{i % 5}"] = rand.choice([1, 2.5, "s", None, True, [1, "two", {"n": 3}], {"deep": {"er": [1.5]}}])
        elif choice < 0.85:
            items.append(rand.choice([i, f"item{i}", {"x": i}, [i, i]]))
        else:
            el = XmlElement("paragraph", {"level": "1"}, [XmlText("para " + str(i))])
            frag.children.append(el)


@pytest.mark.parametrize("seed", range(5))
def test_full_state_ends_match_the_state_vector(seed):
    rand = random.Random(seed)
    docs = [Doc() for _ in range(3)]
    for round_ in range(4):
        for doc in docs:
            edits(doc, rand, 30)
        for a in docs:
            for b in docs:
                if a is not b:
                    b.apply_update(a.get_update(b.get_state()))
    update = docs[0].get_update()
    assert struct_ends(update) == decode_state_vector(docs[0].get_state())


def test_incremental_updates_end_at_the_senders_clock():
    rand = random.Random(7)
    doc = Doc()
    captured = []
    doc.observe(lambda event: captured.append(event.update))
    for _ in range(50):
        edits(doc, rand, 1)
        ends = struct_ends(captured[-1])
        sv = decode_state_vector(doc.get_state())
        if ends:  # a pure deletion carries no structs
            assert ends[doc.client_id] == sv[doc.client_id]


@pytest.mark.parametrize("garbage", [b"", b"\x01", b"\x01\x01\x05\x00\x04", b"\xff\xff\xff", b"\x01\x01\x01\x00\x1f"])
def test_garbage_raises(garbage):
    with pytest.raises(ProtocolError):
        struct_ends(garbage)

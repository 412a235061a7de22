"""The TipTap schema the server knows: node and mark names with the attributes TipTap gives them
by default, and the guard that notices names outside it.

The names and defaults are those of `@tiptap/core`'s `getSchema` for StarterKit, TaskList,
TaskItem, Table (+ TableRow, TableHeader, TableCell), Image and Link (checked against
tests/interop). y-prosemirror stores every non-null attribute of a node on its `Y.XmlElement`, and
a mark as a formatting attribute named after the mark whose value is the mark's attribute object;
the server writes them the same way (defaults included), so an editor binding the document sees
exactly the attributes it would have written itself and has nothing to "correct".

Names outside the schema are never refused (the client is the authority on its own schema): the
renderer keeps their text, and `Guard` counts each new (document, name) once and logs once per
document. More names can be declared in config (`tiptap.extra_nodes`, `tiptap.extra_marks`): they
are then treated as known (their text is rendered, nothing is counted).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("mdsync.tiptap")

# node name -> default attributes (None: no default stored)
NODES: dict[str, dict[str, Any]] = {
    "doc": {}, "paragraph": {}, "text": {}, "blockquote": {}, "bulletList": {},
    "codeBlock": {"language": None}, "hardBreak": {}, "heading": {"level": 1}, "horizontalRule": {},
    "listItem": {}, "orderedList": {"start": 1, "type": None}, "taskList": {}, "taskItem": {"checked": False},
    "table": {}, "tableRow": {},
    "tableHeader": {"colspan": 1, "rowspan": 1, "colwidth": None, "align": None},
    "tableCell": {"colspan": 1, "rowspan": 1, "colwidth": None, "align": None},
    "image": {"src": None, "alt": None, "title": None, "width": None, "height": None},
}
# mark name -> default attributes, in ProseMirror's mark rank order (the order of `schema.marks`)
MARKS: dict[str, dict[str, Any]] = {
    "link": {"href": None, "target": "_blank", "rel": "noopener noreferrer nofollow", "class": None, "title": None},
    "bold": {}, "code": {}, "italic": {}, "strike": {}, "underline": {},
}


@dataclass(frozen=True)
class Schema:
    """Known node and mark names (the built-in ones plus those declared in config)."""

    extra_nodes: frozenset[str] = frozenset()
    extra_marks: frozenset[str] = frozenset()
    mark_rank: dict[str, int] = field(default_factory=lambda: {name: i for i, name in enumerate(MARKS)})

    @classmethod
    def with_extras(cls, nodes: Iterable[str] = (), marks: Iterable[str] = ()) -> Schema:
        return cls(frozenset(nodes) - set(NODES), frozenset(marks) - set(MARKS))

    def knows_node(self, name: str) -> bool:
        return name in NODES or name in self.extra_nodes

    def knows_mark(self, name: str) -> bool:
        return name in MARKS or name in self.extra_marks


DEFAULT_SCHEMA = Schema()


@dataclass
class Unknown:
    """Node and mark names outside the schema met while reading one document."""

    nodes: set[str] = field(default_factory=set)
    marks: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.nodes or self.marks)


class Guard:
    """Counts unknown node/mark names once per (document, name) and logs once per document.

    `count(kind)` is called for each newly seen name (kind: "node" or "mark"): the metrics
    counter. Memory is bounded: past `remember` documents the oldest are forgotten (a forgotten
    document may be counted and logged again, which is harmless)."""

    def __init__(self, count: Callable[[str], Any] | None = None, remember: int = 10000):
        self.count = count or (lambda kind: None)
        self.remember = remember
        self._seen: OrderedDict[str, set[str]] = OrderedDict()

    def report(self, document_id: str, unknown: Unknown) -> None:
        if not unknown:
            return
        seen = self._seen.get(document_id)
        first = seen is None
        if seen is None:
            seen = self._seen[document_id] = set()
            while len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        self._seen.move_to_end(document_id)
        new = [("node", n) for n in sorted(unknown.nodes) if "node:" + n not in seen]
        new += [("mark", m) for m in sorted(unknown.marks) if "mark:" + m not in seen]
        for kind, name in new:
            seen.add(f"{kind}:{name}")
            self.count(kind)
        if first and new:
            log.warning("document %s holds TipTap names outside the configured schema (kept as text): %s",
                        document_id, ", ".join(f"{kind} {name}" for kind, name in new))

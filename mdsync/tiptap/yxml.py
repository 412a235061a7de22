"""TipTap's Yjs tree ↔ ProseMirror JSON, the way y-prosemirror maps one onto the other.

A TipTap document lives in `Y.XmlFragment('default')`: each ProseMirror node is a `Y.XmlElement`
named after the node type (camelCase) carrying the node's non-null attributes; each run of text
nodes is one `Y.XmlText` whose formatting attributes are the marks: `{"bold": {}}`,
`{"link": {"href": …, "target": …}}`. Marks that may overlap themselves are stored as
`name--<hash>` (y-prosemirror's convention); the suffix is dropped when reading.

The JSON is ProseMirror's: `{"type", "attrs"?, "content"?}` and text nodes `{"type": "text",
"text", "marks"?: [{"type", "attrs"?}]}`; empty `content` and `attrs` are left out, as
`Node.toJSON()` does; marks are in schema rank order. Numbers come back from Yjs as floats
(`level: 1.0`) and are made integers when whole.

Reading caps the depth at `MAX_DEPTH` levels: a subtree deeper than that (only a hostile or broken
client builds one) becomes a paragraph of its text, so rendering never recurses without bound.
"""

from __future__ import annotations

import re
from typing import Any

from pycrdt import Doc, XmlElement, XmlFragment, XmlText
from pycrdt._pycrdt import XmlElement as _RawElement
from pycrdt._pycrdt import XmlText as _RawText

from mdsync.tiptap.schema import DEFAULT_SCHEMA, MARKS, NODES, Schema, Unknown

FRAGMENT_NAME = "default"  # TipTap's Collaboration extension binds this fragment
MAX_DEPTH = 64  # nesting levels of the JSON tree (a list 10 deep is about 20)
_HASHED_MARK = re.compile(r"^(.*)--[a-zA-Z0-9+/=]{8}$")


def fragment(doc: Doc) -> XmlFragment:
    return doc.get(FRAGMENT_NAME, type=XmlFragment)


def mark_name(key: str) -> str:
    """The mark type behind a Y.XmlText formatting key (y-prosemirror's `yattr2markname`)."""
    m = _HASHED_MARK.match(key)
    return m.group(1) if m else key


def clean_value(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: clean_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_value(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Yjs → JSON
# ---------------------------------------------------------------------------------------------
def read_blocks(frag: XmlFragment | XmlElement, schema: Schema = DEFAULT_SCHEMA,
                unknown: Unknown | None = None) -> list[dict]:
    """The JSON of a fragment's (or element's) children."""
    unknown = unknown if unknown is not None else Unknown()
    with frag.doc.transaction() as txn:
        return _Reader(txn._txn, schema, unknown).children(frag.integrated, 1)


def read_node(el: XmlElement, schema: Schema = DEFAULT_SCHEMA, unknown: Unknown | None = None,
              depth: int = 1) -> dict:
    unknown = unknown if unknown is not None else Unknown()
    with el.doc.transaction() as txn:
        return _Reader(txn._txn, schema, unknown).element(el.integrated, depth)


class _Reader:
    """Reads through pycrdt's integrated (Rust) objects inside one transaction: the Python
    wrappers cost about a fifth of a whole read, for nothing the reader needs."""

    def __init__(self, txn: Any, schema: Schema, unknown: Unknown):
        self.txn = txn
        self.schema = schema
        self.unknown = unknown

    def children(self, parent: Any, depth: int) -> list[dict]:
        out: list[dict] = []
        for child in parent.children(self.txn):
            if isinstance(child, _RawElement):
                out.append(self.element(child, depth))
            elif isinstance(child, _RawText):
                out.extend(_text_nodes(child.diff(self.txn), self.schema, self.unknown))
            # a nested XmlFragment cannot come from y-prosemirror: nothing to read
        return _merge_text(out)

    def plain_text(self, el: Any) -> str:
        """All text under an element, blocks separated by newlines (iterative: any depth)."""
        parts: list[str] = []
        stack: list[Any] = [el]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
            elif isinstance(item, _RawText):
                parts.append("".join(i for i, _ in item.diff(self.txn) if isinstance(i, str)))
            else:
                children = list(item.children(self.txn))
                if parts and children and not isinstance(children[0], _RawText):
                    stack.append("\n")
                stack.extend(reversed(children))
        return "".join(parts).strip("\n")

    def element(self, el: Any, depth: int) -> dict:
        tag = el.tag() or ""
        if not self.schema.knows_node(tag):
            self.unknown.nodes.add(tag)
        if depth > MAX_DEPTH:
            self.unknown.nodes.add("(nested too deep)")
            text = self.plain_text(el)
            return {"type": "paragraph", "content": [{"type": "text", "text": text}]} if text else {"type": "paragraph"}
        node: dict[str, Any] = {"type": tag}
        attrs = el.attributes(self.txn)
        if attrs:
            node["attrs"] = {k: clean_value(v) for k, v in attrs}
        content = self.children(el, depth + 1)
        if content:
            node["content"] = content
        return node


def read_text(text: XmlText, schema: Schema = DEFAULT_SCHEMA, unknown: Unknown | None = None) -> list[dict]:
    """The text nodes of one Y.XmlText (its runs), marks sorted by schema rank."""
    return _text_nodes(text.diff(), schema, unknown)


def _text_nodes(runs: list, schema: Schema, unknown: Unknown | None) -> list[dict]:
    out = []
    for insert, fmt in runs:
        if not isinstance(insert, str):
            if unknown is not None:
                unknown.nodes.add("(embed)")
            continue
        if not insert:
            continue
        node: dict[str, Any] = {"type": "text", "text": insert}
        if fmt:
            marks = []
            for key, value in fmt.items():
                if value is None:
                    continue
                name = mark_name(key)
                if not schema.knows_mark(name) and unknown is not None:
                    unknown.marks.add(name)
                mark: dict[str, Any] = {"type": name}
                if isinstance(value, dict) and value:
                    mark["attrs"] = clean_value(value)
                marks.append(mark)
            if marks:
                node["marks"] = sort_marks(marks, schema)
        out.append(node)
    return out


def sort_marks(marks: list[dict], schema: Schema = DEFAULT_SCHEMA) -> list[dict]:
    rank = schema.mark_rank
    return sorted(marks, key=lambda m: (rank.get(m["type"], len(rank)), m["type"]))


def _merge_text(nodes: list[dict]) -> list[dict]:
    """Adjacent text nodes with the same marks become one (ProseMirror normalizes the same way)."""
    out: list[dict] = []
    for node in nodes:
        prev = out[-1] if out else None
        if (prev is not None and node["type"] == "text" and prev["type"] == "text"
                and prev.get("marks") == node.get("marks")):
            out[-1] = {**prev, "text": prev["text"] + node["text"]}
        else:
            out.append(node)
    return out


# ---------------------------------------------------------------------------------------------
# JSON → Yjs
# ---------------------------------------------------------------------------------------------
def y_attrs(node: dict) -> dict[str, Any]:
    """The XmlElement attributes y-prosemirror would store for `node`: its attributes over the
    schema defaults, nulls left out."""
    merged = {**NODES.get(node["type"], {}), **(node.get("attrs") or {})}
    return {k: v for k, v in merged.items() if v is not None}


def y_format(marks: list[dict] | None) -> dict[str, Any]:
    """The formatting attributes of a text run: mark name -> the mark's attributes over the
    schema defaults (nulls kept, as y-prosemirror writes `mark.attrs`)."""
    out: dict[str, Any] = {}
    for mark in marks or ():
        out[mark["type"]] = {**MARKS.get(mark["type"], {}), **(mark.get("attrs") or {})}
    return out


def insert_blocks(parent: XmlFragment | XmlElement, index: int, nodes: list[dict]) -> None:
    """Insert `nodes` (JSON) as children of `parent` at `index` (inside the caller's transaction).

    Built back to front, each node inserted at the same index: yrs finds an index by walking the
    list from its start, so appending thousands of blocks one after the other is quadratic
    (measured: 3.3x slower at 300 KB of markdown, worse beyond). Through pycrdt's integrated
    objects, as reading is (the wrappers cost more than the inserts)."""
    with parent.doc.transaction() as txn:
        writer = _Writer(txn._txn)
        for node in reversed(nodes):
            writer.node(parent.integrated, index, node)


def fill_text(text: XmlText, runs: list[dict]) -> None:
    """Write text nodes (with their marks as formatting attributes) into an empty XmlText."""
    with text.doc.transaction() as txn:
        _Writer(txn._txn).text(text.integrated, runs)


class _Writer:
    def __init__(self, txn: Any):
        self.txn = txn

    def node(self, parent: Any, index: int, node: dict) -> None:
        el = parent.insert_element_prelim(self.txn, index, node["type"])
        for key, value in y_attrs(node).items():
            el.insert_attribute(self.txn, key, value)
        self.fill(el, node.get("content") or [])

    def fill(self, el: Any, content: list[dict]) -> None:
        """Fill an empty element with `content` (JSON nodes): each run of text nodes is one
        XmlText (y-prosemirror's mapping), inline and block nodes elements. Back to front."""
        segments: list[Any] = []
        for node in content:
            if node["type"] == "text":
                if segments and isinstance(segments[-1], list):
                    segments[-1].append(node)
                else:
                    segments.append([node])
            else:
                segments.append(node)
        for segment in reversed(segments):
            if isinstance(segment, list):
                self.text(el.insert_str(self.txn, 0, ""), segment)
            else:
                self.node(el, 0, segment)

    def text(self, text: Any, runs: list[dict]) -> None:
        pos = 0
        for run in runs:
            fmt = y_format(run.get("marks"))
            text.insert(self.txn, pos, run["text"], iter(fmt.items()))
            pos += len(run["text"].encode("utf-8"))

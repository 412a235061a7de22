"""Write markdown into a live TipTap document: change what changed, never rebuild.

`apply(fragment, blocks)` turns the fragment's content into `blocks` (parsed markdown, see
parse.py) as a small set of Yjs operations, inside the caller's transaction:

1. The block sequences are compared by their rendered markdown (what GET content shows):
   unchanged blocks are not touched, so attributes markdown cannot carry (a column width, a
   custom mark, a node outside the schema) and every collaborator's cursor in them survive.
   A block whose markdown differs only because markdown cannot write it exactly (trailing
   spaces, a mark around whitespace) counts as unchanged: its markdown is read back and
   compared again before anything is edited (`_canonical_key`).
2. A changed block of the same type as its counterpart is edited in place: attributes markdown
   carries are set, a container's children are compared the same way (one level down), and a
   textblock's inline content gets a text diff (Google diff-match-patch, as for `text`
   documents) plus formatting changes only where the marks differ. Marks markdown cannot write
   are left on the text they cover.
3. Other blocks are deleted and inserted.

The document's trailing empty paragraph (TipTap's TrailingNode keeps one after a list, table or
code block) is kept when the markdown simply ends earlier: deleting it would only make every
editor add it back.

`seed_update(markdown)` is the deterministic first state of a new document: the same markdown
always gives the same bytes (fixed client id), so two servers seeding one document merge into one
copy instead of two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from cdifflib import CSequenceMatcher
from pycrdt import Doc, XmlElement, XmlFragment, XmlText

from mdsync.collab.text_ops import text_ops
from mdsync.tiptap import parse as md_parse
from mdsync.tiptap import yxml
from mdsync.tiptap import render
from mdsync.tiptap.render import MARK_RANKS, Renderer
from mdsync.tiptap.schema import DEFAULT_SCHEMA, MARKS, Schema, Unknown

SEED_CLIENT_ID = 0x6D64_7379  # the same fixed id as a `text` document's seed (collab/room.py)
_INLINE_TYPES = {"hardBreak"}
_TEXTBLOCKS = {"paragraph", "heading", "codeBlock"}


class Stats:
    """What one apply changed (for logs and tests)."""

    def __init__(self) -> None:
        self.kept = 0
        self.edited = 0
        self.replaced = 0
        self.inserted = 0
        self.deleted = 0

    def __repr__(self) -> str:
        return (f"Stats(kept={self.kept}, edited={self.edited}, replaced={self.replaced}, "
                f"inserted={self.inserted}, deleted={self.deleted})")


def seed_update(markdown: str) -> bytes:
    """The Yjs state of a new TipTap document holding `markdown` (always the same bytes)."""
    doc = Doc(client_id=SEED_CLIENT_ID)
    try:
        blocks = md_parse.parse(markdown)
    except md_parse.TooDeep:
        # stored before it could be refused (an import, an older server): kept as text
        blocks = [{"type": "paragraph", "content": [{"type": "text", "text": chunk}]}
                  for chunk in md_parse.normalize_newlines(markdown).split("\n\n") if chunk.strip()]
    frag = yxml.fragment(doc)
    with doc.transaction(origin="mdsync-seed"):
        yxml.insert_blocks(frag, 0, blocks)
    return doc.get_update()


def apply(frag: XmlFragment, blocks: list[dict], schema: Schema = DEFAULT_SCHEMA,
          sources: list[str | None] | None = None) -> Stats:
    """Make `frag` hold `blocks` with the fewest changes (call inside a transaction). `sources`
    (parse.parse_with_sources) lets unchanged blocks be recognised by the text they were read
    from, without rendering them again."""
    stats = Stats()
    _Writer(schema, stats).sync_children(frag, [], blocks, top=True, sources=sources)
    return stats


def write_markdown(frag: XmlFragment, markdown: str, schema: Schema = DEFAULT_SCHEMA) -> Stats:
    """Make `frag` hold `markdown` (call inside a transaction): `apply` of its parse, where only
    the part of the body that changed is parsed when the blocks around it are unchanged.

    The body is compared with the document's own markdown block by block from both ends; the
    changed middle is parsed together with one unchanged block on each side, which must read
    back as those very blocks (a fence left open, a list that swallows its neighbour, ... fall
    back to parsing the whole body). A body with link reference definitions is parsed whole (a
    definition anywhere changes links everywhere). So a PUT changing one paragraph of a large
    document parses a few blocks, not the document. Raises parse.TooDeep."""
    stats = Stats()
    writer = _Writer(schema, stats)
    children = list(frag.children)
    old: list[dict | None] = [yxml.read_node(c, schema) if isinstance(c, XmlElement) else None for c in children]
    okeys = [writer.key(o, []) for o in old]
    blocks, sources = _parse_changed(writer, old, okeys, md_parse.normalize_newlines(markdown))
    writer.sync_children(frag, [], blocks, top=True, sources=sources, known=(children, old, okeys))
    return stats


_REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:", re.M)


def _parse_changed(writer: _Writer, old: list[dict | None], okeys: list[str],
                   body: str) -> tuple[list[dict], list[str | None]]:
    n = len(old)
    if n == 0 or any(o is None for o in old) or _REFERENCE_DEFINITION.search(body):
        return md_parse.parse_with_sources(body)
    # each old block as GET wrote it in the document (`texts`), and as the source apply's
    # by-source match compares (`parts`: a table without the newlines around it)
    texts: list[str] = []
    previous: dict | None = None
    for block, key in zip(old, okeys):
        if _is_empty_paragraph(block) and _is_empty_paragraph(previous):
            texts.append(render.EMPTY_PARAGRAPH)
        elif block.get("type") == "codeBlock" and texts:  # (front matter is written only first)
            texts.append(render.render_block(block, previous, writer.schema))
        else:
            texts.append(key.partition("\0")[2])
        previous = block
    parts = [text.strip("\n") if _is_table(block) else text for text, block in zip(texts, old)]
    # the part of the body that changed: whole blocks, each followed (preceded) by the separator
    pos = k = 0
    while k < n and body.startswith(texts[k] + "\n\n", pos):
        pos += len(texts[k]) + 2
        k += 1
    end = len(body)
    s = 0
    while s < n - k and body.endswith("\n\n" + texts[n - 1 - s], 0, end) and end - len(texts[n - 1 - s]) - 2 >= pos:
        end -= len(texts[n - 1 - s]) + 2
        s += 1
    if k == 0 and s == 0:
        return md_parse.parse_with_sources(body)
    # parse the middle with the unchanged block on each side as a sentinel
    a = k - 1 if k > 0 else None
    b = n - s if s > 0 else None
    start = pos - len(texts[a]) - 2 if a is not None else 0
    stop = end + 2 + len(texts[b]) if b is not None else len(body)
    blocks, sources = md_parse.parse_with_sources(body[start:stop])
    if not blocks or (a is not None and writer.key(blocks[0], []) != okeys[a]) \
            or (b is not None and writer.key(blocks[-1], []) != okeys[b]):
        return md_parse.parse_with_sources(body)
    keep_before = a if a is not None else 0
    keep_after = b + 1 if b is not None else n
    return ([*old[:keep_before], *blocks, *old[keep_after:]],  # type: ignore[list-item]
            [*parts[:keep_before], *sources, *parts[keep_after:]])


def _is_table(block: dict | None) -> bool:
    return block is not None and block.get("type") == "table"


def _match(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib opcodes of a → b, common prefix and suffix taken first (the usual PUT changes a
    few blocks of many: the matcher then only sees the middle)."""
    n, m = len(a), len(b)
    p = 0
    while p < n and p < m and a[p] == b[p]:
        p += 1
    s = 0
    while s < n - p and s < m - p and a[n - 1 - s] == b[m - 1 - s]:
        s += 1
    ops: list[tuple[str, int, int, int, int]] = []
    if p:
        ops.append(("equal", 0, p, 0, p))
    mid_a, mid_b = a[p:n - s], b[p:m - s]
    if mid_a or mid_b:
        if not mid_a:
            ops.append(("insert", p, p, p, m - s))
        elif not mid_b:
            ops.append(("delete", p, n - s, p, p))
        else:
            for tag, i1, i2, j1, j2 in CSequenceMatcher(None, mid_a, mid_b, autojunk=False).get_opcodes():
                ops.append((tag, i1 + p, i2 + p, j1 + p, j2 + p))
    if s:
        ops.append(("equal", n - s, n, m - s, m))
    return ops


class _Writer:
    def __init__(self, schema: Schema, stats: Stats):
        self.schema = schema
        self.stats = stats

    # -- keys ------------------------------------------------------------------------------
    def key(self, node: dict | None, ancestors: list[dict]) -> str:
        """A block's markdown in a neutral place (first child of its parent): equal keys, equal
        markdown. Rows and cells (which render only inside their table) key on their cells'
        markdown; inline content on its rendering as a paragraph."""
        if node is None:
            return "\0stray"
        kind = node.get("type", "")
        r = Renderer(self.schema, Unknown())
        if kind == "tableRow":
            return "row\0" + "\0".join(self.key(c, [*ancestors, node]) for c in node.get("content") or [])
        if kind in ("tableHeader", "tableCell"):
            align = (node.get("attrs") or {}).get("align")
            body = "\n".join(r.nodes(c.get("content") or [], {"type": "table"}) if c.get("content") else
                             r.node(c, {"type": "table"}) for c in node.get("content") or [])
            return f"{kind}\0{align}\0{body}"
        parent = ancestors[-1] if ancestors else {"type": "doc"}
        level = sum(1 for a in ancestors if a.get("type") in ("bulletList", "orderedList", "taskList"))
        neutral_parent = {"type": parent.get("type"), "content": [node]}
        if parent.get("type") == "orderedList":
            neutral_parent["attrs"] = {"start": 1}
        return f"{kind}\0{r.node(node, neutral_parent, 0, level)}"

    def canonical_key(self, node: dict | None, ancestors: list[dict]) -> str | None:
        """The key of `node` once its markdown is read back (what a PUT of the same markdown
        would carry), or None when that does not give one block in the same place."""
        if node is None:
            return None
        wrapped = node
        for anc in reversed(ancestors):
            wrapper: dict[str, Any] = {"type": anc["type"], "content": [wrapped]}
            if anc.get("attrs"):
                wrapper["attrs"] = anc["attrs"]
            wrapped = wrapper
        try:
            parsed = md_parse.parse(render.render([wrapped], self.schema))
        except md_parse.TooDeep:
            return None
        if len(parsed) != 1:
            return None
        found = parsed[0]
        for anc in ancestors:
            content = found.get("content") or []
            if found.get("type") != anc.get("type") or len(content) != 1:
                return None
            found = content[0]
        # the type may differ (a node outside the schema reads back as the block its text makes):
        # what counts is the markdown
        return self.key(found, ancestors)

    # -- block sequences ---------------------------------------------------------------------
    def sync_children(self, parent: XmlFragment | XmlElement, ancestors: list[dict], new: list[dict],
                      top: bool = False, sources: list[str | None] | None = None,
                      known: tuple[list, list[dict | None], list[str]] | None = None) -> None:
        if known is not None:  # (children, their JSON, their keys) read by the caller
            children, old, okeys = known
        else:
            children = list(parent.children)
            old = [yxml.read_node(c, self.schema) if isinstance(c, XmlElement) else None for c in children]
            okeys = [self.key(o, ancestors) for o in old]
        if top and new and old and len(old) > len(new) and _is_empty_paragraph(old[-1]) \
                and not _is_empty_paragraph(new[-1]):
            # keep TipTap's trailing paragraph
            children, old, okeys = children[:-1], old[:-1], okeys[:-1]
        if sources is not None and len(sources) == len(new):
            # first by the text each new block was read from (what GET wrote, for the blocks a
            # client left alone); only where that differs are the new blocks rendered
            by_source = [f"{n.get('type')}\0{src}" if src is not None else f"\0new{j}"
                         for j, (n, src) in enumerate(zip(new, sources))]
            regions = []
            for tag, i1, i2, j1, j2 in _match([_source_form(k) for k in okeys], by_source):
                if tag == "equal":
                    self.stats.kept += i2 - i1
                else:
                    regions.append((i1, i2, j1, j2))
        else:
            regions = [(0, len(old), 0, len(new))]
        for r1, r2, s1, s2 in reversed(regions):
            nkeys = [self.key(n, ancestors) for n in new[s1:s2]]
            for tag, i1, i2, j1, j2 in reversed(_match(okeys[r1:r2], nkeys)):
                i1, i2 = i1 + r1, i2 + r1
                if tag == "equal":
                    self.stats.kept += i2 - i1
                    continue
                canon = [self.canonical_key(old[i], ancestors) if old[i] is not None else None for i in range(i1, i2)]
                canon_keys = [c if c is not None else f"\0nocanon{i}" for i, c in enumerate(canon)]
                for tag2, a1, a2, b1, b2 in reversed(_match(canon_keys, nkeys[j1:j2])):
                    if tag2 == "equal":
                        self.stats.kept += a2 - a1
                        continue
                    self.replace_region(parent, ancestors, children, old, i1 + a1, i1 + a2,
                                        new, s1 + j1 + b1, s1 + j1 + b2)

    def replace_region(self, parent: Any, ancestors: list[dict], children: list, old: list[dict | None],
                       a1: int, a2: int, new: list[dict], b1: int, b2: int) -> None:
        """Old blocks [a1, a2) become new blocks [b1, b2): same-type pairs edited in place, the
        rest deleted and inserted (from the end, so indices before stay valid)."""
        otypes = [(o or {}).get("type", "\0") for o in old[a1:a2]]
        ntypes = [n.get("type", "") for n in new[b1:b2]]
        for tag, x1, x2, y1, y2 in reversed(_match(otypes, ntypes)):
            if tag == "equal":
                for k in reversed(range(x2 - x1)):
                    self.edit(children[a1 + x1 + k], old[a1 + x1 + k], new[b1 + y1 + k], ancestors)
                continue
            if x2 > x1:
                del parent.children[a1 + x1:a1 + x2]
                self.stats.deleted += x2 - x1
            if y2 > y1:
                yxml.insert_blocks(parent, a1 + x1, new[b1 + y1:b1 + y2])
                self.stats.inserted += y2 - y1
            if x2 > x1 and y2 > y1:
                self.stats.replaced += min(x2 - x1, y2 - y1)

    def edit(self, el: XmlElement, old: dict, new: dict, ancestors: list[dict]) -> None:
        """Edit one element in place into `new` (same type)."""
        self.stats.edited += 1
        old_attrs = old.get("attrs") or {}
        for name, value in (new.get("attrs") or {}).items():
            if value is None:
                if name in old_attrs:
                    del el.attributes[name]
            elif old_attrs.get(name) != value:
                el.attributes[name] = value
        content = new.get("content") or []
        if _is_textblock(new) or _is_textblock(old):
            self.sync_inline(el, content)
        else:
            self.sync_children(el, [*ancestors, new], content)

    # -- inline content ----------------------------------------------------------------------
    def sync_inline(self, el: XmlElement, content: list[dict]) -> None:
        ychildren = list(el.children)
        old_keys = ["T" if isinstance(c, XmlText) else "E" + self.key(yxml.read_node(c, self.schema), [])
                    for c in ychildren]
        segments: list[tuple[str, Any]] = []  # ("T", [text nodes]) | ("E", node)
        for node in content:
            if node["type"] == "text":
                if segments and segments[-1][0] == "T":
                    segments[-1][1].append(node)
                else:
                    segments.append(("T", [node]))
            else:
                segments.append(("E", node))
        new_keys = ["T" if kind == "T" else "E" + self.key(node, []) for kind, node in segments]
        for tag, i1, i2, j1, j2 in reversed(_match(old_keys, new_keys)):
            if tag == "equal":
                for k in reversed(range(i2 - i1)):
                    if old_keys[i1 + k] == "T":
                        sync_text(ychildren[i1 + k], segments[j1 + k][1])
                continue
            if i2 > i1:
                del el.children[i1:i2]
            for offset, (kind, value) in enumerate(segments[j1:j2]):
                if kind == "T":
                    text = el.children.insert(i1 + offset, XmlText())
                    sync_text(text, value)
                else:
                    yxml.insert_blocks(el, i1 + offset, [value])


def _source_form(key: str) -> str:
    """A rendered block key as the block's own lines (a table is rendered between newlines)."""
    kind, _, markdown = key.partition("\0")
    return f"{kind}\0{markdown.strip(chr(10))}" if kind == "table" else key


def _is_textblock(node: dict) -> bool:
    if node.get("type") in _TEXTBLOCKS:
        return True
    content = node.get("content") or []
    return bool(content) and any(c.get("type") == "text" or c.get("type") in _INLINE_TYPES for c in content)


def _is_empty_paragraph(node: dict | None) -> bool:
    return node is not None and node.get("type") == "paragraph" and not node.get("content")


# ---------------------------------------------------------------------------------------------
# One Y.XmlText: text diff, then formatting where the marks differ
# ---------------------------------------------------------------------------------------------
def _visible(mark_type: str, value: Any) -> tuple:
    """What markdown shows of a mark: its link target and title; nothing for the others."""
    if mark_type == "link":
        attrs = value if isinstance(value, dict) else {}
        return (attrs.get("href") or "", attrs.get("title") or "")
    return ()


def _signature(fmt: dict | None) -> dict[str, tuple]:
    out = {}
    for key, value in (fmt or {}).items():
        name = yxml.mark_name(key)
        if value is not None and name in MARK_RANKS:
            out[name] = _visible(name, value)
    return out


def _byte_offsets(text: str, positions: list[int]) -> list[int]:
    """UTF-8 byte offsets (pycrdt's text offsets) of code-point positions (ascending)."""
    if text.isascii():
        return positions
    out, at, pos = [], 0, 0
    for p in positions:
        at += len(text[pos:p].encode("utf-8"))
        pos = p
        out.append(at)
    return out


def sync_text(ytext: XmlText, target: list[dict]) -> None:
    """Make one XmlText hold the text nodes `target`: a minimal text diff, then formatting
    applied only where the marks markdown shows differ (others are left as they are)."""
    runs = [(s, f) for s, f in ytext.diff() if isinstance(s, str)]
    old = "".join(s for s, _ in runs)
    new = "".join(n["text"] for n in target)
    ops = text_ops(old, new)
    if ops:
        # the new text's offset of each op, and the runs of `target` it inserts
        starts, shift = [], 0
        for start, end, insert in ops:
            starts.append(start + shift)
            shift += len(insert) - (end - start)
        bounds = _byte_offsets(old, sorted({p for s, e, _ in ops for p in (s, e)}))
        byte_at = dict(zip(sorted({p for s, e, _ in ops for p in (s, e)}), bounds))
        for (start, end, insert), new_start in reversed(list(zip(ops, starts))):
            bstart, bend = byte_at[start], byte_at[end]
            if bend > bstart:
                del ytext[bstart:bend]
            at = bstart
            for piece, marks in _slice_runs(target, new_start, new_start + len(insert)):
                fmt = yxml.y_format(marks)
                ytext.insert(at, piece, fmt or None)
                at += len(piece.encode("utf-8"))
    _sync_marks(ytext, target, new)


def _slice_runs(target: list[dict], start: int, end: int) -> list[tuple[str, list[dict] | None]]:
    out = []
    pos = 0
    for node in target:
        text = node["text"]
        lo, hi = max(start, pos), min(end, pos + len(text))
        if lo < hi:
            out.append((text[lo - pos:hi - pos], node.get("marks")))
        pos += len(text)
        if pos >= end:
            break
    return out


def _sync_marks(ytext: XmlText, target: list[dict], text: str) -> None:
    current = [(s, f) for s, f in ytext.diff() if isinstance(s, str)]
    # walk both run lists over the same text, collecting ranges whose shown marks differ
    changes: list[tuple[int, int, dict[str, Any]]] = []
    ci = ti = 0
    c_left = len(current[0][0]) if current else 0
    t_left = len(target[0]["text"]) if target else 0
    pos = 0
    while ci < len(current) and ti < len(target):
        step = min(c_left, t_left)
        cur_fmt = current[ci][1] or {}
        want_marks = target[ti].get("marks") or []
        want = {m["type"]: _visible(m["type"], {**MARKS.get(m["type"], {}), **(m.get("attrs") or {})}) for m in want_marks}
        have = _signature(cur_fmt)
        if step and have != want:
            attrs: dict[str, Any] = {}
            for key, value in cur_fmt.items():
                name = yxml.mark_name(key)
                if value is not None and name in MARK_RANKS and name not in want:
                    attrs[key] = None
                elif value is not None and name in want and have.get(name) != want[name]:
                    attrs[key] = None
            for name, value in yxml.y_format([m for m in want_marks if have.get(m["type"]) != want[m["type"]]]).items():
                attrs[name] = value
            if changes and changes[-1][1] == pos and changes[-1][2] == attrs:
                changes[-1] = (changes[-1][0], pos + step, attrs)
            else:
                changes.append((pos, pos + step, attrs))
        pos += step
        c_left -= step
        t_left -= step
        if c_left == 0:
            ci += 1
            c_left = len(current[ci][0]) if ci < len(current) else 0
        if t_left == 0:
            ti += 1
            t_left = len(target[ti]["text"]) if ti < len(target) else 0
    if not changes:
        return
    points = sorted({p for s, e, _ in changes for p in (s, e)})
    byte_at = dict(zip(points, _byte_offsets(text, points)))
    for start, end, attrs in changes:
        ytext.format(byte_at[start], byte_at[end], attrs)



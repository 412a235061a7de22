"""ProseMirror JSON of a TipTap document → CommonMark + GFM, written the way `@tiptap/markdown`
(3.x, `MarkdownManager.serialize`) writes it, so the markdown a plain client reads is the markdown
the web editor would export.

Ported from @tiptap/markdown and the StarterKit/list/table/image/link extensions' `renderMarkdown`:
blocks joined by a blank line, `- ` bullets and `1. ` numbers (nested content indented two
spaces, or to the width of the number), `- [ ] ` tasks, `> ` quotes, fenced code with its
language, `---`, hard breaks as two spaces + newline, `![alt](src "title")`, GFM tables padded
to the widest cell (a table block starts and ends with a newline of its own, as TipTap's does),
`**bold**`, `*italic*`, `~~strike~~`, `` `code` `` (fence longer than any backtick run inside),
`<u>underline</u>`, `[text](href "title")`, and a second empty paragraph in a row as `&nbsp;`.
Mark nesting and the moving of whitespace out of delimiters follow MarkdownManager's
`renderNodesWithMarkBoundaries` step by step. Text is escaped as TipTap escapes it (`&`, `<`,
`>` as entities; `` \\ ` * _ [ ] ~ `` with a backslash).

Where TipTap's output would not read back as the same document, this renderer adds what the
round trip needs (tests/test_tiptap_markdown.py lists each case against TipTap's output):
- a block marker at the start of a line of text (`# `, `- `, `+ `, `1. `, a `---` / `===` line)
  is escaped, so a paragraph that begins with "1. " stays a paragraph;
- a code block whose text holds a line of backticks gets a longer fence;
- an image source with spaces or parentheses is written `<src>`, quotes in titles escaped.
Unknown nodes and marks (outside the schema) keep their text: a node's inline content is written
like a paragraph's, its block content like the document's; an unknown mark is left out around
its text. Each name is reported in `unknown` (see schema.Guard).
"""

from __future__ import annotations

import re
from typing import Any

from mdsync.tiptap.schema import DEFAULT_SCHEMA, Schema, Unknown

EMPTY_PARAGRAPH = "&nbsp;"
FRONT_MATTER_LANGUAGE = "frontmatter"  # a code block parse.py made of front matter
# JavaScript's \s (String.prototype.trim and regex \s): what TipTap's whitespace handling uses
_JS_WS = "\t\n\u000b\u000c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_LEADING_WS = re.compile(f"^([{_JS_WS}]+)")
_TRAILING_WS = re.compile(f"([{_JS_WS}]+)$")
_WS_RUN = re.compile(f"[{_JS_WS}]+")
_ESCAPE = re.compile(r"([\\`*_\[\]~])")
_BACKTICKS = re.compile(r"`+")
_CELL_NEWLINE = re.compile(r"[ \t]*\r?\n[ \t]*")
_CELL_PIPES = re.compile(r"\\.|\|", re.S)
# at the start of a line of text: what a markdown parser would read as the start of a block
_LINE_BLOCK_START = re.compile(r"^([ \t]*)(#{1,6}(?=[ \t]|$)|[-+](?=[ \t]|$)|\d{1,9}[.)](?=[ \t]|$))")
_SETEXT_OR_RULE = re.compile(r"^[ \t]*(=+|-[ \t-]*)[ \t]*$")
_TRAILING_BANG = re.compile(r"(\\*)!$")
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.M)

# mark -> rank in MarkdownManager's registration order (Link has priority 1000: outermost)
MARK_RANKS = {"link": 0, "bold": 5, "code": 8, "italic": 17, "strike": 21, "underline": 23}
# marks MarkdownManager reopens as HTML where two mark spans cross (`markdownOptions.htmlReopen`)
# marks written as fixed delimiters around their text (code and link depend on what they hold)
DELIMITERS = {"bold": ("**", "**"), "italic": ("*", "*"), "strike": ("~~", "~~"), "underline": ("<u>", "</u>")}
HTML_REOPEN = {"bold": ("<strong>", "</strong>"), "italic": ("<em>", "</em>")}
CODE_TYPES = {"code", "codeBlock"}  # text inside is written as is
INDENTING = {"bulletList", "orderedList", "taskList"}  # children are one list level deeper
INDENT = "  "


def utf16_len(s: str) -> int:
    """JavaScript's String.length (table column widths are measured in it)."""
    return len(s) if s.isascii() else len(s.encode("utf-16-le")) // 2


def render(doc: dict | list[dict], schema: Schema = DEFAULT_SCHEMA, unknown: Unknown | None = None) -> str:
    """The markdown of a document (a `doc` node or its list of blocks)."""
    blocks = doc.get("content") or [] if isinstance(doc, dict) else doc
    r = Renderer(schema, unknown)
    out = r.nodes(blocks, {"type": "doc", "content": blocks}, "\n\n", 0)
    return "" if _is_empty_output(out) else out


def render_block(block: dict, previous: dict | None = None, schema: Schema = DEFAULT_SCHEMA,
                 unknown: Unknown | None = None) -> str:
    """One top-level block as `render` writes it after `previous` (None: the first block)."""
    content = [previous, block] if previous is not None else [block]
    return Renderer(schema, unknown).node(block, {"type": "doc", "content": content}, len(content) - 1, 0)


def _is_empty_output(markdown: str) -> bool:
    return markdown.replace("&nbsp;", "").replace("\u00a0", "").strip() == ""


def _marks(node: dict | None) -> list[dict]:
    return (node or {}).get("marks") or []


def _attrs(mark: dict | None) -> dict:
    return (mark or {}).get("attrs") or {}


def _attrs_equal(a: dict | None, b: dict | None) -> bool:
    return (a or {}) == (b or {})


def _js_trim(s: str) -> str:
    return _TRAILING_WS.sub("", _LEADING_WS.sub("", s))


class Renderer:
    def __init__(self, schema: Schema = DEFAULT_SCHEMA, unknown: Unknown | None = None):
        self.schema = schema
        self.unknown = unknown if unknown is not None else Unknown()

    # -- nodes ---------------------------------------------------------------------------
    def node(self, node: dict, parent: dict | None, index: int = 0, level: int = 0) -> str:
        """MarkdownManager.renderNodeToMarkdown."""
        kind = node.get("type")
        if kind == "text":
            return self.encode(node.get("text") or "", node, parent)
        if not kind:
            return ""
        handler = _HANDLERS.get(kind)
        if handler is None:
            return self.unknown_node(node, parent, index, level)
        content = (parent or {}).get("content")
        previous = content[index - 1] if isinstance(content, list) and 0 < index <= len(content) else None
        ctx = _Ctx(self, node, parent, index, level, previous, kind in INDENTING)
        return handler(node, ctx)

    def nodes(self, nodes: list[dict], parent: dict | None, separator: str = "", level: int = 0) -> str:
        """MarkdownManager.renderNodesWithMarkBoundaries: a list of nodes, marks opened and closed
        across text nodes."""
        if not any("marks" in n for n in nodes):
            # no marks anywhere (every block list, most paragraphs): nothing to open or close
            result = [self.encode(n.get("text") or "", n, parent) if n.get("type") == "text"
                      else self.node(n, parent, i, level) for i, n in enumerate(nodes) if n.get("type")]
            return separator.join(_escape_bang_before_link(result) if separator == "" else result)
        result: list[str] = []
        active: dict[str, dict] = {}   # mark type -> mark, in opening order (outer first)
        reopen_html: set[str] = set()
        modes: dict[str, str] = {}
        spans = _mark_span_texts(nodes)
        count = len(nodes)
        for i, node in enumerate(nodes):
            nxt = nodes[i + 1] if i + 1 < count else None
            kind = node.get("type")
            if not kind:
                continue
            if kind == "text":
                text = self.encode(node.get("text") or "", node, parent)
                current = {m["type"]: m for m in self._known_marks(node)}
                to_open = self._marks_to_open(active, current, nxt)
                to_close = _marks_to_close(current, nxt)
                if text and not _js_trim(text) and current:
                    transient = {m for m in to_close if m not in active}
                    if transient:
                        current = {k: v for k, v in current.items() if k not in transient}
                        to_open = self._marks_to_open(active, current, nxt)
                        to_close = _marks_to_close(current, nxt)
                closing_active = [m for m in to_close if m in active]
                crossed = bool(closing_active) and bool(to_open)
                middle_ws = ""
                if to_close and not crossed:
                    m = _TRAILING_WS.search(text)
                    if m:
                        middle_ws = m.group(1)
                        text = text[:-len(middle_ws)]
                if not crossed:
                    for mark_type in reversed(to_close):
                        if mark_type not in active:
                            continue
                        text += self.closing(mark_type, current.get(mark_type), modes.get(mark_type),
                                             spans[i].get(mark_type))
                        active.pop(mark_type, None)
                        modes.pop(mark_type, None)
                leading = ""
                if to_open:
                    m = _LEADING_WS.search(text)
                    if m:
                        leading = m.group(1)
                        text = text[len(leading):]
                for mark_type, mark in to_open:
                    mode = "html" if mark_type in reopen_html else "markdown"
                    text = self.opening(mark_type, mark, mode, spans[i].get(mark_type)) + text
                    modes[mark_type] = mode
                    reopen_html.discard(mark_type)
                if not crossed:
                    for mark_type, mark in reversed(to_open):
                        active[mark_type] = mark
                text = leading + text
                if crossed:
                    next_types = {m["type"] for m in _marks(nxt)}
                    for mark_type, _ in to_open:
                        if mark_type in next_types and mark_type in HTML_REOPEN:
                            reopen_html.add(mark_type)
                    keys = list(active)
                    lifo = sorted(closing_active, key=lambda t: -keys.index(t))
                    at_end = [t for t, _ in to_open] + lifo
                else:
                    at_end = _marks_to_close_at_end(active, current, nxt)
                trailing = ""
                if at_end:
                    m = _TRAILING_WS.search(text)
                    if m:
                        trailing = m.group(1)
                        text = text[:-len(trailing)]
                for mark_type in at_end:
                    mark = active.get(mark_type) or current.get(mark_type)
                    text += self.closing(mark_type, mark, modes.get(mark_type), spans[i].get(mark_type))
                    active.pop(mark_type, None)
                    modes.pop(mark_type, None)
                result.append(text + trailing + middle_ws)
            else:
                own = {m["type"] for m in self._known_marks(node)}
                reopen = {t: m for t, m in active.items() if t in own}
                reopen_modes = {t: modes.get(t, "markdown") for t in reopen}
                before = ""
                for mark_type in reversed(list(active)):
                    before = self.closing(mark_type, active[mark_type], modes.get(mark_type),
                                          spans[i - 1].get(mark_type) if i > 0 else None) + before
                active.clear()
                modes.clear()
                rendered = self.node(node, parent, i, level)
                after = ""
                if kind != "hardBreak":
                    for mark_type, mark in reopen.items():
                        mode = reopen_modes[mark_type]
                        modes[mark_type] = mode
                        after += self.opening(mark_type, mark, mode, spans[i + 1].get(mark_type) if i + 1 < count else None)
                        active[mark_type] = mark
                result.append(before + rendered + after)
        if separator == "":
            result = _escape_bang_before_link(result)
        return separator.join(result)

    def children(self, node: dict, ctx: _Ctx | None, nodes: Any, separator: str = "") -> str:
        """The `renderChildren` helper of a handler rendering `node`."""
        level = ctx.child_level if ctx is not None else 0
        if isinstance(nodes, dict):
            if nodes.get("content"):
                return self.nodes(nodes["content"], node, separator, level)
            return self.node(nodes, node, 0, level) if nodes.get("type") else ""
        return self.nodes(nodes or [], node, separator, level)

    # -- text and marks ------------------------------------------------------------------
    def encode(self, text: str, node: dict, parent: dict | None) -> str:
        if (parent or {}).get("type") in CODE_TYPES or any(m.get("type") in CODE_TYPES for m in _marks(node)):
            return text
        return _ESCAPE.sub(r"\\\1", text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))

    def _known_marks(self, node: dict) -> list[dict]:
        out = []
        for mark in _marks(node):
            if mark.get("type") in MARK_RANKS:
                out.append(mark)
            else:
                if not self.schema.knows_mark(mark.get("type", "")):
                    self.unknown.marks.add(mark.get("type", ""))
        return out

    def _marks_to_open(self, active: dict, current: dict, nxt: dict | None) -> list[tuple[str, dict]]:
        to_open = [(t, m) for t, m in current.items() if t not in active or not _attrs_equal(_attrs(active[t]), _attrs(m))]
        if len(to_open) <= 1:
            return to_open
        next_marks = _marks(nxt)

        def continues(t: str, m: dict) -> bool:
            return any(n["type"] == t and _attrs_equal(_attrs(n), _attrs(m)) for n in next_marks)

        def inner_first(item: tuple[str, dict]) -> tuple[int, str]:
            # code innermost: delimiters written inside a code span would be its text
            # (TipTap orders by rank alone and writes `<u>` inside the backticks)
            return (-(2**53 if item[0] == "code" else MARK_RANKS.get(item[0], 2**53)), item[0])

        ending = sorted([x for x in to_open if not continues(*x)], key=inner_first)
        going_on = sorted([x for x in to_open if continues(*x)], key=inner_first)
        return ending + going_on

    def opening(self, mark_type: str, mark: dict | None, mode: str | None = "markdown", span: str | None = None) -> str:
        if mode == "html":
            return HTML_REOPEN.get(mark_type, ("", ""))[0]
        if mark_type in DELIMITERS:
            return DELIMITERS[mark_type][0]
        if mark_type == "code":
            return _code_fence(span or "") + (" " if _code_padded(span or "") else "")
        if mark_type == "link":
            return "["
        return ""

    def closing(self, mark_type: str, mark: dict | None, mode: str | None = "markdown", span: str | None = None) -> str:
        if mode == "html":
            return HTML_REOPEN.get(mark_type, ("", ""))[1]
        if mark_type in DELIMITERS:
            return DELIMITERS[mark_type][1]
        if mark_type == "code":
            return (" " if _code_padded(span or "") else "") + _code_fence(span or "")
        if mark_type == "link":
            attrs = _attrs(mark)
            href = _str(attrs.get("href"))
            title = _str(attrs.get("title"))
            if _needs_angle(href):
                href = f"<{href}>"
            title = title.replace('"', '\\"')
            return '](' + href + (f' "{title}")' if title else ")")
        return ""

    # -- unknown nodes -------------------------------------------------------------------
    def unknown_node(self, node: dict, parent: dict | None, index: int, level: int) -> str:
        kind = node.get("type") or ""
        if not self.schema.knows_node(kind):
            self.unknown.nodes.add(kind)
        content = node.get("content") or []
        if not content:
            attrs = node.get("attrs") or {}
            for key in ("text", "label"):
                if isinstance(attrs.get(key), str):
                    return self.encode(attrs[key], node, parent)
            return ""
        if any(c.get("type") == "text" or _is_inline_leaf(c) for c in content):
            return self.nodes(content, node, "", level)
        return self.nodes(content, node, "\n\n", level)


def _escape_bang_before_link(result: list[str]) -> list[str]:
    """A literal "!" right before a link would read as an image: escape it."""
    previous = -1
    for i, piece in enumerate(result):
        if not piece:
            continue
        if previous >= 0 and piece.startswith("["):
            m = _TRAILING_BANG.search(result[previous])
            if m and len(m.group(1)) % 2 == 0:
                result[previous] = result[previous][:-1] + "\\!"
        previous = i
    return result


def _is_inline_leaf(node: dict) -> bool:
    return node.get("type") == "hardBreak"


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _needs_angle(url: str) -> bool:
    return any(c in url for c in " ()<>\n") if url else False


def _code_fence(span: str) -> str:
    runs = {len(r) for r in _BACKTICKS.findall(span)}
    n = 1
    while n in runs:
        n += 1
    return "`" * n


def _code_padded(span: str) -> bool:
    return span.startswith("`") or span.endswith("`")


def _marks_to_close(current: dict, nxt: dict | None) -> list[str]:
    if nxt is None:
        return list(current)
    nm = _marks(nxt)
    return [t for t, m in current.items()
            if not any(n["type"] == t and _attrs_equal(_attrs(n), _attrs(m)) for n in nm)]


def _mark_sets_equal(a: dict, b: dict) -> bool:
    if len(a) != len(b):
        return False
    return all(t in b and _attrs_equal(_attrs(m), _attrs(b[t])) for t, m in a.items())


def _marks_to_close_at_end(active: dict, current: dict, nxt: dict | None) -> list[str]:
    if nxt is None:
        return list(reversed(list(active)))
    nm = _marks(nxt)
    if not nm:
        return list(reversed(list(active)))
    if "marks" in nxt and not _mark_sets_equal(current, {m["type"]: m for m in nm}):
        return [t for t, m in reversed(list(active.items()))
                if not any(n["type"] == t and _attrs_equal(_attrs(n), _attrs(m)) for n in nm)]
    return []


def _mark_span_texts(nodes: list[dict]) -> list[dict[str, str]]:
    """collectMarkSpanTexts: for each node, mark type -> the whole text of that mark's run."""
    spans: list[dict[str, str]] = [{} for _ in nodes]
    runs: dict[str, tuple[list[int], list[str]]] = {}

    def flush(t: str) -> None:
        idx, texts = runs.pop(t)
        joined = "".join(texts)
        for i in idx:
            spans[i][t] = joined

    for i, node in enumerate(nodes):
        if node.get("type") != "text":
            for t in list(runs):
                flush(t)
            continue
        types = [m["type"] for m in _marks(node)]
        for t in [t for t in runs if t not in types]:
            flush(t)
        for t in dict.fromkeys(types):
            idx, texts = runs.setdefault(t, ([], []))
            idx.append(i)
            texts.append(node.get("text") or "")
    for t in list(runs):
        flush(t)
    return spans


# ---------------------------------------------------------------------------------------------
# Block handlers (each extension's renderMarkdown)
# ---------------------------------------------------------------------------------------------
class _Ctx:
    __slots__ = ("r", "node", "parent", "index", "level", "previous", "child_level")

    def __init__(self, r: Renderer, node: dict, parent: dict | None, index: int, level: int,
                 previous: dict | None, indenting: bool):
        self.r = r
        self.node = node
        self.parent = parent
        self.index = index
        self.level = level
        self.previous = previous
        self.child_level = level + 1 if indenting else level

    @property
    def parent_type(self) -> str | None:
        return (self.parent or {}).get("type")

    def children(self, nodes: Any, separator: str = "") -> str:
        return self.r.children(self.node, self, nodes, separator)

    def child(self, child: dict, index: int) -> str:
        return self.r.node(child, self.node, index, self.child_level)


def _escape_line_starts(text: str, first: bool = True) -> str:
    """Escape what would start a block at the beginning of each line of a paragraph's text (the
    first line of a heading follows its `#`s and needs none)."""
    if not text:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if i == 0 and not first:
            continue
        m = _LINE_BLOCK_START.match(line)
        if m:
            lead, marker = m.group(1), m.group(2)
            if marker[0] in "#-+":
                lines[i] = lead + "\\" + line[len(lead):]
            else:
                digits = marker[:-1]
                lines[i] = lead + digits + "\\" + line[len(lead) + len(digits):]
        elif _SETEXT_OR_RULE.match(line) and (i > 0 or line.strip().startswith("-")):
            stripped = len(line) - len(line.lstrip(" \t"))
            lines[i] = line[:stripped] + "\\" + line[stripped:]
    return "\n".join(lines)


def _paragraph(node: dict, ctx: _Ctx) -> str:
    content = node.get("content") or []
    if not content:
        prev = ctx.previous
        prev_empty = prev is not None and prev.get("type") == "paragraph" and not prev.get("content")
        return EMPTY_PARAGRAPH if prev_empty else ""
    return _escape_line_starts(_trim_edges(ctx.children(content)))


def _trim_edges(text: str) -> str:
    """Spaces and tabs at the start or end of a paragraph: markdown cannot hold them (a reader
    drops them), and after a list marker they would move the item's content column."""
    return text.strip(" \t")


def _heading(node: dict, ctx: _Ctx) -> str:
    attrs = node.get("attrs") or {}
    try:
        level = int(attrs.get("level") or 1)
    except (TypeError, ValueError):
        level = 1
    content = node.get("content")
    if not content:
        return ""
    text = _trim_edges(ctx.children(content))
    if not text:
        return ""  # as TipTap writes a heading without content ("#" alone would read as one)
    return "#" * level + " " + _escape_line_starts(text, first=False)


def _blockquote(node: dict, ctx: _Ctx) -> str:
    content = node.get("content")
    if not content:
        return ""
    parts = []
    for i, child in enumerate(content):
        rendered = ctx.child(child, i)
        parts.append("\n".join(">" if not _js_trim(line) else f"> {line}" for line in rendered.split("\n")))
    return "\n>\n".join(parts)


def _list(node: dict, ctx: _Ctx) -> str:
    content = node.get("content")
    if not content:
        return ""
    return ctx.children(content, "\n")


def _nested(node: dict, ctx: _Ctx, prefix: str, align_to_prefix: bool = False, indent_main: bool = False) -> str:
    """@tiptap/core renderNestedMarkdownContent."""
    content = node.get("content")
    if not isinstance(content, list) or not content:
        return ""
    first, rest = content[0], content[1:]
    main = ctx.children([first])
    if indent_main:
        main = "\n".join(line if i == 0 else INDENT + line for i, line in enumerate(main.split("\n")))
    out = prefix + main
    indent = INDENT if not align_to_prefix or len(INDENT) >= len(prefix.expandtabs(4)) else " " * len(prefix)
    for i, child in enumerate(rest):
        rendered = ctx.child(child, i + 1)
        if not rendered:
            continue  # (an empty heading) a line of indentation alone would only read as a blank line
        indented = "\n".join(indent + line for line in rendered.split("\n"))
        out += ("\n\n" if _needs_blank_line(child) else "\n") + indented
    return out


def _needs_blank_line(child: dict) -> bool:
    """Whether a list item's child after the first must be set off by a blank line: a paragraph
    (TipTap's rule), and where a plain newline would change the meaning: a rule right under a
    line of text reads as a heading underline, an ordered list not starting at 1 cannot
    interrupt a paragraph."""
    kind = child.get("type")
    if kind in ("paragraph", "horizontalRule"):
        return True
    if kind == "orderedList":
        start = (child.get("attrs") or {}).get("start") or 1
        return start != 1
    return False


def _list_item(node: dict, ctx: _Ctx) -> str:
    parent_type = ctx.parent_type
    if parent_type == "orderedList":
        pattrs = (ctx.parent or {}).get("attrs") or {}
        start = pattrs.get("start") or 1
        try:
            start = int(start)
        except (TypeError, ValueError):
            start = 1
        prefix = _list_marker(pattrs.get("type"), start - 1 + ctx.index) + ". "
    else:
        prefix = "- "
    out = _nested(node, ctx, prefix, align_to_prefix=parent_type == "orderedList")
    content = node.get("content") or []
    empty_lead = bool(content) and content[0].get("type") == "paragraph" and not content[0].get("content")
    if not empty_lead or not ctx.level > 1:
        return out
    return prefix + EMPTY_PARAGRAPH + out[len(prefix):]


def _list_marker(kind: Any, index: int) -> str:
    position = index + 1
    if kind in ("a", "A"):
        letters = ""
        n = position
        while n > 0:
            n -= 1
            letters = chr(ord("a") + n % 26) + letters
            n //= 26
        return letters.upper() if kind == "A" else letters
    if kind in ("i", "I"):
        numerals = [(1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"), (50, "l"),
                    (40, "xl"), (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i")]
        n, roman = position, ""
        for value, numeral in numerals:
            while n >= value:
                roman += numeral
                n -= value
        return roman.upper() if kind == "I" else roman
    return str(position)


def _task_item(node: dict, ctx: _Ctx) -> str:
    checked = (node.get("attrs") or {}).get("checked")
    prefix = f"- [{'x' if checked else ' '}] "
    return _nested(node, ctx, prefix, indent_main=True)


def _code_block(node: dict, ctx: _Ctx) -> str:
    language = _str((node.get("attrs") or {}).get("language")) or ""
    language = language.replace("\n", " ").replace("`", "")
    content = node.get("content")
    text = "".join(c.get("text") or "" for c in content or [] if c.get("type") == "text")
    if language == FRONT_MATTER_LANGUAGE and ctx.parent_type == "doc" and ctx.index == 0 \
            and not re.search(r"^---[ \t]*$", text, re.M):
        return f"---\n{text}\n---"
    fence = "```"
    longest = max((len(m.group(1)) for m in _FENCE_LINE.finditer(text) if m.group(1)[0] == "`"), default=0)
    if longest >= 3:
        fence = "`" * (longest + 1)
    if not content:
        return f"{fence}{language}\n\n{fence}"
    return f"{fence}{language}\n{text}\n{fence}"


def _image(node: dict, ctx: _Ctx) -> str:
    attrs = node.get("attrs") or {}
    src = _str(attrs.get("src"))
    alt = _str(attrs.get("alt")).replace("[", "\\[").replace("]", "\\]")
    title = _str(attrs.get("title")).replace('"', '\\"')
    if _needs_angle(src):
        src = f"<{src}>"
    return f'![{alt}]({src} "{title}")' if title else f"![{alt}]({src})"


def _table(node: dict, ctx: _Ctx) -> str:
    rows_json = node.get("content") or []
    if not rows_json:
        return ""
    rows: list[list[tuple[str, bool, str | None]]] = []
    for row in rows_json:
        cells = []
        for cell in row.get("content") or []:
            children = cell.get("content") or []
            if len(children) > 1:
                raw = "\n".join(ctx.children(child) for child in children)
            else:
                raw = ctx.children(children) if children else ""
            single = _js_trim(_WS_RUN.sub(" ", _CELL_NEWLINE.sub("<br>", raw).replace("\u001f", " ")))
            text = _CELL_PIPES.sub(lambda m: "\\|" if m.group(0) == "|" else m.group(0), single)
            align = (cell.get("attrs") or {}).get("align")
            cells.append((text, cell.get("type") == "tableHeader", align if align in ("left", "right", "center") else None))
        rows.append(cells)
    columns = max(len(r) for r in rows)
    if columns == 0:
        return ""
    widths = [0] * columns
    for r in rows:
        for i in range(columns):
            n = utf16_len(r[i][0]) if i < len(r) else 0
            widths[i] = max(widths[i], n, 3)

    def pad(s: str, width: int) -> str:
        return s + " " * max(0, width - utf16_len(s))

    header = rows[0]
    has_header = any(c[1] for c in header)
    aligns: list[str | None] = [None] * columns
    for r in rows:
        for i in range(columns):
            if aligns[i] is None and i < len(r) and r[i][2]:
                aligns[i] = r[i][2]
    out = "\n"
    heads = [(header[i][0] if i < len(header) else "") if has_header else "" for i in range(columns)]
    out += "| " + " | ".join(pad(t, widths[i]) for i, t in enumerate(heads)) + " |\n"
    seps = []
    for i, w in enumerate(widths):
        dashes = "-" * max(3, w)
        seps.append({"left": ":" + dashes, "right": dashes + ":", "center": ":" + dashes + ":"}.get(aligns[i] or "", dashes))
    out += "| " + " | ".join(seps) + " |\n"
    for r in rows[1:] if has_header else rows:
        out += "| " + " | ".join(pad(r[i][0] if i < len(r) else "", widths[i]) for i in range(columns)) + " |\n"
    return out


def _hard_break(node: dict, ctx: _Ctx) -> str:
    """Two spaces and a newline; `<br>` where that would make an empty line (first or last in
    its textblock, or right after another break), which markdown cannot hold."""
    siblings = (ctx.parent or {}).get("content") or []
    i = ctx.index
    if ctx.parent_type == "heading" or siblings[i:i + 1] != [node]:
        return "<br>" if ctx.parent_type == "heading" else "  \n"  # a heading is one line

    def blank(nodes: list[dict]) -> bool:
        return all(n.get("type") == "text" and not (n.get("text") or "").strip(" \t") for n in nodes)

    before = i
    while before > 0 and siblings[before - 1].get("type") != "hardBreak":
        before -= 1
    after = i + 1
    while after < len(siblings) and siblings[after].get("type") != "hardBreak":
        after += 1
    if blank(siblings[before:i]) or blank(siblings[i + 1:after]):
        return "<br>"
    return "  \n"


def _doc(node: dict, ctx: _Ctx) -> str:
    content = node.get("content")
    return ctx.children(content, "\n\n") if content else ""


_HANDLERS = {
    "doc": _doc,
    "paragraph": _paragraph,
    "heading": _heading,
    "blockquote": _blockquote,
    "bulletList": _list,
    "orderedList": _list,
    "taskList": _list,
    "listItem": _list_item,
    "taskItem": _task_item,
    "codeBlock": _code_block,
    "horizontalRule": lambda node, ctx: "---",
    "hardBreak": _hard_break,
    "image": _image,
    "table": _table,
    "text": lambda node, ctx: node.get("text") or "",
}
# nodes rendered by their parent's handler only (a row or cell on its own renders nothing, as in TipTap)
_HANDLERS.update({"tableRow": lambda node, ctx: "", "tableHeader": lambda node, ctx: "",
                  "tableCell": lambda node, ctx: ""})

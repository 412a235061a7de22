"""Markdown → ProseMirror JSON of a TipTap document (StarterKit, TaskList/TaskItem, Table*, Image,
Link node and mark names, attributes typed as TipTap types them).

markdown-it-py (CommonMark) with GFM tables and strikethrough, and mdit-py-plugins' task lists,
footnotes and front matter. The result is what the editor's schema can hold:
- `paragraph`, `heading {level}`, `blockquote`, `bulletList`, `orderedList {start}`, `listItem`,
  `taskList`, `taskItem {checked}` (a bullet list's `[ ]`/`[x]` items; a list mixing both is
  split, as TipTap splits it), `codeBlock {language}` (fenced or indented), `horizontalRule`,
  `hardBreak`, `image {src, alt, title}`, `table` > `tableRow` > `tableHeader`/`tableCell {align}`
  > `paragraph`; marks `bold`, `italic`, `strike`, `code`, `underline` (`<u>`, also `<strong>`,
  `<b>`, `<em>`, `<i>`, `<s>`, `<del>`), `link {href, title}`; `<br>` is a hard break.
- Soft line breaks stay in the text as "\\n", an `&nbsp;` paragraph is an empty paragraph, and
  blank lines beyond the one separating two blocks become empty paragraphs (two more blank lines
  per paragraph), as @tiptap/markdown reads them: the renderer writes empty paragraphs that way.
- Images are blocks in TipTap's schema: a paragraph holding images is split around them.
  List items and table cells start with a paragraph (an empty one when the source has none).
- What the schema cannot hold is kept as text, never dropped: raw HTML blocks become paragraphs
  of their literal text (one per blank-line-separated chunk), unknown inline HTML stays literal
  text, footnotes become text (`[^1]` and a paragraph `[^1]: …` where the note was written), and
  front matter becomes a code block with language `frontmatter`, which the renderer writes back
  as front matter when it is the first block.

Depth: a list or quote nested deeper than `MAX_CONTAINERS` levels is refused (`TooDeep`, a 422
at the API), by a linear scan before markdown-it sees it (its block parser slows down
quadratically with depth: 10 000 nested lists took 31 s), and by the depth of the result
(`yxml.MAX_DEPTH`, what the renderer reads of a Yjs tree).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.footnote import footnote_plugin
from mdit_py_plugins.front_matter import front_matter_plugin
from mdit_py_plugins.tasklists import tasklists_plugin

from mdsync.tiptap.render import FRONT_MATTER_LANGUAGE
from mdsync.tiptap.yxml import MAX_DEPTH

MAX_CONTAINERS = 32  # lists/quotes one line may be nested in (a list level is two JSON levels)
_MAX_NESTING = 2 * MAX_CONTAINERS + 20  # markdown-it's own bound (token levels: list + item per level)

_HTML_MARKS = {"u": "underline", "strong": "bold", "b": "bold", "em": "italic", "i": "italic",
               "s": "strike", "del": "strike", "strike": "strike"}
_HTML_TAG = re.compile(r"^<(/?)([a-zA-Z][a-zA-Z0-9]*)\s*(/?)>$")
_TEXTBLOCKS = {"paragraph", "heading"}
_ALIGN = re.compile(r"text-align:\s*(left|right|center)")
_CONTAINER_MARKER = re.compile(r"[ \t]*(?:>|[-+*](?=[ \t]|$)|\d{1,9}[.)](?=[ \t]|$))[ \t]?")


class TooDeep(ValueError):
    """The markdown nests lists or quotes deeper than MAX_CONTAINERS."""


@lru_cache(maxsize=1)
def _markdown_it() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"maxNesting": _MAX_NESTING, "html": True})
    md.enable(["table", "strikethrough"])
    md.use(tasklists_plugin).use(footnote_plugin).use(front_matter_plugin)
    return md


def normalize_newlines(markdown: str) -> str:
    return markdown.replace("\r\n", "\n").replace("\r", "\n")


def check_depth(markdown: str) -> None:
    """Raise TooDeep when a line opens more than MAX_CONTAINERS nested lists/quotes (markers on
    the line plus list levels implied by its indentation). Linear time."""
    for line in markdown.split("\n"):
        if len(line) < MAX_CONTAINERS:
            continue
        width = len(line) - len(line.lstrip(" \t"))
        pos = 0
        markers = 0
        while True:
            m = _CONTAINER_MARKER.match(line, pos)
            if not m or m.end() == pos:
                break
            markers += 1
            pos = m.end()
        if markers and markers + width // 2 > MAX_CONTAINERS:
            raise TooDeep(f"lists or quotes are nested deeper than {MAX_CONTAINERS} levels")


def parse(markdown: str) -> list[dict]:
    """The top-level blocks of `markdown` as ProseMirror JSON."""
    return parse_with_sources(markdown)[0]


def parse_with_sources(markdown: str) -> tuple[list[dict], list[str | None]]:
    """The top-level blocks and, for each, the markdown it was read from (its lines, blank lines
    around it left out), or None for a block that has no lines of its own (an empty paragraph
    made of blank lines, one of several blocks read from one construct)."""
    src = normalize_newlines(markdown)
    check_depth(src)
    tokens = _markdown_it().parse(src)
    if any(t.level >= _MAX_NESTING - 1 for t in tokens):
        raise TooDeep(f"the markdown is nested deeper than {MAX_CONTAINERS} levels")
    blocks, sources = _Builder(src).build(tokens)
    if depth(blocks) > MAX_DEPTH:
        raise TooDeep(f"lists or quotes are nested deeper than {MAX_CONTAINERS} levels")
    return blocks, sources


def depth(blocks: list[dict]) -> int:
    """Nesting levels of a JSON tree (iterative: any depth)."""
    deepest = 0
    stack = [(node, 1) for node in blocks]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node.get("content") or ())
    return deepest


# ---------------------------------------------------------------------------------------------
class _Frame:
    __slots__ = ("node", "children", "start", "end")

    def __init__(self, node: dict, span: list[int] | None):
        self.node = node
        self.children: list[dict] = []
        self.start, self.end = (span[0], span[1]) if span else (None, None)


class _Builder:
    def __init__(self, src: str):
        self.lines = src.split("\n")

    def build(self, tokens: list[Token]) -> tuple[list[dict], list[str | None]]:
        root = _Frame({"type": "doc"}, None)
        stack = [root]
        top: list[tuple[int, int, list[dict]]] = []  # (first line, end line, blocks) of each top-level block
        for token in tokens:
            kind = token.type
            if kind in ("footnote_block_open", "footnote_block_close", "footnote_anchor"):
                continue
            for frame in stack[1:]:
                if frame.start is None and token.map:  # a footnote: where its first block is
                    frame.start, frame.end = token.map
            if kind.endswith("_open"):
                stack.append(_Frame(self._open(token), token.map))
                continue
            if kind.endswith("_close"):
                done = stack.pop()
                blocks = self._close(done)
                if stack[-1] is root:
                    if blocks:
                        n = len(self.lines)
                        top.append((done.start if done.start is not None else n, done.end if done.end is not None else n, blocks))
                else:
                    stack[-1].children.extend(blocks)
                continue
            if kind == "inline":
                content, checked = _inline(token.children or [])
                if checked is not None and len(stack) > 2 and stack[-2].node["type"] == "listItem" \
                        and not stack[-2].children:
                    stack[-2].node["checked"] = checked
                    stack[-2].node["task"] = True
                elif checked is not None:  # a checkbox the item does not own: keep it as text
                    content = _merge([{"type": "text", "text": "[x] " if checked else "[ ] "}, *content])
                stack[-1].children.extend(content)
                continue
            blocks = self._leaf(token)
            if not blocks:
                continue
            if stack[-1] is root:
                n = len(self.lines)
                top.append((token.map[0] if token.map else n, token.map[1] if token.map else n, blocks))
            else:
                stack[-1].children.extend(blocks)
        top.sort(key=lambda item: item[0])
        return self._with_blank_paragraphs(top)

    # -- top level: blank lines → empty paragraphs -------------------------------------------
    def _with_blank_paragraphs(self, top: list[tuple[int, int, list[dict]]]) -> tuple[list[dict], list[str | None]]:
        """Blank lines between top-level blocks beyond the one separator, two per empty
        paragraph (at the start and end of the document: every two); and each block's source."""
        out: list[dict] = []
        sources: list[str | None] = []
        lines = self.lines
        previous_end: int | None = None
        for start, end, blocks in top:
            # a table is written with a newline of its own before and after (as TipTap writes it)
            table_next = blocks[0]["type"] == "table"
            if previous_end is None:
                leading = 0
                while leading < start and not lines[leading].strip():
                    leading += 1
                out.extend(_empty_paragraph() for _ in range((leading - table_next) // 2))
                sources.extend([None] * (len(out) - len(sources)))
            else:
                blank = 0
                i = start - 1
                while i >= previous_end and not lines[i].strip():
                    blank += 1
                    i -= 1
                newlines = blank + 1 - table_next - (out[-1]["type"] == "table" if out else 0)
                out.extend(_empty_paragraph() for _ in range(max(newlines // 2 - 1, 0)))
                sources.extend([None] * (len(out) - len(sources)))
            out.extend(blocks)
            content_end = self._content_end(start, end)
            if len(blocks) == 1 and start < len(lines):
                sources.append("\n".join(lines[start:content_end]))
            else:
                sources.extend([None] * len(blocks))
            previous_end = max(content_end, previous_end or 0)
        if previous_end is None:
            out.extend(_empty_paragraph() for _ in range((len(lines) - 1) // 2))
        else:
            i = len(lines) - 1
            while i >= previous_end and not lines[i].strip():
                i -= 1
            if i < previous_end:  # only blank lines follow (newlines after the last line: len - end)
                newlines = len(lines) - previous_end - (out[-1]["type"] == "table")
                out.extend(_empty_paragraph() for _ in range(max(newlines, 0) // 2))
        sources.extend([None] * (len(out) - len(sources)))
        return out, sources

    def _content_end(self, start: int, end: int) -> int:
        """The line after the last non-blank line of a block spanning [start, end)."""
        end = min(end, len(self.lines))
        while end > start + 1 and not self.lines[end - 1].strip():
            end -= 1
        return end

    # -- containers --------------------------------------------------------------------------
    def _open(self, token: Token) -> dict:
        kind = token.type
        if kind == "paragraph_open":
            return {"type": "paragraph"}
        if kind == "heading_open":
            return {"type": "heading", "attrs": {"level": int(token.tag[1:])}}
        if kind == "blockquote_open":
            return {"type": "blockquote"}
        if kind == "bullet_list_open":
            return {"type": "bulletList"}
        if kind == "ordered_list_open":
            start = token.attrs.get("start", 1)
            try:
                start = int(start)
            except (TypeError, ValueError):
                start = 1
            return {"type": "orderedList", "attrs": {"start": start}}
        if kind == "list_item_open":
            return {"type": "listItem"}
        if kind == "table_open":
            return {"type": "table"}
        if kind in ("thead_open", "tbody_open"):
            return {"type": "#section", "head": kind == "thead_open"}
        if kind == "tr_open":
            return {"type": "tableRow"}
        if kind in ("th_open", "td_open"):
            m = _ALIGN.search(str(token.attrs.get("style", "")))
            node: dict[str, Any] = {"type": "tableHeader" if kind == "th_open" else "tableCell"}
            if m:
                node["attrs"] = {"align": m.group(1)}
            return node
        if kind == "footnote_open":
            return {"type": "#footnote", "label": token.meta.get("label", "")}
        # link_open etc. never reach here (inline); anything else: a transparent container
        return {"type": "#container"}

    def _close(self, frame: _Frame) -> list[dict]:
        node = frame.node
        kind = node["type"]
        children = frame.children
        if kind in _TEXTBLOCKS:
            return _textblock(node, children)
        if kind == "listItem":
            content = children
            if not content or content[0]["type"] != "paragraph":
                content = [_empty_paragraph(), *content]
            item = {"type": "taskItem", "attrs": {"checked": bool(node.get("checked"))}} if node.get("task") \
                else {"type": "listItem"}
            item["content"] = content
            return [item]
        if kind == "bulletList":
            return _split_task_lists(children)
        if kind == "orderedList":
            items = [_as_list_item(c) for c in children]
            return [{**node, "content": items}] if items else []
        if kind == "blockquote":
            return [{"type": "blockquote", "content": children or [_empty_paragraph()]}]
        if kind == "table":
            rows = [r for r in children if r["type"] == "tableRow"]
            return [{"type": "table", "content": rows}] if rows else []
        if kind == "#section":
            return children
        if kind == "tableRow":
            return [{"type": "tableRow", "content": children}] if children else [{"type": "tableRow"}]
        if kind in ("tableHeader", "tableCell"):
            cell = dict(node)
            cell["content"] = _textblock({"type": "paragraph"}, children) or [_empty_paragraph()]
            return [cell]
        if kind == "#footnote":
            label = node.get("label", "")
            marker = {"type": "text", "text": f"[^{label}]: "}
            if children and children[0]["type"] == "paragraph":
                first = children[0]
                return [{"type": "paragraph", "content": _merge([marker, *(first.get("content") or [])])}, *children[1:]]
            return [{"type": "paragraph", "content": [{"type": "text", "text": f"[^{label}]:"}]}, *children]
        return children

    # -- leaves ------------------------------------------------------------------------------
    def _leaf(self, token: Token) -> list[dict] | None:
        kind = token.type
        if kind in ("fence", "code_block"):
            language = token.info.strip().split(maxsplit=1)[0] if kind == "fence" and token.info.strip() else None
            text = token.content[:-1] if token.content.endswith("\n") else token.content
            node: dict[str, Any] = {"type": "codeBlock", "attrs": {"language": language}}
            if text:
                node["content"] = [{"type": "text", "text": text}]
            return [node]
        if kind == "hr":
            return [{"type": "horizontalRule"}]
        if kind == "html_block":
            return _literal_paragraphs(token.content)
        if kind == "front_matter":
            node = {"type": "codeBlock", "attrs": {"language": FRONT_MATTER_LANGUAGE}}
            if token.content:
                node["content"] = [{"type": "text", "text": token.content}]
            return [node]
        return None


def _empty_paragraph() -> dict:
    return {"type": "paragraph"}


def _as_list_item(node: dict) -> dict:
    if node["type"] == "taskItem":  # an ordered list keeps its items plain (TipTap's tasks are bullets)
        return {"type": "listItem", "content": node["content"]}
    return node


def _split_task_lists(items: list[dict]) -> list[dict]:
    """A bullet list's items grouped into runs of task items (taskList) and plain ones (bulletList)."""
    out: list[dict] = []
    for item in items:
        kind = "taskList" if item["type"] == "taskItem" else "bulletList"
        if out and out[-1]["type"] == kind:
            out[-1]["content"].append(item)
        else:
            out.append({"type": kind, "content": [item]})
    return out


def _textblock(node: dict, content: list[dict]) -> list[dict]:
    """A paragraph or heading, split around images (blocks in TipTap's schema)."""
    base = {k: v for k, v in node.items() if k in ("type", "attrs")}
    if node["type"] == "paragraph" and len(content) == 1 and content[0]["type"] == "text" \
            and content[0]["text"] == "\u00a0" and not content[0].get("marks"):
        return [_empty_paragraph()]  # `&nbsp;`: TipTap's marker of an empty paragraph
    if not any(c["type"] == "image" for c in content):
        return [{**base, "content": content}] if content else [base]
    if node["type"] == "heading":
        text = [c for c in content if c["type"] != "image"]
        return [{**base, "content": _merge(text)} if text else base, *[c for c in content if c["type"] == "image"]]
    out: list[dict] = []
    run: list[dict] = []
    for c in content:
        if c["type"] == "image":
            if run and not all(r["type"] == "text" and not r["text"].strip() for r in run):
                out.append({**base, "content": _merge(_strip_edges(run))})
            run = []
            out.append(c)
        else:
            run.append(c)
    if run and not all(r["type"] == "text" and not r["text"].strip() for r in run):
        out.append({**base, "content": _merge(_strip_edges(run))})
    return out


def _strip_edges(nodes: list[dict]) -> list[dict]:
    nodes = list(nodes)
    if nodes and nodes[0]["type"] == "text":
        nodes[0] = {**nodes[0], "text": nodes[0]["text"].lstrip(" \t\n")}
    if nodes and nodes[-1]["type"] == "text":
        nodes[-1] = {**nodes[-1], "text": nodes[-1]["text"].rstrip(" \t\n")}
    return [n for n in nodes if n["type"] != "text" or n["text"]]


def _literal_paragraphs(html: str) -> list[dict]:
    """A raw HTML block as paragraphs of its literal text (line indentation dropped, as a
    paragraph drops it when read back)."""
    out = []
    for chunk in re.split(r"\n[ \t]*\n", html.strip("\n")):
        text = "\n".join(line.strip() for line in chunk.split("\n") if line.strip())
        if text:
            out.append({"type": "paragraph", "content": [{"type": "text", "text": text}]})
    return out


def _merge(nodes: list[dict]) -> list[dict]:
    out: list[dict] = []
    for n in nodes:
        if out and n["type"] == "text" and out[-1]["type"] == "text" and out[-1].get("marks") == n.get("marks"):
            out[-1] = {**out[-1], "text": out[-1]["text"] + n["text"]}
        elif n["type"] != "text" or n["text"]:
            out.append(n)
    return out


_MARK_ORDER = {"link": 0, "bold": 1, "code": 2, "italic": 3, "strike": 4, "underline": 5}


def _inline(tokens: list[Token]) -> tuple[list[dict], bool | None]:
    """Inline tokens → text nodes (with marks) and inline nodes; for a task item's first
    paragraph also whether it is checked."""
    out: list[dict] = []
    active: list[dict] = []  # open marks, innermost last
    checked: bool | None = None

    def marks() -> list[dict] | None:
        seen: dict[str, dict] = {}
        for m in active:
            seen[m["type"]] = m  # the innermost of a type wins
        return sorted(seen.values(), key=lambda m: _MARK_ORDER.get(m["type"], 99)) or None

    def text(value: str, extra: dict | None = None) -> None:
        if not value:
            return
        node: dict[str, Any] = {"type": "text", "text": value}
        current = marks()
        if extra is not None:
            current = sorted([*(m for m in current or [] if m["type"] != extra["type"]), extra],
                             key=lambda m: _MARK_ORDER.get(m["type"], 99))
        if current:
            node["marks"] = current
        out.append(node)

    def close(mark_type: str) -> None:
        for i in range(len(active) - 1, -1, -1):
            if active[i]["type"] == mark_type:
                del active[i]
                return

    for i, tok in enumerate(tokens):
        kind = tok.type
        if i == 0 and kind == "html_inline" and "task-list-item-checkbox" in tok.content:
            checked = 'checked="checked"' in tok.content
            if len(tokens) > 1 and tokens[1].type == "text" and tokens[1].content.startswith(" "):
                tokens[1].content = tokens[1].content[1:]
            continue
        if kind == "text":
            text(tok.content)
        elif kind == "softbreak":
            text("\n")
        elif kind == "hardbreak":
            out.append({"type": "hardBreak"})
        elif kind == "code_inline":
            text(tok.content, {"type": "code"})
        elif kind in ("strong_open", "em_open", "s_open"):
            active.append({"type": {"strong_open": "bold", "em_open": "italic", "s_open": "strike"}[kind]})
        elif kind in ("strong_close", "em_close", "s_close"):
            close({"strong_close": "bold", "em_close": "italic", "s_close": "strike"}[kind])
        elif kind == "link_open":
            title = tok.attrs.get("title")
            active.append({"type": "link", "attrs": {"href": str(tok.attrs.get("href", "")),
                                                     "title": str(title) if title else None}})
        elif kind == "link_close":
            close("link")
        elif kind == "image":
            title = tok.attrs.get("title")
            out.append({"type": "image", "attrs": {"src": str(tok.attrs.get("src", "")), "alt": tok.content,
                                                   "title": str(title) if title else None}})
        elif kind == "html_inline":
            m = _HTML_TAG.match(tok.content.strip())
            name = m.group(2).lower() if m else ""
            if m and name == "br":
                out.append({"type": "hardBreak"})
            elif m and name in _HTML_MARKS and not m.group(3):
                if m.group(1):
                    close(_HTML_MARKS[name])
                else:
                    active.append({"type": _HTML_MARKS[name]})
            elif m and name == "code" and not m.group(3):
                if m.group(1):
                    close("code")
                else:
                    active.append({"type": "code"})
            else:
                text(tok.content)
        elif kind == "footnote_ref":
            text(f"[^{tok.meta.get('label', '')}]")
        elif kind == "footnote_anchor":
            continue
        elif tok.content:
            text(tok.content)
    return _merge(out), checked

"""The zip layout of an export, shared by export and import.

```
mdsync.json                       metadata: tree, ids, positions, kinds, versions, comments, attachments
Folder/                           one directory entry per folder (so empty folders survive)
Folder/Sub/Document title.md      YAML front matter (id, title, kind, created_at, updated_at) + markdown
Top level document.md
attachments/<attachment id>/<name>   attachment files (reserved name at the root)
```

File and directory names are the titles and folder names made filesystem-safe (`safe_name`);
siblings whose safe names collide (case-insensitively, as on macOS and Windows) get " (2)",
" (3)", … in their order (position, then name, then id), so the same workspace always exports to
the same paths. The exact names and titles live in the front matter and `mdsync.json`.

mdsync.json (format "mdsync-export", version 1):
    {"format", "version", "exported_at", "workspace": {id, name, slug},
     "folders":   [{id, name, parent_id, position, path, created_at, updated_at}]   parents first,
     "documents": [{id, title, folder_id, position, kind, content_model, path, created_at, updated_at,
                    versions: [{id, created_at, kind, label, size}]}],
     "attachments": [{id, name, document_id, content_type, size, sha256, path}]  (empty until
                    the attachments feature exists),
     "comments": []  (reserved: threads with anchors, once the comments feature exists)}
An import matches entries to files by `path`; files win (a document edited or added by hand after
the export is imported as it is now), mdsync.json supplies what files cannot say.

Markdown refers to attachments by `/api/v1/attachments/{id}`; in the zip such links become
relative paths to `attachments/{id}/{name}` (`links_to_files`), and an import turns links to
files it holds back into `/api/v1/attachments/{new id}` (`file_links`).
"""

from __future__ import annotations

import json
import posixpath
import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mdsync.attachments import links

MANIFEST = "mdsync.json"
ATTACHMENTS_DIR = "attachments"
FORMAT = "mdsync-export"
FORMAT_VERSION = 1
FRONT_MATTER_KEYS = ("id", "title", "kind", "created_at", "updated_at")
MARKDOWN_SUFFIXES = (".md", ".markdown")
KINDS = ("note", "template", "context")
CONTENT_MODELS = ("text", "tiptap")
# at the root, documents and folders never take these names
RESERVED_AT_ROOT = frozenset({MANIFEST, ATTACHMENTS_DIR})

_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|]')
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                              *(f"lpt{i}" for i in range(10))})
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
MAX_NAME_BYTES = 200  # a path component stays under the 255-byte limit of common filesystems


# -- names -------------------------------------------------------------------------------------
def safe_name(name: str, fallback: str = "untitled") -> str:
    """`name` as one path component any filesystem accepts: no separators, reserved characters
    or control characters, no trailing dots or spaces, not a Windows device name, not too long."""
    name = unicodedata.normalize("NFC", name).translate(_BIDI_CONTROLS)
    name = _UNSAFE.sub("_", name).strip().rstrip(". ")
    if name in ("", ".", ".."):
        name = fallback
    if name.split(".")[0].strip().lower() in _WINDOWS_DEVICES:
        name = "_" + name
    while len(name.encode("utf-8")) > MAX_NAME_BYTES:
        name = name[:-1]
    return name.rstrip(". ") or fallback


class Namespace:
    """The names taken in one directory; `claim` answers a free one, deterministically."""

    def __init__(self, reserved: frozenset[str] = frozenset()):
        self.taken = {name.casefold() for name in reserved}

    def claim(self, base: str, suffix: str = "") -> str:
        candidate, n = base + suffix, 1
        while candidate.casefold() in self.taken:
            n += 1
            candidate = f"{base} ({n}){suffix}"
        self.taken.add(candidate.casefold())
        return candidate


@dataclass(frozen=True)
class FolderPath:
    id: str
    parent_id: str | None
    name: str
    position: float
    path: str  # "A/B" (no trailing slash)


def place_folders(rows) -> dict[str, FolderPath]:
    """Paths of every folder (rows: id, parent_id, name, position). A folder whose parent is not
    among `rows` counts as top level. Returns {id: FolderPath} with parents before children."""
    rows = list(rows)
    known = {r["id"] for r in rows}
    children: dict[str | None, list] = {}
    for r in rows:
        parent = r["parent_id"] if r["parent_id"] in known else None
        children.setdefault(parent, []).append(r)
    placed: dict[str, FolderPath] = {}
    namespaces: dict[str | None, Namespace] = {None: Namespace(RESERVED_AT_ROOT)}
    stack: list[tuple[str | None, str]] = [(None, "")]
    while stack:
        parent, prefix = stack.pop()
        space = namespaces.setdefault(parent, Namespace())
        ordered = sorted(children.get(parent, ()), key=lambda r: (r["position"], r["name"], r["id"]))
        for r in ordered:
            name = space.claim(safe_name(r["name"], "folder"))
            path = f"{prefix}{name}"
            placed[r["id"]] = FolderPath(r["id"], parent, r["name"], r["position"], path)
            stack.append((r["id"], path + "/"))
    # a cycle (never made by the API) would leave folders unplaced: put them at the top level
    for r in rows:
        if r["id"] not in placed:
            name = namespaces[None].claim(safe_name(r["name"], "folder"))
            placed[r["id"]] = FolderPath(r["id"], None, r["name"], r["position"], name)
    return placed


def document_namespaces(folders: Mapping[str, FolderPath]) -> Callable[[str | None], Namespace]:
    """For each directory (a folder id, None at the top): a Namespace holding the names its
    subfolders took, for its documents to claim theirs after."""
    subdirs: dict[str | None, list[str]] = {}
    for f in folders.values():
        subdirs.setdefault(f.parent_id, []).append(f.path.rsplit("/", 1)[-1])

    def namespace(folder_id: str | None) -> Namespace:
        space = Namespace(RESERVED_AT_ROOT if folder_id is None else frozenset())
        space.taken.update(name.casefold() for name in subdirs.get(folder_id, ()))
        return space

    return namespace


# -- front matter ------------------------------------------------------------------------------
def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar (JSON's escapes are YAML's too); characters YAML does not
    allow raw (C1 controls, U+FFFE/U+FFFF) are escaped as well."""
    out = json.dumps(value, ensure_ascii=False)
    return re.sub("[\x7f-\x9f\ufffe\uffff]", lambda m: f"\\u{ord(m.group()):04x}", out)


def front_matter(meta: Mapping[str, str]) -> str:
    lines = [f"{key}: {_yaml_string(str(meta[key]))}" for key in FRONT_MATTER_KEYS if meta.get(key) is not None]
    return "---\n" + "\n".join(lines) + "\n---\n"


# `key: value`; the value (after blanks, up to trailing blanks) is cut in Python: a lazy value
# followed by optional blanks backtracks in time quadratic in a run of blanks
_FM_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)[ \t]*:(.*)")
_COMMENT = re.compile(r"\s#")


def _scalar(raw: str | None) -> str | None:
    """A one-line YAML scalar: double-quoted (JSON escapes), single-quoted, or plain."""
    if raw is None or raw == "":
        return None
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except ValueError:
            return None
        return value if isinstance(value, str) else None
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'") if len(raw) >= 2 and raw.endswith("'") else None
    if raw[0] in "[{|>&*!%@`":
        return None  # not a one-line scalar
    comment = _COMMENT.search(raw)  # ` # …` ends a plain scalar
    return raw if comment is None else raw[:comment.start() + 1].rstrip()


@dataclass
class Split:
    meta: dict[str, str]  # the one-line scalars of the front matter (may be empty)
    ours: bool            # the block holds only our keys: it is metadata, not part of the markdown
    markdown: str         # the document's markdown (without our block; with a foreign one)


def split_front_matter(text: str) -> Split:
    """Separate a leading `---` block. Our block (only FRONT_MATTER_KEYS) is removed from the
    markdown; anyone else's (an Obsidian note's tags, aliases …) stays in it, and only its
    `title:` is read."""
    if not text.startswith("---\n") and not text.startswith("---\r\n"):
        return Split({}, False, text)
    start = text.index("\n") + 1
    pos, meta, simple = start, {}, True
    while True:
        end = text.find("\n", pos)
        if end < 0:
            return Split({}, False, text)  # never closed: not front matter
        line = text[pos:end].rstrip("\r")
        if line in ("---", "..."):
            rest = text[end + 1:]
            break
        match = _FM_LINE.fullmatch(line)
        if match and match.group(2)[:1] in ("", " ", "\t"):
            value = _scalar(match.group(2).strip(" \t"))
            if value is None:
                simple = False
            else:
                meta[match.group(1)] = value
        elif line.strip():
            simple = False
        pos = end + 1
    ours = simple and bool(meta) and set(meta) <= set(FRONT_MATTER_KEYS)
    return Split(meta, ours, rest if ours else text)


# -- titles ------------------------------------------------------------------------------------
def clean_title(value: str | None, limit: int = 500) -> str | None:
    """A title or folder name as the API accepts it (no control or bidi override characters,
    1–500 characters), or None when nothing is left."""
    if value is None:
        return None
    value = re.sub(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]+", " ", value.translate(_BIDI_CONTROLS)).strip()
    return value[:limit].strip() or None


def first_heading(markdown: str, max_lines: int = 200) -> str | None:
    """The text of the first `# heading` outside code fences (in the first lines)."""
    fence = None
    for n, line in enumerate(markdown.splitlines()):
        if n >= max_lines:
            break
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            marker = stripped[:3]
            fence = None if fence == marker else (fence or marker)
            continue
        if fence is None and re.match(r" {0,3}# ", line):
            return _closing_hashes(line.strip()[2:]).strip() or None
    return None


def _closing_hashes(heading: str) -> str:
    """`heading` without an ATX closing sequence (blanks, `#`s, blanks at its end); by string
    methods: the pattern `\\s+#+\\s*$` is quadratic in a run of blanks."""
    body = heading.rstrip()
    bare = body.rstrip("#")
    return bare if len(bare) < len(body) and bare[-1:].isspace() else heading


def is_uuid(value: str | None) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# -- entry paths -------------------------------------------------------------------------------
class UnsafePath(ValueError):
    """An entry path that would leave the archive's root (absolute, `..`, a drive)."""


def entry_path(name: str) -> str:
    """A zip entry name as a clean relative POSIX path ("A/B.md"; "A/B/" for a directory).
    Backslashes count as separators (zips made on Windows). Raises UnsafePath for absolute
    paths, drive letters, `..` components and control characters."""
    if "\x00" in name or any(ord(c) < 32 for c in name):
        raise UnsafePath(f"{name!r} has control characters in its path")
    raw = name.replace("\\", "/")
    if raw.startswith("/") or re.match(r"[A-Za-z]:", raw):
        raise UnsafePath(f"{name!r} is an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"{name!r} leaves the archive's root (..)")
    if not parts:
        raise UnsafePath(f"{name!r} names no file")
    clean = "/".join(unicodedata.normalize("NFC", p) for p in parts)
    return clean + "/" if raw.endswith("/") else clean


# -- attachment links --------------------------------------------------------------------------
# `/api/v1/attachments/{id}`, possibly absolute (any host) and signed (?exp=&sig=): attachments/links.py


def attachment_path(attachment_id: str, name: str) -> str:
    return f"{ATTACHMENTS_DIR}/{attachment_id}/{safe_name(name, 'file')}"


def relative(from_dir: str, target: str) -> str:
    """`target` (a path in the zip) as seen from the directory `from_dir` ("" = the root)."""
    return posixpath.relpath(target, from_dir or ".")


def links_to_files(markdown: str, document_dir: str, files: Mapping[str, str]) -> str:
    """Export: every `/api/v1/attachments/{id}` whose id is in `files` ({id: path in the zip})
    becomes the relative path from the document's directory to that file."""
    if not files:
        return markdown

    def swap(attachment_id: str, written: str) -> str | None:
        path = files.get(attachment_id)
        return None if path is None else relative(document_dir, path).replace(" ", "%20")

    return links.rewrite(markdown, swap)


# markdown links and images `[..](target "title")`, HTML src/href, and Obsidian embeds `![[name]]`.
# Linear time: no part of a match can hold the start of another (a target has no `(`, an embed
# name no `[`), so a failed attempt never rescans what the next attempt reads.
_MD_LINK = re.compile(r"(\]\(\s*<?)([^()\s>]+)(>?(?:\s+\"[^\"]*\")?\s*\))")
_HTML_LINK = re.compile(r"""((?:src|href)\s*=\s*["'])([^"']+)(["'])""", re.IGNORECASE)
_WIKI_EMBED = re.compile(r"!\[\[([^\[\]|#]+)((?:[|#][^\[\]]*)?)\]\]")


def file_links(markdown: str, document_dir: str, resolve: Callable[[str], str | None],
               resolve_name: Callable[[str], str | None] = lambda name: None) -> str:
    """Import: links to local files become attachment links. `resolve(path in the zip)` answers
    the attachment's `/api/v1/attachments/{id}` link, or None to leave the link as written.
    Relative targets are resolved from the document's directory; Obsidian's `![[name]]` embeds
    by file name through `resolve_name(name)`."""
    from urllib.parse import unquote

    def target(raw: str) -> str | None:
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", raw) or raw.startswith(("#", "/")):
            return None  # a URL, an anchor or a server path: not a file of the archive
        path = posixpath.normpath(posixpath.join(document_dir, unquote(raw.split("#")[0].split("?")[0])))
        return None if path.startswith("../") or path == ".." else resolve(path)

    def md(match: re.Match) -> str:
        link = target(match.group(2))
        return match.group(0) if link is None else f"{match.group(1)}{link}{match.group(3)}"

    def html(match: re.Match) -> str:
        link = target(match.group(2))
        return match.group(0) if link is None else f"{match.group(1)}{link}{match.group(3)}"

    def wiki(match: re.Match) -> str:
        link = resolve_name(match.group(1).strip())
        return match.group(0) if link is None else f"![{match.group(1).strip()}]({link})"

    return _WIKI_EMBED.sub(wiki, _HTML_LINK.sub(html, _MD_LINK.sub(md, markdown)))

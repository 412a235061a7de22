"""docs/ stays true to the code: every route the server serves is described in docs/api.md, and
docs/api.md describes no route that does not exist.

The convention (stated at the top of docs/api.md): each route is a heading line of its
own, `### `METHOD /path``, with the path exactly as the OpenAPI document spells it (the route
table's path with `{name}` parameters), followed by at least one line of description.
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROUTE_HEADING = re.compile(r"^### `(GET|POST|PUT|PATCH|DELETE) (/\S*)`\s*$")
METHODS = ("get", "post", "put", "patch", "delete")


def documented_routes(text: str) -> dict[tuple[str, str], str]:
    """{(METHOD, path): the description under its heading} of every route heading in `text`."""
    routes: dict[tuple[str, str], str] = {}
    current: tuple[str, str] | None = None
    for line in text.splitlines():
        match = ROUTE_HEADING.match(line)
        if match:
            current = (match.group(1), match.group(2))
            assert current not in routes, f"docs/api.md describes {current[0]} {current[1]} twice"
            routes[current] = ""
        elif line.startswith("#"):
            assert not re.match(r"^#+ `[A-Z]+ /", line), (
                f"a route heading must be exactly '### `METHOD /path`' (one route per heading): {line!r}")
            current = None
        elif current is not None:
            routes[current] += line.strip()
    return routes


def test_route_headings_are_parsed():
    sample = "## Things\n\n### `GET /api/v1/things/{thing}`\n\nA thing.\n\n### `DELETE /x`\nGone.\n## Next\ntext"
    assert documented_routes(sample) == {("GET", "/api/v1/things/{thing}"): "A thing.", ("DELETE", "/x"): "Gone."}


async def test_api_md_describes_exactly_the_served_routes(client):
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    paths = (await resp.json())["paths"]
    served = {(method.upper(), path) for path, ops in paths.items() for method in ops if method in METHODS}
    assert len(served) > 50
    documented = documented_routes((DOCS / "api.md").read_text(encoding="utf-8"))

    missing = sorted(served - documented.keys())
    assert not missing, ("served but not described in docs/api.md (add a heading '### `METHOD /path`' "
                         "and a description for each): " + ", ".join(f"{m} {p}" for m, p in missing))
    extra = sorted(documented.keys() - served)
    assert not extra, ("docs/api.md describes routes the server does not serve: "
                       + ", ".join(f"{m} {p}" for m, p in extra))
    empty = sorted(route for route, text in documented.items() if not text)
    assert not empty, "route headings in docs/api.md without a description: " + ", ".join(
        f"{m} {p}" for m, p in empty)


# -- docs/architecture.md: the names it walks through exist -----------------------------------------
DOTTED_NAME = re.compile(r"`(mdsync(?:\.\w+)+)`")


def resolve(dotted: str) -> object:
    """The module, class, function or attribute a dotted name `mdsync.pkg.module.Class.method`
    names (the longest importable module prefix, then attributes); LookupError when none."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                raise LookupError(f"{'.'.join(parts[:cut])} has no {'.'.join(parts[cut:])}")
            target = getattr(target, name)
        return target
    raise LookupError(f"no module {parts[0]}")


def test_resolve_finds_what_exists_and_only_that():
    assert resolve("mdsync.collab.room.Room.edit") is not None
    assert resolve("mdsync.db") is not None
    for missing in ("mdsync.collab.room.Room.no_such_method", "mdsync.no_such_package.thing"):
        try:
            resolve(missing)
        except LookupError:
            continue
        raise AssertionError(f"{missing} resolved")


def test_every_name_in_architecture_md_exists():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    names = sorted(set(DOTTED_NAME.findall(text)))
    assert len(names) > 40, "the walkthroughs name the functions they pass through as `mdsync.module.function`"
    broken = []
    for name in names:
        try:
            resolve(name)
        except LookupError as exc:
            broken.append(f"`{name}`: {exc}")
    assert not broken, "docs/architecture.md names what does not exist (renamed?):\n" + "\n".join(broken)


def test_every_package_and_top_level_module_is_in_the_package_table():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    root = Path(__file__).resolve().parent.parent / "mdsync"
    packages = sorted(f"mdsync/{p.name}/" for p in root.iterdir() if (p / "__init__.py").exists())
    modules = sorted(f"mdsync/{p.name}" for p in root.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    missing = [name for name in packages + modules if f"`{name}`" not in text]
    assert not missing, f"add a row for each to docs/architecture.md's package table: {missing}"


# -- code comments cite docs/ in the repository --------------------------------------------------------
CITATION = re.compile(r"docs/(\w+)\.md[,;:]?\s+(?:\(|#\s*)?\"([^\"\n]+)\"")
OUTSIDE = re.compile(r"\b(?:API|NOTES|ARCHITECTURE|STYLE)\.md\b")
# migrations already applied somewhere are never edited, comments included
FROZEN = ("mdsync/db/migrations/",)


def cited_sources():
    root = Path(__file__).resolve().parent.parent
    for folder in ("mdsync", "tests", "bench"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix in (".py", ".sql", ".mjs", ".toml") and "node_modules" not in path.parts:
                yield path.relative_to(root).as_posix(), path.read_text(encoding="utf-8", errors="replace")


def headings(doc: str) -> set[str]:
    text = (DOCS / f"{doc}.md").read_text(encoding="utf-8")
    return {line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")}


def test_code_cites_no_document_outside_the_repository():
    found = [f"{name}: {match.group(0)}" for name, text in cited_sources() if not name.startswith(FROZEN)
             and name != "tests/test_docs.py" for match in OUTSIDE.finditer(text)]
    assert not found, "cite docs/api.md, docs/architecture.md or docs/operations.md instead:\n" + "\n".join(found)


def test_every_cited_docs_section_exists():
    known = {doc: headings(doc) for doc in ("api", "architecture", "operations") if (DOCS / f"{doc}.md").exists()}
    broken = []
    for name, text in cited_sources():
        for match in CITATION.finditer(text):
            doc, section = match.groups()
            if doc not in known or section not in known[doc]:
                broken.append(f'{name}: docs/{doc}.md "{section}"')
    assert not broken, "citations of docs/ sections that do not exist (a heading's exact text):\n" + "\n".join(broken)

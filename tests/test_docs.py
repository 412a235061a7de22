"""docs/ stays true to the code: every route the server serves is described in docs/api.md, and
docs/api.md describes no route that does not exist.

The convention (docs/api.md, "How this page is kept true"): each route is a heading line of its
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

"""Property-based fuzzing of every operation in the live OpenAPI document (schemathesis 4 over
hypothesis) against a real `mdsync serve` process, signed in as a real user who owns a workspace
with a folder, a document, a share link, a version and an invitation, all made through the API.

Each operation gets a few schema-conforming and a few schema-violating requests; path parameters
are either the real ids (so the handler's own code runs, not only the 404 path) or generated
strings. For every answer: no 5xx ever; every 4xx is `application/problem+json` whose type is one
of the slugs in docs/api.md "Conventions" with the matching status; no body carries a stack trace or a source path. At
the end, every path+method of the document must have been exercised, and the server is still up.

Operations that would end the fuzzing user's own sign-in or ownership (log out, delete the
workspace, leave, transfer) run last, so they do not turn everything after them into 401/404.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.builders import PASSWORD
from tests.prerequisites import module
from tests.processes import ServerProcess

schemathesis = module("schemathesis")
from schemathesis.generation.modes import GenerationMode  # noqa: E402

pytestmark = pytest.mark.both_engines

# raw bodies the API documents: markdown is text, zips and Yjs updates are bytes
schemathesis.serializer.alias("text/markdown", "text/plain")
schemathesis.serializer.alias("application/zip", "application/octet-stream")

# docs/api.md "Conventions": the slugs and their statuses. 405 (a method the path does not have) is
# aiohttp's routing answer; the fuzzer only sends documented methods, so it never sees one.
SLUGS = {
    "validation": 422, "bad-request": 400, "unauthenticated": 401, "forbidden": 403, "not-found": 404,
    "conflict": 409, "gone": 410, "precondition-failed": 412, "too-large": 413,
    "unsupported-media-type": 415, "rate-limited": 429, "upstream": 502, "internal": 500,
}
TRACE = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+|/site-packages/|\.py\", line|"
                   r"/work/|/home/|/usr/lib/python")
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", 8))         # per operation and generation mode
TIME_CAP = float(os.environ.get("FUZZ_SECONDS", 45))      # seconds for the whole fuzzing run (the file must stay well under 2 minutes)

# run last, in this order: each ends access the fuzzer needs for the operations before it
LAST = [("DELETE", "/api/v1/documents/{doc}"), ("DELETE", "/api/v1/folders/{folder}"),
        ("POST", "/api/v1/workspaces/{ws}/transfer"), ("POST", "/api/v1/workspaces/{ws}/leave"),
        ("DELETE", "/api/v1/workspaces/{ws}"), ("POST", "/api/v1/me/password"),
        ("DELETE", "/api/v1/auth/sessions/{session_id}"), ("POST", "/api/v1/auth/logout")]


@pytest.fixture
def server(tmp_path_factory, engine):
    """The server under fuzzing, on the test's engine (a fixture of the test's scope, made after the
    engine is chosen: a module-wide one would always be SQLite's)."""
    data = tmp_path_factory.mktemp("fuzz") / "data"
    data.mkdir()
    # the fuzzer registers and logs in far more often than a person: lift the address throttles
    proc = ServerProcess(data, env={"MDSYNC_AUTH__REGISTRATION": "open",
                                    "MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS": "100000",
                                    "MDSYNC_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS": "100000",
                                    "MDSYNC_AUTH__REFRESH_ATTEMPTS_PER_ADDRESS": "100000"})
    proc.start()
    # drain the server's output (its log) into proc.output: a full pipe would stall the server
    drain = threading.Thread(target=lambda: proc.output.extend(iter(proc.proc.stdout.readline, "")), daemon=True)
    drain.start()
    yield proc
    proc.kill()


def _ok(resp: requests.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else {}


@pytest.fixture
def world(server) -> dict:
    """A user with a workspace, folder, document, share link, version, invitation, a second
    member and a personal access token — every kind of id a path can name."""
    s = requests.Session()
    base = server.url("/api/v1")
    pair = _ok(s.post(base + "/auth/register", json={"email": "fuzz@example.com", "password": PASSWORD,
                                                     "name": "Fuzz"}), 201)
    other = _ok(s.post(base + "/auth/register", json={"email": "other@example.com", "password": PASSWORD,
                                                      "name": "Other"}), 201)
    h = {"Authorization": f"Bearer {pair['access_token']}"}
    ws = _ok(s.post(base + "/workspaces", json={"name": "Fuzz space"}, headers=h), 201)["id"]
    folder = _ok(s.post(base + f"/workspaces/{ws}/folders", json={"name": "F"}, headers=h), 201)["id"]
    doc = _ok(s.post(base + f"/workspaces/{ws}/documents", json={"title": "D", "markdown": "# hi\n"},
                     headers=h), 201)["id"]
    link = _ok(s.post(base + f"/documents/{doc}/share-links", json={"role": "viewer"}, headers=h), 201)
    version = _ok(s.post(base + f"/documents/{doc}/versions", json={"label": "v1"}, headers=h), 201)["id"]
    inv = _ok(s.post(base + f"/workspaces/{ws}/invitations", json={"role": "editor"}, headers=h), 201)
    joined = _ok(s.post(base + "/invitations/accept", json={"token": inv["token"]},
                        headers={"Authorization": f"Bearer {other['access_token']}"}), 200)
    assert joined
    inv2 = _ok(s.post(base + f"/workspaces/{ws}/invitations", json={"role": "viewer"}, headers=h), 201)
    pat = _ok(s.post(base + "/me/tokens", json={"name": "fuzz", "scopes": ["read", "write"]}, headers=h), 201)
    spare = _ok(s.post(base + "/me/tokens", json={"name": "spare"}, headers=h), 201)  # for DELETE /me/tokens/{id}
    sessions = _ok(s.get(base + "/auth/sessions", headers=h), 200)["items"]
    return {
        # the fuzzer authenticates with the personal access token: fuzzed logouts and password
        # changes end sessions, and a PAT is not one
        "headers": {"Authorization": f"Bearer {pat['token']}"},
        "ids": {"ws": ws, "folder": folder, "doc": doc, "document_id": doc, "link": link["id"],
                "token": link["token"], "version": version, "invitation": inv2["id"],
                "user": other["user"]["id"], "session_id": sessions[0]["id"], "token_id": spare["id"]},
    }


def _check(where: str, status: int, ctype: str, text: str) -> None:
    where = f"{where} -> {status}"
    assert status < 500, f"{where}: {text[:500]}"
    assert not TRACE.search(text), f"{where}: a trace or source path in the body: {text[:500]}"
    if status >= 400:
        assert ctype.startswith("application/problem+json"), f"{where}: {ctype} {text[:300]}"
        problem = json.loads(text)
        slug = problem["type"].removeprefix("urn:mdsync:error:")
        assert problem["type"].startswith("urn:mdsync:error:") and slug in SLUGS, f"{where}: {problem}"
        assert SLUGS[slug] == status == problem["status"], f"{where}: {problem}"
        assert problem.get("title") and problem.get("detail"), f"{where}: {problem}"


def _send(case, session: requests.Session, base: str, headers: dict) -> tuple[int, str, str]:
    """(status, content type, text) of the case's request. A stream (Server-Sent Events) is read
    only up to its headers: it stays open by design."""
    kwargs = case.as_transport_kwargs(base_url=base, headers=headers)
    kwargs.pop("session", None)
    with session.request(**kwargs, stream=True, timeout=30, allow_redirects=False) as resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/event-stream"):
            return resp.status_code, ctype, ""
        body = resp.content
    text = "" if "zip" in ctype or "octet-stream" in ctype else body.decode("utf-8", "replace")
    return resp.status_code, ctype, text


def _ordered(operations):
    last = {key: i for i, key in enumerate(LAST)}
    order = {"GET": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}
    return sorted(operations, key=lambda op: (last.get((op.method.upper(), op.path), -1), order[op.method.upper()]))


def test_every_operation_survives_fuzzing(server, world, engine):
    assert requests.get(server.url("/readyz")).json()["checks"]["database"]["engine"] == engine
    document = requests.get(server.url("/api/v1/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = [result.ok() for result in schema.get_all_operations()]
    declared = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    exercised: set[tuple[str, str]] = set()
    failures: dict[tuple, str] = {}
    statuses: dict[tuple, list[int]] = {}
    session = requests.Session()
    deadline = time.monotonic() + TIME_CAP
    ids = world["ids"]

    for operation in _ordered(operations):
        key = (operation.method.upper(), operation.path)
        # budget: every operation gets its turn even if earlier ones were slow
        remaining = [op for op in operations if (op.method.upper(), op.path) not in exercised]
        share = max(0.5, (deadline - time.monotonic()) / max(1, len(remaining)))
        stop_at = time.monotonic() + share
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > stop_at and key in exercised:
                break
            real = {name: ids[name] for name in _path_names(operation.path) if name in ids}

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), use_real=st.booleans())
            def run(case, use_real):
                if time.monotonic() > stop_at:
                    return
                if use_real:
                    case.path_parameters = {**(case.path_parameters or {}), **real}
                headers = dict(world["headers"])
                status, ctype, text = _send(case, session, server.url(""), headers)
                exercised.add(key)
                statuses.setdefault(key, []).append(status)
                try:
                    _check(f"{case.method} {case.formatted_path}", status, ctype, text)
                except AssertionError as exc:  # collected, not raised: one report of every distinct failure
                    failures.setdefault((key, status), f"{exc}\n  reproduce: {case.as_curl_command(headers)}")

            try:
                run()
            except Unsatisfiable:
                # nothing to violate (no parameters, no body): there is no negative case to send
                assert mode is GenerationMode.NEGATIVE, key
        # an operation whose strategy produced nothing valid still has to be called once
        if os.environ.get("FUZZ_REPORT"):
            print(f"{time.monotonic() - stop_at + share:6.2f}s", key)
        if key not in exercised:
            path = operation.path
            for name, value in ids.items():
                path = path.replace("{" + name + "}", value)
            resp = session.request(key[0], server.url(path), headers=world["headers"], timeout=30)
            exercised.add(key)
            assert resp.status_code < 500, (key, resp.text[:300])

    if os.environ.get("FUZZ_REPORT"):
        for k, v in statuses.items():
            print(k, sorted(v))
    assert not failures, "\n\n".join(failures.values()) + "\n\nserver log:\n" + "".join(server.output)[-6000:]
    assert declared - exercised == set(), "operations the fuzzer never called"
    assert requests.get(server.url("/healthz")).status_code == 200
    assert server.proc.poll() is None


def _path_names(path: str) -> list[str]:
    return re.findall(r"\{([^}]+)\}", path)

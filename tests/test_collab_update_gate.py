"""The gate in front of pycrdt (mdsync/collab/updates.py `apply`): every Yjs update a client sends
is read whole before any `apply_update`, on every write path.

The attack (issue 14, item 9): one ContentAny value of 30 000 nested one-element arrays inside an
otherwise valid 60 KB update overflows yrs' stack: the process dies (SIGSEGV), whoever sent it.
Against a real `mdsync serve`: refused with 422 on `POST …/yjs`, closed with 1002 on `/ws/docs` and
`/ws/hocuspocus`, and the server, the room and its other sockets go on. Then the gate itself is
fuzzed with hypothesis: whatever it lets through is applied by pycrdt in a child process, so a
crash fails the test instead of killing pytest.
"""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import time

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text

from mdsync.appkeys import DB
from mdsync.collab import protocol as p
from mdsync.collab import store, updates
from mdsync.collab.protocol import ProtocolError
from mdsync.collab.rooms import ROOMS
from tests import engines
from tests.builders import PASSWORD, make_document, register
from tests.processes import ROOT
from tests.waiting import eventually
from tests.yclient import YClient

pytestmark = pytest.mark.both_engines


def vstr(raw: bytes) -> bytes:
    return p.varuint(len(raw)) + raw


def one_item(content: bytes, *, ref: int = 8, client: int = 4242, clock: int = 0, root: bytes = b"attack") -> bytes:
    """A v1 update of one Item (no origins, parent: root type `root`) with `content`, and an empty
    delete set: what a Yjs client sends for `doc.getArray(root).push([value])`."""
    return (p.varuint(1) + p.varuint(1) + p.varuint(client) + p.varuint(clock)
            + bytes((ref,)) + p.varuint(1) + vstr(root) + content + p.varuint(0))


# the update of issue 14 item 9: one ContentAny of 30 000 nested one-element arrays (60 KB)
NESTED = one_item(p.varuint(1) + bytes([117, 1]) * 30000 + bytes([127]))


# -- the attack against a real server -------------------------------------------------------------
async def prepare(base: str) -> tuple[str, str]:
    """(document id, access token of its owner) through the REST API."""
    async with aiohttp.ClientSession(base) as http:
        resp = await http.post("/api/v1/auth/register", json={
            "email": f"g{time.time_ns()}@example.com", "password": PASSWORD, "name": "G"})
        assert resp.status == 201, await resp.text()
        token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        resp = await http.post("/api/v1/workspaces", json={"name": "Gate"}, headers=headers)
        ws_id = (await resp.json())["id"]
        resp = await http.post(f"/api/v1/workspaces/{ws_id}/documents", json={"title": "G", "markdown": "kept\n"},
                               headers=headers)
        assert resp.status == 201, await resp.text()
        return (await resp.json())["id"], token


async def next_binary(ws, timeout: float = 10) -> bytes | None:
    """The next binary message, or None when the socket closed."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return msg.data
        if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR):
            return None


async def closed_with(ws, timeout: float = 10) -> int | None:
    """The code of the close frame the server sends (not ws.close_code: the client's answer to it
    may meet a transport the server has closed already, which aiohttp reports as 1006)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return msg.data
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return None


def hp_frame(doc_id: str, body: bytes) -> bytes:
    return vstr(doc_id.encode()) + body


async def test_a_deeply_nested_value_is_refused_on_every_write_path_and_the_server_goes_on(server_process):
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open"})
    doc_id, token = await prepare(server.base)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(server.base) as http:
        # a watcher in the room throughout: it must keep receiving what is accepted
        watcher = await http.ws_connect(f"/ws/docs/{doc_id}?token={token}")
        await watcher.send_bytes(p.sync_step1(Doc().get_state()))

        resp = await http.post(f"/api/v1/documents/{doc_id}/yjs", data=NESTED,
                               headers={**headers, "Content-Type": "application/octet-stream"})
        assert resp.status == 422, await resp.text()
        problem = await resp.json()
        assert problem["errors"][0]["field"] == "body" and "nested" in problem["errors"][0]["message"]

        attacker = await http.ws_connect(f"/ws/docs/{doc_id}?token={token}")
        await attacker.send_bytes(p.update_message(NESTED))
        assert await closed_with(attacker) == 1002, "/ws/docs"

        hp = await http.ws_connect("/ws/hocuspocus")
        await hp.send_bytes(hp_frame(doc_id, bytes((p.MSG_AUTH, 0)) + vstr(token.encode()) + vstr(b"4.0.0")))
        await hp.send_bytes(hp_frame(doc_id, bytes((p.MSG_SYNC, p.SYNC_UPDATE)) + vstr(NESTED)))
        assert await closed_with(hp) == 1002, "/ws/hocuspocus"

        # the process, the room and its other socket go on: an edit over HTTP reaches the watcher
        assert server.proc.poll() is None, server.rest_of_output()
        resp = await http.put(f"/api/v1/documents/{doc_id}/content", data="kept\nand more\n",
                              headers={**headers, "Content-Type": "text/markdown"})
        assert resp.status == 200, await resp.text()
        seen = Doc()
        while str(seen.get("markdown", type=Text)) != "kept\nand more\n":
            data = await next_binary(watcher)
            assert data is not None, "the watcher was closed"
            if data[0] == p.MSG_SYNC:
                inner, payload, _ = p.sync_payload(data)
                if inner != p.SYNC_STEP1:
                    seen.apply_update(payload)
        await watcher.close()
        resp = await http.get(f"/api/v1/documents/{doc_id}/content", headers=headers)
        assert await resp.text() == "kept\nand more\n"
    assert server.proc.poll() is None, server.rest_of_output()


# -- what pycrdt refuses halfway ------------------------------------------------------------------
# Passes the gate, but its second struct names a string item as its parent: yrs integrates the
# first struct ("ab"), then raises RuntimeError. What it integrated is in the live Doc.
HALFWAY = (p.varuint(1) + p.varuint(2) + p.varuint(500) + p.varuint(0)
           + bytes((4,)) + p.varuint(1) + vstr(b"markdown") + vstr(b"ab")
           + bytes((4 | 0x20,)) + p.varuint(0) + p.varuint(500) + p.varuint(0) + vstr(b"k") + vstr(b"zz")
           + p.varuint(0))


async def test_an_update_pycrdt_refuses_halfway_leaves_room_peers_and_log_in_step(client):
    app = client.server.app
    owner = await register(client)
    _, doc_id = await make_document(app, owner.id, markdown="base\n")
    watcher = await YClient.connect(client, doc_id, owner.access_token)
    await watcher.wait_synced()
    resp = await client.post(f"/api/v1/documents/{doc_id}/yjs", data=HALFWAY,
                             headers={**owner.headers, "Content-Type": "application/octet-stream"})
    assert resp.status == 422
    room = app[ROOMS].loaded(doc_id)
    live = room.text()
    assert "ab" in live  # yrs kept the part it integrated before refusing ...
    # ... so the peers got it, and so did the log: a restart serves what the room showed
    assert await eventually(lambda: str(watcher.text) == live)
    await room.drain()
    assert await stored_text(app, doc_id) == live
    await watcher.close()


async def stored_text(app, document_id: str) -> str:
    stored = await store.load(app[DB], document_id)
    doc = Doc()
    for update in ([stored.snapshot] if stored.snapshot else []) + stored.updates:
        doc.apply_update(update)
    return str(doc.get("markdown", type=Text))


# -- the gate, unit by unit -----------------------------------------------------------------------
def real_updates() -> list[bytes]:
    """Updates pycrdt (yrs, the same encoder as Yjs) produces, of every content kind."""
    doc = Doc(client_id=77)
    out: list[bytes] = []
    doc.observe(lambda event: out.append(event.update))
    text = doc.get("markdown", type=Text)
    text += "héllo 😀 world"
    text.format(0, 5, {"bold": True})
    del text[3:5]  # pycrdt offsets are UTF-8 bytes: "ll"
    arr = doc.get("items", type=Array)
    arr.append([1, 2.5, "s", None, True, b"bytes", [1, [2, [3]]], {"k": {"n": [1.5]}}])
    arr.append(Map({"inner": Text("t")}))
    meta = doc.get("meta", type=Map)
    meta["x"] = -(2 ** 40)
    meta["x"] = "again"
    out.append(doc.get_update())
    return out


def test_what_yjs_produces_passes_the_gate():
    produced = real_updates()
    for update in produced:
        updates.check(update)
    doc = Doc()
    for update in produced[:-1]:
        updates.apply(doc, update)
    assert doc.get_update() == produced[-1] or str(doc.get("markdown", type=Text)) == "héo 😀 world"


@pytest.mark.parametrize("bad, why", [
    (NESTED, "nested"),
    (one_item(p.varuint(1) + (bytes([118, 1]) + vstr(b"k")) * 65 + bytes([127])), "nested"),
    (one_item(vstr(b"[" * 65 + b"]" * 65), ref=5), "nested"),                      # embed
    (one_item(vstr(b"bold") + vstr(b"{\"a\":" * 65 + b"1" + b"}" * 65), ref=6), "nested"),  # format
    (one_item(vstr(b"hello"), ref=4, clock=2**32 - 3), "out of range"),           # clock past u32
    (one_item(vstr(b""), ref=4), "out of range"),                                 # an empty struct
    (one_item(vstr(b"x"), ref=4, client=2**53), "client id"),
    (one_item(p.varuint(9), ref=7), "unknown type"),
    (one_item(vstr(b"\xff\xfe"), ref=4), "UTF-8"),
    (one_item(vstr(b"ok"), ref=4) + b"\x00", "after the update"),
    (one_item(vstr(b"ok"), ref=4)[:-1] + p.varuint(1) + p.varuint(1) + p.varuint(1) + p.varuint(2**32 - 1)
     + p.varuint(5), "out of range"),                                              # delete range
    (b"", "truncated"),
])
def test_the_gate_refuses(bad, why):
    with pytest.raises(ProtocolError, match=why):
        updates.check(bad)
    doc = Doc()
    with pytest.raises(ProtocolError):
        updates.apply(doc, bad)
    assert doc.get_update() == Doc().get_update()  # nothing of it reached the Doc


def test_a_nested_value_at_the_limit_passes():
    ok = one_item(p.varuint(1) + bytes([117, 1]) * (updates.MAX_DEPTH - 1) + bytes([127]))
    doc = Doc()
    updates.apply(doc, ok)
    assert len(doc.get("attack", type=Array)) == 1


def test_the_gate_integrates_like_pycrdt_and_commits():
    """`updates.apply` calls yrs without pycrdt's Python transaction (pycrdt internals, pinned
    below 0.15): the Doc ends as pycrdt's own path leaves it, observers hear of each update, and
    no transaction is left open."""
    produced = real_updates()
    ours, theirs = Doc(), Doc()
    heard = []
    ours.observe(lambda event: heard.append(event.update))
    for update in produced[:-1]:
        updates.apply(ours, update)
        theirs.apply_update(update)
    assert ours._txn is None
    assert ours.get_update() == theirs.get_update()
    assert len(heard) == len(produced) - 1
    with ours.transaction():  # inside a transaction someone holds: pycrdt's own path
        updates.apply(ours, produced[0])
    assert ours.get_update() == theirs.get_update()


def test_every_apply_update_in_mdsync_is_the_gate_or_on_the_servers_own_bytes():
    """`updates.apply` is the one way a client's update reaches a Doc: any other `.apply_update(`
    call (but `room.apply_update`, which is `Room._accept`, the gate) must be listed here with
    why its bytes are not a client's."""
    trusted = {
        ("mdsync/collab/updates.py", "apply"): "the gate itself",
        ("mdsync/collab/updates.py", "_integrate"): "the gate's call into pycrdt, after its check",
        ("mdsync/collab/rooms.py", "_load"): "snapshot and log rows, gated when accepted",
        ("mdsync/collab/states.py", "rebuild"): "content_states rows the server encoded",
        ("mdsync/collab/content.py", "_merge"): "a copy of a Doc the server holds",
        ("mdsync/collab/content.py", "_serve_seed"): "the server's seed of stored markdown",
        ("mdsync/collab/positions.py", "__init__"): "a rewrite of a Doc the server holds",
        ("mdsync/tiptap/content.py", "render_state"): "a snapshot of a Doc the server holds",
        ("mdsync/tiptap/content.py", "diff_update"): "a state the server served",
        # the sync client (`mdsync sync`, on the user's machine) applies what its server sends
        ("mdsync/syncclient/merge.py", "__init__"): "the sync client's own saved state",
        ("mdsync/syncclient/merge.py", "apply"): "the sync client applying its server's bytes",
        ("mdsync/collab/hocuspocus.py", "_contained"): "a copy of the room's state (the client's: the gate)",
        ("mdsync/transfer/export.py", "read_all"): "snapshot and log rows, gated when accepted",
        # several nodes: rows another node committed (its gate checked them when it accepted them)
        ("mdsync/collab/room.py", "_apply_row"): "a log row another node committed, gated when accepted",
        ("mdsync/collab/room.py", "apply_stored"): "a snapshot another node stored",
        ("mdsync/collab/room.py", "missing_from"): "those log rows again (pycrdt left them pending)",
    }
    found = set()

    def visit(node: ast.AST, path: str, func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if (isinstance(node, ast.Attribute) and node.attr == "apply_update"
                and ast.unparse(node.value) not in ("room", "self")):
            found.add((path, func))
        for child in ast.iter_child_nodes(node):
            visit(child, path, func)

    for path in sorted((ROOT / "mdsync").rglob("*.py")):
        visit(ast.parse(path.read_text()), str(path.relative_to(ROOT)), "")
    assert found <= set(trusted), f"apply_update outside the gate: {sorted(found - set(trusted))}"


# -- fuzzing --------------------------------------------------------------------------------------
CHILD = r"""
import sys
from pycrdt import Doc, Text
base = bytes.fromhex(sys.argv[1])
for line in sys.stdin:
    print(line.strip()[:400], file=sys.stderr, flush=True)  # the last one names the culprit of a crash
    doc = Doc()
    doc.apply_update(base)
    try:
        doc.apply_update(bytes.fromhex(line.strip()))
        doc.get_update()
        str(doc.get("markdown", type=Text))
        print("applied", flush=True)
    except (ValueError, RuntimeError):
        print("refused", flush=True)
    except BaseException as exc:
        print(type(exc).__name__, flush=True)
"""


def run_in_child(batch: list[bytes]) -> list[str]:
    """Apply each update the gate let through to a copy of the base document, in a child process
    (pycrdt itself, as `updates.apply` calls it): a crash fails here, never pytest itself; a Rust
    panic (caught by the gate, but a sign of an input it should have refused) fails too."""
    base = real_updates()[-1]
    proc = subprocess.run([sys.executable, "-c", CHILD, base.hex()], input="".join(u.hex() + "\n" for u in batch),
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    culprit = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
    assert proc.returncode == 0, f"pycrdt died ({proc.returncode}) on an update the gate let through: {culprit}"
    answers = proc.stdout.split()
    assert len(answers) == len(batch)
    assert set(answers) <= {"applied", "refused"}, [
        (answer, update.hex()) for answer, update in zip(answers, batch) if answer not in ("applied", "refused")]
    return answers


def only_once() -> None:
    """The fuzzing touches no database (minutes of it): it runs on one engine only."""
    if engines.current != "sqlite":
        pytest.skip("no database involved: the gate's fuzzing runs once, on sqlite")


# mostly small numbers (so that most updates parse), now and then one at the edge of a range
EDGES = st.sampled_from([0, 2**31 - 1, 2**32 - 2, 2**32 - 1, 2**32, 2**53])
uint = st.one_of(*[st.integers(0, 40)] * 8, st.integers(0, 2**14), EDGES)
length = st.one_of(*[st.integers(1, 40)] * 9, EDGES)
any_kinds = st.sampled_from([127, 126, 125, 124, 123, 122, 121, 120, 119, 118, 117, 116, 115])


@st.composite
def any_value(draw, depth=0) -> bytes:
    if draw(st.integers(0, 20)) == 0:  # one-element arrays nested around the gate's limit, or far past it
        levels = draw(st.sampled_from([updates.MAX_DEPTH - 1, updates.MAX_DEPTH, updates.MAX_DEPTH + 1, 30000]))
        return bytes([117, 1]) * levels + bytes([127])
    kind = draw(any_kinds)
    if depth > 5 and kind in (117, 118):
        kind = 127
    if kind == 125:
        return bytes((kind,)) + draw(st.binary(min_size=1, max_size=3))
    if kind == 124:
        return bytes((kind,)) + draw(st.binary(min_size=4, max_size=4))
    if kind in (123, 122):
        return bytes((kind,)) + draw(st.binary(min_size=8, max_size=8))
    if kind in (119, 116):
        return bytes((kind,)) + vstr(draw(st.binary(max_size=6)))
    if kind == 117:
        items = draw(st.lists(any_value(depth + 1), max_size=3))
        return bytes((kind,)) + p.varuint(len(items)) + b"".join(items)
    if kind == 118:
        items = draw(st.lists(st.tuples(st.binary(max_size=3), any_value(depth + 1)), max_size=3))
        return bytes((kind,)) + p.varuint(len(items)) + b"".join(vstr(k) + v for k, v in items)
    return bytes((kind,))


@st.composite
def content(draw) -> tuple[int, bytes]:
    ref = draw(st.one_of(*[st.integers(1, 9)] * 9, st.sampled_from([0, 10, 11, 31])))
    if ref == 1:
        return ref, p.varuint(draw(length))
    if ref == 2:
        parts = draw(st.lists(st.sampled_from([b"1", b"[[1]]", b"{\"a\":[]}", b"undefined", b"[" * 70]), min_size=1, max_size=2))
        return ref, p.varuint(len(parts)) + b"".join(vstr(x) for x in parts)
    if ref in (3, 5):
        return ref, vstr(draw(st.sampled_from([b"{}", b"\"x\"", b"[1]", b"not json", b"[" * 70])))
    if ref == 4:
        return ref, vstr(draw(st.text(min_size=draw(st.sampled_from([0, 1, 1, 1])), max_size=5)).encode("utf-8", "surrogatepass"))
    if ref == 6:
        return ref, vstr(b"bold") + vstr(draw(st.sampled_from([b"true", b"null", b"{\"x\":1}", b"[", b"\"s\""])))
    if ref == 7:
        type_ref = draw(st.integers(0, 8))
        return ref, p.varuint(type_ref) + (vstr(b"p") if type_ref in (3, 5) else b"")
    if ref == 8:
        values = draw(st.lists(any_value(), min_size=1, max_size=3))
        return ref, p.varuint(len(values)) + b"".join(values)
    if ref == 9:
        return ref, vstr(b"guid") + draw(any_value())
    return ref, b""


CLIENTS = st.sampled_from([77, 78, 4242, 0, 2**53 - 1])


@st.composite
def struct(draw) -> bytes:
    kind = draw(st.sampled_from(["item", "item", "item", "gc", "skip"]))
    if kind in ("gc", "skip"):
        return bytes((0 if kind == "gc" else 10,)) + p.varuint(draw(length))
    ref, body = draw(content())
    left, right = draw(st.booleans()), draw(st.booleans())
    sub = draw(st.booleans()) and not (left or right)
    info = ref | (0x80 if left else 0) | (0x40 if right else 0) | (0x20 if sub else 0)
    out = bytes((info,))
    if left:
        out += p.varuint(draw(CLIENTS)) + p.varuint(draw(uint))
    if right:
        out += p.varuint(draw(CLIENTS)) + p.varuint(draw(uint))
    if not (left or right):
        if draw(st.booleans()):
            out += p.varuint(1) + vstr(draw(st.sampled_from([b"markdown", b"items", b"meta", b"x"])))
        else:
            out += p.varuint(0) + p.varuint(draw(CLIENTS)) + p.varuint(draw(uint))
        if sub:
            out += vstr(draw(st.sampled_from([b"k", b"x", b"inner"])))
    return out + body


@st.composite
def update(draw) -> bytes:
    out = b""
    clients = draw(st.lists(st.tuples(CLIENTS, uint, st.lists(struct(), min_size=1, max_size=4)), max_size=3))
    out += p.varuint(len(clients))
    for client, clock, structs in clients:
        out += p.varuint(len(structs)) + p.varuint(client) + p.varuint(clock) + b"".join(structs)
    deletes = draw(st.lists(st.tuples(CLIENTS, st.lists(st.tuples(uint, length), max_size=3)), max_size=2))
    out += p.varuint(len(deletes))
    for client, ranges in deletes:
        out += p.varuint(client) + p.varuint(len(ranges)) + b"".join(p.varuint(a) + p.varuint(b) for a, b in ranges)
    # now and then a byte flipped, cut or added
    mutation = draw(st.integers(0, 5))
    if out and mutation == 1:
        i = draw(st.integers(0, len(out) - 1))
        out = out[:i] + bytes((draw(st.integers(0, 255)),)) + out[i + 1:]
    elif out and mutation == 2:
        out = out[:draw(st.integers(0, len(out) - 1))]
    return out


@pytest.mark.timeout(600)
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(update(), min_size=20, max_size=40))
def test_fuzz_nothing_the_gate_lets_through_crashes_pycrdt(batch):
    only_once()
    passed = []
    for candidate in batch:
        try:
            updates.check(candidate)
        except ProtocolError:
            continue
        passed.append(candidate)
    if passed:
        run_in_child(passed)


@pytest.mark.timeout(300)
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 400), st.binary(min_size=1, max_size=6)), min_size=20,
                max_size=40))
def test_fuzz_mutated_real_updates(mutations):
    """Real updates with bytes replaced or inserted: refused by the gate or applied without a crash."""
    only_once()
    sources = real_updates()
    batch = []
    for which, at, chunk in mutations:
        source = sources[which % len(sources)]
        at %= len(source)
        candidate = source[:at] + chunk + source[at + (len(chunk) if which % 2 else 0):]
        try:
            updates.check(candidate)
        except ProtocolError:
            continue
        batch.append(candidate)
    if batch:
        run_in_child(batch)

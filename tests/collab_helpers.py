"""Helpers of the collaboration tests: documents to edit, a small Yjs client speaking the
y-websocket protocol over aiohttp (pycrdt for the CRDT) and a small Hocuspocus client, for what
a real provider cannot do on purpose (garbage, tickets, frames inspected one by one). The interop
tests in tests/interop use the real npm clients instead."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import WSMsgType
from pycrdt import Doc, Text

from mdsync import clock
from mdsync.appkeys import DB
from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p
from mdsync.workspaces import service as workspaces


async def make_document(app, owner_id: str, *, markdown: str = "", members: dict[str, str] | None = None,
                        workspace_id: str | None = None, content_model: str = "text") -> tuple[str, str]:
    """(workspace id, document id): a document in a new (or the given) workspace owned by `owner_id`,
    with `members` {user id: role} added. Built in the database directly until the REST routes land."""
    db = app[DB]

    def create(tx):
        ws_id = workspace_id or workspaces.insert_workspace(tx, "Collab " + uuid.uuid4().hex[:6], owner_id)["id"]
        doc_id = str(uuid.uuid4())
        now = clock.iso()
        tx.execute("INSERT INTO documents (id, workspace_id, title, content_model, markdown, size, created_by,"
                   " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (doc_id, ws_id, "Doc", content_model, markdown, len(markdown.encode()), owner_id, now, now))
        for user_id, role in (members or {}).items():
            workspaces.add_member(tx, ws_id, user_id, role, actor_id=owner_id)
        return ws_id, doc_id

    return await db.write(create)


class YClient:
    """A y-websocket client: a pycrdt Doc synced over one socket."""

    def __init__(self, ws, client_id: int | None = None):
        self.ws = ws
        self.doc = Doc(client_id=client_id) if client_id else Doc()
        self.text = self.doc.get("markdown", type=Text)
        self.synced = asyncio.Event()
        self.awareness: dict[int, str] = {}
        self.received_updates = 0
        self.close_code: int | None = None
        self._sub = self.doc.observe(self._local)
        self._applying = False
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, client, document_id: str, token: str | None, **kw) -> "YClient":
        url = f"/ws/docs/{document_id}" + (f"?token={token}" if token else "")
        ws = await client.ws_connect(url, max_msg_size=64 << 20)
        self = cls(ws, **kw)
        await ws.send_bytes(p.sync_step1(self.doc.get_state()))
        return self

    def _local(self, event) -> None:
        if not self._applying and not self.ws.closed:
            asyncio.ensure_future(self._send(p.update_message(event.update)))

    async def _send(self, data: bytes) -> None:
        try:
            await self.ws.send_bytes(data)
        except Exception:
            pass

    async def send_raw(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    def insert(self, index: int, chunk: str) -> None:
        self.text.insert(index, chunk)

    async def set_awareness(self, state: str, clock_: int = 1) -> None:
        await self.ws.send_bytes(p.awareness_message([(self.doc.client_id, clock_, state)]))

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type.name != "BINARY":
                continue
            data = msg.data
            if data[0] == p.MSG_SYNC:
                inner, payload, _ = p.sync_payload(data)
                if inner == p.SYNC_STEP1:
                    await self._send(p.sync_step2(self.doc.get_update(payload)))
                else:
                    self._applying = True
                    try:
                        self.doc.apply_update(payload)
                    finally:
                        self._applying = False
                    self.received_updates += 1
                    if inner == p.SYNC_STEP2:
                        self.synced.set()
            elif data[0] == p.MSG_AWARENESS:
                for cid, _clock, state in p.parse_awareness(data):
                    if state == p.NULL_STATE:
                        self.awareness.pop(cid, None)
                    else:
                        self.awareness[cid] = state
        self.close_code = self.ws.close_code

    async def wait_synced(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def wait_closed(self, timeout: float = 10) -> int | None:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        try:
            await asyncio.wait_for(self._reader, 5)
        except Exception:
            pass


class HPClient:
    """One Hocuspocus socket; per document a pycrdt Doc and the messages received."""

    def __init__(self, ws):
        self.ws = ws
        self.docs: dict[str, Doc] = {}
        self.inbox: dict[str, list[tuple[int, bytes]]] = {}
        self.close_code: int | None = None
        self.pings = 0
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, client) -> HPClient:
        return cls(await client.ws_connect("/ws/hocuspocus", max_msg_size=64 << 20))

    async def send(self, key: str, body: bytes) -> None:
        await self.ws.send_bytes(p.varbytes(key.encode()) + body)

    async def open(self, key: str, token: str, *, sync: bool = True) -> None:
        """Auth then step 1, as the provider sends them (without waiting for the answer)."""
        doc = self.docs.setdefault(key, Doc())
        self.inbox.setdefault(key, [])
        await self.send(key, bytes((p.MSG_AUTH, hp.AUTH_TOKEN)) + p.varbytes(token.encode()) + p.varbytes(b"4.8.0"))
        if sync:
            await self.send(key, p.sync_step1(doc.get_state()))

    def text(self, key: str) -> Text:
        return self.docs[key].get("markdown", type=Text)

    async def edit(self, key: str, index: int, chunk: str) -> None:
        doc = self.docs[key]
        before = doc.get_state()
        self.text(key).insert(index, chunk)
        await self.send(key, p.update_message(doc.get_update(before)))

    def auth(self, key: str) -> tuple[int, str] | None:
        """The last Auth answer of the document: (AUTH_OK, scope) or (AUTH_DENIED, reason)."""
        answer = None
        for kind, body in self.inbox.get(key, ()):
            if kind == p.MSG_AUTH:
                answer = body[0], p.read_varstring(body, 1)[0]
        return answer

    def statuses(self, key: str) -> list[int]:
        return [body[0] for kind, body in self.inbox.get(key, ()) if kind == hp.MSG_SYNC_STATUS]

    async def until(self, check, what: str, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                if self._reader.done() and not check():
                    raise AssertionError(f"socket closed ({self.close_code}) waiting for {what}")
                await asyncio.sleep(0.01)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != WSMsgType.BINARY:
                break
            data = msg.data
            if data == bytes((hp.MSG_PING,)):
                self.pings += 1
                await self.ws.send_bytes(hp.PONG)
                continue
            key, pos = p.read_varstring(data, 0)
            kind = data[pos]
            body = data[pos + 1:]
            self.inbox.setdefault(key, []).append((kind, body))
            doc = self.docs.get(key)
            if kind == p.MSG_SYNC and doc is not None:
                inner, payload, _ = p.sync_payload(data[pos:])
                if inner == p.SYNC_STEP1:
                    await self.send(key, p.sync_step2(doc.get_update(payload)))
                else:
                    doc.apply_update(payload)
        self.close_code = self.ws.close_code

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def eventually(check, timeout: float = 10.0, interval: float = 0.02):
    """Wait until `check()` is truthy (bounded); returns its last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)

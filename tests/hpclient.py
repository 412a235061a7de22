"""A small Hocuspocus client for in-process tests: one `/ws/hocuspocus` socket, per document a
pycrdt Doc and the messages received — for what a real provider cannot do on purpose (garbage,
tickets, frames inspected one by one). The interop tests drive the real `@hocuspocus/provider`.

    hp_client = await HPClient.connect(client)
    await hp_client.open(doc_id, owner.access_token)
    await hp_client.until(lambda: hp_client.auth(doc_id), "the Auth answer")
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMsgType
from pycrdt import Doc, Text

from mdsync.collab import hocuspocus as hp
from mdsync.collab import protocol as p


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

"""A small Yjs client for in-process tests: a pycrdt Doc synced over one `/ws/docs/{id}` socket,
speaking the y-websocket protocol over aiohttp. The interop tests (tests/interop, tests/nodeclients.py)
use the real npm clients instead.

    alice = await YClient.connect(client, doc_id, owner.access_token)
    await alice.wait_synced()
    alice.insert(0, "hello")
"""

from __future__ import annotations

import asyncio

from pycrdt import Doc, Text

from mdsync.collab import protocol as p


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
    async def connect(cls, client, document_id: str, token: str | None, **kw) -> YClient:
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

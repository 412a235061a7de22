"""Provider keys a workspace pays with: stored encrypted, shown as their last four characters.

The encryption key is derived from the server secret (HKDF-SHA256), so the database file alone
(a backup, a replica) does not reveal a provider key. Each ciphertext is AES-256-GCM with a
random nonce and the row's workspace and provider as associated data: a ciphertext copied into
another row does not decrypt. Keys are stored without calling the provider (docs/api.md "AI proxy").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mdsync import clock
from mdsync.db import Database, Tx

PROVIDERS = ("openai", "anthropic")
_INFO = b"mdsync ai provider keys v1"


@dataclass(frozen=True)
class StoredKey:
    provider: str
    api_key: str
    last4: str
    base_url: str | None


class KeyStore:
    def __init__(self, db: Database, secret: str):
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"mdsync", info=_INFO).derive(secret.encode())
        self._aead = AESGCM(derived)
        self.db = db

    def _seal(self, workspace_id: str, provider: str, api_key: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, api_key.encode(), f"{workspace_id}/{provider}".encode())

    def _open(self, workspace_id: str, provider: str, sealed: bytes) -> str | None:
        try:
            plain = self._aead.decrypt(sealed[:12], sealed[12:], f"{workspace_id}/{provider}".encode())
        except InvalidTag:  # the server secret changed since it was stored: as good as no key
            return None
        return plain.decode()

    async def put(self, workspace_id: str, provider: str, api_key: str, base_url: str | None) -> None:
        sealed = self._seal(workspace_id, provider, api_key)

        def store(tx: Tx) -> None:
            tx.execute("INSERT INTO ai_keys (workspace_id, provider, ciphertext, last4, base_url, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (workspace_id, provider) DO UPDATE SET"
                       " ciphertext = excluded.ciphertext, last4 = excluded.last4, base_url = excluded.base_url,"
                       " updated_at = excluded.updated_at",
                       (workspace_id, provider, sealed, api_key[-4:], base_url, clock.iso()))

        await self.db.write(store)

    async def delete(self, workspace_id: str, provider: str) -> bool:
        def remove(tx: Tx) -> bool:
            return tx.execute("DELETE FROM ai_keys WHERE workspace_id = ? AND provider = ?",
                              (workspace_id, provider)).rowcount > 0

        return await self.db.write(remove)

    async def shown(self, workspace_id: str, provider: str) -> dict | None:
        """What GET shows: provider, last four characters, base_url (never the key)."""
        row = await self.db.lookup("SELECT last4, base_url FROM ai_keys WHERE workspace_id = ? AND provider = ?",
                                   (workspace_id, provider))
        if row is None:
            return None
        return {"provider": provider, "last4": row["last4"], "base_url": row["base_url"]}

    async def get(self, workspace_id: str, provider: str) -> StoredKey | None:
        row = await self.db.lookup("SELECT ciphertext, last4, base_url FROM ai_keys"
                                   " WHERE workspace_id = ? AND provider = ?", (workspace_id, provider))
        if row is None:
            return None
        api_key = self._open(workspace_id, provider, row["ciphertext"])
        if api_key is None:
            return None
        return StoredKey(provider, api_key, row["last4"], row["base_url"])

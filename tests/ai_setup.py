"""State for the AI proxy tests, built through the public API: a workspace with its people, a
client app pointed at the fake upstream, documents, keys and limits. (Helpers, not tests.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdsync.appkeys import SETTINGS
from tests.builders import Account, bearer, register
from tests.readers import settings_rows

API = "/api/v1"
OPENAI = f"{API}/ai/openai/v1"
ANTHROPIC = f"{API}/ai/anthropic"


async def make_workspace(client, owner: Account, name: str = "AI team") -> str:
    resp = await client.post(f"{API}/workspaces", json={"name": name}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def join(client, owner: Account, ws: str, role: str) -> Account:
    resp = await client.post(f"{API}/workspaces/{ws}/invitations", json={"role": role}, headers=owner.headers)
    assert resp.status == 201, await resp.text()
    return await register(client, name=role.title(), invitation=(await resp.json())["token"])


async def document(client, who: Account, ws: str, title: str, markdown: str) -> str:
    resp = await client.post(f"{API}/workspaces/{ws}/documents", json={"title": title, "markdown": markdown},
                             headers=who.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"]


async def pat(client, who: Account, scopes: list[str]) -> str:
    resp = await client.post(f"{API}/me/tokens", json={"name": "sdk", "scopes": scopes}, headers=who.headers)
    assert resp.status == 201, await resp.text()
    return (await resp.json())["token"]


@dataclass
class Team:
    client: object
    ws: str
    owner: Account
    people: dict[str, Account] = field(default_factory=dict)

    def headers(self, who: str = "owner", **extra) -> dict[str, str]:
        account = self.owner if who == "owner" else self.people[who]
        return {**account.headers, **extra}

    async def put_key(self, provider: str, api_key: str, base_url: str | None = None, ws: str | None = None):
        body = {"api_key": api_key} | ({"base_url": base_url} if base_url else {})
        return await self.client.put(f"{API}/workspaces/{ws or self.ws}/ai/keys/{provider}", json=body,
                                     headers=self.owner.headers)

    async def put_limits(self, **limits) -> dict:
        resp = await self.client.put(f"{API}/workspaces/{self.ws}/ai/limits", json=limits, headers=self.owner.headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def usage(self, who: str = "owner", **params) -> list[dict]:
        resp = await self.client.get(f"{API}/ai/usage", params={"workspace_id": self.ws, **params},
                                     headers=self.headers(who))
        assert resp.status == 200, await resp.text()
        return (await resp.json())["items"]

    def rows(self, sql: str, params=()) -> list:
        """The server's database rows (either engine; `?` placeholders)."""
        return settings_rows(self.client.app[SETTINGS], sql, params)


async def team(client, *roles: str) -> Team:
    owner = await register(client, name="Owner")
    ws = await make_workspace(client, owner)
    t = Team(client, ws, owner)
    for role in roles:
        t.people[role] = await join(client, owner, ws, role)
    return t


__all__ = ["API", "OPENAI", "ANTHROPIC", "Team", "team", "make_workspace", "join", "document", "pat", "bearer"]

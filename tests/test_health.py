import pytest

from tests.builders import register

pytestmark = pytest.mark.both_engines


async def test_healthz_and_readyz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"]["database"]["ok"] is True


async def test_register_then_me(client):
    account = await register(client, email="Ada@Example.com", name="Ada")
    resp = await client.get("/api/v1/me", headers=account.headers)
    assert resp.status == 200
    me = await resp.json()
    assert me["email"] == "ada@example.com"
    assert me["name"] == "Ada"

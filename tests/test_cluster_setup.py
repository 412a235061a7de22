"""The first admin's setup on several nodes (docs/operations.md "4. First admin"): two `mdsync serve`
nodes on one PostgreSQL database and one Redis (tests/cluster.py), as behind Caddy, which may send
the setup to either. The setup token one node printed is accepted by any node, once; the node
started next prints where that token is instead of a competing one. (Setups racing on two nodes:
tests/test_auth.py, two apps on one database.)"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests import redisserver
from tests.builders import PASSWORD
from tests.cluster import NodeCluster
from tests.prerequisites import requires

pytestmark = [pytest.mark.postgresql_only, pytest.mark.serial, requires(redisserver.missing_reason())]


async def setup(http: aiohttp.ClientSession, node, token: str, email: str) -> int:
    async with http.post(node.url("/api/v1/auth/setup"), json={"setup_token": token, "email": email,
                                                               "password": PASSWORD, "name": "Root"}) as resp:
        await resp.read()
        return resp.status


async def test_the_setup_token_node_a_printed_creates_the_admin_once_on_node_b(tmp_path):
    with NodeCluster(tmp_path / "cluster", nodes=2) as cluster:
        a, b = cluster.nodes   # started one after the other
        printed_a, printed_b = "".join(a.output), "".join(b.output)
        token = re.search(r'"setup_token": "([A-Za-z0-9_-]{20,})"', printed_a).group(1)
        assert '"setup_token"' not in printed_b, printed_b   # no competing token ...
        assert f"(pid {a.proc.pid}) printed at" in printed_b, printed_b   # ... but which node holds it
        async with aiohttp.ClientSession() as http:
            assert await setup(http, b, "not-the-token", "root@example.com") == 403
            assert await setup(http, b, token, "root@example.com") == 201
            # again, on both nodes at once: setup is done
            assert await asyncio.gather(setup(http, a, token, "a@example.com"),
                                        setup(http, b, token, "b@example.com")) == [409, 409]
            async with http.post(a.url("/api/v1/auth/login"),
                                 json={"email": "root@example.com", "password": PASSWORD}) as resp:
                assert resp.status == 200
                assert (await resp.json())["user"]["is_admin"] is True
        assert cluster.sql("SELECT count(*) FROM users") == [(1,)]
        assert cluster.sql("SELECT count(*) FROM setup_token") == [(0,)]

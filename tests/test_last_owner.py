"""The last-owner invariant: whatever sequence of role changes, removals, leaves, transfers and
re-joins members attempt, a workspace always keeps at least one owner — and every answer is the
one the rules predict (403 for too low a role, 409 for "would leave no owner", 404 for outsiders).

A hypothesis state machine drives a real `mdsync serve` process over HTTP and keeps a model of
the memberships; after every step the server's member list must equal the model's.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

pytestmark = pytest.mark.both_engines

RANK = {"viewer": 0, "commenter": 1, "editor": 2, "admin": 3, "owner": 4}
ROLES = list(RANK)
USERS = 4


def call(base: str, method: str, path: str, token: str | None = None, body=None) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + "/api/v1" + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Memberships(RuleBasedStateMachine):
    base: str = ""
    users: list[dict] = []  # {"id", "token"}

    def __init__(self):
        super().__init__()
        self.ws = ""
        self.roles: dict[int, str] = {}  # the model: user index -> role, members only

    def _call(self, who: int, method: str, path: str, body=None):
        return call(self.base, method, path, self.users[who]["token"], body)

    @initialize(others=st.lists(st.sampled_from(ROLES), min_size=USERS - 1, max_size=USERS - 1))
    def create(self, others):
        status, ws = self._call(0, "POST", "/workspaces", {"name": "Invariant"})
        assert status == 201
        self.ws = ws["id"]
        self.roles = {0: "owner"}
        for index, role in enumerate(others, start=1):
            self._join(index, role)

    def _join(self, index: int, role: str) -> None:
        inviter = next(u for u, r in self.roles.items() if r == "owner")
        status, inv = self._call(inviter, "POST", f"/workspaces/{self.ws}/invitations", {"role": role})
        assert status == 201
        status, _ = self._call(index, "POST", "/invitations/accept", {"token": inv["token"]})
        if index in self.roles:
            assert status == 409
        else:
            assert status == 200
            self.roles[index] = role

    def _owners(self) -> int:
        return sum(1 for r in self.roles.values() if r == "owner")

    @rule(actor=st.integers(0, USERS - 1), other=st.integers(0, USERS - 1), role=st.sampled_from(ROLES))
    def change_role(self, actor, other, role):
        target = other
        status, _ = self._call(actor, "PATCH", f"/workspaces/{self.ws}/members/{self.users[target]['id']}", {"role": role})
        mine = self.roles.get(actor)
        if mine is None:
            expected = 404
        elif RANK[mine] < RANK["admin"]:
            expected = 403
        elif target not in self.roles:
            expected = 404
        elif mine != "owner" and (self.roles[target] == "owner" or role == "owner"):
            expected = 403
        elif self.roles[target] == "owner" and role != "owner" and self._owners() == 1:
            expected = 409
        else:
            expected = 200
            self.roles[target] = role
        assert status == expected, (actor, target, role, self.roles)

    @rule(actor=st.integers(0, USERS - 1), other=st.integers(0, USERS - 1))
    def remove(self, actor, other):
        target = other
        status, _ = self._call(actor, "DELETE", f"/workspaces/{self.ws}/members/{self.users[target]['id']}")
        mine = self.roles.get(actor)
        if mine is None:
            expected = 404
        elif actor == target:
            expected = 409 if mine == "owner" and self._owners() == 1 else 204
        elif RANK[mine] < RANK["admin"]:
            expected = 403
        elif target not in self.roles:
            expected = 404
        elif mine != "owner" and self.roles[target] == "owner":
            expected = 403
        else:
            expected = 204
        if expected == 204:
            del self.roles[target]
        assert status == expected, (actor, target, self.roles)

    @rule(actor=st.integers(0, USERS - 1))
    def leave(self, actor):
        status, _ = self._call(actor, "POST", f"/workspaces/{self.ws}/leave")
        mine = self.roles.get(actor)
        if mine is None:
            expected = 404
        elif mine == "owner" and self._owners() == 1:
            expected = 409
        else:
            expected = 204
            del self.roles[actor]
        assert status == expected, (actor, self.roles)

    @rule(actor=st.integers(0, USERS - 1), other=st.integers(0, USERS - 1))
    def transfer(self, actor, other):
        target = other
        status, _ = self._call(actor, "POST", f"/workspaces/{self.ws}/transfer", {"user_id": self.users[target]["id"]})
        mine = self.roles.get(actor)
        if mine is None:
            expected = 404
        elif mine != "owner":
            expected = 403
        elif actor == target:
            expected = 409
        elif target not in self.roles:
            expected = 404
        else:
            expected = 204
            self.roles[target], self.roles[actor] = "owner", "admin"
        assert status == expected, (actor, target, self.roles)

    @rule(user=st.integers(0, USERS - 1), role=st.sampled_from(ROLES))
    def rejoin(self, user, role):
        self._join(user, role)

    @invariant()
    def server_agrees_with_the_model(self):
        if not self.ws:
            return
        assert self._owners() >= 1
        reader = next(u for u, r in self.roles.items() if r == "owner")
        status, page = self._call(reader, "GET", f"/workspaces/{self.ws}/members?limit=200")
        assert status == 200
        by_id = {u["id"]: i for i, u in enumerate(self.users)}
        assert {by_id[m["user_id"]]: m["role"] for m in page["items"]} == self.roles


def test_a_workspace_always_keeps_an_owner(server_process):
    server = server_process(env={"MDSYNC_AUTH__REGISTRATION": "open",
                                 "MDSYNC_AUTH__REGISTER_ATTEMPTS_PER_ADDRESS": "1000"})
    users = []
    for i in range(USERS):
        status, pair = call(server.base, "POST", "/auth/register",
                            body={"email": f"u{i}@example.com", "password": "correct horse battery", "name": f"U{i}"})
        assert status == 201
        users.append({"id": pair["user"]["id"], "token": pair["access_token"]})
    Memberships.base, Memberships.users = server.base, users
    run_state_machine_as_test(Memberships, settings=settings(
        max_examples=60, stateful_step_count=30, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
    server.terminate()

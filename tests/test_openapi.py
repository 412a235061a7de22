"""The OpenAPI document at /api/v1/openapi.json: valid OpenAPI 3.1, and complete — every route
of every registered table and every route in the aiohttp router is in it, so routes added later
by any feature are checked without touching this file."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from mdsync.api.routing import openapi_path, path_params
from mdsync.appkeys import ROUTE_TABLES

pytestmark = pytest.mark.both_engines

# Routes that are not HTTP request/response operations (WebSocket upgrades) are described in the
# document's description instead; everything else must be an operation.
NOT_OPERATIONS = ("/ws/",)


async def fetch(client) -> dict:
    resp = await client.get("/api/v1/openapi.json")  # no token needed
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return await resp.json()


async def test_document_is_valid_openapi_31(client):
    document = await fetch(client)
    assert document["openapi"].startswith("3.1")
    broken = {**document, "paths": {"/x": {"get": {"responses": {"200": {}}}}}}  # no description
    try:
        validate(broken)
    except OpenAPIValidationError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the validator accepts anything; this test would prove nothing")
    try:
        validate(document)
    except OpenAPIValidationError as exc:  # pragma: no cover - the message is the point
        raise AssertionError(f"invalid OpenAPI: {exc}") from None


async def test_every_route_of_every_table_is_documented(client):
    document = await fetch(client)
    paths = document["paths"]
    specs = [spec for table in client.app[ROUTE_TABLES] for spec in table.specs]
    assert len(specs) > 10
    operation_ids = []
    for spec in specs:
        path = openapi_path(spec.path)
        assert path in paths, f"{spec.method} {spec.path} is missing"
        op = paths[path].get(spec.method.lower())
        assert op is not None, f"{spec.method} {spec.path} is missing"
        assert op["summary"] == spec.summary
        assert str(spec.status) in op["responses"]
        assert "default" in op["responses"]
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(path_params(spec.path))
        if spec.body is not None:
            assert "application/json" in op["requestBody"]["content"]
        if spec.auth == "none":
            assert op["security"] == []
        else:
            assert {"bearer": []} in op["security"]
        operation_ids.append(op["operationId"])
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"
    # and nothing is documented that is not served
    documented = {(m.upper(), p) for p, ops in paths.items() for m in ops}
    served = {(s.method, openapi_path(s.path)) for s in specs}
    assert documented == served


async def test_every_router_route_is_documented(client):
    document = await fetch(client)
    paths = document["paths"]
    missing = []
    for route in client.app.router.routes():
        if route.method in ("HEAD", "OPTIONS", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        raw = info.get("path") or info.get("formatter") or ""
        if raw.startswith(NOT_OPERATIONS):
            continue
        path = openapi_path(raw)
        if route.method.lower() not in paths.get(path, {}):
            missing.append(f"{route.method} {raw}")
    assert not missing, f"served but not in OpenAPI (register them through a Routes table): {missing}"


async def test_auth_contract_shapes(client):
    document = await fetch(client)
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    register = paths["/api/v1/auth/register"]["post"]
    assert register["security"] == []
    body_ref = register["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(schemas[body_ref]["required"]) == {"email", "password", "name"}
    answer_ref = register["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert {"user", "access_token", "refresh_token", "expires_in"} <= set(schemas[answer_ref]["properties"])
    assert paths["/api/v1/me"]["get"]["security"] == [{"bearer": []}]
    assert "204" in paths["/api/v1/auth/logout"]["post"]["responses"]
    problem = paths["/api/v1/me"]["get"]["responses"]["default"]["content"]
    assert "application/problem+json" in problem

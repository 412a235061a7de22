"""OpenAPI 3.1 generated from the route tables and their pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from mdsync import __version__
from mdsync.api.routing import RouteSpec, openapi_path, path_params

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    },
}


def build(specs: list[RouteSpec], *, server_url: str | None = None) -> dict[str, Any]:
    models: set[type[BaseModel]] = set()
    for spec in specs:
        models.update(m for m in (spec.body, spec.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, defs = models_json_schema(
        [(m, "validation" if any(s.body is m for s in specs) else "serialization") for m in ordered],
        ref_template="#/components/schemas/{model}",
    )
    schemas = dict(defs.get("$defs", {}))
    schemas["Problem"] = PROBLEM

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return refs[(model, mode)]

    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        op: dict[str, Any] = {
            "operationId": f"{spec.tag}_{spec.handler.__name__}",
            "summary": spec.summary,
            "tags": [spec.tag],
            "responses": {},
        }
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                  for n in path_params(spec.path)]
        if spec.query is not None:
            for name, field in spec.query.model_fields.items():
                params.append({"name": field.alias or name, "in": "query", "required": field.is_required(),
                               "schema": {"type": "string"},
                               **({"description": field.description} if field.description else {})})
        if params:
            op["parameters"] = params
        if spec.body is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": ref(spec.body, "validation")}}}
        elif spec.raw_body:
            op["requestBody"] = {"required": True, "content": {spec.raw_body: {"schema": {}}}}
        if spec.response is not None:
            content = {"application/json": {"schema": ref(spec.response, "serialization")}}
            op["responses"][str(spec.status)] = {"description": spec.summary, "content": content}
        elif spec.raw_response:
            op["responses"][str(spec.status)] = {"description": spec.summary,
                                                 "content": {spec.raw_response: {"schema": {}}}}
        else:
            op["responses"][str(spec.status)] = {"description": spec.summary}
        op["responses"]["default"] = {"description": "An error (RFC 9457 problem details)",
                                      "content": {"application/problem+json": {
                                          "schema": {"$ref": "#/components/schemas/Problem"}}}}
        if spec.auth == "user":
            op["security"] = [{"bearer": []}] + ([{"apiKeyHeader": []}] if spec.key_header else [])
        elif spec.auth == "optional":
            op["security"] = [{"bearer": []}, {}]
        else:
            op["security"] = []
        paths.setdefault(openapi_path(spec.path), {})[spec.method.lower()] = op

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "mdsync", "version": __version__,
                 "description": "The mdsync HTTP API. WebSockets: /ws/docs/{document_id} (y-websocket), /ws/hocuspocus (Hocuspocus provider)."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "access JWT or personal access token (mds_…)"},
                                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key",
                                                 "description": "the same token, where the Anthropic SDK sends its key"}},
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document

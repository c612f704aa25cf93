"""The OpenAPI document, generated from the mounted routes' msgspec types."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from runtime.api.types import NAMESPACE_HEADER, ErrorBody
from runtime.core.errors import error_classes
from runtime.plugins.api.api import Route

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"


def _media(schema: dict[str, Any], media_type: str = "application/json") -> dict[str, Any]:
    return {"content": {media_type: {"schema": schema}}}


def openapi_path(path: str) -> str:
    """``/v1/content/{digest:sha256:[0-9a-f]{64}}`` -> ``/v1/content/{digest}``."""
    out, depth, skipping = [], 0, False
    for char in path:
        if char == "{":
            depth += 1
            if depth > 1:
                continue
        elif char == "}":
            depth -= 1
            if depth > 0:
                continue
            skipping = False
        elif char == ":" and depth == 1:
            skipping = True
        if not skipping:
            out.append(char)
    return "".join(out)


def _operation_id(route: Route) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(route.path)).strip("_")
    return f"{route.method.lower()}_{words}"


def openapi_document(routes: list[Route], version: str) -> dict[str, Any]:
    """Describe every route: parameters, bodies, responses and the shared error shape."""
    types: list[Any] = [ErrorBody]
    for route in routes:
        types += [t for t in (route.body, route.response) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    error_codes = sorted({cls.http_status for cls in error_classes()})
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        params: list[dict[str, Any]] = [
            {
                "name": NAMESPACE_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "default": "default"},
            }
        ]
        for segment in openapi_path(route.path).split("/"):
            if segment.startswith("{") and segment.endswith("}"):
                name = segment[1:-1].split(":")[0]
                params.append(
                    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                )
        for q in route.query:
            schema: dict[str, Any] = {"type": "string"}
            if q.repeated:
                schema = {"type": "array", "items": {"type": "string"}}
            params.append(
                {
                    "name": q.name,
                    "in": "query",
                    "required": q.required,
                    "description": q.description,
                    "schema": schema,
                    **({"style": "form", "explode": True} if q.repeated else {}),
                }
            )
        responses: dict[str, Any] = {}
        if route.stream:
            responses[str(route.status)] = {
                "description": f"streamed {route.stream}",
                **_media({"type": "string"}, route.stream),
            }
        elif route.response is None:
            responses["204"] = {"description": "done"}
        else:
            responses[str(route.status)] = {
                "description": "success",
                **_media(by_type[route.response]),
            }
        for status in error_codes:
            responses.setdefault(
                str(status), {"description": "error", **_media(by_type[ErrorBody])}
            )
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": _operation_id(route),
            "parameters": params,
            "responses": responses,
        }
        if route.body is not None:
            op["requestBody"] = {"required": True, **_media(by_type[route.body])}
        path = openapi_path(route.path)
        paths.setdefault(path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Moorage admin API", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }

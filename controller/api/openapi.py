"""The OpenAPI schema of one app, with what only the deployment knows, and every error body.

Why: an override's TTL must last one control interval at least and `api.max_override_ttl_s`
at most (s), and the ``{ns}/{vs}/{route}`` of a control only makes sense for a managed route;
all of that comes from the running controller, not from the request models. Written into the
schema, the TTL bounds and a managed route as the path parameters' example show in ``/docs``
("Try it out" starts from a real route), and schema-driven clients and tests generate
requests the API can accept instead of learning the bounds from 422s and 404s.

Every error answer of the app has one of two bodies, whatever the route (the exception
handlers in `controller.api.errors` are app-wide): `ValidationErrorBody` for a 422,
`ErrorBody` otherwise. An error response a route declares without a body gets the right one
here, so no route (a router added later included) can leave a client guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from pydantic.json_schema import models_json_schema

from controller.api.schemas import ErrorBody, ValidationErrorBody
from meshcore import RouteRef

_REF = "#/components/schemas/{model}"

__all__ = ["install_openapi"]


def install_openapi(
    app: FastAPI, *, min_ttl_s: float, max_ttl_s: float, routes: Sequence[RouteRef] = ()
) -> None:
    """Make ``app.openapi()`` state ``min_ttl_s <= ttl_s <= max_ttl_s`` (s) for overrides and
    give the route path parameters the first of `routes` as their example."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)  # builds and caches the plain schema
            _bound_ttl(schema, min_ttl_s, max_ttl_s)
            _error_bodies(schema)
            if routes:
                _route_examples(schema, routes[0])
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]


def _bound_ttl(schema: dict[str, Any], min_ttl_s: float, max_ttl_s: float) -> None:
    models = schema.get("components", {}).get("schemas", {})
    ttl = models.get("OverrideRequest", {}).get("properties", {}).get("ttl_s")
    if ttl is not None:
        ttl.pop("exclusiveMinimum", None)
        ttl["minimum"] = min_ttl_s
        ttl["maximum"] = max_ttl_s


def _route_examples(schema: dict[str, Any], route: RouteRef) -> None:
    values = {"ns": route.namespace, "vs": route.virtual_service, "route": str(route.route)}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", ()):
                if param.get("in") == "path" and param.get("name") in values:
                    param["example"] = values[param["name"]]


def _error_bodies(schema: dict[str, Any]) -> None:
    """Give every 4xx/5xx response declared without content the app's error body."""
    _, defs = models_json_schema(
        [(ErrorBody, "serialization"), (ValidationErrorBody, "serialization")], ref_template=_REF
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name, model in defs.get("$defs", {}).items():
        components.setdefault(name, model)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if code[:1] not in ("4", "5") or "content" in response:
                    continue
                model = ValidationErrorBody if code == "422" else ErrorBody
                ref = _REF.format(model=model.__name__)
                response["content"] = {"application/json": {"schema": {"$ref": ref}}}

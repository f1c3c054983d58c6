"""API error helpers: one 422 shape for every invalid request, one 503 for a busy store.

Checks that need the route or the settings (unknown subsets, TTL bound) cannot live in the
request model, but clients should not have to parse two error formats: they raise the same
``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` body FastAPI uses for schema errors.
That body never echoes the input back: a hostile body (12 MB, or ``NaN``, which JSON cannot
carry back) would otherwise be copied into the answer or turn the 422 into a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from fastapi import Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from controller.api.limits import MAX_BODY_BYTES
from controller.api.schemas import ErrorBody, ValidationErrorBody
from meshcore import TemporaryError

_MEANING = {
    400: "the body could not be parsed (not UTF-8, or JSON nested too deep)",
    401: "no or a wrong bearer token: controls need 'Authorization: Bearer <token>'",
    403: "the caller may not act on this route (api.auth kubernetes: no RBAC permission to "
    "patch managedroutes.meshpilot.io in its namespace); nothing changed",
    404: "not found",
    409: "conflict",
    413: f"the request body is larger than {MAX_BODY_BYTES} bytes (refused before parsing)",
    422: "invalid request: where and what of every problem, never the input",
    503: "the decision store is busy (e.g. locked): retrying later works",
}
"""The generic meaning of each error status the API answers; routes may word it better."""

_AUTH_HEADER = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}


def error_responses(
    *codes: int, why: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route or router for these error statuses: each with its body
    model (`ValidationErrorBody` for 422, `ErrorBody` otherwise), so clients and schema-driven
    tests know every answer an operation can give; `why` words a status for that route."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model: type[BaseModel] = ValidationErrorBody if code == 422 else ErrorBody
        entry: dict[str, Any] = {
            "model": model,
            "description": (why or {}).get(code, _MEANING[code]),
        }
        if code == 401:
            entry["headers"] = _AUTH_HEADER
        out[code] = entry
    return out


def unprocessable(loc: tuple[str | int, ...], msg: str, value: Any = None) -> NoReturn:
    """Answer 422 with `msg` about the request field at `loc` (e.g. ``("body", "ttl_s")``)."""
    raise RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error", "input": value}])


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 with where and what of each problem (``loc``, ``msg``, ``type``), never the input."""
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type"))}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": detail})


async def temporary_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A `TemporaryError` (the store is locked, ...) is a 503: retrying later will work."""
    assert isinstance(exc, TemporaryError)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": str(exc)}
    )


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTP error, except that a 405's ``Allow`` lists the methods of
    every route of the path: Starlette names only the first route's (``POST`` for
    ``.../override``, forgetting ``DELETE``), and clients rely on it to find what is allowed."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        return await http_exception_handler(request, exc)
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
    return JSONResponse(
        status_code=exc.status_code,
        content={"detail": exc.detail},
        headers={"Allow": ", ".join(allowed)},
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
"""The methods a 405's ``Allow`` may name (the API uses GET, HEAD, POST and DELETE)."""

"""API error helpers: one 422 shape for every invalid request, one 503 for a busy store.

Checks that need the route or the settings (unknown subsets, TTL bound) cannot live in the
request model, but clients should not have to parse two error formats: they raise the same
``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` body FastAPI uses for schema errors.
"""

from __future__ import annotations

from typing import Any, NoReturn

from fastapi import Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from meshcore import TemporaryError


def unprocessable(loc: tuple[str | int, ...], msg: str, value: Any = None) -> NoReturn:
    """Answer 422 with `msg` about the request field at `loc` (e.g. ``("body", "ttl_s")``)."""
    raise RequestValidationError([{"loc": loc, "msg": msg, "type": "value_error", "input": value}])


async def temporary_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A `TemporaryError` (the store is locked, ...) is a 503: retrying later will work."""
    assert isinstance(exc, TemporaryError)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE, content={"detail": str(exc)}
    )

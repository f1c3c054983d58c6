"""API error helpers: one 422 shape for every invalid request, one 503 for a busy store.

Checks that need the route or the settings (unknown subsets, TTL bound) cannot live in the
request model, but clients should not have to parse two error formats: they raise the same
``{"detail": [{"loc": [...], "msg": ..., "type": ...}]}`` body FastAPI uses for schema errors.
That body never echoes the input back: a hostile body (12 MB, or ``NaN``, which JSON cannot
carry back) would otherwise be copied into the answer or turn the 422 into a 500.
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

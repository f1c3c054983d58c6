"""Who may change traffic: every control of the API needs the operator's bearer token.

Why: an override can send all of a route's traffic to one version, and a pause switches the
controller off; reachable by anyone who can open a connection, either is an outage waiting
for a typo. Reads (routes, decisions, health, metrics) stay open so probes and dashboards
work without a secret.

The token lives in a file (``api.token_file``), so a Kubernetes Secret can be mounted there;
when the file does not exist `ensure_token_file` creates it with a random token, readable by
its owner only. Comparison is constant-time. A missing or wrong token is a 401 with
``WWW-Authenticate: Bearer``, before any other check: `OperatorRoute` checks it before FastAPI
reads the body, so an anonymous client learns nothing from 400s or 422s about what a body
should look like (the 413 of an oversized body still comes first: it is refused unread).
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response, status
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from meshcore import ConfigError

__all__ = [
    "MIN_TOKEN_CHARS",
    "OperatorRoute",
    "ensure_token_file",
    "read_token",
    "require_operator",
]

MIN_TOKEN_CHARS = 16
"""A shorter token is refused at start: it could be guessed."""

_bearer = HTTPBearer(auto_error=False, description="the token in the file api.token_file names")


def read_token(path: str | Path) -> str:
    """The token in `path` (surrounding whitespace ignored); ConfigError if unusable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"api.token_file {path}: cannot read it: {err}") from err
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ConfigError(
            f"api.token_file {path}: the token must be one word of at least "
            f"{MIN_TOKEN_CHARS} characters"
        )
    return token


def ensure_token_file(path: str | Path) -> tuple[str, bool]:
    """(token, created): the token in `path`, or a new random one written there (mode 0600)."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(target), False
    except OSError as err:
        raise ConfigError(f"api.token_file {target}: cannot create it: {err}") from err
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token, True


def require_operator(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries the operator's bearer token (as a dependency, it also
    declares the bearer scheme on the operation in the OpenAPI schema)."""
    _check(request, credentials.credentials if credentials is not None else "")


def _given_token(request: Request) -> str:
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    return token if scheme.lower() == "bearer" else ""


def _check(request: Request, given: str) -> None:
    expected: str = request.app.state.api_token
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="controls need 'Authorization: Bearer <token>', the token in api.token_file",
            headers={"WWW-Authenticate": "Bearer"},
        )


class OperatorRoute(APIRoute):
    """A route that answers 401 without the operator's token before FastAPI reads the body.

    FastAPI parses the body before it runs any dependency, so `require_operator` alone lets a
    malformed body (400) or an invalid one (422) answer an anonymous client first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            _check(request, _given_token(request))
            return await handler(request)

        return checked

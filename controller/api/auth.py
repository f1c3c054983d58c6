"""Who may change traffic: every control of the API needs a bearer token, and a permission.

Why: an override can send all of a route's traffic to one version, and a pause switches the
controller off; reachable by anyone who can open a connection, either is an outage waiting
for a typo. Reads (routes, decisions, health, metrics) stay open so probes and dashboards
work without a secret.

The app's `controller.access.Authenticator` checks the bearer. `StaticTokenAuth`
(``api.auth: token``): one token in a file (``api.token_file``, a mounted Secret in a
cluster); when the file does not exist `ensure_token_file` creates it with a random token,
readable by its owner only; comparison is constant-time and the caller is recorded as
``token``. With ``api.auth: kubernetes`` the cluster says who the bearer is and whether they
may act in the route's namespace (`controller.adapters.kube.access`).

A missing or wrong token is a 401 with ``WWW-Authenticate: Bearer``, a caller without the
permission a 403, and a check that cannot be made a 503 — before any other check:
`OperatorRoute` checks before FastAPI reads the body, so an anonymous client learns nothing
from 400s or 422s about what a body should look like (the 413 of an oversized body still
comes first: it is refused unread). The caller is kept on ``request.state.caller`` for the
audit log (`CallerDep`).
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
from starlette.concurrency import run_in_threadpool

from controller.access import STATIC_CALLER, Authenticator, Caller
from meshcore import ConfigError, MeshpilotError

__all__ = [
    "MIN_TOKEN_CHARS",
    "CallerDep",
    "OperatorRoute",
    "StaticTokenAuth",
    "ensure_token_file",
    "read_token",
    "require_operator",
]

MIN_TOKEN_CHARS = 16
"""A shorter token is refused at start: it could be guessed."""

_bearer = HTTPBearer(
    auto_error=False,
    description="api.auth token: the token in the file api.token_file names; api.auth "
    "kubernetes: a Kubernetes token of a user allowed to patch managedroutes.meshpilot.io in "
    "the route's namespace",
)


class StaticTokenAuth:
    """One shared token (`controller.access.Authenticator`); every holder may act anywhere,
    and is recorded as ``token``."""

    mode = "token"

    def __init__(self, token: str) -> None:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(f"api_token must have at least {MIN_TOKEN_CHARS} characters")
        self._token = token.encode()

    def authenticate(self, token: str) -> Caller | None:
        ok = hmac.compare_digest(token.encode(), self._token)
        return Caller(STATIC_CALLER) if ok else None

    def authorize(self, caller: Caller, namespace: str) -> str | None:
        return None


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
) -> Caller:
    """The checked caller: 401/403/503 unless the bearer may act on the route (as a
    dependency, it also declares the bearer scheme on the operation in the OpenAPI schema)."""
    caller = getattr(request.state, "caller", None)
    if isinstance(caller, Caller):  # `OperatorRoute` checked it already
        return caller
    return _check(request, credentials.credentials if credentials is not None else "")


CallerDep = Annotated[Caller, Depends(require_operator)]
"""Who sent the control, for the audit log."""


def _given_token(request: Request) -> str:
    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    return token if scheme.lower() == "bearer" else ""


_UNAUTHENTICATED = {
    "token": "controls need 'Authorization: Bearer <token>', the token in api.token_file",
    "kubernetes": "controls need 'Authorization: Bearer <token>' with a Kubernetes token "
    "(e.g. kubectl create token NAME) of a user allowed to patch managedroutes.meshpilot.io",
}


def _check(request: Request, given: str) -> Caller:
    """Authenticate and authorize the bearer of `request` (blocking: may ask the cluster)."""
    auth: Authenticator = request.app.state.auth
    try:
        caller = auth.authenticate(given) if given else None
        if caller is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=_UNAUTHENTICATED.get(auth.mode, _UNAUTHENTICATED["token"]),
                headers={"WWW-Authenticate": "Bearer"},
            )
        why_not = auth.authorize(caller, str(request.path_params.get("ns", "")))
    except MeshpilotError as err:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"cannot check the caller, so the control is refused: {err}",
        ) from err
    if why_not is not None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=why_not)
    request.state.caller = caller
    return caller


class OperatorRoute(APIRoute):
    """A route that answers 401/403 to a caller who may not act before FastAPI reads the body.

    FastAPI parses the body before it runs any dependency, so `require_operator` alone lets a
    malformed body (400) or an invalid one (422) answer an anonymous client first.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            await run_in_threadpool(_check, request, _given_token(request))
            return await handler(request)

        return checked

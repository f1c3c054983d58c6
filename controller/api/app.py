"""`create_app`: the HTTP API of one controller, built around its parts (no module state).

Routers per resource (routes, decisions, overrides, health, metrics) are combined here; the
controller's parts live on ``app.state`` and reach handlers through `controller.api.deps`, so
several apps (tests) can live in one process. OpenAPI docs stay on at ``/docs`` and
``/redoc``, with their assets served by the app itself (`controller.api.docs`).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.access import Authenticator
from controller.api import decisions, docs, health, metrics, overrides, routes
from controller.api.auth import StaticTokenAuth
from controller.api.dashboard.router import router as dashboard_router
from controller.api.errors import (
    error_responses,
    http_error_handler,
    temporary_error_handler,
    validation_error_handler,
)
from controller.api.limits import BodySizeLimit
from controller.api.openapi import install_openapi
from controller.guard import Guard
from controller.loop import ControlLoop
from controller.operators import Operators
from controller.settings import Settings
from controller.store import DecisionStore
from meshcore import TemporaryError

DESCRIPTION = (
    "meshpilot sets Istio route weights with a learned, guarded policy. This API shows the "
    "managed routes and every decision, and lets operators pin, pause or shadow a route "
    "(with the operator's bearer token). Weights are integer points summing to 100; times "
    "are seconds on the controller's clock."
)


def create_app(
    *,
    settings: Settings,
    loop: ControlLoop,
    store: DecisionStore,
    guard: Guard,
    api_token: str | None = None,
    auth: Authenticator | None = None,
    operators: Operators | None = None,
) -> FastAPI:
    """The API over `loop` (status, clock, metrics), `store` (audit log) and `guard` (controls);
    controls need a bearer that `auth` accepts, by default `api_token` (`controller.api.auth`),
    and act through `operators` (default: recorded in `store`, on the loop's clock)."""
    if auth is None:
        if api_token is None:
            raise ValueError("create_app needs api_token or auth")
        auth = StaticTokenAuth(api_token)
    if operators is None:
        operators = Operators(
            guard,
            store,
            now=loop.now,
            writer_id=loop.writer_id,
            phase_of=lambda route: loop.route_status(route).phase,
            rate=overrides.clock_rate(settings),
        )
    app = FastAPI(
        title="meshpilot",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,  # served by controller.api.docs, without a CDN
        redoc_url=None,
        responses=error_responses(413),  # BodySizeLimit answers it before any route
    )
    app.state.auth = auth
    app.state.operators = operators
    app.state.settings = settings
    app.state.loop = loop
    app.state.store = store
    app.state.guard = guard
    for module in (routes, overrides, decisions, health, metrics, docs):
        app.include_router(module.router)
    app.include_router(dashboard_router)  # the operator page at /
    install_openapi(
        app,
        min_ttl_s=overrides.min_ttl_s(loop, settings),
        max_ttl_s=settings.api.max_override_ttl_s,
        routes=loop.routes,
    )
    app.add_exception_handler(TemporaryError, temporary_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_middleware(BodySizeLimit)
    return app

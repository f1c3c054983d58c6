"""`create_app`: the HTTP API of one controller, built around its parts (no module state).

Routers per resource (routes, decisions, overrides, health, metrics) are combined here; the
controller's parts live on ``app.state`` and reach handlers through `controller.api.deps`, so
several apps (tests) can live in one process. OpenAPI docs stay on at ``/docs``.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from controller.api import decisions, health, metrics, overrides, routes
from controller.api.auth import MIN_TOKEN_CHARS
from controller.api.errors import temporary_error_handler, validation_error_handler
from controller.api.limits import BodySizeLimit
from controller.guard import Guard
from controller.loop import ControlLoop
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
    *, settings: Settings, loop: ControlLoop, store: DecisionStore, guard: Guard, api_token: str
) -> FastAPI:
    """The API over `loop` (status, clock, metrics), `store` (audit log) and `guard` (controls);
    controls need `api_token` as a bearer token (`controller.api.auth`)."""
    if len(api_token) < MIN_TOKEN_CHARS:
        raise ValueError(f"api_token must have at least {MIN_TOKEN_CHARS} characters")
    app = FastAPI(title="meshpilot", version="0.1.0", description=DESCRIPTION)
    app.state.api_token = api_token
    app.state.settings = settings
    app.state.loop = loop
    app.state.store = store
    app.state.guard = guard
    for module in (routes, overrides, decisions, health, metrics):
        app.include_router(module.router)
    app.add_exception_handler(TemporaryError, temporary_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_middleware(BodySizeLimit)
    return app

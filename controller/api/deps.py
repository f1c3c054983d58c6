"""Dependencies of the API handlers, as ``Annotated[..., Depends()]`` aliases.

Handlers never reach for module globals: `create_app` puts the controller's parts on
``app.state`` and these functions hand them out, so a test swaps any of them with
``app.dependency_overrides[get_store] = ...`` instead of patching modules.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from controller.guard import Guard
from controller.loop import ControlLoop
from controller.metrics import ControllerMetrics
from controller.operators import Operators
from controller.settings import Settings
from controller.store import DecisionStore
from meshcore import RouteRef


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_loop(request: Request) -> ControlLoop:
    loop: ControlLoop = request.app.state.loop
    return loop


def get_store(request: Request) -> DecisionStore:
    store: DecisionStore = request.app.state.store
    return store


def get_guard(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


def get_operators(request: Request) -> Operators:
    operators: Operators = request.app.state.operators
    return operators


SettingsDep = Annotated[Settings, Depends(get_settings)]
LoopDep = Annotated[ControlLoop, Depends(get_loop)]
StoreDep = Annotated[DecisionStore, Depends(get_store)]
GuardDep = Annotated[Guard, Depends(get_guard)]
OperatorsDep = Annotated[Operators, Depends(get_operators)]


def get_metrics(loop: LoopDep) -> ControllerMetrics:
    return loop.metrics


MetricsDep = Annotated[ControllerMetrics, Depends(get_metrics)]


def get_route(ns: str, vs: str, route: str, loop: LoopDep) -> RouteRef:
    """The managed route named by the path ``/routes/{ns}/{vs}/{route}``; 404 otherwise."""
    key = f"{ns}/{vs}/{route}"
    found = loop.find(key)
    if found is None:
        managed = ", ".join(r.key for r in loop.routes)
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, detail=f"route {key} is not managed (managed: {managed})"
        )
    return found


RouteDep = Annotated[RouteRef, Depends(get_route)]

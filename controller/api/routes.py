"""``GET /routes``: what meshpilot manages and where each route stands right now."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import GuardDep, LoopDep, RouteDep, StoreDep
from controller.api.errors import error_responses
from controller.api.schemas import RouteView

router = APIRouter(tags=["routes"])


@router.get(
    "/routes",
    summary="Managed routes with phase, weights and last decision",
    responses=error_responses(503),
)
def list_routes(loop: LoopDep, guard: GuardDep, store: StoreDep) -> list[RouteView]:
    return [RouteView.build(r, loop=loop, guard=guard, store=store) for r in loop.routes]


@router.get(
    "/routes/{ns}/{vs}/{route}",
    summary="One managed route",
    responses=error_responses(404, 422, 503, why={404: "the route is not managed"}),
)
def get_route(route: RouteDep, loop: LoopDep, guard: GuardDep, store: StoreDep) -> RouteView:
    return RouteView.build(route, loop=loop, guard=guard, store=store)

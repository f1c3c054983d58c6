"""Operator controls of one route: pin weights for a while, pause, resume, shadow.

Pins go through the guard, so they obey its precedence (a paused route is not written even
when pinned) and expire on the loop's clock; the next tick writes a new pin at once.

Every control needs the operator's bearer token (`controller.api.auth`), checked first.
Controls live in the memory of the replica that received them, and only the leader writes:
a follower refuses them with a 409 naming the leader, instead of accepting a pin that would
never be applied. They do not survive a restart or a change of leader.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, status

from controller.api.auth import require_operator
from controller.api.deps import GuardDep, LoopDep, RouteDep, SettingsDep, StoreDep
from controller.api.errors import unprocessable
from controller.api.schemas import OverrideRequest, RouteView, ShadowRequest
from controller.loop import ControlLoop
from controller.settings import Settings
from meshcore import RouteRef, Weights


def require_leader(loop: LoopDep) -> None:
    """409 on a follower: its controls would sit in a replica that never writes."""
    if loop.is_leader():
        return
    holder = getattr(loop.leader, "holder", None)
    leader = f"the leader is {holder}" if holder else "no leader is known yet"
    raise HTTPException(
        status.HTTP_409_CONFLICT,
        detail=f"this replica ({loop.writer_id}) is a follower and never writes, so it takes no "
        f"controls; {leader}: send the request to that pod (e.g. kubectl port-forward)",
    )


router = APIRouter(
    prefix="/routes/{ns}/{vs}/{route}",
    tags=["overrides"],
    dependencies=[Depends(require_operator), Depends(require_leader)],
    responses={
        401: {"description": "no or a wrong bearer token"},
        404: {"description": "the route is not managed"},
        409: {
            "description": "this replica is a follower, or the route's subsets are not known yet"
        },
        413: {"description": "the request body is larger than the API accepts"},
    },
)


def _subsets(route: RouteRef, loop: ControlLoop, settings: Settings) -> tuple[str, ...]:
    weights = loop.route_status(route).weights
    if weights is not None:
        return weights.subsets
    for configured in settings.routes:
        if configured.ref().key == route.key and configured.subsets:
            return tuple(configured.subsets)
    raise HTTPException(
        status.HTTP_409_CONFLICT,
        detail=f"the subsets of {route.key} are not known yet (no tick has read the route); "
        "retry after the next tick",
    )


def _brief(names: list[str], most: int = 5, chars: int = 40) -> str:
    """At most `most` names of at most `chars` characters each: an error names the problem
    without copying a hostile body back."""
    shown = [n if len(n) <= chars else n[:chars] + "..." for n in names[:most]]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{shown}{more}"


@router.post("/override", summary="Pin weights until ttl_s from now")
def override(
    body: OverrideRequest,
    route: RouteDep,
    loop: LoopDep,
    guard: GuardDep,
    store: StoreDep,
    settings: SettingsDep,
) -> RouteView:
    max_ttl_s = settings.api.max_override_ttl_s
    if body.ttl_s > max_ttl_s:
        unprocessable(
            ("body", "ttl_s"),
            f"ttl_s must be at most {max_ttl_s:g} s (api.max_override_ttl_s), got {body.ttl_s:g}",
            body.ttl_s,
        )
    subsets = _subsets(route, loop, settings)
    unknown = sorted(set(body.weights) - set(subsets))
    if unknown:
        unprocessable(
            ("body", "weights"),
            f"unknown subsets {_brief(unknown)} for route {route.key}; its subsets are "
            f"{list(subsets)}",
            body.weights,
        )
    weights = Weights(subsets, [body.weights.get(s, 0) for s in subsets])
    guard.pin(route, weights, loop.now() + body.ttl_s)
    return RouteView.build(route, loop=loop, guard=guard, store=store)


@router.delete("/override", summary="Drop the pin; the policy resumes, step-limited")
def clear_override(route: RouteDep, loop: LoopDep, guard: GuardDep, store: StoreDep) -> RouteView:
    guard.unpin(route)
    return RouteView.build(route, loop=loop, guard=guard, store=store)


@router.post("/pause", summary="Stop writing this route (pins included) until resumed")
def pause(route: RouteDep, loop: LoopDep, guard: GuardDep, store: StoreDep) -> RouteView:
    guard.pause(route)
    return RouteView.build(route, loop=loop, guard=guard, store=store)


@router.post("/resume", summary="Resume writing this route")
def resume(route: RouteDep, loop: LoopDep, guard: GuardDep, store: StoreDep) -> RouteView:
    guard.resume(route)
    return RouteView.build(route, loop=loop, guard=guard, store=store)


@router.post("/shadow", summary="Put the route in shadow (decide, record, never write) or not")
def shadow(
    body: ShadowRequest, route: RouteDep, loop: LoopDep, guard: GuardDep, store: StoreDep
) -> RouteView:
    guard.set_shadow(route, body.enabled)
    return RouteView.build(route, loop=loop, guard=guard, store=store)

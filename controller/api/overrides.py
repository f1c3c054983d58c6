"""Operator controls of one route: pin weights for a while, pause, resume, shadow.

Pins go through the guard, so they obey its precedence (a paused route is not written even
when pinned) and expire on the loop's clock; the next tick writes a new pin at once. A pin
names every subset of the route (or says ``others_zero``), lasts at least one control
interval (a shorter one could expire before any tick writes it), and the answer says when
the next tick comes and what it will do with the pin (`PinPlan`).

Every control needs a bearer allowed to act on the route (`controller.api.auth`), checked
first; it goes through `controller.operators.Operators`, which records the caller, the
optional ``reason`` and the controls before and after in the audit log, and keeps the
controls in the store so a restart with the same store file restores them. Only the leader
writes: a follower refuses controls with a 409 naming the leader, instead of accepting a pin
that would never be applied. A route named by a ManagedRoute keeps its controls in that
resource's ``spec.controls`` too (written first; a 503 when the API server refuses it and
nothing changed), so every replica and a new leader see them; the controls of a route from the
settings live in this replica's store only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.exceptions import RequestValidationError

from controller.access import Caller
from controller.api.auth import CallerDep, OperatorRoute, require_operator
from controller.api.deps import GuardDep, LoopDep, OperatorsDep, RouteDep, SettingsDep, StoreDep
from controller.api.errors import error_responses
from controller.api.schemas import (
    ControlRequest,
    OverrideRequest,
    OverrideView,
    PinPlan,
    RouteView,
    ShadowRequest,
)
from controller.guard import Guard
from controller.loop import ControlLoop
from controller.operators import Operators
from controller.settings import Settings
from controller.store import DecisionStore
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


@dataclass(frozen=True)
class RouteControl:
    """What every control of one route needs: the route, the parts that act on it and record
    it, and the caller the audit log names."""

    route: RouteRef
    loop: ControlLoop
    guard: Guard
    store: DecisionStore
    operators: Operators
    caller: Caller

    def view(self) -> RouteView:
        """The route as `GET /routes/...` shows it, after the control."""
        return RouteView.build(self.route, loop=self.loop, guard=self.guard, store=self.store)


def get_route_control(
    route: RouteDep,
    loop: LoopDep,
    guard: GuardDep,
    store: StoreDep,
    operators: OperatorsDep,
    caller: CallerDep,
) -> RouteControl:
    return RouteControl(route, loop, guard, store, operators, caller)


RouteControlDep = Annotated[RouteControl, Depends(get_route_control)]


def _reason(body: ControlRequest | None) -> str | None:
    return body.reason if body is not None else None


router = APIRouter(
    prefix="/routes/{ns}/{vs}/{route}",
    tags=["overrides"],
    route_class=OperatorRoute,
    dependencies=[Depends(require_operator), Depends(require_leader)],
    responses=error_responses(
        401,
        403,
        404,
        409,
        422,
        503,
        why={
            404: "the route is not managed",
            409: "this replica is a follower, or the route's subsets are not known yet",
            503: "the decision store is busy, the caller could not be checked, or the route's "
            "ManagedRoute could not be patched (the Kubernetes API unreachable or refusing): "
            "nothing changed, retrying later works",
        },
    ),
)
_BODY_ERRORS = error_responses(400)
"""Only the controls with a body can meet an unparseable one."""


def _subsets(route: RouteRef, loop: ControlLoop, settings: Settings) -> tuple[str, ...]:
    state = loop.route_status(route)
    if state.weights is not None:
        return state.weights.subsets
    if state.invalid_weights is not None:  # a pin repairs those
        return tuple(state.invalid_weights)
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


def _problem(field: str, msg: str) -> dict[str, object]:
    return {"loc": ("body", field), "msg": msg, "type": "value_error", "input": None}


def clock_rate(settings: Settings) -> float:
    """Loop-clock seconds per wall second: with ``mesh: sim`` the loop's clock is simulated
    time, `sim.speed` times faster; else 1."""
    return settings.sim.speed if settings.mesh == "sim" else 1.0


def min_ttl_s(loop: ControlLoop, settings: Settings) -> float:
    """The shortest pin (s, on the loop's clock): one control interval (`tick_s`, wall s)."""
    return loop.tick_s * clock_rate(settings)


def _ttl_problems(ttl_s: float, loop: ControlLoop, settings: Settings) -> list[dict[str, object]]:
    """TTL bounds that need the deployment: one control interval at least (s), so the pin
    outlives the next tick that writes it, and `api.max_override_ttl_s` at most (s)."""
    shortest = min_ttl_s(loop, settings)
    longest = settings.api.max_override_ttl_s
    if ttl_s < shortest:
        interval = "tick_s"
        if shortest != loop.tick_s:
            interval = f"tick_s {loop.tick_s:g} s at sim.speed {settings.sim.speed:g}"
        return [
            _problem(
                "ttl_s",
                f"ttl_s must be at least {shortest:g} s, one control interval ({interval}): a "
                f"shorter pin could expire before a tick writes it; got {ttl_s:g}",
            )
        ]
    if ttl_s > longest:
        return [
            _problem(
                "ttl_s",
                f"ttl_s must be at most {longest:g} s (api.max_override_ttl_s), got {ttl_s:g}",
            )
        ]
    return []


def _weight_problems(
    body: OverrideRequest, route: RouteRef, subsets: tuple[str, ...]
) -> list[dict[str, object]]:
    """Names in `body.weights` that the route lacks, and (without ``others_zero``) subsets
    of the route that the body does not name."""
    unknown = sorted(set(body.weights) - set(subsets))
    if unknown:
        return [
            _problem(
                "weights",
                f"unknown subsets {_brief(unknown)} for route {route.key}; its subsets are "
                f"{list(subsets)}",
            )
        ]
    missing = [s for s in subsets if s not in body.weights]
    if missing and not body.others_zero:
        return [
            _problem(
                "weights",
                f"weights must name every subset of route {route.key}; missing {missing}: "
                "give them their points (0 included) or set others_zero: true",
            )
        ]
    return []


def next_tick(loop: ControlLoop) -> tuple[datetime | None, float | None]:
    """(UTC wall time, seconds from now) of the loop's next tick: the scheduler's next run
    when started, else one interval after the last tick (hand-driven loops, tests)."""
    now = datetime.now(UTC)
    job = loop.job
    at: datetime | None = getattr(job, "next_run_time", None) if job is not None else None
    if at is not None:
        return at, max(0.0, (at - now).total_seconds())
    age_s = loop.last_tick_age_s()
    if age_s is None:
        return None, None
    wait_s = max(0.0, loop.tick_s - age_s)
    return now + timedelta(seconds=wait_s), wait_s


def _plan(
    route: RouteRef, weights: Weights, until_s: float, loop: ControlLoop, guard: Guard
) -> PinPlan:
    """What the next tick does with a pin, by the guard's precedence (paused, then shadow,
    then the pin) and the route's state."""
    state = loop.route_status(route)
    controls = guard.controls(route)
    at, in_s = next_tick(loop)
    when = f"at the next tick, in {in_s:.1f} s" if in_s is not None else "at the next tick"
    repairs = state.invalid_weights is not None and not (
        controls.paused or controls.shadow or loop.mode == "shadow"
    )
    if state.failed is not None and repairs:
        phase, writes = "overridden", True
        detail = (
            f"the route holds {dict(state.invalid_weights or {})}, not a valid split: the pin "
            f"is written over it {when}"
        )
    elif state.failed is not None:
        phase, writes, at, in_s = "failed", False, None, None
        detail = (
            f"the route failed ({state.failed}); the pin is written if the route recovers "
            "before the pin expires"
        )
    elif controls.paused:
        phase, writes = "paused", False
        detail = "the route is paused: the pin is kept but not written until resumed"
    elif controls.shadow or loop.mode == "shadow":
        phase, writes = "shadow", False
        detail = (
            "the route is in shadow: the pin is recorded as what would be written, never written"
        )
    elif state.weights is not None and state.weights.as_dict() == weights.as_dict():
        phase, writes = "overridden", False
        detail = "the pinned weights are already in place: nothing to write"
    else:
        phase, writes = "overridden", True
        detail = f"written whole {when}, without step limit"
    return PinPlan(
        weights=weights.as_dict(),
        until_s=until_s,
        applies_at=at,
        applies_in_s=in_s,
        phase=phase,
        writes=writes,
        detail=detail,
    )


@router.post(
    "/override",
    summary="Pin weights until ttl_s from now; the answer says when and how it applies",
    responses=_BODY_ERRORS,
)
def override(body: OverrideRequest, ctl: RouteControlDep, settings: SettingsDep) -> OverrideView:
    route, loop, guard = ctl.route, ctl.loop, ctl.guard
    problems = _ttl_problems(body.ttl_s, loop, settings)
    try:
        subsets = _subsets(route, loop, settings)
    except HTTPException:
        if problems:  # what can be told now is told, rather than a 409 then a 422
            raise RequestValidationError(problems) from None
        raise
    problems += _weight_problems(body, route, subsets)
    if problems:
        raise RequestValidationError(problems)
    weights = Weights(subsets, [body.weights.get(s, 0) for s in subsets])
    until_s = ctl.operators.pin(
        route,
        weights,
        body.ttl_s,
        caller=ctl.caller,
        reason=body.reason,
        others_zero=body.others_zero,
    )
    plan = _plan(route, weights, until_s, loop, guard)
    return OverrideView(**ctl.view().model_dump(), pin_plan=plan)


@router.delete(
    "/override",
    summary="Drop the pin; the policy resumes, step-limited",
    responses=_BODY_ERRORS,
)
def clear_override(ctl: RouteControlDep, body: ControlRequest | None = None) -> RouteView:
    ctl.operators.release(ctl.route, caller=ctl.caller, reason=_reason(body))
    return ctl.view()


@router.post(
    "/pause",
    summary="Stop writing this route (pins included) until resumed",
    responses=_BODY_ERRORS,
)
def pause(ctl: RouteControlDep, body: ControlRequest | None = None) -> RouteView:
    ctl.operators.pause(ctl.route, caller=ctl.caller, reason=_reason(body))
    return ctl.view()


@router.post("/resume", summary="Resume writing this route", responses=_BODY_ERRORS)
def resume(ctl: RouteControlDep, body: ControlRequest | None = None) -> RouteView:
    ctl.operators.resume(ctl.route, caller=ctl.caller, reason=_reason(body))
    return ctl.view()


@router.post(
    "/shadow",
    summary="Put the route in shadow (decide, record, never write) or not",
    responses=_BODY_ERRORS,
)
def shadow(body: ShadowRequest, ctl: RouteControlDep) -> RouteView:
    ctl.operators.shadow(ctl.route, body.enabled, caller=ctl.caller, reason=body.reason)
    return ctl.view()

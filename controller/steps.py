"""The port calls of a tick, each turning what the port raises into a value the loop acts on.

Why a module of its own: `controller.loop` sequences the tick and owns its state; what each
call to a port means when it fails is a separate, stateless question answered here once:

* `observe_routes` — one batched `Observer.observe`; a `TemporaryError` holds every route, a
  `PermanentError` is narrowed to the culprit routes by observing each alone once;
* `with_hints` and `decide` — the policy's input (capacity hints and SLO filled in) and its
  proposal; a policy that raises proposes nothing and says why in the tick's notes;
* `apply_write` — one `Actuator.apply`, never raising (it may run on a write thread), telling a
  write the actuator had to retry after a conflict;
* `Plan` and `act_outcome` — a route after read, decide and guard, and what its verdict and
  its write come to: the outcome recorded, what was written, the split in force after;
* `repair_plan` and `pin_waits` — a route whose weights are not a valid split
  (`InvalidWeightsError`) gets no policy, only an operator's pin, written at the next tick.

They log as ``controller.loop``: to an operator they are the tick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from controller.guard import Guard, Mode, Verdict
from controller.metrics import ControllerMetrics
from meshcore import (
    Actuator,
    InvalidWeightsError,
    Observation,
    Observer,
    PermanentError,
    Policy,
    RouteRef,
    TemporaryError,
    Weights,
)

__all__ = [
    "Applied",
    "Observed",
    "Plan",
    "act_outcome",
    "apply_write",
    "conflicts_seen",
    "decide",
    "observe_routes",
    "pin_waits",
    "repair_plan",
    "with_hints",
]

_log = logging.getLogger("controller.loop")

Observed = tuple[dict[RouteRef, Observation], str | None, dict[RouteRef, str]]
"""(observations, why every route holds or None, routes that failed permanently: message)."""


def observe_routes(
    observer: Observer, routes: Sequence[RouteRef], metrics: ControllerMetrics
) -> Observed:
    """Observe `routes` in one call; errors become holds (counted) or failed routes."""
    if not routes:
        return {}, None, {}
    try:
        return dict(observer.observe(routes)), None, {}
    except TemporaryError as exc:
        metrics.query_errors.inc()
        _log.warning("observe failed, holding every route: %s", exc)
        return {}, f"observe failed: {exc}", {}
    except PermanentError as exc:
        _log.warning("observe failed permanently (%s); isolating the route(s)", exc)
        return _observe_one_by_one(observer, routes)
    except Exception as exc:
        metrics.query_errors.inc()
        _log.exception("observer raised an unexpected error, holding every route")
        return {}, f"observe failed: {type(exc).__name__}: {exc}", {}


def _observe_one_by_one(observer: Observer, routes: Sequence[RouteRef]) -> Observed:
    observations: dict[RouteRef, Observation] = {}
    broken: dict[RouteRef, str] = {}
    for route in routes:
        try:
            observations.update(observer.observe([route]))
        except PermanentError as exc:
            broken[route] = str(exc)
        except Exception as exc:  # temporary for this route: it holds
            _log.warning("observe of %s failed: %s", route.key, exc)
    return observations, None, broken


def with_hints(
    obs: Observation | None,
    hints: Mapping[str, float] | None,
    *,
    slo_ms: float,
    balancer: str | None = None,
) -> Observation | None:
    """`obs` with what the controller knows beyond telemetry filled in where it carries none:
    the nominal capacity per subset (rps, when `hints` names every subset) and the SLO behind
    its slow ratios (ms); and the route's configured balancer (`Observation.balancer`), when
    one is configured, since telemetry does not say it."""
    if obs is None:
        return obs
    if math.isnan(obs.slo_ms):
        obs = replace(obs, slo_ms=slo_ms)
    if balancer is not None and balancer != obs.balancer:
        obs = replace(obs, balancer=balancer)
    if obs.capacity_hint_rps or not hints or not all(s in hints for s in obs.subsets):
        return obs
    return replace(obs, capacity_hint_rps=tuple(float(hints[s]) for s in obs.subsets))


def decide(
    policy: Policy, obs: Observation | None, notes: list[str]
) -> tuple[Weights | None, list[float] | None]:
    """(the policy's proposal, its raw action) for `obs`; (None, None) without an observation
    or when the policy raises (the failure is appended to `notes`)."""
    if obs is None:
        return None, None
    try:
        proposed = policy.decide(obs)
    except Exception as exc:
        _log.exception("policy %s failed on %s", policy.name, obs.route.key)
        notes.append(f"policy {policy.name} failed: {type(exc).__name__}: {exc}")
        return None, None
    note = getattr(policy, "last_note", None)
    if isinstance(note, str) and note:
        notes.append(note)
    raw = getattr(policy, "last_raw_action", None)
    raw_action = [float(x) for x in raw] if raw is not None and len(raw) else None
    return proposed, raw_action


@dataclass
class Plan:
    """One route after read -> decide -> guard, waiting for its write (if any) and record."""

    route: RouteRef
    obs: Observation | None
    current: Weights | None  # None: the route holds no valid split (a pin repairs it)
    proposed: Weights | None
    raw_action: list[float] | None
    verdict: Verdict
    notes: list[str]
    leader: bool
    degraded: str | None = None  # why this tick had no telemetry (the observer failed)
    invalid_weights: Mapping[str, int] | None = None  # what a route with no valid split holds

    @property
    def writes(self) -> bool:
        """Whether the actuator must be called (the guard says write, and this replica leads)."""
        return self.verdict.write and self.leader


def repair_plan(
    guard: Guard,
    route: RouteRef,
    exc: InvalidWeightsError,
    obs: Observation | None,
    obs_error: str | None,
    now_s: float,
    hint: Mode,
    leader: bool,
) -> Plan | None:
    """A `Plan` writing the operator's pin over weights that are not a valid split
    (`Guard.repair`; the actuator's patch tests the resourceVersion it read), or None when
    nothing may be written (the route fails, showing what it holds)."""
    verdict = guard.repair(route=route, now_s=now_s, phase_hint=hint)
    if verdict is None:
        return None
    notes = [] if obs_error is None else [obs_error]
    notes.append(f"the route holds {exc.weights}, not a valid split")
    return Plan(route, obs, None, None, None, verdict, notes, leader, obs_error, exc.weights)


def pin_waits(guard: Guard, route: RouteRef, now_s: float, mode: Mode) -> bool:
    """Whether the guard holds an unexpired pin for `route` it would write (not paused, not
    in shadow, the loop active): a failed route with invalid weights is then due at once."""
    c = guard.controls(route)
    live = c.pin_until_s is not None and c.pin_until_s > now_s
    return live and not c.paused and not c.shadow and mode == "active"


@dataclass(frozen=True)
class Applied:
    """What `Actuator.apply` did for one route: the weights in force, or the exception."""

    written: Weights | None = None
    retried: bool = False
    error: Exception | None = None


def apply_write(actuator: Actuator, route: RouteRef, weights: Weights) -> Applied:
    """One `Actuator.apply`; never raises (the exception is handed back in `Applied`)."""
    before = conflicts_seen(actuator, route)
    try:
        written = actuator.apply(route, weights)
    except Exception as exc:
        return Applied(error=exc)
    return Applied(written=written, retried=conflicts_seen(actuator, route) != before)


def conflicts_seen(actuator: Actuator, route: RouteRef) -> int:
    """The actuator's conflict count for `route` (its total when it counts no routes: exact
    for writes one at a time)."""
    per_route = getattr(actuator, "conflicts_for", None)
    if callable(per_route):
        return int(per_route(route))
    return int(getattr(actuator, "conflicts", 0))


def act_outcome(
    plan: Plan, applied: Applied | None
) -> tuple[str, Weights | None, bool, Weights | None]:
    """(outcome, written, wrote, weights configured after) for one plan and its write.

    Raises the `PermanentError` of a failed write (the route fails) and any unexpected
    exception (the route holds); a `TemporaryError` is an ``error: ...`` outcome.
    """
    route, verdict, current, leader = plan.route, plan.verdict, plan.current, plan.leader
    if not verdict.write:
        if verdict.phase == "shadow":
            outcome = "follower" if not leader else "shadow"
            return outcome, verdict.weights, False, current
        outcome = "held" if verdict.phase == "holding" else "unchanged"
        return outcome, None, False, current
    if not leader:  # the guard was told "shadow"; never write without the lease anyway
        return "follower", verdict.weights, False, current
    if applied is None:  # cannot happen: every writing plan went through the write pool
        raise RuntimeError(f"route {route.key}: the write was never attempted")
    if applied.error is not None:
        if isinstance(applied.error, TemporaryError):
            return f"error: {applied.error}", verdict.weights, True, current
        raise applied.error
    assert applied.written is not None
    outcome = "conflict-retried" if applied.retried else "written"
    return outcome, applied.written, True, applied.written

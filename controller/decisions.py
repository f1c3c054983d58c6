"""The decision step of a tick: read each route, ask the policy for all of them at once, guard.

Why a module of its own: the policy is asked ONCE per tick for every route it decides
(`decide_reads`), so deciding is no longer a per-route step between a route's read and its
guard, but a phase between reading every route (`read_route`) and guarding each (`review`).
`controller.loop` sequences these phases and records what they hand back.

* `read_route` — the route's current weights (`Actuator.current`) and what the policy needs
  besides the observation: a route whose read fails holds (`TemporaryError`) or fails
  (`PermanentError`), and one that holds weights set outside meshpilot that are not a split
  (`InvalidWeightsError`) is repaired by an operator's pin or fails (`repair_plan`); those get
  no policy. A read route is a `Read`.
* `decide_reads` — one `decide_many` call for every `Read` with an observation, when the
  policy has it and can say per route what the loop records (its notes in `last_notes`, its
  raw actions in `last_raw_actions`); the same proposals, notes and raw actions as `decide`
  route by route (`controller.steps.decide`), which is what a policy without `decide_many`
  gets, and what every route gets when `decide_many` raises (so one bad route cannot stop the
  others). A route without an observation is not decided.
* `review` — the guard's verdict on one route's proposal: a `Plan`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.guard import Guard, Mode
from controller.recording import Entry, RouteRuntime
from controller.steps import Plan, decide, repair_plan, with_hints
from meshcore import (
    Actuator,
    InvalidWeightsError,
    Observation,
    PermanentError,
    Policy,
    RouteRef,
    TemporaryError,
    Weights,
)

__all__ = [
    "DecideMany",
    "Decision",
    "Read",
    "Unreadable",
    "batch_call",
    "decide_reads",
    "read_route",
    "review",
]

_log = logging.getLogger("controller.loop")

DecideMany = Callable[[Sequence[Observation]], Sequence[Weights]]
"""A policy's `decide_many`: one split per observation, in order."""

Decision = tuple[Weights | None, list[float] | None]
"""(the policy's proposal, its raw action); (None, None) when it proposed nothing."""


@dataclass
class Read:
    """One route read and waiting for its decision: `notes` collects why, in order (the
    observer's failure, a change made outside meshpilot, the policy's note)."""

    route: RouteRef
    obs: Observation | None  # with capacity hints and SLO filled in (`with_hints`)
    current: Weights
    notes: list[str]
    leader: bool
    degraded: str | None = None  # why this tick had no telemetry (the observer failed)


@dataclass(frozen=True)
class Unreadable:
    """A route whose weights could not be read: it holds (`held` is recorded as it is) or it
    fails with the message `failed` (showing `invalid_weights` when it holds no split)."""

    held: Entry | None = None
    failed: str = ""
    invalid_weights: Mapping[str, int] | None = None


def read_route(
    actuator: Actuator,
    guard: Guard,
    route: RouteRef,
    rt: RouteRuntime,
    obs: Observation | None,
    *,
    obs_error: str | None,
    now_s: float,
    hint: Mode,
    leader: bool,
    hints: Mapping[str, float] | None,
    slo_ms: float,
    balancer: str | None = None,
) -> Read | Plan | Unreadable:
    """Read `route` for its decision (module docstring). hint: the guard's phase hint (the
    loop's mode, ``"shadow"`` for a follower); hints: nominal capacity per subset (rps);
    slo_ms: the SLO filled into observations without one (ms). Forgets the pending writes and
    the last split written when the route was changed outside meshpilot (noted)."""
    try:
        current = actuator.current(route)
    except TemporaryError as exc:
        reason = f"cannot read the route's weights: {exc}; nothing written"
        return Unreadable(held=Entry("holding", f"error: {exc}", reason, obs, degraded=obs_error))
    except InvalidWeightsError as exc:  # only a pin may be written
        repair = repair_plan(guard, route, exc, obs, obs_error, now_s, hint, leader)
        if repair is not None:
            return repair
        return Unreadable(failed=str(exc), invalid_weights=exc.weights)
    except PermanentError as exc:
        return Unreadable(failed=str(exc))
    if rt.status.failed is not None:
        _log.info("route %s recovered from: %s", route.key, rt.status.failed)
    notes = [] if obs_error is None else [obs_error]
    if rt.last_written is not None and current != rt.last_written:
        notes.append(f"route changed outside meshpilot: wrote {rt.last_written}, reads {current}")
        rt.pending.clear()
        rt.last_written = None
    obs = with_hints(obs, hints, slo_ms=slo_ms, balancer=balancer)
    return Read(route, obs, current, notes, leader, obs_error)


def review(guard: Guard, read: Read, decision: Decision, *, now_s: float, hint: Mode) -> Plan:
    """The guard's verdict on `decision` for `read` (now_s: loop clock, s; hint as in
    `read_route`), with everything the write and the record need."""
    proposed, raw_action = decision
    verdict = guard.review(
        route=read.route,
        current=read.current,
        proposed=proposed,
        observation=read.obs,
        now_s=now_s,
        phase_hint=hint,
    )
    return Plan(
        read.route,
        read.obs,
        read.current,
        proposed,
        raw_action,
        verdict,
        read.notes,
        read.leader,
        read.degraded,
    )


def batch_call(policy: Policy) -> DecideMany | None:
    """`policy.decide_many` when the policy decides many routes in one call without losing
    what the loop records per route, else None: if it keeps a note or a raw action per
    decision (`last_note`, `last_raw_action`) it must keep them per route of a batch too
    (`last_notes`, `last_raw_actions`)."""
    many = getattr(policy, "decide_many", None)
    if not callable(many):
        return None
    if hasattr(policy, "last_note") and not hasattr(policy, "last_notes"):
        return None
    if getattr(policy, "last_raw_action", None) is None:
        return many
    return many if getattr(policy, "last_raw_actions", None) is not None else None


def decide_reads(policy: Policy, reads: Sequence[Read]) -> list[Decision]:
    """The `Decision` of every read, in order (module docstring); notes go to `Read.notes`.
    Never raises for the policy: a failing `decide` is a note (`controller.steps.decide`)."""
    out: list[Decision] = [(None, None)] * len(reads)
    asked = [(i, r.obs) for i, r in enumerate(reads) if r.obs is not None]
    many = batch_call(policy) if asked else None
    batch = None if many is None else _decide_many(policy, many, [obs for _, obs in asked])
    for n, (i, obs) in enumerate(asked):
        if batch is None:
            out[i] = decide(policy, obs, reads[i].notes)
            continue
        proposed, raw_action, note = batch[n]
        if note:
            reads[i].notes.append(note)
        out[i] = (proposed, raw_action)
    return out


def _decide_many(
    policy: Policy, many: DecideMany, observations: Sequence[Observation]
) -> list[tuple[Weights, list[float] | None, str | None]] | None:
    """(proposal, raw action, note) per observation from one `many` call (the policy's
    `decide_many`), or None when it raised or did not answer for each observation (logged)."""
    count = len(observations)
    try:
        proposals = list(many(observations))
        notes = _per_route(getattr(policy, "last_notes", None), count, "last_notes")
        raws = _per_route(getattr(policy, "last_raw_actions", None), count, "last_raw_actions")
        if len(proposals) != count:
            raise ValueError(f"{len(proposals)} splits for {count} routes")
        return [
            (proposed, _raw_action(raw), note if isinstance(note, str) and note else None)
            for proposed, raw, note in zip(proposals, raws, notes, strict=True)
        ]
    except Exception:
        _log.exception(
            "policy %s failed on %d routes at once; deciding them one by one", policy.name, count
        )
        return None


def _per_route(values: Any, count: int, name: str) -> list[Any]:
    """`values` (a policy's per-route list of the last batch) as a list of `count`, all None
    when the policy keeps none; raises when it does not hold one per route."""
    if values is None:
        return [None] * count
    items = list(values)
    if len(items) != count:
        raise ValueError(f"{name} holds {len(items)} values for {count} routes")
    return items


def _raw_action(raw: Any) -> list[float] | None:
    """A raw action as `controller.steps.decide` records it: floats, None when empty."""
    return [float(x) for x in raw] if raw is not None and len(raw) else None

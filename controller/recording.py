"""The record step: what one route's tick leaves behind, whatever happened in it.

Why a module of its own: every path through a tick — written, held, shadow, follower, an
``error: ...``, a permanent failure, an unexpected exception — must end the same way: one
`DecisionRecord` in the audit log (who wrote what, and why), one `RouteStatus` the API shows,
the metrics, and one `TickResult` for the caller. `controller.loop` decides which path a route
took and says so as an `Entry`; `RouteBook.record` does the rest identically for all of them,
and keeps what the next tick needs (the last observation and split for the reward, the writes
still to verify, the last split written).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from controller.metrics import ControllerMetrics
from controller.store import DecisionRecord, encode_observation
from controller.verify import PendingWrite, VerifyResult
from meshcore import Observation, RouteRef, Weights, reward

__all__ = ["Entry", "RouteBook", "RouteRuntime", "RouteStatus", "TickResult", "previous_reward"]


@dataclass(frozen=True)
class TickResult:
    """What happened to one route in one tick (also what the store recorded).

    phase: the guard's phase, or ``failed``; outcome: ``written``, ``conflict-retried``,
    ``unchanged``, ``held``, ``shadow``, ``follower``, ``error: ...`` or ``failed: ...``;
    proposed: the policy's split; written: what was written (shadow/follower: would have
    been); wrote: whether the actuator was called; weights: the split configured after the
    tick (None when unknown); reward: reward of the previous tick's action (None if unknown);
    verify: a verification concluded this tick; decision_id: the store's id (None if the store
    failed).
    """

    route: RouteRef
    phase: str
    outcome: str
    reason: str
    proposed: Weights | None = None
    written: Weights | None = None
    wrote: bool = False
    weights: Weights | None = None
    reward: float | None = None
    verify: VerifyResult | None = None
    decision_id: int | None = None


@dataclass(frozen=True)
class RouteStatus:
    """A managed route as the API shows it: where it stands after the last tick.

    phase: ``pending`` before its first tick, else the last phase (``failed`` included);
    weights: configured split last read or written (None while failed: unknown or invalid);
    invalid_weights: what the route holds when it is not a valid split (points, set outside
    meshpilot); failed: the permanent error, None when managed; degraded: why the last tick had
    no telemetry (the route holds; controls still act); last_*: the last decision (loop clock,
    s); verify: the last concluded verification; steered_by: who chose the last split under
    the supervisor, ``policy`` or ``fallback`` (None: no supervisor, or no decision yet).
    """

    route: RouteRef
    phase: str = "pending"
    weights: Weights | None = None
    invalid_weights: Mapping[str, int] | None = None
    failed: str | None = None
    degraded: str | None = None
    failed_since_s: float | None = None
    last_outcome: str | None = None
    last_reason: str | None = None
    last_decision_id: int | None = None
    last_tick_s: float | None = None
    verify: VerifyResult | None = None
    steered_by: str | None = None


@dataclass
class RouteRuntime:
    """Mutable per-route state of the loop (the guard keeps its own)."""

    status: RouteStatus
    failed_tick: int = 0
    last_obs: Observation | None = None
    last_weights: Weights | None = None
    last_written: Weights | None = None
    pending: list[PendingWrite] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    """What happened to one route this tick, as the loop tells `RouteBook.record`.

    phase/outcome/reason: as in `TickResult`; obs: this tick's observation (None when there was
    none); current: the split read before acting; proposed/raw_action: the policy's proposal;
    written/wrote: as in `TickResult`; weights_after: the split configured after the tick
    (None: unknown, the status keeps the last one); verify: a concluded verification; failed:
    the permanent error that makes the route unmanaged; invalid_weights: what a failed route
    holds when it is not a valid split; degraded: why there was no telemetry this tick.
    """

    phase: str
    outcome: str
    reason: str
    obs: Observation | None
    current: Weights | None = None
    proposed: Weights | None = None
    raw_action: list[float] | None = None
    written: Weights | None = None
    wrote: bool = False
    weights_after: Weights | None = None
    verify: VerifyResult | None = None
    failed: str | None = None
    invalid_weights: Mapping[str, int] | None = None
    degraded: str | None = None


def previous_reward(rt: RouteRuntime, obs: Observation | None, slo_ms: float) -> float | None:
    """Reward of the previous tick's split, judged by this tick's observation."""
    if obs is None or rt.last_obs is None or rt.last_weights is None:
        return None
    try:
        return reward(rt.last_obs, rt.last_weights, obs, slo_ms=slo_ms)
    except Exception:  # subsets changed between ticks, and the like: unknown, not fatal
        return None


class RouteBook:
    """The loop's per-route state (`RouteRuntime`), the statuses the API reads (thread-safe),
    and the record step."""

    def __init__(self, routes: Sequence[RouteRef]) -> None:
        self._rt = {r: RouteRuntime(RouteStatus(r)) for r in routes}
        self._lock = threading.Lock()

    def add(self, routes: Sequence[RouteRef]) -> None:
        """Start keeping state for the routes not kept yet (a removed route keeps its own)."""
        with self._lock:
            for r in routes:
                self._rt.setdefault(r, RouteRuntime(RouteStatus(r)))

    def runtime(self, route: RouteRef) -> RouteRuntime:
        """The mutable state of `route` (for the tick's thread only)."""
        return self._rt[route]

    def status(self, route: RouteRef) -> RouteStatus:
        with self._lock:
            return self._rt[route].status

    def statuses(self, routes: Sequence[RouteRef]) -> list[RouteStatus]:
        with self._lock:
            return [self._rt[r].status for r in routes]

    def steered_by(self, route: RouteRef, mode: str) -> None:
        """Set who chose `route`'s split this tick (the supervisor's mode)."""
        rt = self._rt[route]
        with self._lock:
            rt.status = replace(rt.status, steered_by=mode)

    def failed_since(self, route: RouteRef, since_s: float) -> None:
        """Set when `route` failed (loop clock, s), after a failed entry was recorded."""
        rt = self._rt[route]
        with self._lock:
            rt.status = replace(rt.status, failed_since_s=since_s)

    def record(
        self,
        route: RouteRef,
        now: float,
        entry: Entry,
        *,
        store: Callable[[DecisionRecord], int | None],
        metrics: ControllerMetrics,
        policy: str,
        writer_id: str,
        slo_ms: float,
    ) -> TickResult:
        """Compute the reward, record the decision (`store` returns its id, None when it
        failed), update status and metrics."""
        rt = self._rt[route]
        obs, weights_after = entry.obs, entry.weights_after
        value = previous_reward(rt, obs, slo_ms)
        if obs is not None:
            rt.last_obs = obs
            rt.last_weights = weights_after if weights_after is not None else entry.current
        record = DecisionRecord(
            ts_s=now,
            route=route.key,
            phase=entry.phase,
            reason=entry.reason,
            outcome=entry.outcome,
            observation=encode_observation(obs) if obs is not None else None,
            raw_action=entry.raw_action,
            proposed=entry.proposed.as_dict() if entry.proposed is not None else None,
            written=entry.written.as_dict() if entry.written is not None else None,
            wrote=entry.wrote,
            reward=value,
            policy=policy,
            writer=writer_id,
        )
        decision_id = store(record)
        weights = weights_after if weights_after is not None else rt.status.weights
        if entry.failed is not None:  # what the route holds is unknown or not a split
            weights = None
        with self._lock:
            rt.status = replace(
                rt.status,
                phase=entry.phase,
                weights=weights,
                invalid_weights=entry.invalid_weights,
                failed=entry.failed,
                degraded=entry.degraded,
                failed_since_s=None if entry.failed is None else rt.status.failed_since_s,
                last_outcome=entry.outcome,
                last_reason=entry.reason,
                last_decision_id=decision_id,
                last_tick_s=now,
                verify=entry.verify if entry.verify is not None else rt.status.verify,
            )
        metrics.set_phase(route.key, entry.phase)
        if weights is not None:
            metrics.set_weights(route.key, weights)
        else:
            metrics.clear_weights(route.key)
        metrics.count_decision(route.key, entry.outcome)
        return TickResult(
            route=route,
            phase=entry.phase,
            outcome=entry.outcome,
            reason=entry.reason,
            proposed=entry.proposed,
            written=entry.written,
            wrote=entry.wrote,
            weights=weights,
            reward=record.reward,
            verify=entry.verify,
            decision_id=decision_id,
        )

"""The controller's own Prometheus metrics: is it ticking, what is it writing, where is it stuck.

Operators alert on these (a route in ``failed``, ticks slower than the interval, query errors),
so they live on a `CollectorRegistry` of their own: several controllers (tests, the lab) fit in
one process, and `/metrics` exposes exactly these series and nothing a library registered.
Label values are bounded: routes are the managed routes, phases and outcome classes are fixed
lists (an outcome ``"error: <text>"`` is counted as ``error``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PHASES", "ControllerMetrics", "outcome_class"]

PHASES: tuple[str, ...] = (
    "pending",
    "shadow",
    "active",
    "overridden",
    "holding",
    "paused",
    "failed",
)
"""Every value of the ``phase`` label of ``meshpilot_route_phase``: the guard's phases plus
``pending`` (not reviewed yet) and ``failed`` (a permanent error; re-checked periodically)."""

TICK_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Buckets of ``meshpilot_tick_duration_seconds`` (s): a tick should take well under the 5 s
interval; the upper buckets show a Prometheus or API server that is making it fall behind."""


def outcome_class(outcome: str) -> str:
    """The bounded label of an outcome: the text before ``":"`` (``"error: timeout"`` -> error)."""
    return outcome.split(":", 1)[0].strip() or "unknown"


class _ConflictCollector(Collector):
    """Reads the actuator's own conflict counter at scrape time (it counts, we only expose)."""

    def __init__(self) -> None:
        self.source: Callable[[], float] | None = None

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "meshpilot_conflicts",
            "Optimistic-concurrency conflicts the actuator met while writing (and retried)",
        )
        value = 0.0
        if self.source is not None:
            try:
                value = float(self.source())
            except Exception:  # a broken source must not break the scrape
                value = 0.0
        family.add_metric([], value)
        yield family


class ControllerMetrics:
    """All series of one controller, on `registry` (a fresh one when None).

    Updated by the control loop; read by ``GET /metrics`` through `render`.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.ticks = Counter("meshpilot_ticks", "Control-loop ticks run", registry=r)
        self.tick_duration = Histogram(
            "meshpilot_tick_duration_seconds",
            "Wall time of one tick: observe, decide, guard, write, verify, record (s)",
            buckets=TICK_BUCKETS_S,
            registry=r,
        )
        self.query_errors = Counter(
            "meshpilot_query_errors",
            "Ticks whose observation failed (every route held)",
            registry=r,
        )
        self.writes = Counter(
            "meshpilot_writes", "Weights written to the mesh", ["route"], registry=r
        )
        self.decisions = Counter(
            "meshpilot_decisions",
            "Decisions recorded, by outcome class (written, unchanged, held, shadow, ...)",
            ["route", "outcome"],
            registry=r,
        )
        self.verify_failures = Counter(
            "meshpilot_verify_failures",
            "Verifications where the observed traffic split did not follow the written weights",
            ["route"],
            registry=r,
        )
        self.route_phase = Gauge(
            "meshpilot_route_phase",
            "1 for the phase each managed route is in, 0 for the others",
            ["route", "phase"],
            registry=r,
        )
        self.route_weight = Gauge(
            "meshpilot_route_weight",
            "Weight currently configured per route and subset (points, 0..100)",
            ["route", "subset"],
            registry=r,
        )
        self.route_fallback = Gauge(
            "meshpilot_route_fallback",
            "1 while the supervisor serves the route with its fallback (the planner) because the "
            "policy's split did visible harm, 0 while the policy steers",
            ["route"],
            registry=r,
        )
        self.leader = Gauge(
            "meshpilot_leader", "1 while this replica is the leader (may write)", registry=r
        )
        self.observing = Gauge(
            "meshpilot_observing",
            "1 when the last tick's observation succeeded, 0 while the observer fails "
            "(e.g. Prometheus down: routes hold, controls still act)",
            registry=r,
        )
        self._conflicts = _ConflictCollector()
        r.register(self._conflicts)
        self._phases: dict[str, str] = {}
        self._weights: dict[str, dict[str, int]] = {}
        self._outcomes: dict[str, set[str]] = {}
        self._fallback: dict[str, bool] = {}

    def bind_conflicts(self, source: Callable[[], float]) -> None:
        """Expose ``source()`` (the actuator's cumulative conflict count) as conflicts_total."""
        self._conflicts.source = source

    def set_phase(self, route: str, phase: str) -> None:
        if self._phases.get(route) == phase:  # called per route per tick: skip the no-ops
            return
        for known in PHASES:
            self.route_phase.labels(route=route, phase=known).set(1.0 if known == phase else 0.0)
        self._phases[route] = phase

    def set_weights(self, route: str, weights: Mapping[str, int]) -> None:
        points_by_subset = dict(weights.items())
        if self._weights.get(route) == points_by_subset:
            return
        for subset, points in points_by_subset.items():
            self.route_weight.labels(route=route, subset=subset).set(points)
        self._weights[route] = points_by_subset

    def clear_weights(self, route: str) -> None:
        """Drop the route's weight series: what a failed route holds is unknown or invalid."""
        for subset in self._weights.pop(route, {}):
            self.route_weight.remove(route, subset)

    def set_fallback(self, route: str, in_fallback: bool) -> None:
        if self._fallback.get(route) == in_fallback:
            return
        self.route_fallback.labels(route=route).set(1.0 if in_fallback else 0.0)
        self._fallback[route] = in_fallback

    def count_decision(self, route: str, outcome: str) -> None:
        """One recorded decision of `route`, counted under its outcome class."""
        label = outcome_class(outcome)
        self.decisions.labels(route=route, outcome=label).inc()
        self._outcomes.setdefault(route, set()).add(label)

    def forget_routes(self, routes: Sequence[str]) -> None:
        """Drop every series of routes no longer managed (a ManagedRoute deleted): a released
        route would otherwise stay in its last phase on dashboards, and in an alert on
        ``failed``, for as long as the process lives."""
        for route in routes:
            if self._phases.pop(route, None) is not None:
                for known in PHASES:
                    self.route_phase.remove(route, known)
            self.clear_weights(route)
            for label in self._outcomes.pop(route, set()):
                self.decisions.remove(route, label)
            if self._fallback.pop(route, None) is not None:
                self.route_fallback.remove(route)
            self.writes.remove(route)  # a labelset never counted is no error
            self.verify_failures.remove(route)

    def declare_routes(self, routes: Sequence[str]) -> None:
        """Create every route's phase series up front, so a scrape before the first tick
        already shows each managed route (as ``pending``)."""
        for route in routes:
            self.set_phase(route, "pending")

    def render(self) -> bytes:
        """The Prometheus text exposition of every series above."""
        return generate_latest(self.registry)

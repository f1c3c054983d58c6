"""Run one policy through one simulated episode: the shared core of `simulate` and `evaluate`.

The policy acts through the same ports as in production (`SimulatedMesh` as Observer and
Actuator); policies that may see the simulator's ground truth (the oracle) get it through
`bind_simulator`, nothing else does.

A raw run writes every proposal as it comes. A run *as served* puts a `Gate` between the
proposal and the write, the way the live loop puts its guard there: each step the gate gets
the route's current weights, the proposal, the observation and the simulator's clock (s) and
says whether and what to write. `agents` may not import the controller, so the gate is
handed in from above (`meshpilot.served` builds it from the controller's guard).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from agents.planner import PlannerPolicy
from envs.simulator.engine import EpisodeSummary, MeshSimulator, StepCounts
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.scenario import Scenario
from envs.simulator.telemetry import quantile_ms
from meshcore.model import Observation, RouteRef, Weights
from meshcore.ports import Policy


class Reviewed(Protocol):
    """A gate's answer for one step (the controller's guard `Verdict` is one)."""

    @property
    def weights(self) -> Weights:
        """What to write when `write`, else the current weights."""
        ...

    @property
    def write(self) -> bool:
        """Whether the weights are to be written this step."""
        ...

    @property
    def reason(self) -> str:
        """Why, for humans (may be empty)."""
        ...


class Gate(Protocol):
    """What reviews every proposal before it is written (the controller's `Guard` is one).

    A gate keeps per-route state (first seen, last fresh data), so every episode needs a
    fresh one.
    """

    def review(
        self,
        *,
        route: RouteRef,
        current: Weights,
        proposed: Weights | None,
        observation: Observation | None,
        now_s: float,
    ) -> Reviewed: ...


Setup = Callable[[str], tuple[Policy, Gate | None]]
"""Policy name -> (a fresh policy, a fresh gate or None for a raw run); must be picklable (a
module-level function) to reach `agents.evaluate`'s worker processes."""


@dataclass
class EpisodeTrace:
    """Per-step record of a run, one list entry per control step, in step order.

    t_s: simulated time at the end of the step (s); weights: the split in force during the
    step (points, what was written or kept); bad_fraction: the step's requests that errored or
    missed the SLO, over its requests. The per-version fields are the step's ground truth:
    rps (requests per second), p99_ms (ms, NaN without requests), error_ratio (5xx over
    requests, NaN without requests); requests: the step's requests. proposed: the policy's
    split (None: it proposed nothing); wrote: new weights were written this step; reason: the
    supervisor's note and the gate's reason, joined by "; " (empty when neither gave one);
    intervened: the split in force is not the policy's own proposal, or the supervisor spoke.
    estimates: what the planner believed of each version after the step's decision, as
    (health: capacity factor, 1 = nominal; error: 5xx rate 0..1), for the planner and for a
    supervised policy (its fallback planner); None for policies that keep no planner.
    """

    t_s: list[float] = field(default_factory=list)
    weights: list[dict[str, int]] = field(default_factory=list)
    bad_fraction: list[float] = field(default_factory=list)
    step_s: float = math.nan
    """The control interval (s)."""
    requests: list[int] = field(default_factory=list)
    rps: list[dict[str, float]] = field(default_factory=list)
    p99_ms: list[dict[str, float]] = field(default_factory=list)
    error_ratio: list[dict[str, float]] = field(default_factory=list)
    proposed: list[dict[str, int] | None] = field(default_factory=list)
    wrote: list[bool] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    intervened: list[bool] = field(default_factory=list)
    estimates: list[dict[str, tuple[float, float]] | None] = field(default_factory=list)

    @property
    def subsets(self) -> list[str]:
        """Version names in the scenario's order."""
        return list(self.weights[0]) if self.weights else []

    def _record(
        self,
        sim: MeshSimulator,
        counts: StepCounts,
        weights: Weights,
        proposed: Weights | None,
        wrote: bool,
        reason: str,
        intervened: bool,
        estimates: dict[str, tuple[float, float]] | None,
    ) -> None:
        names, dt = sim.subsets, sim.scenario.step_s
        total = counts.total
        self.step_s = dt
        self.t_s.append(sim.t_s)
        self.weights.append(weights.as_dict())
        self.bad_fraction.append(int(counts.bad.sum()) / total if total else 0.0)
        self.requests.append(total)
        count = [int(c) for c in counts.count]
        self.rps.append({s: c / dt for s, c in zip(names, count, strict=True)})
        self.p99_ms.append({s: quantile_ms(counts.hist[i], 0.99) for i, s in enumerate(names)})
        self.error_ratio.append(
            {
                s: int(counts.errors[i]) / count[i] if count[i] else math.nan
                for i, s in enumerate(names)
            }
        )
        self.proposed.append(None if proposed is None else proposed.as_dict())
        self.wrote.append(wrote)
        self.reason.append(reason)
        self.intervened.append(intervened)
        self.estimates.append(estimates)


def _note(policy: Policy) -> str:
    """The supervisor's note for the last decision (empty for policies that keep none)."""
    note = getattr(policy, "last_note", None)
    return note if isinstance(note, str) else ""


def _planner_estimates(policy: Policy, route: RouteRef) -> dict[str, tuple[float, float]] | None:
    """(health, error rate) per version as the planner in `policy` holds them for `route`:
    the policy itself if it is the planner, else its fallback (the supervisor's); None when
    it keeps no planner."""
    for holder in (policy, getattr(policy, "fallback", None)):
        if isinstance(holder, PlannerPolicy):
            return {name: (e.health, e.error) for name, e in holder.estimates(route).items()}
    return None


def run_episode(
    scenario: Scenario,
    policy: Policy,
    *,
    seed: int,
    trace: bool = False,
    gate: Gate | None = None,
) -> tuple[EpisodeSummary, EpisodeTrace | None]:
    """Simulate `scenario` with `policy` deciding every step; same seed => same arrivals.

    Without `gate` every proposal is written as it comes (raw). With one (fresh for this
    episode), each step reproduces the live loop's tick: read the current weights, decide,
    let the gate review the proposal at the simulator's clock (``now_s``: simulated s at the
    start of the step) and write only what it says to write. A policy that raises stops the
    episode (in serve it would hold the route; in a measurement it is a bug to see).
    """
    sim = MeshSimulator(scenario, seed=seed)
    mesh = SimulatedMesh({sim.route: sim})
    route = sim.route
    policy.reset()
    bind = getattr(policy, "bind_simulator", None)
    if callable(bind):
        bind(sim)
    record = EpisodeTrace() if trace else None
    while not sim.done:
        obs = mesh.observe([route])[route]
        current = mesh.current(route)
        proposed = policy.decide(obs)
        note = _note(policy)
        if gate is None:
            weights, wrote, why = proposed, True, ""
        else:
            verdict = gate.review(
                route=route, current=current, proposed=proposed, observation=obs, now_s=sim.t_s
            )
            weights, wrote, why = verdict.weights, verdict.write, verdict.reason
        weights = mesh.apply(route, weights) if wrote else current
        counts = mesh.advance()[route]
        if record is not None:
            reason = "; ".join(r for r in (note, why) if r)
            changed = weights != proposed
            wrote_new = wrote and weights != current
            estimates = _planner_estimates(policy, route)
            intervened = changed or bool(note)
            record._record(sim, counts, weights, proposed, wrote_new, reason, intervened, estimates)
    return sim.summary(), record

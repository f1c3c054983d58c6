"""The oracle: the split a controller would pick if it knew the simulator's true state.

It is the yardstick of `meshpilot evaluate` (``oracle_ratio``): every step it reads the
simulator's ground truth for the coming interval (`MeshSimulator.true_state()`: load, and per
subset replicas, service time, its distribution, error rate, capacity factor) and writes the
integer weights that minimize the *expected steady-state bad-request fraction*

    B(x) = sum_i (x_i / lambda) * [e_i + (1 - e_i) * P(T_i(x_i) > SLO)]

where x_i is subset i's share of the arrival rate lambda (rps), e_i its error rate and T_i its
response time at that rate. It is an oracle of *parameters*, not of the future: it does not see
queues already built up, and it trusts a queueing model (below) rather than the simulator's
exact per-request behaviour. Sources and approximations:

The queueing model behind P(T_i > SLO) (Erlang C, M/G/c, Envoy's least-request) is
`agents.queueing`, shared with the planner that estimates its parameters from telemetry.


Solving: the objective is separable over subsets and the weights we must write are integers
0..100 that sum to 100, so instead of a continuous solver followed by rounding we solve the
*integer* problem exactly with a min-plus dynamic program over subsets (101 candidate weights
per subset, O(n * 101^2)). This needs no convexity — the per-subset cost is not convex once
a subset saturates, nor with lognormal tails — and is deterministic; it takes about
0.3-0.6 ms per decision for the suite's routes on an idle core, and results are cached by
state, so stationary scenarios pay once. Ties (e.g. no load) break toward the
capacity-proportional split.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from agents.baselines import sqrt_shares
from agents.queueing import bad_probability, cost_table, min_plus_split
from envs.simulator.engine import MeshSimulator, TrueState
from meshcore.errors import ConfigError
from meshcore.model import WEIGHT_TOTAL, Observation, RouteRef, Weights


def expected_bad_fraction(state: TrueState, shares: Sequence[float]) -> float:
    """Modelled bad-request fraction (0..1) of the route in `state` when subset i gets share i.

    `shares` are non-negative per subset in `state.subsets` order (weights 0..100 or fractions:
    they are normalized to sum to 1).
    """
    if len(shares) != len(state.subsets):
        raise ValueError(f"{len(shares)} shares for {len(state.subsets)} subsets")
    total = math.fsum(shares)
    if total <= 0 or any(s < 0 for s in shares):
        raise ValueError(f"shares must be non-negative with a positive sum, got {list(shares)}")
    out = 0.0
    for sub, share in zip(state.subsets, shares, strict=True):
        f = share / total
        if f <= 0:
            continue
        b = bad_probability(sub, f * state.load_rps, slo_ms=state.slo_ms, balancer=state.balancer)
        out += f * float(b[0])
    return out


@lru_cache(maxsize=4096)
def _cost_table(state: TrueState) -> np.ndarray:
    """`agents.queueing.cost_table` of `state`, cached by state (callers pass it with t_s 0):
    the oracle, its hedge and `miss_cost` read the same table, which is therefore read-only."""
    table = cost_table(state.subsets, state.load_rps, slo_ms=state.slo_ms, balancer=state.balancer)
    table.setflags(write=False)
    return table


@lru_cache(maxsize=4096)
def _optimal_cached(state: TrueState) -> tuple[int, ...]:
    return min_plus_split(_cost_table(state))


def optimal_weights(state: TrueState) -> tuple[int, ...]:
    """Integer weights (subset order of `state`, sum 100) minimizing `expected_bad_fraction`.

    Exact over all integer splits for the queueing model above; cached by state (time ignored).
    """
    return _optimal_cached(dataclasses.replace(state, t_s=0.0))


@lru_cache(maxsize=4096)
def _miss_cost_cached(state: TrueState, weights: tuple[int, ...]) -> float:
    cost = _cost_table(state)
    n = len(weights)
    rises = [
        float(
            cost[i, weights[i] - 1]
            + cost[j, weights[j] + 1]
            - cost[i, weights[i]]
            - cost[j, weights[j]]
        )
        for i in range(n)
        for j in range(n)
        if i != j and weights[i] >= 1 and weights[j] < WEIGHT_TOTAL
    ]
    return max(float(np.mean(rises)), 0.0) if rises else 0.0


def miss_cost(state: TrueState, weights: Sequence[int]) -> float:
    """How much a one-point miss of `weights` costs in `state`: the mean rise of the modelled
    bad-request fraction (0..1, per weight point) over every move of one point from one subset
    to another (clipped at 0).

    Why: the same miss costs nothing at low load and a lot on a knife edge (measured on the
    suite's states at the hedged teacher's split: ~1e-6 on steady-50, 2.4e-3 in latency-spike's
    degraded phase, 1.2e-2 on steady-90), so an imitation fit that weighs its samples by it
    spends the network's precision where a miss is expensive.
    """
    if len(weights) != len(state.subsets):
        raise ValueError(f"{len(weights)} weights for {len(state.subsets)} subsets")
    return _miss_cost_cached(dataclasses.replace(state, t_s=0.0), tuple(int(w) for w in weights))


def sqrt_or_proportional(capacity_rps: Sequence[float], load_rps: float) -> np.ndarray:
    """Shares (sum 1) of the square-root rule at `load_rps`; capacity-proportional where the
    rule does not apply (no load, or at/over capacity); equal without any capacity."""
    caps = np.asarray(capacity_rps, dtype=np.float64)
    if caps.sum() <= 0:
        return np.full(len(caps), 1.0 / len(caps))
    shares = sqrt_shares(list(caps), load_rps)
    return np.asarray(shares, dtype=np.float64) if shares is not None else caps / caps.sum()


def sqrt_anchor(state: TrueState) -> np.ndarray:
    """`sqrt_or_proportional` of the *true* capacities and load of `state`."""
    return sqrt_or_proportional([s.capacity_rps for s in state.subsets], state.load_rps)


@lru_cache(maxsize=4096)
def _hedged_cached(state: TrueState, pull: float) -> tuple[int, ...]:
    anchor = sqrt_anchor(state)
    frac = np.arange(WEIGHT_TOTAL + 1, dtype=np.float64) / WEIGHT_TOTAL
    penalty = pull * (frac[None, :] - anchor[:, None]) ** 2
    return min_plus_split(_cost_table(state) + penalty)


def hedged_weights(state: TrueState, pull: float) -> tuple[int, ...]:
    """Integer weights minimizing `expected_bad_fraction` + pull x the squared distance (in
    shares) from `sqrt_anchor`.

    Why: the oracle's split is optimal for its queueing model at the current load, and it
    can be a knife edge (e.g. draining a slow subset at low load, so the fast one has no
    headroom when a burst arrives). The square-root split is robust to load and to model
    error; the pull keeps the split near it wherever the model sees little to gain, while
    real gains (draining a failing canary, shedding load from a subset that lost capacity)
    still outweigh it. pull = 0 is the oracle.
    """
    if pull < 0 or not math.isfinite(pull):
        raise ValueError(f"pull must be a finite number >= 0, got {pull}")
    if pull == 0:
        return optimal_weights(state)
    return _hedged_cached(dataclasses.replace(state, t_s=0.0), float(pull))


def drain_aware_state(
    sim: MeshSimulator, state: TrueState, horizon_s: float, spare: float = 0.5
) -> TrueState:
    """`state` with each subset's capacity shrunk by the rate its queued work needs to drain
    within `horizon_s` (s): queued service seconds (`MeshSimulator.replica_backlog_s`) times
    the replica rate (rps), over the horizon.

    The reductions together take at most `spare` of the route's spare capacity (total minus
    load), so the reduced state stays feasible: an infeasible one makes the oracle give up on a
    subset and dump load on it. Backlogs under 3 % of a subset's capacity are ignored and
    factors rounded to 2 %, so the oracle's cache keeps hitting.
    """
    need = np.zeros(len(state.subsets))
    for i, sub in enumerate(state.subsets):
        backlog_s = float(sim.replica_backlog_s(i)[: sub.replicas].sum())
        need[i] = backlog_s * sub.mu_rps / horizon_s
    caps = np.array([sub.capacity_rps for sub in state.subsets])
    need[need < 0.03 * caps] = 0.0
    if not need.any():
        return state
    room = spare * max(float(caps.sum()) - state.load_rps, 0.0)
    if need.sum() > room:
        need *= room / need.sum()
    subsets = []
    for sub, cap, cut in zip(state.subsets, caps, need, strict=True):
        keep = 1.0 - cut / cap if cap > 0 else 1.0
        factor = max(round(sub.capacity_factor * keep * 50.0) / 50.0, 0.02)
        subsets.append(dataclasses.replace(sub, capacity_factor=min(factor, sub.capacity_factor)))
    return dataclasses.replace(state, subsets=tuple(subsets))


def drain_aware_weights(
    sim: MeshSimulator, state: TrueState, horizon_s: float, pull: float
) -> tuple[tuple[int, ...], TrueState]:
    """(`hedged_weights`, the state they are for) of `drain_aware_state`, i.e. the split that
    also sheds load from subsets still working off a backlog; the plain state's split when
    no subset has one, or when the shed split would give a shrunk subset *more* weight (near
    saturation the oracle may rather sacrifice a shrunk subset)."""
    best = hedged_weights(state, pull)
    drained = drain_aware_state(sim, state, horizon_s)
    if drained is state:
        return best, state
    shed = hedged_weights(drained, pull)
    cut = [
        d.capacity_factor < s.capacity_factor
        for s, d in zip(state.subsets, drained.subsets, strict=True)
    ]
    if all(w_new <= w_old for w_new, w_old, c in zip(shed, best, cut, strict=True) if c):
        return shed, drained
    return best, state


class OraclePolicy:
    """Reads the bound simulator's true state each step and writes `optimal_weights` for it
    (`hedged_weights` with `pull` > 0).

    Only usable against `MeshSimulator`: `agents.rollout.run_episode` binds it through
    `bind_simulator`; deciding for a route that no bound simulator serves is a `ConfigError`.
    """

    name = "oracle"

    def __init__(self, *, pull: float = 0.0) -> None:
        self._sims: dict[RouteRef, MeshSimulator] = {}
        self.pull = pull

    def bind_simulator(self, sim: MeshSimulator) -> None:
        """Give the oracle the ground truth of `sim`'s route (one simulator per route)."""
        self._sims[sim.route] = sim

    def reset(self) -> None:
        """Forget bound simulators (a new episode binds its own); the state cache is kept."""
        self._sims.clear()

    def _state_for(self, sim: MeshSimulator, route: RouteRef) -> TrueState:
        """The true state the split is chosen for: the coming interval's."""
        return sim.true_state()

    def _split(self, sim: MeshSimulator, state: TrueState) -> tuple[int, ...]:
        """The weights written for `state`."""
        return hedged_weights(state, self.pull)

    def decide(self, obs: Observation) -> Weights:
        sim = self._sims.get(obs.route)
        if sim is None:
            raise ConfigError(
                f"the oracle needs the simulator's ground truth for route {obs.route.key}; "
                "it only runs in `meshpilot simulate`/`evaluate`"
            )
        state = self._state_for(sim, obs.route)
        split = self._split(sim, state)
        values = dict(zip((s.name for s in state.subsets), split, strict=True))
        if set(values) != set(obs.subsets):
            raise ConfigError(
                f"route {obs.route.key}: observation names {sorted(obs.subsets)}, "
                f"the simulator has {sorted(values)}"
            )
        return Weights(obs.subsets, [values[s] for s in obs.subsets])


class DelayedOraclePolicy(OraclePolicy):
    """The oracle's split for the true state of `delay_steps` control intervals ago.

    Why: a real controller learns what changed only from telemetry of intervals already
    served, so the oracle one interval late is what perfect inference from the last interval
    could reach without predicting the future; ``oracle-late`` in `meshpilot evaluate` shows
    how much of the gap between a policy and the oracle is reaction time, not skill.
    """

    name = "oracle-late"

    def __init__(self, delay_steps: int = 1, *, pull: float = 0.0) -> None:
        if delay_steps < 0:
            raise ConfigError(f"delay_steps must be >= 0, got {delay_steps}")
        super().__init__(pull=pull)
        self.delay_steps = delay_steps
        self._past: dict[RouteRef, list[TrueState]] = {}

    def reset(self) -> None:
        super().reset()
        self._past.clear()

    def _state_for(self, sim: MeshSimulator, route: RouteRef) -> TrueState:
        past = self._past.setdefault(route, [])
        past.append(sim.true_state())
        del past[: -(self.delay_steps + 1)]
        return past[0]


class HindsightOraclePolicy(DelayedOraclePolicy):
    """Everything the intervals already served could tell, nothing about the coming one: the
    oracle's split for the previous interval's true state (`oracle-late`), shedding load from
    subsets that still hold a backlog now (`drain_aware_weights`, horizon `horizon_s`).

    Why: `oracle-late` ignores queues, so right after a capacity loss it keeps feeding the
    subset that is still working off the first interval's backlog; a controller that read the
    served intervals perfectly would know of that queue (it is made of past arrivals). This
    is the tighter yardstick of what reaction time alone costs; ``oracle-hindsight`` in
    `meshpilot evaluate`.
    """

    name = "oracle-hindsight"

    def __init__(self, *, horizon_s: float = 10.0, pull: float = 0.0) -> None:
        if not (math.isfinite(horizon_s) and horizon_s > 0):
            raise ConfigError(f"horizon_s must be a positive number of seconds, got {horizon_s}")
        super().__init__(delay_steps=1, pull=pull)
        self.horizon_s = horizon_s

    def _split(self, sim: MeshSimulator, state: TrueState) -> tuple[int, ...]:
        return drain_aware_weights(sim, state, self.horizon_s, self.pull)[0]

"""The planner's arithmetic as arrays (agents.version_model), and batch decisions of the
planner and the supervisor.

Cases:
- `BalancedQueues.slow` is `slow_probability(..., balancer=...)` of exponential versions to
  rounding (1e-12 relative), over replicas 1..40, loads up to past capacity and latency
  bounds from 1 to 2000 ms, for the least-request and the random balancer (one flag per
  element);
- the service-time fit and the health inversion equal the one-version-at-a-time bisections
  they replace (written out here with `slow_probability` and `math`), for one version and for
  hundreds at once;
- `min_plus_splits` returns `min_plus_split`'s split for convex and non-convex tables, tables
  with identical rows (ties) and tables of different sizes in one call;
- the planner decides the same splits and keeps the same estimates batched as route after
  route (routes without hints, without rate, seen twice in a batch);
- the supervisor decides the same splits with the same notes batched as route after route,
  through a fault that makes it fall back, with a primary that has no `decide_many`; when the
  planner fails, every route of the batch gets the primary's split and a note.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agents.planner import PlannerPolicy
from agents.queueing import BalancedQueues, min_plus_split, min_plus_splits, slow_probability
from agents.registry import make_policy
from agents.supervisor import SupervisedPolicy
from agents.version_model import (
    HEALTH_RANGE,
    VersionModel,
    fit_service_ms_each,
    infer_health_each,
    shape,
)
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import parse_scenario
from meshcore.model import Observation, RouteRef, Weights


def _slow(
    model: VersionModel, rate: float, slo_ms: float, balancer: str = "least_request"
) -> float:
    return float(slow_probability(model, rate, slo_ms=slo_ms, balancer=balancer)[0])


def reference_p99(cap: float, service_ms: float, rate: float) -> float:
    replicas, svc = shape(cap, service_ms)
    model = VersionModel(replicas, svc, 0.0, 1.0)
    lo, hi = math.log(svc * 0.01), math.log(svc * 1e4)
    for _ in range(10):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if _slow(model, rate, math.exp(mid)) > 0.01 else (lo, mid)
    return math.exp(hi)


def reference_fit(cap: float, rate: float, p99: float) -> float:
    if rate >= 0.95 * cap:
        return math.nan
    lo, hi = math.log(1000.0 / cap), math.log(64 * 1000.0 / cap)
    if reference_p99(cap, math.exp(lo), rate) >= p99:
        return math.exp(lo)
    for _ in range(8):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if reference_p99(cap, math.exp(mid), rate) < p99 else (lo, mid)
    return math.exp(lo)


def reference_health(cap: float, service_ms: float, rate: float, ratio: float, slo: float) -> float:
    replicas, svc = shape(cap, service_ms)

    def slow(log_h: float) -> float:
        return _slow(VersionModel(replicas, svc, 0.0, math.exp(log_h)), rate, slo)

    lo, hi = math.log(HEALTH_RANGE[0]), math.log(HEALTH_RANGE[1])
    if slow(hi) >= ratio:
        return math.nan
    if slow(lo) <= ratio:
        return math.exp(lo)
    for _ in range(10):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if slow(mid) > ratio else (lo, mid)
    return math.exp(hi)


def test_the_tail_as_arrays_is_slow_probability() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    replicas = rng.integers(1, 41, n)
    service = rng.uniform(2.0, 100.0, n)
    health = rng.uniform(0.02, 1.5, n)
    mu = 1000.0 / service * health
    rate = rng.uniform(0.0, 1.2, n) * replicas * mu
    slo = rng.uniform(1.0, 2000.0, n)
    random = rng.random(n) < 0.5
    got = BalancedQueues(replicas, mu, rate, random).slow(slo)
    expected = [
        _slow(
            VersionModel(int(c), float(s), 0.0, float(h)),
            float(x),
            float(t),
            "random" if r else "least_request",
        )
        for c, s, h, x, t, r in zip(replicas, service, health, rate, slo, random, strict=True)
    ]
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-300)
    assert 0.05 < np.mean(np.asarray(expected) == 1.0) < 0.5  # past capacity and below
    several = (replicas > 1) & (rate > 0.8 * replicas * mu) & (rate < replicas * mu)
    queued = np.asarray(expected) > 1e-6
    # where replicas share the load near capacity, random queues more than least-request
    lr = BalancedQueues(replicas, mu, rate).slow(slo)
    assert np.all((got >= lr * (1 - 1e-12))[several & random & queued])
    assert np.any((got > 1.5 * lr)[several & random & queued])


@pytest.mark.parametrize("count", [1, 150])
def test_fits_and_health_equal_the_bisections_they_replace(count: int) -> None:
    rng = np.random.default_rng(count)
    cap = rng.uniform(20.0, 2000.0, count)
    rate = cap * rng.uniform(0.05, 1.0, count)
    p99 = rng.uniform(5.0, 400.0, count)
    fits = fit_service_ms_each(cap, rate, p99)
    expected = [reference_fit(*args) for args in zip(cap, rate, p99, strict=True)]
    assert np.allclose(fits, expected, rtol=1e-12, equal_nan=True)
    service = rng.uniform(2.0, 80.0, count)
    ratio = rng.uniform(0.0, 0.9, count)
    slo = rng.uniform(50.0, 1000.0, count)
    health = infer_health_each(cap, service, rate, ratio, slo)
    expected = [reference_health(*a) for a in zip(cap, service, rate, ratio, slo, strict=True)]
    assert np.allclose(health, expected, rtol=1e-12, equal_nan=True)
    if count > 1:  # both outcomes of each search occur
        assert np.isnan(fits).any() and not np.isnan(fits).all()
        assert np.isnan(health).any() and not np.isnan(health).all()


def test_min_plus_splits_are_the_dp_splits() -> None:
    rng = np.random.default_rng(1)
    convex = list(np.cumsum(rng.random((60, 8, 101)) * 0.01, axis=2) + rng.random((60, 8, 1)))
    rough = list(rng.random((60, 4, 101)))
    tied = [np.tile(np.cumsum(rng.random(101)), (3, 1)) for _ in range(10)]
    single = list(rng.random((5, 1, 101)))
    tables = [t for group in zip(convex, rough, tied * 6, single * 12, strict=False) for t in group]
    assert min_plus_splits(tables) == [min_plus_split(t) for t in tables]


def _scenario(n: int, load: float, fault: bool = False) -> dict[str, object]:
    subsets = [
        {"name": f"v{i}", "replicas": 1 + i % 3, "service_ms": 10.0 + 4 * i} for i in range(n)
    ]
    events = [{"at_s": 30, "subset": "v0", "set": {"error_rate": 0.3}}] if fault else []
    return {
        "name": f"m{n}",
        "duration_s": 600,
        "load": {"rps": load},
        "subsets": subsets,
        "events": events,
    }


def telemetry(ticks: int, fault: bool = False) -> list[list[Observation]]:
    """Per tick the routes of simulated meshes of 2..8 versions, each mesh read by two routes
    (the second with a tenth more traffic), one route without capacity hints, one seen twice."""
    sims = [
        MeshSimulator(parse_scenario(_scenario(n, 30.0 * n + 15 * (n % 3), fault)), seed=n)
        for n in range(2, 9)
    ]
    out = []
    for _ in range(ticks):
        tick = []
        for sim in sims:
            sim.step(sim.weights)
            obs = sim.observe()
            for j, f in enumerate((1.0, 1.1)):
                stats = tuple(dataclasses.replace(s, rps=s.rps * f) for s in obs.stats)
                route = RouteRef("ns", f"{obs.route.key}/{j}", "r", "h")
                tick.append(dataclasses.replace(obs, route=route, stats=stats))
        tick[3] = dataclasses.replace(tick[3], capacity_hint_rps=())
        tick.append(dataclasses.replace(tick[5], timestamp_s=tick[5].timestamp_s + 1.0))
        out.append(tick)
    return out


def test_the_planner_decides_the_same_batched_as_route_after_route() -> None:
    one_by_one, batched = PlannerPolicy(), PlannerPolicy()
    for tick in telemetry(16):
        expected, notes = [], []
        for obs in tick:
            expected.append(one_by_one.decide(obs))
            notes.append(one_by_one.last_note)
        assert batched.decide_many(tick) == expected
        assert batched.last_notes == notes and batched.last_note == notes[-1]
        for obs in tick:
            assert batched.estimates(obs.route) == one_by_one.estimates(obs.route)
            assert batched.modelled_bad(obs.route, obs.weights) == pytest.approx(
                one_by_one.modelled_bad(obs.route, obs.weights), rel=0.0, abs=0.0, nan_ok=True
            )


class Stubborn:
    """A primary without `decide_many` that always writes the same shares."""

    name = "stubborn"

    def decide(self, obs: Observation) -> Weights:
        n = len(obs.subsets)
        return Weights(obs.subsets, [100 - 10 * (n - 1)] + [10] * (n - 1))

    def reset(self) -> None:
        pass


@pytest.mark.parametrize("primary", ["ppo", "planner", "stubborn"])
def test_the_supervisor_decides_the_same_batched_as_route_after_route(primary: str) -> None:
    def make() -> SupervisedPolicy:
        if primary == "stubborn":
            return SupervisedPolicy(Stubborn())
        return SupervisedPolicy(make_policy(primary))

    one_by_one, batched = make(), make()
    fell_back = False
    for tick in telemetry(24, fault=True):
        expected, notes = [], []
        for obs in tick:
            expected.append(one_by_one.decide(obs))
            notes.append(one_by_one.last_note)
        assert batched.decide_many(tick) == expected
        assert batched.last_notes == notes
        assert batched.modes() == one_by_one.modes()
        fell_back = fell_back or "fallback" in batched.modes().values()
    assert fell_back, "the fault makes some route fall back"


def test_a_failing_planner_leaves_every_route_of_the_batch_to_the_policy() -> None:
    class Broken(PlannerPolicy):
        def decide_many(self, observations: object) -> list[Weights]:
            raise RuntimeError("boom")

    sup = SupervisedPolicy(Stubborn(), Broken())
    tick = telemetry(1)[0]
    assert sup.decide_many(tick) == [Stubborn().decide(obs) for obs in tick]
    assert all(note is not None and "boom" in note for note in sup.last_notes)

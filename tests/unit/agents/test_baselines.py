"""The fixed-rule baselines (agents.baselines) on hand-made observations.

Cases:
- equal splits evenly; proportional follows the capacity hint (and is equal without one);
- the square-root rule sums to the load, drops the slowest server at low load, and minimizes
  the mean M/M/1 response time (checked against a fine grid search);
- sqrt uses the observed route rate, fills dropped samples from weights, remembers the last
  rate through missing data, and falls back to proportional without a usable rate;
- greedy moves 5 points from the worst to the best subset, counts errors, waits out its
  cooldown, never moves healthy traffic, holds without data, and forgets on reset;
- canary follows Flagger: +10 per interval up to 50, promotion then 100 % primary; failed
  checks (errors, p99, no data) hold the weight and roll back after 5; nothing moves between
  intervals; multiple canaries share the canary weight by capacity;
- ewma gives less weight to the slower subset, its estimate jumps on a peak and decays
  slowly, and it moves only a fraction `gain` of the way each step;
- every baseline returns valid weights for arbitrary observations with NaNs (hypothesis),
  keeps its state per route and forgets it on reset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.baselines import (
    CanaryPolicy,
    EqualPolicy,
    EwmaPolicy,
    GreedyPolicy,
    ProportionalPolicy,
    SqrtPolicy,
    route_rps,
    sqrt_rule,
)
from meshcore.model import Observation, RouteRef, SubsetStats, Weights, largest_remainder

ROUTE = RouteRef("ns", "vs", "r", "host")
OTHER = RouteRef("ns", "vs2", "r", "host")
NAN = math.nan


def obs(
    weights: Sequence[int],
    *,
    rps: Sequence[float] | None = None,
    err: Sequence[float] | None = None,
    p99: Sequence[float] | None = None,
    caps: Sequence[float] = (),
    t: float = 0.0,
    route: RouteRef = ROUTE,
    names: Sequence[str] | None = None,
) -> Observation:
    n = len(weights)
    names = list(names or [f"v{i + 1}" for i in range(n)])
    rps = list(rps if rps is not None else [NAN] * n)
    err = list(err if err is not None else [0.0 if not math.isnan(r) else NAN for r in rps])
    p99 = list(p99 if p99 is not None else [NAN] * n)
    stats = tuple(
        SubsetStats(rps=rps[i], error_ratio=err[i], p99_ms=p99[i], weight=weights[i])
        for i in range(n)
    )
    return Observation(ROUTE if route is None else route, tuple(names), stats, t, 0.0, tuple(caps))


# ---- equal / proportional ---------------------------------------------------------------------
def test_equal_splits_evenly_and_proportional_follows_capacity() -> None:
    o = obs([100, 0, 0], caps=(200.0, 100.0, 100.0))
    assert EqualPolicy().decide(o).values_tuple == (34, 33, 33)
    assert ProportionalPolicy().decide(o).values_tuple == (50, 25, 25)
    assert ProportionalPolicy().decide(obs([50, 50])).values_tuple == (50, 50)


# ---- sqrt -------------------------------------------------------------------------------------
def test_sqrt_rule_sums_to_load_and_favours_fast_servers() -> None:
    mu, lam = [100.0, 60.0, 30.0], 152.0
    x = sqrt_rule(mu, lam)
    assert math.isclose(sum(x), lam)
    assert all(0 < xi < mi for xi, mi in zip(x, mu, strict=True))
    # faster servers run at a higher utilization than proportional splitting would give
    util = [xi / mi for xi, mi in zip(x, mu, strict=True)]
    assert util[0] > lam / sum(mu) > util[2]


def test_sqrt_rule_drops_slow_servers_at_low_load() -> None:
    x = sqrt_rule([100.0, 4.0], 20.0)
    assert x == [20.0, 0.0]


def test_sqrt_rule_minimizes_mean_mm1_latency() -> None:
    mu = np.array([100.0, 30.0])
    lam = 80.0
    grid = np.linspace(lam - mu[1] + 1e-6, mu[0] - 1e-6, 200001)
    mean_t = (grid / (mu[0] - grid) + (lam - grid) / (mu[1] - (lam - grid))) / lam
    best = grid[np.argmin(mean_t)]
    assert sqrt_rule(list(mu), lam)[0] == pytest.approx(best, abs=1e-2)


def test_sqrt_policy_uses_observed_rate() -> None:
    caps = (200.0, 80.0, 66.7)
    o = obs([58, 23, 19], rps=[160.0, 64.0, 53.0], caps=caps)
    expected = largest_remainder(sqrt_rule(list(caps), 277.0))
    assert SqrtPolicy().decide(o).values_tuple == tuple(expected)


def test_route_rps_fills_dropped_samples_from_weights() -> None:
    o = obs([50, 25, 25], rps=[100.0, NAN, 50.0])
    assert route_rps(o) == pytest.approx(150.0 * 100 / 75)
    assert math.isnan(route_rps(obs([50, 50])))


def test_sqrt_policy_without_rate_is_proportional_then_remembers_rate() -> None:
    caps = (200.0, 100.0)
    pol = SqrtPolicy()
    assert pol.decide(obs([50, 50], caps=caps)).values_tuple == (67, 33)
    with_rate = pol.decide(obs([67, 33], rps=[20.0, 10.0], caps=caps))
    assert with_rate.values_tuple != (67, 33)
    assert pol.decide(obs([67, 33], caps=caps)) == with_rate  # all samples dropped
    pol.reset()
    assert pol.decide(obs([67, 33], caps=caps)).values_tuple == (67, 33)


def test_sqrt_policy_at_overload_is_proportional() -> None:
    o = obs([50, 50], rps=[200.0, 200.0], caps=(300.0, 60.0))
    assert SqrtPolicy().decide(o).values_tuple == (83, 17)


def _bad(weights: list[int], t: float, route: RouteRef = ROUTE) -> Observation:
    """v1 far over its latency budget, v2 healthy."""
    return obs(weights, rps=[50.0, 50.0], p99=[1000.0, 100.0], t=t, route=route)


# ---- greedy -----------------------------------------------------------------------------------
def test_greedy_moves_five_points_from_worst_to_best() -> None:
    o = obs([40, 30, 30], rps=[40.0, 30.0, 30.0], p99=[900.0, 100.0, 300.0])
    assert GreedyPolicy().decide(o).values_tuple == (35, 35, 30)


def test_greedy_counts_errors_as_badness() -> None:
    o = obs([50, 50], rps=[50.0, 50.0], err=[0.05, 0.0], p99=[100.0, 200.0])
    assert GreedyPolicy().decide(o).values_tuple == (45, 55)


def test_greedy_leaves_healthy_routes_alone() -> None:
    o = obs([50, 50], rps=[50.0, 50.0], p99=[200.0, 50.0])
    assert GreedyPolicy().decide(o).values_tuple == (50, 50)


def test_greedy_waits_out_cooldown_and_smooths() -> None:
    pol = GreedyPolicy(cooldown_s=30.0)
    assert pol.decide(_bad([50, 50], 5.0)).values_tuple == (45, 55)
    assert pol.decide(_bad([45, 55], 10.0)).values_tuple == (45, 55)
    assert pol.decide(_bad([45, 55], 35.0)).values_tuple == (40, 60)
    # one good sample does not erase a bad history (smoothing)
    good_now = obs([40, 60], t=65.0, rps=[40.0, 60.0], p99=[100.0, 100.0])
    assert pol.decide(good_now).values_tuple == (35, 65)


def test_greedy_never_takes_more_than_the_donor_has_and_holds_without_data() -> None:
    pol = GreedyPolicy(step_points=20)
    o = obs([10, 90], rps=[10.0, 90.0], p99=[2000.0, 100.0])
    assert pol.decide(o).values_tuple == (0, 100)
    assert GreedyPolicy().decide(obs([30, 70])).values_tuple == (30, 70)


def test_greedy_state_is_per_route_and_reset_forgets() -> None:
    pol = GreedyPolicy(cooldown_s=100.0)
    assert pol.decide(_bad([50, 50], 0.0)).values_tuple == (45, 55)
    assert pol.decide(_bad([50, 50], 1.0, OTHER)).values_tuple == (45, 55)
    assert pol.decide(_bad([45, 55], 2.0)).values_tuple == (45, 55)  # cooling down
    pol.reset()
    assert pol.decide(_bad([45, 55], 2.0)).values_tuple == (40, 60)


# ---- canary -----------------------------------------------------------------------------------
def _healthy(weights: Weights, t: float) -> Observation:
    w = weights.values_tuple
    return obs(list(w), rps=[float(x) for x in w], p99=[100.0, 100.0], t=t)


def test_canary_steps_to_max_weight_then_promotes_to_primary() -> None:
    pol = CanaryPolicy()
    w = pol.decide(obs([100, 0], t=0.0))
    seen = []
    for k in range(1, 9):
        w = pol.decide(_healthy(w, 60.0 * k))
        seen.append(w.values_tuple[1])
    assert seen == [10, 20, 30, 40, 50, 50, 0, 0]
    assert pol.phase(ROUTE) == "succeeded"


def test_canary_promotion_to_canary_option() -> None:
    pol = CanaryPolicy(promotion="canary")
    w = pol.decide(obs([50, 50], t=0.0))
    for k in range(1, 4):
        w = pol.decide(_healthy(w, 60.0 * k))
    assert w.values_tuple == (0, 100)


def test_canary_holds_between_intervals() -> None:
    pol = CanaryPolicy()
    w = pol.decide(obs([90, 10], t=0.0))
    assert w.values_tuple == (90, 10)
    assert pol.decide(_healthy(w, 55.0)).values_tuple == (90, 10)
    assert pol.decide(_healthy(w, 60.0)).values_tuple == (80, 20)
    assert pol.decide(_healthy(w, 65.0)).values_tuple == (80, 20)


@pytest.mark.parametrize(
    ("err", "p99", "rps"),
    [(0.02, 100.0, 10.0), (0.0, 800.0, 10.0), (NAN, NAN, NAN)],
    ids=["errors", "latency", "no-data"],
)
def test_canary_failed_checks_hold_then_roll_back(err: float, p99: float, rps: float) -> None:
    pol = CanaryPolicy()
    w = pol.decide(obs([90, 10], t=0.0))
    weights = []
    for k in range(1, 8):
        o = obs(list(w.values_tuple), rps=[90.0, rps], err=[0.0, err], p99=[100.0, p99], t=60.0 * k)
        w = pol.decide(o)
        weights.append(w.values_tuple[1])
    assert weights == [10, 10, 10, 10, 10, 0, 0]
    assert pol.phase(ROUTE) == "failed"


def test_canary_splits_canary_weight_by_capacity() -> None:
    pol = CanaryPolicy()
    o = obs([100, 0, 0], caps=(100.0, 30.0, 10.0))
    pol.decide(o)
    w = pol.decide(obs([100, 0, 0], caps=(100.0, 30.0, 10.0), t=60.0))
    assert w.values_tuple == (90, 8, 2)


# ---- ewma -------------------------------------------------------------------------------------
def test_ewma_prefers_the_faster_subset_and_moves_by_gain() -> None:
    pol = EwmaPolicy(gain=1.0)
    o = obs([50, 50], rps=[10.0, 10.0], p99=[100.0, 300.0], caps=(100.0, 100.0))
    assert pol.decide(o).values_tuple == (75, 25)
    damped = EwmaPolicy(gain=0.2).decide(o)
    assert damped.values_tuple == (55, 45)


def test_ewma_estimate_jumps_on_peaks_and_decays_slowly() -> None:
    pol = EwmaPolicy(gain=1.0, decay_s=10.0)
    caps = (100.0, 100.0)
    pol.decide(obs([50, 50], rps=[1.0, 1.0], p99=[100.0, 100.0], caps=caps, t=0.0))
    peak = pol.decide(obs([50, 50], rps=[1.0, 1.0], p99=[400.0, 100.0], caps=caps, t=5.0))
    assert peak.values_tuple == (20, 80)
    after = pol.decide(obs([20, 80], rps=[1.0, 1.0], p99=[100.0, 100.0], caps=caps, t=10.0))
    # est = 400 e^-0.5 + 100 (1 - e^-0.5) ~ 282: still well below an even split
    assert 20 < after.values_tuple[0] < 30


def test_ewma_without_any_latency_is_proportional() -> None:
    o = obs([50, 50], caps=(300.0, 100.0))
    assert EwmaPolicy().decide(o).values_tuple == (75, 25)


# ---- every baseline ---------------------------------------------------------------------------
POLICIES = [EqualPolicy, ProportionalPolicy, SqrtPolicy, GreedyPolicy, CanaryPolicy, EwmaPolicy]
maybe = st.one_of(
    st.just(NAN),
    st.just(math.inf),
    st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
)
ratio = st.one_of(st.just(NAN), st.floats(min_value=0.0, max_value=1.0))


@st.composite
def observations(draw: st.DrawFn) -> list[Observation]:
    n = draw(st.integers(min_value=1, max_value=6))
    caps = draw(st.one_of(st.just(()), st.tuples(*[maybe] * n)))
    out = []
    for k in range(3):
        raw = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
        weights = largest_remainder(raw) if sum(raw) > 0 else largest_remainder([1.0] * n)
        out.append(
            obs(
                weights,
                rps=draw(st.lists(maybe, min_size=n, max_size=n)),
                err=draw(st.lists(ratio, min_size=n, max_size=n)),
                p99=draw(st.lists(maybe, min_size=n, max_size=n)),
                caps=caps,
                t=60.0 * k,
            )
        )
    return out


@pytest.mark.parametrize("factory", POLICIES, ids=lambda f: f.name)
@settings(max_examples=60, deadline=None)
@given(seq=observations())
def test_always_valid_weights(factory: type, seq: list[Observation]) -> None:
    pol = factory()
    for o in seq:
        w = pol.decide(o)
        assert isinstance(w, Weights)
        assert w.subsets == o.subsets


@pytest.mark.parametrize("factory", POLICIES, ids=lambda f: f.name)
def test_reset_restores_first_decision(factory: type) -> None:
    seq = [
        obs([70, 30], rps=[70.0, 30.0], p99=[900.0, 90.0], caps=(100.0, 50.0), t=60.0 * k)
        for k in range(4)
    ]
    pol = factory()
    first = [pol.decide(o) for o in seq]
    pol.reset()
    assert [pol.decide(o) for o in seq] == first

"""The oracle's queueing model and solver (agents.oracle).

Cases:
- Erlang C matches known values (M/M/1: rho; M/M/2 at a = 1: 1/3);
- the response-time tail is exact where theory is exact: M/M/1, and `random` balancing over c
  replicas (c independent M/M/1); the pooled M/M/c tail matches numerical integration of
  wait + service; with lognormal service at zero load it is the lognormal survival function,
  and under load the numerical convolution matches scipy's quad;
- least-request sits between pooled M/M/c and independent M/M/1; saturation means P = 1;
- the integer split the oracle picks is the best of all integer splits (brute force, 2 and 3
  subsets, both balancers, lognormal service, errors, saturation);
- expected_bad_fraction validates its input and matches a hand computation;
- OraclePolicy writes the optimum of the simulator's true state, needs a bound simulator,
  drains a failing subset, and beats capacity-proportional weights when a subset loses
  capacity;
- the hedged split (`hedged_weights`) is the exact integer optimum of the oracle's objective
  plus the pull towards `sqrt_anchor` (brute force), equals the oracle at pull 0, tends to the
  square-root split as the pull grows, and still drains a failing canary at a small pull;
- `miss_cost` is the mean rise of `expected_bad_fraction` over every one-point move away from
  the split (brute force), is ~0 at low load and larger on a knife edge, and refuses a split
  of the wrong length;
- the delayed oracle (`oracle-late`) writes the optimum of the state `delay_steps` intervals
  ago: it reacts to a capacity drop exactly one interval after the oracle, and with delay 0 is
  the oracle;
- the drain-aware state (the training teacher's, `drain_aware_state`) shrinks a backlogged
  subset within the route's spare capacity, and the hindsight oracle (`oracle-hindsight`)
  uses it: the late oracle's split while no queue builds, less weight for the subset still
  draining the first degraded interval's backlog, fewer bad requests than `oracle-late`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sstats

from agents.baselines import ProportionalPolicy, sqrt_rule
from agents.oracle import (
    DelayedOraclePolicy,
    HindsightOraclePolicy,
    OraclePolicy,
    drain_aware_state,
    drain_aware_weights,
    expected_bad_fraction,
    hedged_weights,
    miss_cost,
    optimal_weights,
    sqrt_anchor,
)
from agents.queueing import bad_probability, erlang_c, queue_tail, slow_probability
from agents.rollout import run_episode
from envs.simulator.engine import MeshSimulator, SubsetTruth, TrueState
from envs.simulator.scenario import Scenario, load_scenario, parse_scenario
from meshcore.errors import ConfigError
from meshcore.model import Observation, RouteRef, SubsetStats, Weights


def sub(
    name: str = "a",
    replicas: int = 1,
    service_ms: float = 20.0,
    dist: str = "exponential",
    cv: float = 1.0,
    error_rate: float = 0.0,
    capacity_factor: float = 1.0,
) -> SubsetTruth:
    return SubsetTruth(name, replicas, service_ms, dist, cv, error_rate, capacity_factor)


def state(load_rps: float, *subsets: SubsetTruth, balancer: str = "least_request") -> TrueState:
    return TrueState(0.0, load_rps, 250.0, 5000.0, balancer, tuple(subsets))


# ---- queueing formulas ------------------------------------------------------------------------
def test_erlang_c_known_values() -> None:
    a = np.array([0.0, 0.3, 0.8])
    assert np.allclose(erlang_c(1, a), a)
    assert erlang_c(2, np.array([1.0]))[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("rate", [0.0, 10.0, 40.0, 49.0])
def test_mm1_tail_is_exponential(rate: float) -> None:
    s = sub(service_ms=20.0)  # mu = 50/s
    p = slow_probability(s, rate, slo_ms=250.0, balancer="least_request")[0]
    assert p == pytest.approx(math.exp(-(50.0 - rate) * 0.25), rel=1e-9)


def test_random_balancing_is_independent_mm1_per_replica() -> None:
    s = sub(replicas=3, service_ms=20.0)
    p = slow_probability(s, 120.0, slo_ms=250.0, balancer="random")[0]
    assert p == pytest.approx(math.exp(-(50.0 - 40.0) * 0.25), rel=1e-9)


def _pooled_reference(c: int, mu: float, lam: float, t: float, svc: sstats.rv_continuous) -> float:
    """P(W + S > t) by quad: W = 0 w.p. 1 - C, else Exp(c mu - lam) (exponential-service law)."""
    cw = float(erlang_c(c, np.array([lam / mu]))[0])
    theta = c * mu - lam
    conv, _ = integrate.quad(lambda s: svc.pdf(s) * math.exp(-theta * (t - s)), 0.0, t, limit=200)
    return float(svc.sf(t)) + cw * conv


def test_pooled_mmc_tail_matches_numerical_convolution() -> None:
    p = float(queue_tail(2, 50.0, np.array([98.0]), 0.25, None, 1.0)[0])
    ref = _pooled_reference(2, 50.0, 98.0, 0.25, sstats.expon(scale=0.02))
    assert p == pytest.approx(ref, rel=1e-6)


def _lognormal(mean_s: float, cv: float) -> sstats.rv_continuous:
    sigma = math.sqrt(math.log1p(cv * cv))
    return sstats.lognorm(s=sigma, scale=mean_s * math.exp(-sigma * sigma / 2))


def test_lognormal_tail_at_zero_load_is_the_service_tail() -> None:
    s = sub(service_ms=25.0, dist="lognormal", cv=1.5)
    p = slow_probability(s, 0.0, slo_ms=250.0, balancer="least_request")[0]
    assert p == pytest.approx(float(_lognormal(0.025, 1.5).sf(0.25)), rel=1e-9)


def test_lognormal_convolution_matches_quad() -> None:
    cv, mean_s, lam = 1.5, 0.025, 28.0  # M/G/1 at rho = 0.7
    s = sub(service_ms=25.0, dist="lognormal", cv=cv)
    p = slow_probability(s, lam, slo_ms=250.0, balancer="random")[0]
    svc = _lognormal(mean_s, cv)
    theta = (40.0 - lam) / ((1 + cv * cv) / 2)
    conv, _ = integrate.quad(lambda x: svc.pdf(x) * math.exp(-theta * (0.25 - x)), 0, 0.25)
    assert p == pytest.approx(float(svc.sf(0.25)) + 0.7 * conv, rel=1e-6)


def test_least_request_between_pooled_and_independent() -> None:
    s = sub(replicas=4, service_ms=20.0)
    rate = 160.0
    lr = slow_probability(s, rate, slo_ms=250.0, balancer="least_request")[0]
    rnd = slow_probability(s, rate, slo_ms=250.0, balancer="random")[0]
    pooled = _pooled_reference(4, 50.0, rate, 0.25, sstats.expon(scale=0.02))
    assert pooled < lr < rnd


def test_saturated_subset_is_always_bad() -> None:
    s = sub(replicas=2, service_ms=20.0, error_rate=0.01)
    b = bad_probability(s, np.array([100.0, 150.0]), slo_ms=250.0, balancer="least_request")
    assert np.all(b == 1.0)


# ---- objective and solver -----------------------------------------------------------------------
def test_expected_bad_fraction_by_hand() -> None:
    st = state(40.0, sub("a", error_rate=0.1), sub("b", service_ms=10.0))
    # a: 20 rps on mu=50; b: 20 rps on mu=100
    pa = 0.1 + 0.9 * math.exp(-(50 - 20) * 0.25)
    pb = math.exp(-(100 - 20) * 0.25)
    assert expected_bad_fraction(st, [50, 50]) == pytest.approx(0.5 * pa + 0.5 * pb)
    assert expected_bad_fraction(st, [0.5, 0.5]) == pytest.approx(0.5 * pa + 0.5 * pb)
    with pytest.raises(ValueError):
        expected_bad_fraction(st, [1.0])
    with pytest.raises(ValueError):
        expected_bad_fraction(st, [0.0, 0.0])


def _brute_force(st: TrueState) -> float:
    n = len(st.subsets)
    best = math.inf
    for head in itertools.product(range(101), repeat=n - 1):
        if sum(head) <= 100:
            best = min(best, expected_bad_fraction(st, [*head, 100 - sum(head)]))
    return best


CASES = {
    "two-mm1": state(60.0, sub("a", service_ms=10.0), sub("b", service_ms=30.0)),
    "replicas-vs-fast": state(
        150.0, sub("a", replicas=3, service_ms=20.0), sub("b", replicas=1, service_ms=12.0)
    ),
    "random-balancer": state(
        200.0, sub("a", replicas=4), sub("b", replicas=2, service_ms=15.0), balancer="random"
    ),
    "lognormal-errors": state(
        150.0,
        sub("a", replicas=2, service_ms=20.0, error_rate=0.001),
        sub("b", replicas=2, service_ms=20.0, dist="lognormal", cv=1.5, error_rate=0.05),
    ),
    "three-subsets": state(
        277.0, sub("v1", replicas=4), sub("v2", replicas=2, service_ms=25.0), sub("v3", 1, 15.0)
    ),
    "three-degraded": state(
        180.0,
        sub("v1", replicas=3, capacity_factor=0.4),
        sub("v2", replicas=3),
        sub("v3", replicas=1, service_ms=30.0, dist="lognormal", cv=1.2),
    ),
    "overloaded-total": state(400.0, sub("a", replicas=2), sub("b", replicas=3)),
    "no-load": state(0.0, sub("a", error_rate=0.01), sub("b", error_rate=0.001)),
}


@pytest.mark.parametrize("name", CASES)
def test_oracle_split_is_the_best_integer_split(name: str) -> None:
    st = CASES[name]
    chosen = optimal_weights(st)
    assert sum(chosen) == 100 and all(0 <= w <= 100 for w in chosen)
    assert expected_bad_fraction(st, chosen) <= _brute_force(st) + 1e-9


def test_oracle_split_is_better_than_proportional_when_capacities_differ() -> None:
    st = CASES["three-subsets"]
    assert expected_bad_fraction(st, optimal_weights(st)) < expected_bad_fraction(st, [58, 23, 19])


# ---- the hedged split -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["two-mm1", "lognormal-errors", "three-subsets"])
@pytest.mark.parametrize("pull", [0.05, 0.5])
def test_hedged_split_is_the_best_integer_split_of_the_penalized_objective(name, pull) -> None:
    st = CASES[name]
    anchor = sqrt_anchor(st)

    def objective(weights: list[int]) -> float:
        shares = np.asarray(weights, dtype=np.float64) / 100.0
        return expected_bad_fraction(st, weights) + pull * float(np.sum((shares - anchor) ** 2))

    n = len(st.subsets)
    best = min(
        objective([*head, 100 - sum(head)])
        for head in itertools.product(range(101), repeat=n - 1)
        if sum(head) <= 100
    )
    assert objective(list(hedged_weights(st, pull))) <= best + 1e-7


def test_hedged_split_between_the_oracle_and_the_sqrt_rule() -> None:
    st = CASES["three-subsets"]
    caps = [s.capacity_rps for s in st.subsets]
    expected = np.asarray(sqrt_rule(caps, st.load_rps))
    assert np.allclose(sqrt_anchor(st), expected / expected.sum())
    assert hedged_weights(st, 0.0) == optimal_weights(st)
    strong = np.asarray(hedged_weights(st, 1e4), dtype=np.float64) / 100.0
    assert np.max(np.abs(strong - sqrt_anchor(st))) <= 0.01
    overloaded = CASES["overloaded-total"]
    caps = np.asarray([s.capacity_rps for s in overloaded.subsets])
    assert np.allclose(sqrt_anchor(overloaded), caps / caps.sum())
    with pytest.raises(ValueError, match="pull"):
        hedged_weights(st, -1.0)


def test_hedged_split_still_drains_a_failing_canary() -> None:
    sim = MeshSimulator(load_scenario("degraded-canary"), seed=0)
    healthy = hedged_weights(sim.true_state(t_s=300.0), 0.05)
    failing = hedged_weights(sim.true_state(t_s=1200.0), 0.05)
    assert failing[1] <= healthy[1] - 10


# ---- the cost of a miss -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["two-mm1", "lognormal-errors", "three-subsets"])
def test_miss_cost_is_the_mean_rise_over_one_point_moves(name: str) -> None:
    st = CASES[name]
    split = list(optimal_weights(st))
    here = expected_bad_fraction(st, split)
    rises = []
    for i, j in itertools.permutations(range(len(split)), 2):
        if split[i] >= 1 and split[j] <= 99:
            moved = list(split)
            moved[i] -= 1
            moved[j] += 1
            rises.append(expected_bad_fraction(st, moved) - here)
    assert miss_cost(st, split) == pytest.approx(max(float(np.mean(rises)), 0.0), abs=1e-8)


def test_miss_cost_is_small_at_low_load_and_large_on_a_knife_edge() -> None:
    calm = MeshSimulator(load_scenario("steady-50"), seed=0).true_state(t_s=100.0)
    edge = MeshSimulator(load_scenario("steady-90"), seed=0).true_state(t_s=100.0)
    low = miss_cost(calm, hedged_weights(calm, 0.05))
    high = miss_cost(edge, hedged_weights(edge, 0.05))
    assert 0.0 <= low < 1e-5
    assert high > 1e-3
    with pytest.raises(ValueError, match="3 subsets"):
        miss_cost(edge, [50, 50])


# ---- the policy ---------------------------------------------------------------------------------
def test_oracle_policy_writes_the_optimum_of_the_true_state() -> None:
    sim = MeshSimulator(load_scenario("steady-80").with_changes(duration_s=20.0), seed=0)
    pol = OraclePolicy()
    pol.bind_simulator(sim)
    w = pol.decide(sim.observe())
    assert w.values_tuple == optimal_weights(sim.true_state())


def test_oracle_needs_a_simulator() -> None:
    route = RouteRef("ns", "vs", "r", "h")
    o = Observation(route, ("a",), (SubsetStats(1.0, 0.0, 10.0, 100),), 0.0)
    with pytest.raises(ConfigError, match="simulator"):
        OraclePolicy().decide(o)


def test_oracle_drains_a_failing_canary_as_far_as_stable_capacity_allows() -> None:
    sc = load_scenario("degraded-canary")
    sim = MeshSimulator(sc, seed=0)
    names = [s.name for s in sc.subsets]
    healthy = dict(zip(names, optimal_weights(sim.true_state(t_s=300.0)), strict=True))
    failing = dict(zip(names, optimal_weights(sim.true_state(t_s=1200.0)), strict=True))
    assert failing["canary"] <= 0.7 * healthy["canary"], "a 10 % 5xx canary sheds a third or more"
    assert failing["canary"] > 0, "stable alone cannot carry the load: some canary must remain"


def _capacity_drop(*, duration_s: float, at_s: float) -> Scenario:
    """Two equal subsets at 180 rps; v1 keeps 40 % of its capacity from `at_s` on."""
    return parse_scenario(
        {
            "name": "drop",
            "duration_s": duration_s,
            "load": {"rps": 180},
            "subsets": [
                {"name": "v1", "replicas": 3, "service_ms": 20},
                {"name": "v2", "replicas": 3, "service_ms": 20},
            ],
            "events": [{"at_s": at_s, "subset": "v1", "set": {"capacity_factor": 0.4}}],
        }
    )


def test_oracle_beats_proportional_when_a_subset_loses_capacity() -> None:
    sc = _capacity_drop(duration_s=120, at_s=0)
    oracle, _ = run_episode(sc, OraclePolicy(), seed=1)
    prop, _ = run_episode(sc, ProportionalPolicy(), seed=1)
    assert oracle.requests == prop.requests  # same seed, same arrivals
    assert oracle.bad_fraction < 0.5 * prop.bad_fraction


def test_delayed_oracle_reacts_one_interval_after_the_oracle() -> None:
    sc = _capacity_drop(duration_s=60, at_s=30)
    _, now = run_episode(sc, OraclePolicy(), seed=2, trace=True)
    _, late = run_episode(sc, DelayedOraclePolicy(delay_steps=1), seed=2, trace=True)
    _, same = run_episode(sc, DelayedOraclePolicy(delay_steps=0), seed=2, trace=True)
    assert now is not None and late is not None and same is not None
    split_now = [w["v1"] for w in now.weights]
    assert split_now[5] == 50 and split_now[6] < 40  # the drop starts the 7th interval (30 s)
    assert [w["v1"] for w in late.weights] == split_now[:1] + split_now[:-1]
    assert same.weights == now.weights
    with pytest.raises(ConfigError, match="delay_steps"):
        DelayedOraclePolicy(delay_steps=-1)


def test_drain_aware_state_sheds_a_backlogged_subset() -> None:
    sim = MeshSimulator(load_scenario("steady-80"), seed=0)
    state = sim.true_state()
    assert drain_aware_state(sim, state, 10.0) is state  # no queues yet
    overload = Weights(sim.subsets, (30, 30, 40))  # v3 (one replica) gets far too much
    for _ in range(3):
        sim.step(overload)
    state = sim.true_state()
    drained = drain_aware_state(sim, state, 10.0)
    assert drained.subsets[2].capacity_factor < state.subsets[2].capacity_factor
    assert optimal_weights(drained)[2] < optimal_weights(state)[2]
    # the cuts use at most half the spare capacity, so the reduced route stays feasible
    spare = sum(s.capacity_rps for s in state.subsets) - state.load_rps
    cut = sum(s.capacity_rps for s in state.subsets) - sum(s.capacity_rps for s in drained.subsets)
    assert 0 < cut <= 0.5 * spare + 0.02 * max(s.capacity_rps for s in state.subsets)


def test_hindsight_oracle_sheds_the_backlog_the_late_oracle_ignores() -> None:
    sc = _capacity_drop(duration_s=60, at_s=30)
    late_summary, late = run_episode(sc, DelayedOraclePolicy(delay_steps=1), seed=2, trace=True)
    hind_summary, hind = run_episode(sc, HindsightOraclePolicy(), seed=2, trace=True)
    assert late is not None and hind is not None
    v1_late = [w["v1"] for w in late.weights]
    v1_hind = [w["v1"] for w in hind.weights]
    assert v1_hind[:7] == v1_late[:7] == [50] * 7  # no queue before the drop is seen
    assert v1_late[7:] == [26] * 5
    assert v1_hind[7] < 26 and v1_hind[-1] == 26  # sheds v1's backlog, then the plain split
    assert hind_summary.bad_fraction < late_summary.bad_fraction
    with pytest.raises(ConfigError, match="horizon_s"):
        HindsightOraclePolicy(horizon_s=0.0)


def test_drain_aware_weights_are_the_plain_split_without_a_backlog() -> None:
    sim = MeshSimulator(load_scenario("steady-80"), seed=0)
    state_now = sim.true_state()
    assert drain_aware_weights(sim, state_now, 10.0, 0.05) == (
        hedged_weights(state_now, 0.05),
        state_now,
    )

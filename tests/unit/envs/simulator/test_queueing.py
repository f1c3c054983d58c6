"""The simulator against queueing closed forms (../shared/FACTS.md, "Queueing references").

Cases: one exponential replica at 80 % load matches M/M/1 mean and p99 within 5 %; c replicas
with random assignment match M/M/1 at 1/c of the load; least-request lies between M/M/c
(Erlang-C) and that; configured 5xx rates are reproduced within sampling error; timeouts count
as errors; a same-seed run is exactly repeatable; the per-replica backlog is zero when idle,
grows under overload on the overloaded subset only, and drains at the replicas' rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.simulator.engine import EpisodeSummary, MeshSimulator
from envs.simulator.scenario import parse_scenario
from meshcore import Weights

MU = 1000.0  # rps per replica: service_ms = 1


def _run(
    replicas: int,
    load: float,
    balancer: str,
    *,
    duration_s: float = 1500,
    error_rate: float = 0.0,
    timeout_ms: float = 1e7,
    seed: int = 7,
) -> EpisodeSummary:
    sc = parse_scenario(
        {
            "name": "closed-form",
            "duration_s": duration_s,
            "step_s": 5,
            "slo_ms": 1000,
            "timeout_ms": timeout_ms,
            "load": {"rps": load * MU * replicas},
            "subsets": [
                {
                    "name": "a",
                    "replicas": replicas,
                    "service_ms": 1000 / MU,
                    "error_rate": error_rate,
                }
            ],
            "balancer": balancer,
        }
    )
    sim = MeshSimulator(sc, seed=seed)
    w = Weights(["a"], [100])
    while not sim.done:
        sim.step(w)
    return sim.summary()


def _mm1(rate: float, mu: float) -> tuple[float, float]:
    """Mean and p99 response time (ms) of M/M/1: T ~ Exp(mu - rate)."""
    return 1000 / (mu - rate), 1000 * math.log(100) / (mu - rate)


def _erlang_c_mean_ms(c: int, rate: float, mu: float) -> float:
    a = rate / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return 1000 * (1 / mu + p_wait / (c * mu - rate))


def test_single_replica_matches_mm1() -> None:
    s = _run(1, 0.8, "random")
    mean, p99 = _mm1(0.8 * MU, MU)
    assert s.mean_ms == pytest.approx(mean, rel=0.05)
    assert s.p99_ms == pytest.approx(p99, rel=0.05)


def test_random_assignment_is_mm1_at_one_cth_of_the_load() -> None:
    s = _run(3, 0.8, "random")
    mean, p99 = _mm1(0.8 * MU, MU)
    assert s.mean_ms == pytest.approx(mean, rel=0.05)
    assert s.p99_ms == pytest.approx(p99, rel=0.05)


def test_least_request_lies_between_mmc_and_random() -> None:
    s = _run(3, 0.8, "least_request")
    mmc = _erlang_c_mean_ms(3, 3 * 0.8 * MU, MU)
    random_mean, _ = _mm1(0.8 * MU, MU)
    assert mmc * 0.98 <= s.mean_ms <= random_mean
    assert s.mean_ms < 0.8 * random_mean, "two choices should clearly beat random assignment"


def test_error_rate_matches_configuration() -> None:
    s = _run(2, 0.5, "random", duration_s=300, error_rate=0.05)
    sigma = math.sqrt(0.05 * 0.95 / s.requests)
    assert abs(s.error_rate - 0.05) < 4 * sigma
    assert s.bad_fraction >= s.error_rate


def test_timeouts_are_errors() -> None:
    s = _run(1, 0.9, "random", duration_s=300, timeout_ms=5)
    # P(T > 5 ms) for M/M/1 with mu - rate = 100/s is exp(-0.5)
    assert s.error_rate == pytest.approx(math.exp(-0.5), rel=0.08)
    assert s.p99_ms <= 5.0 + 1e-9


def test_overload_is_bounded_by_the_circuit_breaker() -> None:
    s = _run(1, 1.5, "random", duration_s=60)
    assert s.error_rate > 0.2
    assert math.isfinite(s.mean_ms)


def test_same_seed_same_run_and_other_seed_differs() -> None:
    a = _run(2, 0.7, "least_request", duration_s=100, seed=1)
    b = _run(2, 0.7, "least_request", duration_s=100, seed=1)
    c = _run(2, 0.7, "least_request", duration_s=100, seed=2)
    assert a == b
    assert a != c


def test_arrival_trace_does_not_depend_on_weights() -> None:
    sc = parse_scenario(
        {
            "name": "two",
            "duration_s": 50,
            "load": {"rps": 100},
            "subsets": [
                {"name": "a", "replicas": 1, "service_ms": 5},
                {"name": "b", "replicas": 1, "service_ms": 5},
            ],
        }
    )
    totals = []
    for split in ((100, 0), (50, 50), (0, 100)):
        sim = MeshSimulator(sc, seed=3)
        w = Weights(["a", "b"], list(split))
        totals.append([sim.step(w).total for _ in range(10)])
    assert totals[0] == totals[1] == totals[2]


def test_weights_split_traffic() -> None:
    sc = parse_scenario(
        {
            "name": "split",
            "duration_s": 100,
            "load": {"rps": 1000},
            "subsets": [
                {"name": "a", "replicas": 2, "service_ms": 1},
                {"name": "b", "replicas": 2, "service_ms": 1},
                {"name": "c", "replicas": 2, "service_ms": 1},
            ],
        }
    )
    sim = MeshSimulator(sc, seed=0)
    w = Weights(["a", "b", "c"], [70, 30, 0])
    counts = np.sum([sim.step(w).count for _ in range(20)], axis=0)
    shares = counts / counts.sum()
    assert shares[0] == pytest.approx(0.7, abs=0.01)
    assert shares[2] == 0
    obs = sim.observe()
    assert obs.stat("c").rps == 0 and math.isnan(obs.stat("c").p99_ms)
    assert obs.stat("a").rps == pytest.approx(700, rel=0.05)


def test_replica_backlog_grows_under_overload_and_drains() -> None:
    sc = parse_scenario(
        {
            "name": "backlog",
            "duration_s": 60,
            "load": {"rps": 300},
            "subsets": [
                {"name": "a", "replicas": 2, "service_ms": 20},
                {"name": "b", "replicas": 1, "service_ms": 1},
            ],
        }
    )
    sim = MeshSimulator(sc, seed=3)
    assert sim.replica_backlog_s(0).shape == (2,)
    assert sim.replica_backlog_s(0).sum() == sim.replica_backlog_s(1).sum() == 0.0
    sim.step(Weights(("a", "b"), (100, 0)))  # 300 rps on 100 rps of capacity for 5 s
    backlog = sim.replica_backlog_s(0)
    assert backlog.min() > 6.0  # ~1000 queued requests x 20 ms, shared by two replicas
    assert sim.replica_backlog_s(1).sum() == 0.0
    sim.step(Weights(("a", "b"), (0, 100)))  # a gets nothing: its replicas work 5 s of it off
    assert sim.replica_backlog_s(0) == pytest.approx(backlog - 5.0, abs=1e-9)


def test_least_request_draws_both_choices_independently_as_envoy_does() -> None:
    """Exact small case: two replicas, replica 0 busy with one long request, replica 1 idle.

    Envoy draws its two choices independently, so a request goes to the busy replica only when
    both draws name it: of the four equally likely draw pairs {0, 1}^2, exactly one. (Drawing
    two distinct replicas, as join-the-shortest-of-two, would never pick it.)
    """
    from envs.simulator import kernel

    grid = np.array([0.25, 0.75])  # u < 0.5 draws replica 0, u >= 0.5 replica 1
    u1 = np.concatenate([[0.0], np.repeat(grid, 2)])
    u2 = np.concatenate([[0.0], np.tile(grid, 2)])
    n = u1.size
    arrivals = np.arange(n) * 1e-3  # 1 ms apart; the first request holds replica 0 for 100 s
    std_exp = np.concatenate([[1.0], np.zeros(n - 1)])  # the others take no time at all
    free_at = np.zeros(2)
    deps = np.zeros((2, 16))
    head = np.zeros(2, dtype=np.int64)
    tail = np.zeros(2, dtype=np.int64)
    edges = np.array([0.1, 1.0])
    kernel.simulate_step(
        arrivals, np.zeros(n), u1, u2, std_exp, np.zeros(n), np.ones(n),
        np.array([1.0]), np.array([2], dtype=np.int64), np.array([0], dtype=np.int64),
        np.array([kernel.DIST_EXPONENTIAL], dtype=np.int64), np.array([100.0]),
        np.zeros(1), np.zeros(1), np.zeros(1), kernel.BALANCER_LEAST_REQUEST,
        1000.0, 1.0, 1000, free_at, deps, head, tail, edges,
        np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64),
        np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.zeros(1),
        np.zeros((1, 3), dtype=np.int64),
    )  # fmt: skip
    # replica 0: the long request and the one whose two draws both named it
    assert tail.tolist() == [2, 3]

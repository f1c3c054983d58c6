"""The planner's model of one version, and its fits to telemetry.

A version is modelled as `replicas` FCFS servers of exponential service time behind Envoy's
least-request balancer, or a random one (`agents.queueing.BalancedQueues`), at
`capacity_factor` (its health) times its nominal capacity. The planner (`agents.planner`)
fits two numbers per version from telemetry with the functions here: the healthy service
time (from a p99 at a rate, `fit_service_ms_each`) and the health (from a slow ratio at a
rate, `infer_health_each`). Each works on arrays, so a tick's versions of every route are
fitted at once; the scalar forms serve tests and one-off checks. A route's balancer
(`Observation.balancer`) sets how much a version near its capacity queues: each replica
fed at random queues alone, while least-request sends a request to the shorter of two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agents.queueing import BalancedQueues

HEALTH_RANGE = (0.02, 1.5)
"""Bounds of the estimated capacity factor."""


@dataclass(frozen=True)
class VersionModel:
    """One version as the planner believes it is; satisfies `agents.queueing.QueueParams`."""

    replicas: int
    service_ms: float
    error_rate: float
    capacity_factor: float
    service_dist: str = "exponential"
    cv: float = 1.0

    @property
    def mu_rps(self) -> float:
        return 1000.0 / self.service_ms * self.capacity_factor

    @property
    def capacity_rps(self) -> float:
        return self.replicas * self.mu_rps


def shape(capacity_rps: float, service_ms: float) -> tuple[int, float]:
    """(replicas, service time in ms) with replicas / service time = `capacity_rps` exactly."""
    replicas = max(1, round(capacity_rps * service_ms / 1000.0))
    return replicas, replicas * 1000.0 / capacity_rps


def _shape_each(capacity_rps: np.ndarray, service_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`shape` elementwise."""
    replicas = np.maximum(1, np.round(capacity_rps * service_ms / 1000.0)).astype(np.int64)
    return replicas, replicas * 1000.0 / capacity_rps


def _arrays(*values: npt.ArrayLike) -> list[np.ndarray]:
    return [np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in values]


def _exp_each(x: np.ndarray) -> np.ndarray:
    """`math.exp` elementwise: numpy's exp may differ in the last bit, and these are results
    the planner compares and keeps."""
    return np.array([math.exp(v) for v in x.tolist()], dtype=np.float64)


def _log_each(x: np.ndarray) -> np.ndarray:
    """`math.log` elementwise (the bounds of a search, as the scalar code had them)."""
    return np.array([math.log(v) for v in x.tolist()], dtype=np.float64)


_TREE_POINTS = 256
"""Most points a bisection evaluates in one call (`_bisect`): few small calls cost numpy's
per-call overhead, few big ones its arithmetic."""


def _bisect(
    lo: np.ndarray, hi: np.ndarray, steps: int, above: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """`steps` steps of the bisection ``mid = (lo + hi) / 2; lo, hi = (mid, hi) if above(mid)
    else (lo, mid)`` on arrays (n,), with the same floats. `above` gets an (n, m) array:
    a few levels of the tree of midpoints at once, as many as `_TREE_POINTS` allows."""
    n = lo.shape[0]
    rows = np.arange(n)
    depth = 1
    while depth < steps and n * (2 ** (depth + 1) - 1) <= _TREE_POINTS:
        depth += 1
    while steps > 0:
        levels = min(depth, steps)
        los, his, mids = lo[:, None], hi[:, None], []
        for _ in range(levels):
            mid = (los + his) / 2.0
            mids.append(mid)
            lows, highs = np.empty((n, 2 * mid.shape[1])), np.empty((n, 2 * mid.shape[1]))
            lows[:, 0::2], lows[:, 1::2] = los, mid  # children (lo, mid) and (mid, hi)
            highs[:, 0::2], highs[:, 1::2] = mid, his
            los, his = lows, highs
        verdict = above(np.concatenate(mids, axis=1))
        node, first = np.zeros(n, dtype=np.int64), 0
        for level in range(levels):
            node = 2 * node + verdict[rows, first + node]
            first += 2**level
        lo, hi = los[rows, node], his[rows, node]
        steps -= levels
    return lo, hi


def model_p99_ms_each(
    capacity_rps: npt.ArrayLike,
    service_ms: npt.ArrayLike,
    rate_rps: npt.ArrayLike,
    random: npt.ArrayLike = False,
) -> np.ndarray:
    """The model's p99 latency (ms) of healthy versions fed `rate_rps` behind a least-request
    balancer, or a random one where `random` (arrays that broadcast together; bisection on
    the tail, to 1.3 % of its 1e6 range: p99 only needs to be near)."""
    cap, service, rate, rnd = np.broadcast_arrays(
        *_arrays(capacity_rps, service_ms, rate_rps), np.atleast_1d(np.asarray(random, dtype=bool))
    )
    replicas, svc = _shape_each(cap.ravel(), service.ravel())
    queues = BalancedQueues(
        replicas[:, None], (1000.0 / svc)[:, None], rate.reshape(-1, 1), rnd.reshape(-1, 1)
    )
    _, hi = _bisect(
        _log_each(svc * 0.01), _log_each(svc * 1e4), 10, lambda mid: queues.slow(np.exp(mid)) > 0.01
    )
    return _exp_each(hi).reshape(cap.shape)


def model_p99_ms(
    capacity_rps: float, service_ms: float, rate_rps: float, random: bool = False
) -> float:
    """`model_p99_ms_each` of one version (ms)."""
    return float(model_p99_ms_each(capacity_rps, service_ms, rate_rps, random)[0])


def fit_service_ms_each(
    capacity_rps: npt.ArrayLike,
    rate_rps: npt.ArrayLike,
    p99_ms: npt.ArrayLike,
    random: npt.ArrayLike = False,
) -> np.ndarray:
    """Mean service times (ms) at which healthy versions of nominal capacity `capacity_rps`
    fed `rate_rps` behind a least-request balancer (a random one where `random`) have p99
    `p99_ms` in the model; NaN from 95 % of capacity on, where the p99 says nothing about it.
    Searched from one replica up to 64 (bisection in log space to 1.6 %)."""
    cap, rate, p99 = _arrays(capacity_rps, rate_rps, p99_ms)
    rnd = np.broadcast_to(np.asarray(random, dtype=bool), cap.shape)
    out = np.full(cap.shape, np.nan)
    todo = np.flatnonzero(~(rate >= 0.95 * cap))
    if not todo.size:
        return out
    cap, rate, p99, rnd = cap[todo], rate[todo], p99[todo], rnd[todo]
    floor = _log_each(1000.0 / cap)
    at_floor = model_p99_ms_each(cap, np.exp(floor), rate, rnd) >= p99
    lo, _ = _bisect(
        floor,
        _log_each(64 * 1000.0 / cap),
        8,
        lambda mid: (
            model_p99_ms_each(cap[:, None], np.exp(mid), rate[:, None], rnd[:, None]) < p99[:, None]
        ),
    )
    out[todo] = _exp_each(np.where(at_floor, floor, lo))
    return out


def fit_service_ms(
    capacity_rps: float, rate_rps: float, p99_ms: float, random: bool = False
) -> float | None:
    """`fit_service_ms_each` of one observation; None where it is NaN."""
    fit = float(fit_service_ms_each(capacity_rps, rate_rps, p99_ms, random)[0])
    return None if math.isnan(fit) else fit


_HEALTH_LOG = (math.log(HEALTH_RANGE[0]), math.log(HEALTH_RANGE[1]))
_HEALTH_FLOOR = math.exp(_HEALTH_LOG[0])


def infer_health_each(
    capacity_rps: npt.ArrayLike,
    service_ms: npt.ArrayLike,
    rate_rps: npt.ArrayLike,
    slow_ratio: npt.ArrayLike,
    slo_ms: npt.ArrayLike,
    random: npt.ArrayLike = False,
) -> np.ndarray:
    """Capacity factors at which the model's P(latency > slo_ms) at `rate_rps` is
    `slow_ratio` (arrays of one shape; a random balancer where `random`, else least-request).

    Clipped below to `HEALTH_RANGE`; NaN where even the best health in range predicts as many
    slow requests (a lightly loaded version: the ratio says nothing). The modelled slow
    probability falls as the factor rises, so a bisection in log space finds it (to 0.4 %)."""
    cap, service, rate, ratio, slo = _arrays(capacity_rps, service_ms, rate_rps, slow_ratio, slo_ms)
    replicas, svc = _shape_each(cap, service)
    base_mu = 1000.0 / svc
    rnd = np.broadcast_to(np.asarray(random, dtype=bool), cap.shape)[:, None]

    def slow(log_h: np.ndarray) -> np.ndarray:
        mu = base_mu[:, None] * np.exp(log_h)
        return BalancedQueues(replicas[:, None], mu, rate[:, None], rnd).slow(slo[:, None])

    lo = np.full(cap.shape, _HEALTH_LOG[0])
    hi = np.full(cap.shape, _HEALTH_LOG[1])
    ends = slow(np.stack([hi, lo], axis=1))
    no_evidence = ends[:, 0] >= ratio  # no slower than the model at its best health
    at_floor = ends[:, 1] <= ratio
    _, hi = _bisect(lo, hi, 10, lambda mid: slow(mid) > ratio[:, None])
    found = np.where(at_floor, _HEALTH_FLOOR, _exp_each(hi))
    return np.where(no_evidence, np.nan, found)


def infer_health_from_p99_each(
    capacity_rps: npt.ArrayLike,
    service_ms: npt.ArrayLike,
    rate_rps: npt.ArrayLike,
    p99_ms: npt.ArrayLike,
    random: npt.ArrayLike = False,
) -> np.ndarray:
    """Capacity factors at which the model's p99 at `rate_rps` is `p99_ms` (arrays of one
    shape; a random balancer where `random`, else least-request), within `HEALTH_RANGE`: the
    model's p99 falls as the factor rises (capacity C h, service time m / h), so a bisection
    in log space finds it (to 0.4 %)."""
    cap, service, rate, p99 = _arrays(capacity_rps, service_ms, rate_rps, p99_ms)
    rnd = np.broadcast_to(np.asarray(random, dtype=bool), cap.shape)
    lo = np.full(cap.shape, _HEALTH_LOG[0])
    hi = np.full(cap.shape, _HEALTH_LOG[1])

    def above(mid: np.ndarray) -> np.ndarray:
        h = np.exp(mid)
        modelled = model_p99_ms_each(
            cap[:, None] * h, service[:, None] / h, rate[:, None], rnd[:, None]
        )
        return modelled > p99[:, None]

    _, hi = _bisect(lo, hi, 10, above)
    return _exp_each(hi)


def infer_health(
    capacity_rps: float,
    service_ms: float,
    rate_rps: float,
    slow_ratio: float,
    slo_ms: float,
    random: bool = False,
) -> float | None:
    """`infer_health_each` of one observation; None where it is NaN."""
    health = float(
        infer_health_each(capacity_rps, service_ms, rate_rps, slow_ratio, slo_ms, random)[0]
    )
    return None if math.isnan(health) else health

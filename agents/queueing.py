"""Response-time tails of one service version under load, and the exact integer split solver.

Why a module of its own: the oracle (`agents.oracle`, true parameters from the simulator) and
the planner (`agents.planner`, parameters estimated from telemetry) minimize the same
objective, and the planner runs in the serving path, which must import neither the simulator
(numba) nor torch: this module needs numpy only. A version is described by `QueueParams`
(replicas, per-replica service rate after the capacity factor, service-time distribution and
cv, error rate).

* Pooled FCFS M/M/c (Erlang C): ``P(W > 0) = C(c, a)``, and given a wait, W ~ Exp(c mu - x);
  T = W + S. Exact for exponential service and a shared queue.
* Non-exponential (lognormal) service, M/G/c: keep ``P(W > 0) = C(c, a)`` and stretch the
  conditional wait by the Allen-Cunneen / Kingman factor ``(1 + cv^2) / 2`` (exact in mean for
  M/G/1 by Pollaczek-Khinchine); the service-time part keeps its true lognormal law, and the
  convolution of the exponential wait with it is integrated numerically (Gauss-Legendre in
  log-service space).
* ``balancer: random``: each of the c replicas is its own M/G/1 fed at x / c (exact for
  exponential service: random splitting of a Poisson stream is Poisson).
* ``balancer: least_request`` (Envoy's power of two choices, per replica FCFS queues): no
  closed form. Pooled M/G/c is too optimistic (a free replica takes any waiting request),
  independent M/G/1 too pessimistic. We interpolate geometrically,
  ``P = P_pooled^alpha * P_random^(1 - alpha)``, with alpha fitted to the simulator's
  least-request balancer, which draws its two choices independently as Envoy does (SLO =
  8..25 mean service times, c = 2..8 replicas, utilization rho = 0.5..0.95, exponential and
  lognormal service): ``alpha = min(1, 0.5 + 1.25 * max(rho - 0.8, 0) + 0.05 [c == 2])``.
  Where the tail is >= 1e-4 the modelled tail is within 0.5x..1.6x of the simulated one for
  90 % of the grid (median 1.02x), where either extreme is off by 2-100x; for c = 1 all three
  coincide and are exact. `bench/least_request_fit.py` refits and prints these numbers.
* A subset at or above its capacity (x >= c mu) gets P = 1: its queue grows without bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from meshcore.model import WEIGHT_TOTAL, largest_remainder

_TIE_BREAK = 1e-9
"""Objective penalty per squared unit share away from the capacity-proportional split; far
below any real difference in bad fraction (1e-9 at most), it only orders exact ties."""


class QueueParams(Protocol):
    """One version as the queueing model sees it; `envs.simulator.engine.SubsetTruth` is one.

    replicas: FCFS servers; service_ms: mean service time at capacity factor 1 (ms);
    service_dist: "exponential" or "lognormal" (with coefficient of variation `cv`);
    error_rate: 5xx probability of a served request (0..1); capacity_factor: divides the
    service time; mu_rps / capacity_rps: one replica's / all replicas' service rate (rps).
    """

    @property
    def replicas(self) -> int: ...
    @property
    def service_dist(self) -> str: ...
    @property
    def cv(self) -> float: ...
    @property
    def error_rate(self) -> float: ...
    @property
    def mu_rps(self) -> float: ...
    @property
    def capacity_rps(self) -> float: ...


def least_request_alpha(servers: int, utilization: np.ndarray) -> np.ndarray:
    """Weight (0..1) of the pooled M/G/c tail vs per-replica M/G/1 for Envoy's least-request
    balancer at `utilization` (0..1) with `servers` replicas; fitted to the simulator."""
    rho = np.asarray(utilization, dtype=np.float64)
    bonus = 0.05 if servers == 2 else 0.0
    return np.minimum(1.0, 0.5 + 1.25 * np.maximum(rho - 0.8, 0.0) + bonus)


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(64)
_Z_LOW = -8.5
"""Lower end of the standard-normal integration range for lognormal service (P < 1e-17)."""


def erlang_c(servers: int, offered_erlangs: np.ndarray) -> np.ndarray:
    """Erlang C: probability that an arrival waits in an M/M/c queue.

    `offered_erlangs` a = x / mu (arrival rate over one server's rate); valid for a < c, where it
    is computed through the numerically stable Erlang B recursion.
    """
    a = np.asarray(offered_erlangs, dtype=np.float64)
    b = np.ones_like(a)
    for k in range(1, servers + 1):
        b = a * b / (k + a * b)
    rho = a / servers
    with np.errstate(divide="ignore", invalid="ignore"):
        c = b / (1.0 - rho * (1.0 - b))
    return np.clip(np.nan_to_num(c, nan=1.0), 0.0, 1.0)


def lognormal_params(mean_s: float, cv: float) -> tuple[float, float]:
    sigma2 = math.log1p(cv * cv)
    return math.log(mean_s) - sigma2 / 2.0, math.sqrt(sigma2)


def queue_tail(
    servers: int,
    mu: float,
    rate: np.ndarray,
    t: float,
    lognormal: tuple[float, float] | None,
    stretch: float,
) -> np.ndarray:
    """P(T > t) for a pooled FCFS queue with `servers` servers of rate `mu` (1/s), arrivals `rate`
    (1/s, array), t in s; `lognormal` = (m, sigma) of the service law or None for exponential,
    `stretch` the M/G/c factor on the conditional wait. Rates at or above capacity give 1."""
    capacity = servers * mu
    stable = rate < capacity * (1.0 - 1e-9)
    x = np.where(stable, rate, 0.0)
    wait_prob = erlang_c(servers, x / mu)
    theta = (capacity - x) / stretch  # rate of the conditional (exponential) wait, 1/s
    if lognormal is None:
        svc_tail = math.exp(-mu * t)
        d = theta - mu
        small = np.abs(d * t) < 1e-7
        safe_d = np.where(small, 1.0, d)
        conv = np.where(
            small, mu * t * svc_tail, mu * (svc_tail - np.exp(-theta * t)) / safe_d
        )  # int_0^t f_S(s) exp(-theta (t - s)) ds
    else:
        m, sigma = lognormal
        z_t = (math.log(t) - m) / sigma
        svc_tail = 0.5 * math.erfc(z_t / math.sqrt(2.0))
        if z_t <= _Z_LOW:
            conv = np.zeros_like(x)
        else:
            half = (z_t - _Z_LOW) / 2.0
            z = _Z_LOW + half * (_GL_NODES + 1.0)
            phi = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
            s = np.exp(m + sigma * z)
            weights = half * _GL_WEIGHTS * phi
            conv = np.exp(-np.outer(theta, t - s)) @ weights
    tail = svc_tail + wait_prob * conv
    return np.where(stable, np.clip(tail, 0.0, 1.0), 1.0)


def slow_probability(
    subset: QueueParams, rate_rps: np.ndarray | float, *, slo_ms: float, balancer: str
) -> np.ndarray:
    """Modelled P(response time > slo_ms) for `subset` fed `rate_rps` (scalar or array, rps)."""
    rate = np.atleast_1d(np.asarray(rate_rps, dtype=np.float64))
    mu = subset.mu_rps
    c = subset.replicas
    t = slo_ms / 1000.0
    if subset.service_dist == "lognormal":
        logn: tuple[float, float] | None = lognormal_params(1.0 / mu, subset.cv)
        stretch = (1.0 + subset.cv**2) / 2.0
    else:
        logn, stretch = None, 1.0
    per_replica = queue_tail(1, mu, rate / c, t, logn, stretch)
    if c == 1 or balancer == "random":
        return per_replica
    pooled = queue_tail(c, mu, rate, t, logn, stretch)
    tiny = 1e-300
    alpha = least_request_alpha(c, rate / subset.capacity_rps)
    mixed = np.exp(
        alpha * np.log(np.maximum(pooled, tiny))
        + (1.0 - alpha) * np.log(np.maximum(per_replica, tiny))
    )
    return np.clip(mixed, 0.0, 1.0)


def bad_probability(
    subset: QueueParams, rate_rps: np.ndarray | float, *, slo_ms: float, balancer: str
) -> np.ndarray:
    """Modelled P(a request to `subset` is bad) = e + (1 - e) P(T > SLO), at `rate_rps` (rps)."""
    slow = slow_probability(subset, rate_rps, slo_ms=slo_ms, balancer=balancer)
    e = subset.error_rate
    return e + (1.0 - e) * slow


def cost_table(
    subsets: Sequence[QueueParams], load_rps: float, *, slo_ms: float, balancer: str
) -> np.ndarray:
    """Per subset and integer weight w = 0..100: (w/100) * P(bad) at rate w/100 * load_rps.

    A tiny penalty on the distance from the capacity-proportional split orders exact ties."""
    w = np.arange(WEIGHT_TOTAL + 1, dtype=np.float64)
    frac = w / WEIGHT_TOTAL
    caps = [s.capacity_rps for s in subsets]
    ref = np.asarray(largest_remainder(caps) if sum(caps) > 0 else [0] * len(caps), float)
    rows = []
    for i, sub in enumerate(subsets):
        b = bad_probability(sub, frac * load_rps, slo_ms=slo_ms, balancer=balancer)
        tie = _TIE_BREAK * ((w - ref[i]) / WEIGHT_TOTAL) ** 2
        rows.append(frac * b + tie)
    return np.vstack(rows)


@lru_cache(maxsize=4)
def _dp_grid(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights 0..width-1, and per [W, w] the index W - w (clipped) and whether w <= W."""
    idx_w = np.arange(width)
    grid = idx_w[:, None] - idx_w[None, :]
    return idx_w, np.clip(grid, 0, width - 1), grid >= 0


def min_plus_split(cost: np.ndarray) -> tuple[int, ...]:
    """Integer weights (sum 100) minimizing sum_i cost[i, w_i]: exact DP over subsets."""
    n, width = cost.shape
    total = width - 1
    # best[k][W]: least cost of giving W points to subsets 0..k; choice[k][W]: subset k's share.
    best = cost[0].copy()
    choices = []
    idx_w, before, valid = _dp_grid(width)
    for k in range(1, n):
        cand = np.where(valid, best[before] + cost[k][None, :], np.inf)
        pick = np.argmin(cand, axis=1)
        choices.append(pick)
        best = cand[idx_w, pick]
    out = [0] * n
    remaining = total
    for k in range(n - 1, 0, -1):
        wk = int(choices[k - 1][remaining])
        out[k] = wk
        remaining -= wk
    out[0] = remaining
    return tuple(out)


def _unit(x: np.ndarray) -> np.ndarray:
    """x clipped to [0, 1] (`np.clip`'s values, without its per-call overhead)."""
    return np.minimum(np.maximum(x, 0.0), 1.0)


def _erlang_c_each(servers: np.ndarray, offered_erlangs: np.ndarray) -> np.ndarray:
    """`erlang_c` with its own server count per element (the same recursion and floats).

    `servers` broadcasts against the offered load; where it has trailing axes of length 1
    the count is per row of those axes. Rows are sorted by servers, so step k of the
    recursion only touches those with at least k."""
    c_in = np.asarray(servers)
    a_in = np.asarray(offered_erlangs, dtype=np.float64)
    shape = np.broadcast_shapes(c_in.shape, a_in.shape)
    if 0 in shape:
        return np.zeros(shape)
    c_full = c_in.reshape((1,) * (len(shape) - c_in.ndim) + c_in.shape)
    lead = c_full.ndim
    while lead and c_full.shape[lead - 1] == 1:
        lead -= 1
    if c_full.shape[:lead] != shape[:lead]:
        c_full = np.broadcast_to(c_full, shape[:lead] + c_full.shape[lead:])
    per_row = c_full.ravel()
    if a_in.shape != shape:
        a_in = np.broadcast_to(a_in, shape)
    order = np.argsort(per_row, kind="stable")
    c = per_row[order]
    a = a_in.reshape(per_row.size, -1)[order]
    b = np.ones_like(a)
    top = int(c[-1])
    for k, start in enumerate(np.searchsorted(c, np.arange(1, top + 1)).tolist(), start=1):
        a_k, b_k = a[start:], b[start:]
        ab = a_k * b_k
        np.divide(ab, k + ab, out=b_k)
    rho = a / c[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        wait = b / (1.0 - rho * (1.0 - b))
    out = np.empty_like(a)
    out[order] = _unit(np.where(np.isnan(wait), 1.0, wait))
    return out.reshape(shape)


class _ExpQueue:
    """FCFS queues of exponential servers at fixed arrival rates: what `queue_tail` computes
    before it looks at the latency bound (elementwise arrays)."""

    def __init__(self, servers: np.ndarray, mu: np.ndarray, rate: np.ndarray) -> None:
        capacity = servers * mu
        self.stable = rate < capacity * (1.0 - 1e-9)
        x = np.where(self.stable, rate, 0.0)
        self.wait = _erlang_c_each(servers, x / mu)
        self.theta = capacity - x
        self.mu = mu

    def tail(self, t: np.ndarray | float) -> np.ndarray:
        """`queue_tail` (exponential service) at latency bound t (s)."""
        mu, theta = self.mu, self.theta
        svc_tail = np.exp(-mu * t)
        d = theta - mu
        small = np.abs(d * t) < 1e-7
        safe_d = np.where(small, 1.0, d)
        conv = np.where(small, mu * t * svc_tail, mu * (svc_tail - np.exp(-theta * t)) / safe_d)
        return np.where(self.stable, _unit(svc_tail + self.wait * conv), 1.0)


class BalancedQueues:
    """Versions with exponential service behind Envoy's least-request balancer, or a random
    one where `random` is true, each fed a fixed rate: `slow_probability` elementwise over
    arrays of replicas, per-replica service rate (rps), arrival rate (rps) and balancer flags
    that broadcast together, the parts that do not depend on the latency bound computed once
    (a search over the bound reuses them). The per-replica and the pooled queue are one
    stacked array; random balancing is the per-replica queue alone (alpha 0)."""

    def __init__(
        self,
        replicas: np.ndarray,
        mu_rps: np.ndarray,
        rate_rps: np.ndarray,
        random: np.ndarray | bool = False,
    ) -> None:
        c = np.asarray(replicas)
        mu = np.asarray(mu_rps, dtype=np.float64)
        rate = np.asarray(rate_rps, dtype=np.float64)
        ndim = len(np.broadcast_shapes(c.shape, mu.shape, rate.shape))

        def pair(first: np.ndarray, second: np.ndarray) -> np.ndarray:
            if first.shape != second.shape:
                first, second = np.broadcast_arrays(first, second)
            both = np.concatenate([first[None], second[None]])
            return both.reshape((2,) + (1,) * (ndim - first.ndim) + first.shape)

        self._single = c == 1
        self._queues = _ExpQueue(pair(np.ones_like(c), c), pair(mu, mu), pair(rate / c, rate))
        bonus = np.where(c == 2, 0.05, 0.0)
        alpha = np.minimum(1.0, 0.5 + 1.25 * np.maximum(rate / (c * mu) - 0.8, 0.0) + bonus)
        self._alpha = np.where(random, 0.0, alpha)

    def slow(self, slo_ms: np.ndarray | float) -> np.ndarray:
        """Modelled P(response time > slo_ms) per element."""
        tails = self._queues.tail(np.asarray(slo_ms, dtype=np.float64) / 1000.0)
        logs = np.log(np.maximum(tails, 1e-300))
        mixed = np.exp(self._alpha * logs[1] + (1.0 - self._alpha) * logs[0])
        return np.where(self._single, tails[0], _unit(mixed))


_CERTAIN_GAP = 1e-12
"""Least margin (cost per weight point) by which a candidate split's Lagrange certificate
must hold to be taken without the DP; a float DP over costs of order 1 errs by ~1e-15."""


def _certified(costs: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """Per table: whether `splits` is the unique minimum by more than `_CERTAIN_GAP`.

    A multiplier l with every row's weight minimizing cost[i, w] - l w proves a split
    optimal; row i admits the l between the steepest secant to a lower weight and the
    flattest secant to a higher one."""
    at = np.take_along_axis(costs, splits[:, :, None], axis=2)
    step = np.arange(costs.shape[2])[None, None, :] - splits[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        secant = (costs - at) / step
    lower = np.where(step < 0, secant, -np.inf).max(axis=2).max(axis=1)
    upper = np.where(step > 0, secant, np.inf).min(axis=2).min(axis=1)
    return np.asarray(upper - lower > _CERTAIN_GAP)


def min_plus_splits(costs: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
    """`min_plus_split` of many cost tables, the same splits.

    Per table, the split that takes the `total` cheapest unit steps of all rows is a
    candidate; where a Lagrange certificate proves it the unique minimum (convex rows with
    distinct steps: the usual case) it is the DP's answer, elsewhere the exact DP runs."""
    out: list[tuple[int, ...] | None] = [None] * len(costs)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, table in enumerate(costs):
        by_shape.setdefault(table.shape, []).append(i)
    for (n, width), members in by_shape.items():
        total = width - 1
        if total < 1:  # nothing to split
            for i in members:
                out[i] = min_plus_split(costs[i])
            continue
        stack = np.stack([costs[i] for i in members])
        steps = np.diff(stack, axis=2).reshape(len(members), -1)
        cut = np.partition(steps, total - 1, axis=1)[:, total - 1]
        taken = steps.reshape(len(members), n, total) <= cut[:, None, None]
        splits = taken.sum(axis=2)
        sure = (splits.sum(axis=1) == total) & _certified(stack, splits)
        for j, i in enumerate(members):
            out[i] = tuple(int(v) for v in splits[j]) if sure[j] else min_plus_split(costs[i])
    return [s for s in out if s is not None]


def exponential_cost_tables(
    tables: Sequence[tuple[Sequence[QueueParams], float, float]],
    random: Sequence[bool] | None = None,
) -> list[np.ndarray]:
    """`cost_table(subsets, load_rps, slo_ms=slo_ms, balancer=...)` of each (subsets,
    load_rps, slo_ms) whose subsets all have exponential service, as one array; the balancer
    is least-request, or random where `random` (one flag per table) says so."""
    if not tables:
        return []
    params = [s for subsets, _, _ in tables for s in subsets]
    if any(s.service_dist != "exponential" for s in params):
        raise ValueError("exponential_cost_tables models exponential service only")
    sizes = [len(subsets) for subsets, _, _ in tables]
    w = np.arange(WEIGHT_TOTAL + 1, dtype=np.float64)
    frac = w / WEIGHT_TOTAL
    load = np.repeat([load for _, load, _ in tables], sizes)[:, None]
    slo = np.repeat([slo for _, _, slo in tables], sizes)[:, None]
    replicas = np.array([s.replicas for s in params], dtype=np.int64)[:, None]
    mu = np.array([s.mu_rps for s in params], dtype=np.float64)[:, None]
    e = np.array([s.error_rate for s in params], dtype=np.float64)[:, None]
    refs = []
    for subsets, _, _ in tables:
        caps = [s.capacity_rps for s in subsets]
        refs.extend(largest_remainder(caps) if sum(caps) > 0 else [0] * len(caps))
    ref = np.asarray(refs, dtype=np.float64)[:, None]
    flags = np.repeat(list(random) if random is not None else [False] * len(tables), sizes)
    slow = BalancedQueues(replicas, mu, frac * load, flags[:, None]).slow(slo)
    rows = frac * (e + (1.0 - e) * slow) + _TIE_BREAK * ((w - ref) / WEIGHT_TOTAL) ** 2
    return np.split(rows, np.cumsum(sizes)[:-1])

"""The per-request queueing kernel: one control step of one route, compiled with numba.

Every request is placed on a subset by the route weights, then on a replica (uniformly at
random, or Envoy's least-request: the less busy of two replicas drawn independently, so both
draws may name the same one; on a tie the first stays), and served FCFS
(Lindley recursion on the replica's next-free time). Random numbers come in as arrays drawn
from a numpy `Generator` by the caller, so a seeded run is exactly repeatable and the kernel
itself is a pure function of (state, params, draws).
"""

from __future__ import annotations

import numpy as np
from numba import njit

BALANCER_RANDOM = 0
BALANCER_LEAST_REQUEST = 1
DIST_EXPONENTIAL = 0
DIST_LOGNORMAL = 1


@njit(cache=True, inline="always")
def _drain(deps: np.ndarray, head: np.ndarray, tail: np.ndarray, r: int, t: float, cap: int) -> int:
    h = head[r]
    tl = tail[r]
    while h < tl and deps[r, h % cap] <= t:
        h += 1
    head[r] = h
    return tl - h


@njit(cache=True)
def simulate_step(
    arrivals_s: np.ndarray,
    u_subset: np.ndarray,
    u_rep1: np.ndarray,
    u_rep2: np.ndarray,
    std_exp: np.ndarray,
    std_norm: np.ndarray,
    u_error: np.ndarray,
    cum_weights: np.ndarray,
    replicas: np.ndarray,
    rep_offset: np.ndarray,
    dist: np.ndarray,
    mean_s: np.ndarray,
    ln_mu: np.ndarray,
    ln_sigma: np.ndarray,
    error_rate: np.ndarray,
    balancer: int,
    timeout_s: float,
    slo_s: float,
    queue_limit: int,
    free_at: np.ndarray,
    deps: np.ndarray,
    head: np.ndarray,
    tail: np.ndarray,
    edges_s: np.ndarray,
    count: np.ndarray,
    errors: np.ndarray,
    slow: np.ndarray,
    bad: np.ndarray,
    lat_sum_s: np.ndarray,
    hist: np.ndarray,
) -> None:
    """Serve one step's requests, updating replica state and per-subset counters in place.

    arrivals_s: sorted arrival times (s); u_*: U(0,1) draws; std_exp/std_norm: standard draws
    for service times; cum_weights: cumulative route shares per subset (last == 1);
    mean_s/ln_mu/ln_sigma: service time parameters (s) per subset, already divided by the
    capacity factor; free_at/deps/head/tail: per-replica FCFS state (ring buffer of departure
    times, capacity ``deps.shape[1]``); edges_s: latency histogram upper edges (s), `hist` has
    one more column for the overflow; slow counts latency > SLO, bad counts error or slow. A request
    that finds `queue_limit` requests on its replica is rejected at once with a 503 (Envoy's
    circuit breaker); one slower than `timeout_s` is an error reported at `timeout_s`.
    """
    n = arrivals_s.shape[0]
    n_sub = cum_weights.shape[0]
    cap = deps.shape[1]
    n_edges = edges_s.shape[0]
    for i in range(n):
        t = arrivals_s[i]
        u = u_subset[i]
        s = 0
        while s < n_sub - 1 and u >= cum_weights[s]:
            s += 1
        k = replicas[s]
        base = rep_offset[s]
        r = base + min(int(u_rep1[i] * k), k - 1)
        if balancer == BALANCER_LEAST_REQUEST and k > 1:
            # Envoy draws its two choices independently: both may name the same replica.
            r2 = base + min(int(u_rep2[i] * k), k - 1)
            n1 = _drain(deps, head, tail, r, t, cap)
            n2 = _drain(deps, head, tail, r2, t, cap)
            if n2 < n1:
                r = r2
        outstanding = _drain(deps, head, tail, r, t, cap)
        is_error = False
        if outstanding >= queue_limit or outstanding >= cap:
            latency = 0.0
            is_error = True
        else:
            if dist[s] == DIST_LOGNORMAL:
                svc = np.exp(ln_mu[s] + ln_sigma[s] * std_norm[i])
            else:
                svc = mean_s[s] * std_exp[i]
            start = t if t > free_at[r] else free_at[r]
            dep = start + svc
            free_at[r] = dep
            deps[r, tail[r] % cap] = dep
            tail[r] += 1
            latency = dep - t
            if latency > timeout_s:
                latency = timeout_s
                is_error = True
            elif u_error[i] < error_rate[s]:
                is_error = True
        count[s] += 1
        if is_error:
            errors[s] += 1
        if latency > slo_s:
            slow[s] += 1
        if is_error or latency > slo_s:
            bad[s] += 1
        lat_sum_s[s] += latency
        lo = 0
        hi = n_edges
        while lo < hi:
            mid = (lo + hi) >> 1
            if edges_s[mid] < latency:
                lo = mid + 1
            else:
                hi = mid
        hist[s, lo] += 1

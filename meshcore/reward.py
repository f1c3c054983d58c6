"""The one reward function: used by the Gymnasium env in training and reported by the live loop.

It estimates the bad-request fraction of the interval after acting — requests that failed or
missed the SLO — from what Prometheus reports, and charges for moving weights (churn), because
every change costs a config push and risks oscillation.
"""

from __future__ import annotations

import math

from meshcore.model import Observation, Weights

CHURN_COST = 0.02
"""Reward lost per 100 points of total absolute weight change (a full flip costs 0.04)."""


def bad_fraction_estimate(obs: Observation, slo_ms: float) -> float:
    """Traffic-weighted share of bad requests (0..1) in `obs`; NaN when no subset has data.

    Uses `slow_ratio` when known, otherwise treats a subset whose p99 exceeds the SLO as having
    ``min(1, 0.01 * p99 / slo)`` slow requests (a p99 above the SLO means > 1 % are slow).
    """
    total = obs.total_rps
    if not math.isfinite(total) or total <= 0:
        return math.nan
    bad = 0.0
    for st in obs.stats:
        if not st.has_data or st.rps <= 0:
            continue
        err = st.error_ratio if math.isfinite(st.error_ratio) else 0.0
        if math.isfinite(st.slow_ratio):
            slow = st.slow_ratio
        elif math.isfinite(st.p99_ms) and st.p99_ms > slo_ms:
            slow = min(1.0, 0.01 * st.p99_ms / slo_ms)
        else:
            slow = 0.0
        bad += (st.rps / total) * (err + (1.0 - err) * slow)
    return min(max(bad, 0.0), 1.0)


def reward(
    obs_before: Observation,
    weights: Weights,
    obs_after: Observation,
    *,
    slo_ms: float = 250.0,
    churn_cost: float = CHURN_COST,
) -> float:
    """``-(bad fraction after acting) - churn_cost * (L1 weight change / 100)``.

    A missing estimate (no data at all after acting) scores as 0 bad requests: the env cannot
    blame the policy for telemetry it did not get, and the live loop holds in that case anyway.
    """
    bad = bad_fraction_estimate(obs_after, slo_ms)
    if math.isnan(bad):
        bad = 0.0
    churn = obs_before.weights.l1_distance(weights) / 100.0
    return -bad - churn_cost * churn

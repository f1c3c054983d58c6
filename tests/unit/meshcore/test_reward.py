"""reward: minus the estimated bad fraction after acting, minus a churn charge."""

from __future__ import annotations

import math

import pytest

from meshcore import Observation, RouteRef, SubsetStats, Weights, reward
from meshcore.reward import CHURN_COST, bad_fraction_estimate

ROUTE = RouteRef("ns", "vs", "r", "h")


def _obs(*stats: SubsetStats) -> Observation:
    return Observation(ROUTE, ("a", "b"), stats, 0.0)


def test_bad_fraction_is_traffic_weighted() -> None:
    obs = _obs(SubsetStats(300, 0.1, 100, 75, 0.0), SubsetStats(100, 0.0, 400, 25, 0.5))
    assert bad_fraction_estimate(obs, 250) == pytest.approx(0.75 * 0.1 + 0.25 * 0.5)


def test_missing_slow_ratio_falls_back_to_p99() -> None:
    obs = _obs(SubsetStats(100, 0.0, 500, 50), SubsetStats(100, 0.0, 100, 50))
    assert bad_fraction_estimate(obs, 250) == pytest.approx(0.5 * 0.02)


def test_no_data_is_nan_and_scores_zero() -> None:
    nan = SubsetStats(math.nan, math.nan, math.nan, 50)
    obs = _obs(nan, nan)
    assert math.isnan(bad_fraction_estimate(obs, 250))
    assert reward(obs, obs.weights, obs) == 0.0


def test_churn_is_charged() -> None:
    obs = _obs(SubsetStats(100, 0.0, 10, 50, 0.0), SubsetStats(100, 0.0, 10, 50, 0.0))
    flipped = Weights(("a", "b"), (100, 0))
    assert reward(obs, flipped, obs) == pytest.approx(-CHURN_COST * 1.0)
    assert reward(obs, obs.weights, obs) == 0.0

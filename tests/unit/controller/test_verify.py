"""Verification of written weights against the observed split, without a loop.

Cases: nothing is checked before the verify delay; a split that follows the write passes and
settles it; one off by more than the tolerance fails with the observed and written shares;
later writes in force during the window widen the accepted range; the newest due write is
the one checked and settles the older ones; an observation that cannot judge postpones the
check, which gives up (inconclusive) after three delays; why an observation cannot judge (none,
stale, other subsets, no data for a subset carrying traffic, too little traffic); shares of a
subset without data; the pending list is bounded.
"""

from __future__ import annotations

import math

from controller.verify import (
    MAX_PENDING,
    MIN_VERIFY_REQUESTS,
    PendingWrite,
    Verification,
    remember_write,
    shares,
    unverifiable,
    verify_writes,
)
from meshcore import Observation, RouteRef, SubsetStats, Weights

ROUTE = RouteRef("lirmm-services", "checkout", "primary", "checkout")
DELAY_S = 30.0
TOLERANCE = 10.0


def split(v1: int) -> Weights:
    return Weights(("v1", "v2"), (v1, 100 - v1))


def observed(
    *rps: float, staleness_s: float = 0.0, subsets: tuple[str, ...] = ("v1", "v2")
) -> Observation:
    stats = tuple(SubsetStats(r, 0.0, 40.0, 0) for r in rps)
    return Observation(ROUTE, subsets, stats, 100.0, staleness_s)


def check(pending: list[PendingWrite], obs: Observation | None, now_s: float) -> Verification:
    return verify_writes(pending, obs, now_s, delay_s=DELAY_S, tolerance=TOLERANCE)


def test_nothing_is_checked_before_the_delay() -> None:
    pending = [PendingWrite(0.0, split(30))]
    assert check(pending, observed(90.0, 10.0), 29.9) == Verification(None, 0)


def test_a_split_that_follows_the_write_passes_and_settles_it() -> None:
    pending = [PendingWrite(0.0, split(30))]
    result = check(pending, observed(33.0, 67.0), 30.0)
    assert result.settled == 1
    assert result.result is not None
    assert result.result.ok is True
    assert result.result.at_s == 30.0
    assert result.result.detail == "ok: observed v1 33.0 (wrote 30), v2 67.0 (wrote 70)"


def test_a_split_off_by_more_than_the_tolerance_fails() -> None:
    pending = [PendingWrite(0.0, split(30))]
    result = check(pending, observed(90.0, 10.0), 35.0)
    assert result.settled == 1
    assert result.result is not None and result.result.ok is False
    assert result.result.detail == (
        "FAILED, off by 60.0 > 10 points: observed v1 90.0 (wrote 30), v2 10.0 (wrote 70)"
    )


def test_exactly_the_tolerance_off_still_passes() -> None:
    pending = [PendingWrite(0.0, split(30))]
    result = check(pending, observed(40.0, 60.0), 30.0)
    assert result.result is not None and result.result.ok is True


def test_later_writes_in_force_during_the_window_widen_the_accepted_range() -> None:
    pending = [PendingWrite(0.0, split(30)), PendingWrite(20.0, split(50))]
    result = check(pending, observed(45.0, 55.0), 30.0)
    assert result.settled == 1  # the write at 20 s is not due yet: still pending
    assert result.result is not None and result.result.ok is True
    assert "v1 45.0 (wrote 30..50)" in result.result.detail
    outside = check(pending, observed(65.0, 35.0), 30.0)
    assert outside.result is not None and outside.result.ok is False


def test_the_newest_due_write_is_checked_and_settles_the_older_ones() -> None:
    pending = [PendingWrite(0.0, split(90)), PendingWrite(5.0, split(30))]
    result = check(pending, observed(30.0, 70.0), 40.0)
    assert result.settled == 2
    assert result.result is not None and result.result.ok is True
    assert result.result.detail == "ok: observed v1 30.0 (wrote 30), v2 70.0 (wrote 70)"


def test_an_observation_that_cannot_judge_postpones_then_gives_up_after_three_delays() -> None:
    pending = [PendingWrite(0.0, split(30))]
    assert check(pending, None, 30.0) == Verification(None, 0)
    assert check(pending, None, 89.9) == Verification(None, 0)
    given_up = check(pending, None, 90.0)
    assert given_up.settled == 1
    assert given_up.result is not None and given_up.result.ok is None
    assert given_up.result.detail == "gave up on the write at 0.0 s: no observation"


def test_no_observation_cannot_judge() -> None:
    assert unverifiable(None, [split(30)], DELAY_S, TOLERANCE) == "no observation"


def test_data_older_than_the_delay_cannot_judge() -> None:
    obs = observed(30.0, 70.0, staleness_s=40.0)
    assert unverifiable(obs, [split(30)], DELAY_S, TOLERANCE) == "data is 40.0 s old"
    assert unverifiable(observed(30.0, 70.0, staleness_s=30.0), [split(30)], DELAY_S, 10) is None


def test_other_subsets_than_written_cannot_judge() -> None:
    obs = observed(30.0, 70.0, subsets=("v1", "v3"))
    problem = unverifiable(obs, [split(30)], DELAY_S, TOLERANCE)
    assert problem == "observed subsets ['v1', 'v3'] differ from the written ones"


def test_no_data_for_a_subset_written_above_the_tolerance_cannot_judge() -> None:
    obs = observed(100.0, math.nan)
    assert unverifiable(obs, [split(30)], DELAY_S, TOLERANCE) == "no data for v2"
    # a subset written at most the tolerance may well see no traffic at all
    assert unverifiable(obs, [split(95)], DELAY_S, TOLERANCE) is None


def test_too_little_traffic_over_the_delay_cannot_judge() -> None:
    rps = MIN_VERIFY_REQUESTS / DELAY_S
    low = observed(0.3 * rps, 0.6 * rps)
    assert unverifiable(low, [split(30)], DELAY_S, TOLERANCE) == (
        "too little traffic (1.50 rps over 30 s)"
    )
    assert unverifiable(observed(0.3 * rps, 0.8 * rps), [split(30)], DELAY_S, TOLERANCE) is None


def test_no_traffic_at_all_cannot_judge() -> None:
    problem = unverifiable(observed(0.0, 0.0), [split(100)], DELAY_S, TOLERANCE)
    assert problem is not None and problem.startswith("too little traffic")


def test_shares_count_a_subset_without_data_as_zero() -> None:
    assert shares(observed(30.0, math.nan)) == {"v1": 100.0, "v2": 0.0}
    assert shares(observed(25.0, 75.0)) == {"v1": 25.0, "v2": 75.0}
    assert shares(observed(0.0, math.nan)) == {"v1": 0.0, "v2": 0.0}


def test_remember_write_keeps_the_newest_writes_only() -> None:
    pending: list[PendingWrite] = []
    for i in range(MAX_PENDING + 5):
        remember_write(pending, float(i), split(i % 101))
    assert len(pending) == MAX_PENDING
    assert pending[0].at_s == 5.0
    assert pending[-1] == PendingWrite(float(MAX_PENDING + 4), split((MAX_PENDING + 4) % 101))

"""Relief: weight leaving a subset in visible distress for a healthy one moves at once."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.guard import Guard, GuardConfig, Verdict, step_toward
from controller.relief import distressed, healthy, relieve
from meshcore import ConfigError, Observation, RouteRef, SubsetStats, Weights

ROUTE = RouteRef("lirmm-services", "checkout", "primary", "checkout")


def stats(weight: int, *, slow: float = 0.0, errors: float = 0.0, rps: float = 50.0) -> SubsetStats:
    return SubsetStats(rps=rps, error_ratio=errors, p99_ms=40.0, weight=weight, slow_ratio=slow)


def observation(current: Weights, **by_subset: SubsetStats) -> Observation:
    row = tuple(by_subset.get(s, stats(current[s])) for s in current.subsets)
    return Observation(ROUTE, current.subsets, row, timestamp_s=0.0, slo_ms=250.0)


def w(**points: int) -> Weights:
    return Weights.from_dict(points)


def review(current: Weights, proposed: Weights, obs: Observation, **config: float) -> Verdict:
    """One review by a fresh guard with max_step 10 and `config`."""
    guard = Guard(GuardConfig(**{"max_step": 10, **config}))  # type: ignore[arg-type]
    return guard.review(route=ROUTE, current=current, proposed=proposed, observation=obs, now_s=0.0)


def test_an_overloaded_subset_is_relieved_at_once_onto_a_healthy_one() -> None:
    current = w(v1=96, v2=4)
    obs = observation(current, v1=stats(96, slow=0.7))
    verdict = review(current, w(v1=25, v2=75), obs)
    assert verdict.write and verdict.weights == w(v1=25, v2=75)
    assert "relief: 61 points off v1" in verdict.reason


def test_a_5xx_outlier_is_relieved_too() -> None:
    current = w(v1=50, v2=50)
    obs = observation(current, v2=stats(50, errors=0.3))
    verdict = review(current, w(v1=100, v2=0), obs)
    assert verdict.weights == w(v1=100, v2=0)


def test_without_distress_the_step_limit_holds() -> None:
    current = w(v1=90, v2=10)
    obs = observation(current, v1=stats(90, slow=0.15))  # below relief_ratio 0.2
    verdict = review(current, w(v1=50, v2=50), obs)
    assert verdict.weights == w(v1=80, v2=20)
    assert "relief" not in verdict.reason


def test_a_fault_the_window_does_not_show_yet_is_relieved_from_the_newest_interval() -> None:
    """The 30 s window still averages the healthy minutes before a fault, the newest scrape
    interval shows it: distress in either counts, and a subset slow in its newest interval is
    not a healthy recipient."""
    current = w(v1=50, v2=50)
    fresh = SubsetStats(90.0, 0.0, 2800.0, 50, slow_ratio=0.12, recent_slow_ratio=0.6)
    obs = observation(current, v1=fresh)
    assert distressed(obs, 0.2) == {"v1"} and healthy(obs, 0.2) == {"v2"}
    verdict = review(current, w(v1=22, v2=78), obs)
    assert verdict.weights == w(v1=22, v2=78) and "relief: 18 points off v1" in verdict.reason
    slowing = SubsetStats(90.0, 0.0, 240.0, 50, slow_ratio=0.0, recent_slow_ratio=0.15)
    assert healthy(observation(current, v2=slowing), 0.2) == {"v1"}


@pytest.mark.parametrize(("slow", "written"), [(0.7, True), (0.1, False)])
def test_the_last_point_off_a_subset_in_distress_is_written_under_min_change(
    slow: float, written: bool
) -> None:
    """A version overloaded at one point: moving that point is a change of 2 (< min_change
    3), yet it is not jitter, and without it the version stays overloaded. Without distress
    the same move is jitter and is not written."""
    current = w(v1=1, v2=99)
    obs = observation(current, v1=stats(1, slow=slow, rps=8.0))
    verdict = review(current, w(v1=0, v2=100), obs, min_change=3)
    assert verdict.write is written
    assert verdict.weights == (w(v1=0, v2=100) if written else current)


def test_a_point_moved_between_two_subsets_in_distress_is_jitter_under_min_change() -> None:
    current = w(v1=50, v2=50)
    obs = observation(current, v1=stats(50, slow=0.4), v2=stats(50, slow=0.3))
    verdict = review(current, w(v1=49, v2=51), obs, min_change=3)
    assert not verdict.write and verdict.weights == current


def test_weight_goes_fast_only_to_subsets_seen_healthy() -> None:
    # v2 is itself half slow and v3 has no data: only v4 may take v1's weight at once.
    current = w(v1=70, v2=10, v3=0, v4=20)
    nan = math.nan
    obs = observation(
        current,
        v1=stats(70, slow=0.9),
        v2=stats(10, slow=0.15),
        v3=SubsetStats(rps=nan, error_ratio=nan, p99_ms=nan, weight=0),
    )
    proposed = w(v1=0, v2=30, v3=30, v4=40)
    verdict = review(current, proposed, obs)
    stepped = step_toward(current, proposed, 10)
    assert verdict.weights["v4"] == 40  # the healthy subset gets all the proposal gives it
    assert verdict.weights["v2"] == stepped["v2"] and verdict.weights["v3"] == stepped["v3"]
    assert verdict.weights["v1"] == stepped["v1"] - (40 - stepped["v4"])


def test_relief_ratio_is_a_setting_and_is_checked() -> None:
    current = w(v1=90, v2=10)
    obs = observation(current, v1=stats(90, slow=0.3))
    assert review(current, w(v1=50, v2=50), obs, relief_ratio=0.5).weights == w(v1=80, v2=20)
    for bad in (0.0, 1.5, math.nan, True):
        with pytest.raises(ConfigError, match="relief_ratio"):
            GuardConfig(relief_ratio=bad)


def test_distress_and_health_read_both_ratios_and_unknowns_are_neither() -> None:
    current = w(a=25, b=25, c=25, d=25)
    nan = math.nan
    obs = observation(
        current,
        a=stats(25, slow=0.25),
        b=stats(25, errors=0.2),
        c=SubsetStats(rps=10.0, error_ratio=0.0, p99_ms=400.0, weight=25),  # slow unknown
        d=SubsetStats(rps=10.0, error_ratio=0.0, p99_ms=100.0, weight=25),  # slow unknown
    )
    assert distressed(obs, 0.2) == {"a", "b"}
    assert healthy(obs, 0.2) == {"d"}  # c's p99 is over the 250 ms SLO
    nothing = observation(current, a=SubsetStats(rps=nan, error_ratio=nan, p99_ms=nan, weight=25))
    assert "a" not in distressed(nothing, 0.2) | healthy(nothing, 0.2)


@st.composite
def relief_cases(draw: st.DrawFn) -> tuple[Weights, Weights, int, set[str], set[str]]:
    n = draw(st.integers(2, 6))
    names = tuple(f"v{i}" for i in range(n))

    def split() -> Weights:
        cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1)))
        edges = [0, *cuts, 100]
        return Weights(names, [b - a for a, b in itertools.pairwise(edges)])

    sick = set(draw(st.lists(st.sampled_from(names), unique=True)))
    well = set(draw(st.lists(st.sampled_from(names), unique=True))) - sick
    return split(), split(), draw(st.integers(1, 30)), sick, well


@given(relief_cases())
def test_relief_keeps_every_subset_between_its_step_and_its_target(case) -> None:
    current, target, max_step, sick, well = case
    stepped = step_toward(current, target, max_step)
    got, moved = relieve(stepped, target, sick, well)
    assert sum(got.values_tuple) == 100 and all(0 <= v <= 100 for v in got.values_tuple)
    for s in current.subsets:
        lo, hi = sorted((stepped[s], target[s]))
        assert lo <= got[s] <= hi
        if s not in sick:
            assert got[s] >= stepped[s]
        if s not in well:
            assert got[s] <= stepped[s]
    assert moved == sum(max(got[s] - stepped[s], 0) for s in current.subsets)

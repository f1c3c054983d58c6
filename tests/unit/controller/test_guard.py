"""The guard: what may reach the actuator.

Properties (any current/proposed split of 2..8 subsets, any max_step, any feasible floors):
the result is a valid split; no subset moves more than max_step; every subset ends between its
current and its (floor-lifted) target weight; floors hold whenever the current split respects
them; repeated reviews reach the target with a strictly shrinking distance and then stop
writing; a write always changes the weights; shadow and paused routes never write.
Examples: reason texts, floor lifting, min_change, stale data holding then decaying to the
baseline, pins written at once and expiring after their TTL, controls precedence, config errors.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.guard import Guard, GuardConfig, Verdict, lift_to_floors, step_toward
from meshcore import ConfigError, Observation, RouteRef, SubsetStats, Weights

ROUTE = RouteRef("lirmm-services", "checkout", "primary", "checkout")


def names(n: int) -> tuple[str, ...]:
    return tuple(f"v{i + 1}" for i in range(n))


def composition(draw: st.DrawFn, total: int, n: int) -> list[int]:
    """n non-negative ints summing to `total` (every composition is reachable)."""
    cuts = sorted(draw(st.lists(st.integers(0, total), min_size=n - 1, max_size=n - 1)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


@st.composite
def cases(draw: st.DrawFn) -> tuple[Weights, Weights, int, dict[str, int]]:
    """(current, proposed, max_step, floors) with current respecting the floors."""
    n = draw(st.integers(2, 8))
    subsets = names(n)
    floor_total = draw(st.integers(0, 100))
    floor_values = composition(draw, floor_total, n)
    current = [
        f + x for f, x in zip(floor_values, composition(draw, 100 - floor_total, n), strict=True)
    ]
    proposed = composition(draw, 100, n)
    max_step = draw(st.integers(1, 100))
    floors = {s: f for s, f in zip(subsets, floor_values, strict=True) if f > 0}
    return Weights(subsets, current), Weights(subsets, proposed), max_step, floors


@st.composite
def any_split(draw: st.DrawFn, subsets: tuple[str, ...]) -> Weights:
    return Weights(subsets, composition(draw, 100, len(subsets)))


def fresh(weights: Weights, now_s: float = 0.0, staleness_s: float = 0.0) -> Observation:
    stats = tuple(
        SubsetStats(rps=50.0, error_ratio=0.0, p99_ms=40.0, weight=w) for w in weights.values()
    )
    return Observation(ROUTE, weights.subsets, stats, timestamp_s=now_s, staleness_s=staleness_s)


def no_data(weights: Weights, now_s: float = 0.0) -> Observation:
    nan = math.nan
    stats = tuple(
        SubsetStats(rps=nan, error_ratio=nan, p99_ms=nan, weight=w) for w in weights.values()
    )
    return Observation(ROUTE, weights.subsets, stats, timestamp_s=now_s)


def review(
    guard: Guard,
    current: Weights,
    proposed: Weights | None,
    now_s: float = 0.0,
    *,
    observation: Observation | None = None,
    stale: bool = False,
) -> Verdict:
    obs = observation if observation is not None or stale else fresh(current, now_s)
    return guard.review(
        route=ROUTE, current=current, proposed=proposed, observation=obs, now_s=now_s
    )


def w(**points: int) -> Weights:
    return Weights.from_dict(points)


# -- properties ------------------------------------------------------------------------------


@given(cases())
def test_active_result_is_a_valid_step_limited_split_between_current_and_target(case) -> None:
    current, proposed, max_step, floors = case
    verdict = review(Guard(GuardConfig(max_step=max_step, floors=floors)), current, proposed)
    target = lift_to_floors(proposed, floors)
    assert verdict.phase == "active"
    assert set(verdict.weights) == set(current)
    for s in current:
        assert abs(verdict.weights[s] - current[s]) <= max_step
        low, high = sorted((current[s], target[s]))
        assert low <= verdict.weights[s] <= high


@given(cases())
def test_floors_hold_whenever_the_current_split_respects_them(case) -> None:
    # Precisely: if current[s] >= floors[s] for every s, then verdict.weights[s] >= floors[s]
    # for every s, whatever the proposal (which may ignore the floors).
    current, proposed, max_step, floors = case
    verdict = review(Guard(GuardConfig(max_step=max_step, floors=floors)), current, proposed)
    for s, floor in floors.items():
        assert verdict.weights[s] >= floor


@given(cases())
@settings(deadline=None)
def test_repeated_reviews_reach_the_target_then_stop_writing(case) -> None:
    current, proposed, max_step, floors = case
    guard = Guard(GuardConfig(max_step=max_step, floors=floors, min_change=1))
    target = lift_to_floors(proposed, floors)
    distance = current.l1_distance(target)
    for tick in range(101):  # each write moves >= 1 point each way, so <= 100 writes
        verdict = review(guard, current, proposed, now_s=5.0 * tick)
        if not verdict.write:
            break
        assert verdict.weights != current
        assert verdict.weights.l1_distance(target) < distance
        current, distance = verdict.weights, verdict.weights.l1_distance(target)
    assert current == target
    assert not review(guard, current, proposed, now_s=1e6).write


@given(cases(), st.integers(1, 8))
@settings(deadline=None)
def test_repeated_reviews_stop_within_min_change_of_the_target(case, min_change) -> None:
    current, proposed, max_step, floors = case
    guard = Guard(GuardConfig(max_step=max_step, floors=floors, min_change=min_change))
    target = lift_to_floors(proposed, floors)
    for tick in range(101):
        verdict = review(guard, current, proposed, now_s=5.0 * tick)
        if not verdict.write:
            break
        current = verdict.weights
    assert current.l1_distance(target) < min_change or any(
        current[s] < f for s, f in floors.items()
    )
    assert not review(guard, current, proposed, now_s=1e6).write


@given(cases(), st.integers(1, 200))
def test_a_write_only_follows_a_proposal_at_least_min_change_away(case, min_change) -> None:
    current, proposed, max_step, floors = case
    config = GuardConfig(max_step=max_step, floors=floors, min_change=min_change)
    verdict = review(Guard(config), current, proposed)
    target = lift_to_floors(proposed, floors)
    if verdict.write:
        assert target.l1_distance(current) >= min_change or any(
            current[s] < f for s, f in floors.items()
        )
        assert verdict.weights != current
    else:
        assert verdict.weights == current


def test_a_small_max_step_still_reaches_a_far_target_under_min_change() -> None:
    guard = Guard(GuardConfig(max_step=1, min_change=3))
    current, proposed = Weights(("v1", "v2"), (90, 10)), Weights(("v1", "v2"), (80, 20))
    for tick in range(20):
        verdict = review(guard, current, proposed, now_s=5.0 * tick)
        if not verdict.write:
            break
        assert verdict.weights.l1_distance(current) == 2  # one point each way per tick
        current = verdict.weights
    assert current.l1_distance(proposed) < 3


@given(cases(), st.booleans(), st.booleans(), st.booleans())
def test_shadow_never_writes(case, per_route, pinned, stale) -> None:
    current, proposed, max_step, floors = case
    guard = Guard(GuardConfig(max_step=max_step, floors=floors, hold_s=0.0))
    if pinned:
        guard.pin(ROUTE, proposed, until_s=100.0)
    if per_route:
        guard.set_shadow(ROUTE, True)
    obs = None if stale else fresh(current)
    verdict = guard.review(
        route=ROUTE,
        current=current,
        proposed=proposed,
        observation=obs,
        now_s=0.0,
        phase_hint="active" if per_route else "shadow",
    )
    assert verdict.phase == "shadow"
    assert not verdict.write


@given(cases(), st.booleans(), st.booleans())
def test_paused_never_writes_and_keeps_current(case, pinned, stale) -> None:
    current, proposed, max_step, floors = case
    guard = Guard(GuardConfig(max_step=max_step, floors=floors, hold_s=0.0))
    guard.pause(ROUTE)
    if pinned:
        guard.pin(ROUTE, proposed, until_s=100.0)
    verdict = review(guard, current, proposed, stale=stale)
    assert verdict == Verdict(current, False, "paused", verdict.reason)


@given(st.integers(2, 8).flatmap(lambda n: st.tuples(any_split(names(n)), any_split(names(n)))))
def test_step_toward_with_full_step_lands_on_the_target(pair) -> None:
    current, target = pair
    assert step_toward(current, target, 100) == target


# -- active ----------------------------------------------------------------------------------


def test_step_is_clamped_and_reason_names_the_clamped_subsets() -> None:
    verdict = review(Guard(GuardConfig(max_step=10)), w(v1=90, v2=10), w(v1=50, v2=50))
    assert verdict == Verdict(w(v1=80, v2=20), True, "active", verdict.reason)
    assert "step clamped +40->+10 on v2" in verdict.reason
    assert "step clamped -40->-10 on v1" in verdict.reason


def test_surplus_is_taken_back_from_the_largest_riser_first() -> None:
    # Clamped: v1 -10, v2 +10, v3 +10 -> 110; the 10 extra points come off v2 and v3 evenly.
    verdict = review(Guard(GuardConfig(max_step=10)), w(v1=60, v2=40, v3=0), w(v1=0, v2=50, v3=50))
    assert verdict.weights == w(v1=50, v2=45, v3=5)


def test_proposal_below_a_floor_is_lifted_to_it() -> None:
    guard = Guard(GuardConfig(max_step=100, floors={"v1": 20}))
    verdict = review(guard, w(v1=50, v2=50), w(v1=0, v2=100))
    assert verdict.weights == w(v1=20, v2=80)
    assert "lifted to floor 0->20 on v1" in verdict.reason


def test_current_below_a_floor_is_repaired_even_under_min_change() -> None:
    guard = Guard(GuardConfig(max_step=10, floors={"v1": 20}, min_change=50))
    verdict = review(guard, w(v1=5, v2=95), w(v1=5, v2=95))
    assert verdict.write
    assert verdict.weights == w(v1=15, v2=85)


def test_changes_below_min_change_are_not_written() -> None:
    guard = Guard(GuardConfig(min_change=5))
    verdict = review(guard, w(v1=50, v2=50), w(v1=52, v2=48))
    assert not verdict.write
    assert verdict.weights == w(v1=50, v2=50)
    assert "min_change" in verdict.reason


def test_identical_proposal_is_not_written() -> None:
    verdict = review(Guard(), w(v1=70, v2=30), w(v2=30, v1=70))
    assert verdict == Verdict(w(v1=70, v2=30), False, "active", verdict.reason)


def test_result_keeps_the_subset_order_of_the_current_weights() -> None:
    verdict = review(Guard(), w(v2=30, v1=70), w(v1=65, v2=35))
    assert verdict.weights.subsets == ("v2", "v1")


def test_missing_proposal_keeps_current() -> None:
    verdict = review(Guard(), w(v1=70, v2=30), None)
    assert (verdict.write, verdict.phase, verdict.weights) == (False, "active", w(v1=70, v2=30))


def test_proposal_for_other_subsets_is_not_written() -> None:
    verdict = review(Guard(), w(v1=70, v2=30), w(v1=70, v3=30))
    assert (verdict.write, verdict.phase) == (False, "holding")


def test_observation_of_another_route_is_a_caller_bug() -> None:
    other = RouteRef("lirmm-services", "cart", "primary", "cart")
    obs = Observation(other, ("v1",), (SubsetStats(1.0, 0.0, 1.0, 100),), timestamp_s=0.0)
    with pytest.raises(ValueError, match="cart"):
        review(Guard(), w(v1=100), None, observation=obs)


# -- stale data ------------------------------------------------------------------------------


def test_stale_data_holds_then_decays_to_the_first_seen_weights() -> None:
    guard = Guard(GuardConfig(max_step=50, hold_s=30.0, decay_step=5))
    start = w(v1=90, v2=10)
    current = review(guard, start, w(v1=40, v2=60), now_s=0.0).weights  # fresh: moves
    assert current == w(v1=40, v2=60)
    for now_s in (5.0, 20.0, 29.9):
        verdict = review(guard, current, w(v1=0, v2=100), now_s, stale=True)
        assert verdict == Verdict(current, False, "holding", verdict.reason)
    trail = []
    for tick in range(20):
        verdict = review(guard, current, w(v1=0, v2=100), 30.0 + 5.0 * tick, stale=True)
        assert verdict.phase == "holding"
        if not verdict.write:
            break
        assert abs(verdict.weights["v1"] - current["v1"]) <= 5
        current = verdict.weights
        trail.append(current["v1"])
    assert current == start
    assert trail == [45, 50, 55, 60, 65, 70, 75, 80, 85, 90]
    assert "at baseline" in verdict.reason


@pytest.mark.parametrize(
    "observation",
    [
        None,
        fresh(w(v1=50, v2=50), staleness_s=31.0),
        fresh(w(v1=50, v2=50), staleness_s=math.nan),
        no_data(w(v1=50, v2=50)),
        fresh(w(v1=50, v3=50)),
    ],
    ids=["missing", "too-old", "unknown-age", "no-subset-has-data", "other-subsets"],
)
def test_these_observations_count_as_stale(observation: Observation | None) -> None:
    verdict = review(Guard(), w(v1=50, v2=50), w(v1=0, v2=100), observation=observation, stale=True)
    assert (verdict.phase, verdict.write) == ("holding", False)


def test_data_just_within_stale_after_s_is_fresh() -> None:
    obs = fresh(w(v1=50, v2=50), staleness_s=30.0)
    verdict = review(Guard(), w(v1=50, v2=50), w(v1=40, v2=60), observation=obs)
    assert (verdict.phase, verdict.write) == ("active", True)


def test_decay_goes_to_the_configured_baseline_lifted_to_floors() -> None:
    config = GuardConfig(
        hold_s=0.0, decay_step=100, baseline={"v1": 100, "canary": 0}, floors={"v2": 10}
    )
    verdict = review(Guard(config), w(v1=20, v2=80), None, stale=True)
    assert verdict == Verdict(w(v1=90, v2=10), True, "holding", verdict.reason)


def test_fresh_data_resets_the_hold_clock() -> None:
    guard = Guard(GuardConfig(hold_s=30.0))
    current = w(v1=50, v2=50)
    review(guard, current, None, now_s=0.0, stale=True)
    review(guard, current, None, now_s=25.0)  # fresh again
    verdict = review(guard, current, None, now_s=50.0, stale=True)  # 25 s since fresh
    assert (verdict.phase, verdict.write) == ("holding", False)
    assert guard.controls(ROUTE).last_fresh_s == 25.0


# -- operator controls -----------------------------------------------------------------------


def test_pin_is_written_at_once_ignoring_step_and_floors_then_expires() -> None:
    guard = Guard(GuardConfig(max_step=10, floors={"v1": 20}))
    guard.pin(ROUTE, w(v1=0, v2=100), until_s=60.0)
    current = w(v1=90, v2=10)
    verdict = review(guard, current, w(v1=90, v2=10), now_s=0.0)
    assert verdict == Verdict(w(v1=0, v2=100), True, "overridden", verdict.reason)
    current = verdict.weights
    held = review(guard, current, w(v1=90, v2=10), now_s=59.9)
    assert held == Verdict(current, False, "overridden", held.reason)
    expired = review(guard, current, w(v1=90, v2=10), now_s=60.0)
    assert expired.phase == "active"
    assert "pin expired" in expired.reason
    assert expired.weights == w(v1=10, v2=90)  # step-limited again (and toward the floor)
    assert guard.controls(ROUTE).pin is None


def test_unpin_hands_the_route_back_to_the_policy() -> None:
    guard = Guard()
    guard.pin(ROUTE, w(v1=0, v2=100), until_s=1e9)
    guard.unpin(ROUTE)
    verdict = review(guard, w(v1=50, v2=50), w(v1=50, v2=50))
    assert verdict.phase == "active"


def test_pin_applies_during_stale_data() -> None:
    guard = Guard()
    guard.pin(ROUTE.key, w(v1=100, v2=0), until_s=10.0)
    verdict = review(guard, w(v1=50, v2=50), None, stale=True)
    assert (verdict.phase, verdict.write, verdict.weights) == ("overridden", True, w(v1=100, v2=0))


def test_shadow_reports_what_would_be_written() -> None:
    guard = Guard(GuardConfig(max_step=10))
    guard.set_shadow(ROUTE, True)
    verdict = review(guard, w(v1=90, v2=10), w(v1=50, v2=50))
    assert verdict == Verdict(w(v1=80, v2=20), False, "shadow", verdict.reason)
    assert "would write (active)" in verdict.reason
    guard.set_shadow(ROUTE, False)
    assert review(guard, w(v1=90, v2=10), w(v1=50, v2=50)).write


def test_per_route_shadow_off_does_not_override_a_shadow_hint() -> None:
    guard = Guard()
    guard.set_shadow(ROUTE, False)
    current = w(v1=90, v2=10)
    verdict = guard.review(
        route=ROUTE,
        current=current,
        proposed=w(v1=80, v2=20),
        observation=fresh(current),
        now_s=0.0,
        phase_hint="shadow",
    )
    assert (verdict.phase, verdict.write) == ("shadow", False)


def test_resume_after_pause_writes_again() -> None:
    guard = Guard()
    guard.pause(ROUTE)
    assert guard.controls(ROUTE).paused
    guard.resume(ROUTE)
    assert review(guard, w(v1=90, v2=10), w(v1=80, v2=20)).write


def test_bad_phase_hint_is_rejected() -> None:
    current = w(v1=100)
    with pytest.raises(ValueError, match="phase_hint"):
        Guard().review(
            route=ROUTE,
            current=current,
            proposed=None,
            observation=None,
            now_s=0.0,
            phase_hint="yolo",  # type: ignore[arg-type]
        )


# -- configuration ---------------------------------------------------------------------------


def test_infeasible_floors_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="sum to 110"):
        Guard(GuardConfig(floors={"v1": 60, "v2": 50}))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_step": 0},
        {"max_step": 101},
        {"decay_step": 0},
        {"min_change": 0},
        {"hold_s": -1.0},
        {"stale_after_s": math.inf},
        {"floors": {"v1": -1}},
        {"floors": {"v1": 10.5}},
        {"baseline": {"v1": 0, "v2": 0}},
    ],
)
def test_invalid_settings_raise_config_error(kwargs) -> None:
    with pytest.raises(ConfigError):
        GuardConfig(**kwargs)


def test_config_mappings_are_read_only_copies() -> None:
    floors = {"v1": 10}
    config = GuardConfig(floors=floors)
    floors["v1"] = 90
    assert config.floors["v1"] == 10
    with pytest.raises(TypeError):
        config.floors["v1"] = 5  # type: ignore[index]

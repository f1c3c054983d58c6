"""Weights validation, RouteRef keys and largest-remainder rounding.

Cases: every invalid Weights input is rejected with a message naming the problem; valid
inputs round-trip through dicts; largest_remainder always sums to the total.
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore import Observation, RouteRef, SubsetStats, Weights, largest_remainder

names = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=8, unique=True)


@given(names=names, data=st.data())
def test_weights_accepts_any_valid_split(names: list[str], data: st.DataObject) -> None:
    cuts = sorted(
        data.draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1))
    )
    bounds = [0, *cuts, 100]
    values = [b - a for a, b in itertools.pairwise(bounds)]
    w = Weights(names, values)
    assert w.subsets == tuple(names) and list(w.values()) == values  # kept as given, in order
    assert Weights.from_dict(w.as_dict()) == w


@given(values=st.lists(st.integers(-300, 300), min_size=1, max_size=8))
def test_weights_rejects_wrong_sums_and_ranges(values: list[int]) -> None:
    names_ = [f"s{i}" for i in range(len(values))]
    valid = sum(values) == 100 and all(0 <= v <= 100 for v in values)
    if valid:
        assert Weights(names_, values).values_tuple == tuple(values)
    else:
        with pytest.raises(ValueError, match=r"sum to 100|outside 0\.\.100"):
            Weights(names_, values)


@pytest.mark.parametrize(
    ("subsets", "values", "message"),
    [
        ((), (), "at least one subset"),
        (("a", "b"), (100,), "2 subsets but 1 values"),
        (("a", "a"), (50, 50), "duplicate"),
        (("a", ""), (50, 50), "non-empty"),
        (("a", "b"), (50.0, 50), "not an integer"),
        (("a", "b"), (True, 99), "not an integer"),
        (("a", "b"), ("50", 50), "not an integer"),
        (("a", "b"), (160, -60), "outside 0..100"),
        (("a", "b"), (50, 49), "sum to 100, got 99"),
    ],
)
def test_weights_rejects_invalid_input_with_clear_message(
    subsets: tuple[str, ...], values: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Weights(subsets, values)  # type: ignore[arg-type]


@given(shares=st.lists(st.floats(0, 1e6), min_size=1, max_size=12))
def test_largest_remainder_sums_to_total(shares: list[float]) -> None:
    if sum(shares) <= 0:
        with pytest.raises(ValueError):
            largest_remainder(shares)
        return
    out = largest_remainder(shares)
    assert sum(out) == 100
    assert all(v >= 0 for v in out)
    exact = [s * 100 / math.fsum(shares) for s in shares]
    assert all(abs(o - e) < 1 for o, e in zip(out, exact, strict=True))


def test_route_key_round_trips() -> None:
    ref = RouteRef("lirmm-services", "reviews", 0, "reviews")
    assert ref.key == "lirmm-services/reviews/0"
    assert RouteRef.parse(ref.key) == ref
    with pytest.raises(ValueError):
        RouteRef.parse("only/two")


def test_observation_rejects_mismatched_lengths() -> None:
    ref = RouteRef("ns", "vs", "r", "h")
    with pytest.raises(ValueError, match="2 subsets but 1 stats"):
        Observation(ref, ("a", "b"), (SubsetStats(1, 0, 1, 100),), 0.0)


def test_observation_rejects_an_unknown_balancer() -> None:
    ref = RouteRef("ns", "vs", "r", "h")
    stats = (SubsetStats(1, 0, 1, 100),)
    assert Observation(ref, ("a",), stats, 0.0).balancer == "least_request"
    assert Observation(ref, ("a",), stats, 0.0, balancer="random").balancer == "random"
    with pytest.raises(ValueError, match="balancer 'round_robin' is not one of"):
        Observation(ref, ("a",), stats, 0.0, balancer="round_robin")


def test_a_split_prints_as_operators_read_it() -> None:
    assert str(Weights.from_dict({"v1": 90, "v2": 10})) == "{v1: 90, v2: 10}"
    assert repr(Weights.from_dict({"v1": 90, "v2": 10})) == "Weights({'v1': 90, 'v2': 10})"

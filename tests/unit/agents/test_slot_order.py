"""The canonical slot order (`agents.slot_order`): renaming or reordering a route's versions
permutes the served decision the same way, for any number of versions up to 8.

The networks here are random (numpy only): the property is one of the serving path, whatever
the weights.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.network import EnsemblePolicy, NumpyPolicy
from agents.obs_extensions import extension_size, slot_block_starts
from agents.policy_file import load_numpy_policy, save_npz
from agents.slot_order import slot_columns, sort_slots
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec
from meshcore.model import Observation, RouteRef, SubsetStats

SPEC = FeatureSpec()
K = SPEC.max_subsets
N_IN = SPEC.obs_size + extension_size(SPEC)
ROUTE = RouteRef("shop", "cart", "default", "cart")


def _network(seed: int) -> NumpyPolicy:
    rng = np.random.default_rng(seed)
    sizes = [N_IN, 32, 32, K]
    layers = [
        (rng.normal(0.0, 0.6, (b, a)), rng.normal(0.0, 0.3, b))
        for a, b in itertools.pairwise(sizes)
    ]
    return NumpyPolicy(
        spec=SPEC,
        layers=layers,
        obs_mean=rng.uniform(0.0, 0.5, N_IN),
        obs_var=rng.uniform(0.05, 1.0, N_IN),
        clip_obs=10.0,
        eps=1e-8,
    )


def test_the_slot_columns_and_the_route_values_cover_the_vector_once():
    cols = slot_columns(SPEC)
    assert cols.shape == (K, 8 + len(slot_block_starts(SPEC)))
    used = np.concatenate([cols.reshape(-1)])
    assert len(set(used.tolist())) == used.size  # no value belongs to two slots
    route = sorted(set(range(N_IN)) - set(used.tolist()))
    k = K
    util = SPEC.obs_size
    # the two global features, then the route's utilization, its trend and its two averages
    trend = util + k + 1
    averages = trend + 4 * k + 1 + 2 * k
    expected = [k * 8, k * 8 + 1, util + k, trend + k, averages + k, averages + 3 * k + 1 + k]
    assert route == expected


finite_or_nan = st.one_of(st.just(math.nan), st.floats(0.0, 1.0))


@st.composite
def routes(draw: st.DrawFn) -> tuple[list[Observation], list[int]]:
    """Three ticks of one route (2..8 versions, some without data, any hints) and an order."""
    n = draw(st.integers(2, K))
    hints = draw(
        st.one_of(
            st.just(()),
            st.tuples(*[st.sampled_from([50.0, 100.0, 250.0]) for _ in range(n)]),
        )
    )
    weights = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    ticks = []
    for t in range(3):
        stats = []
        for i in range(n):
            same_as_first = i > 0 and draw(st.booleans())  # identical versions happen
            if same_as_first:
                stats.append(stats[0])
                continue
            rps = draw(st.one_of(st.just(math.nan), st.floats(0.0, 400.0)))
            stats.append(
                SubsetStats(
                    rps,
                    draw(finite_or_nan),
                    draw(st.one_of(st.just(math.nan), st.floats(1.0, 3000.0))),
                    weights[i],
                    slow_ratio=draw(finite_or_nan),
                    recent_p99_ms=draw(st.one_of(st.just(math.nan), st.floats(1.0, 3000.0))),
                    recent_slow_ratio=draw(finite_or_nan),
                )
            )
        if hints:  # an identical version has the same capacity
            pairs = zip(stats, hints, strict=True)
            hints = tuple(hints[0] if s is stats[0] else h for s, h in pairs)
        ticks.append(
            Observation(
                ROUTE,
                tuple(f"v{i}" for i in range(n)),
                tuple(stats),
                timestamp_s=5.0 * (t + 1),
                capacity_hint_rps=hints,
            )
        )
    order = draw(st.permutations(list(range(n))))
    return ticks, order


def _renamed_and_reordered(obs: Observation, order: list[int]) -> Observation:
    hints = obs.capacity_hint_rps
    return Observation(
        obs.route,
        tuple(f"other-{obs.subsets[i]}" for i in order),
        tuple(obs.stats[i] for i in order),
        timestamp_s=obs.timestamp_s,
        capacity_hint_rps=tuple(hints[i] for i in order) if hints else (),
    )


@settings(max_examples=60, deadline=None)
@given(routes())
def test_renaming_and_reordering_a_route_permutes_the_decision(case):
    ticks, order = case
    for policy_of in (lambda: _network(1), lambda: EnsemblePolicy([_network(2), _network(3)])):
        first, second = policy_of(), policy_of()
        for obs in ticks:
            weights = first.decide(obs)
            raw = np.array(first.last_raw_action)
            other = _renamed_and_reordered(obs, order)
            other_weights = second.decide(other)
            other_raw = np.array(second.last_raw_action)
            n = len(order)
            # the actions decode reads: exactly permuted (rounding may break a tie either way)
            np.testing.assert_allclose(other_raw[:n], raw[order], rtol=0, atol=1e-12)
            for j, i in enumerate(order):
                assert abs(other_weights[other.subsets[j]] - weights[obs.subsets[i]]) <= 1


@settings(max_examples=30, deadline=None)
@given(routes())
def test_a_batch_decides_as_one_route_at_a_time(case):
    ticks, order = case
    many, one = _network(4), _network(4)
    other_route = RouteRef("shop", "cart", "default", "cart-canary")
    for obs in ticks:
        reordered = _renamed_and_reordered(obs, order)
        batch = [obs, dataclasses.replace(reordered, route=other_route)]
        decided = many.decide_many(batch)
        assert decided == [one.decide(o) for o in batch]
        np.testing.assert_allclose(many.last_raw_actions[1], one.last_raw_action, atol=1e-12)


def test_identical_versions_get_the_same_action():
    stats = SubsetStats(80.0, 0.01, 120.0, 30, slow_ratio=0.02)
    other = SubsetStats(150.0, 0.0, 90.0, 40, slow_ratio=0.0)
    obs = Observation(
        ROUTE,
        ("a", "b", "c"),
        (stats, other, stats),
        timestamp_s=5.0,
        capacity_hint_rps=(100.0, 200.0, 100.0),
    )
    policy = _network(5)
    policy.decide(obs)
    raw = policy.last_raw_action
    assert raw[0] == raw[2]
    assert raw[1] != raw[0]


def test_the_order_is_by_capacity_share_then_weight():
    obs = Observation(
        ROUTE,
        ("small", "big", "mid-light", "mid-heavy"),
        tuple(SubsetStats(10.0, 0.0, 50.0, w) for w in (10, 40, 20, 30)),
        timestamp_s=5.0,
        capacity_hint_rps=(50.0, 200.0, 100.0, 100.0),
    )
    from agents.obs_extensions import TrendMemory
    from meshcore.features import encode

    vec = TrendMemory().extend(encode(obs, SPEC), obs, SPEC)[None, :]
    slots = sort_slots(vec, SPEC)
    assert slots.orders[0, :4].tolist() == [1, 3, 2, 0]
    assert slots.orders[0, 4:].tolist() == [4, 5, 6, 7]  # absent slots last, as they were
    back = slots.original_actions(np.arange(K, dtype=float)[None, :])
    assert back[0, :4].tolist() == [3.0, 0.0, 2.0, 1.0]


def test_a_policy_file_of_the_first_format_is_refused_with_the_reason(tmp_path):
    rng = np.random.default_rng(0)
    path = save_npz(
        tmp_path / "p.npz",
        spec=SPEC,
        layers=[(rng.normal(size=(K, N_IN)), np.zeros(K))],
        obs_mean=np.zeros(N_IN),
        obs_var=np.ones(N_IN),
        clip_obs=10.0,
        eps=1e-8,
    )
    assert load_numpy_policy(path).name == "ppo"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "slot_order"}
    arrays["format_version"] = np.asarray(1)
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    with pytest.raises(ConfigError, match=r"format 1.*own order: retrain"):
        load_numpy_policy(old)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([-2.5, -1.0, -0.0, 0.0, 1e-7, 0.3, 1.0, 7.9]), min_size=3),
        min_size=K,
        max_size=K,
    ),
    st.integers(0, 2**32 - 1),
)
def test_the_order_is_the_lexicographic_one_largest_first(values, seed):
    """Against a plain sort of each slot's values as tuples (ties keep the route's order)."""
    cols = slot_columns(SPEC)
    rng = np.random.default_rng(seed)
    vec = rng.choice([-1.0, 0.0, 0.5], size=N_IN).astype(np.float32)
    for j in range(K):  # the first values of each slot from the drawn lists, others random
        vec[cols[j, : len(values[j])]] = values[j][: cols.shape[1]]
    signature = [tuple(-float(x) + 0.0 for x in vec[cols[j]]) for j in range(K)]
    expected = sorted(range(K), key=lambda j: (signature[j], j))
    assert sort_slots(vec[None, :], SPEC).orders[0].tolist() == expected

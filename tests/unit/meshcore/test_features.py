"""encode/decode: the invariants every policy output relies on.

Cases: decode yields a valid split for any action (incl. NaN/inf) and mask, each weight within
1 of the masked softmax of the clipped action; masked slots get 0, even with the largest
action; encode fits the observation space and marks missing data; the spec hash is pinned (a
change invalidates every exported model) and changes with the layout; encode_weights inverts
decode.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from meshcore import (
    FeatureSpec,
    Observation,
    RouteRef,
    SubsetStats,
    Weights,
    decode,
    encode,
    encode_weights,
)

SPEC = FeatureSpec()
ROUTE = RouteRef("ns", "vs", "r", "h")


@given(
    action=arrays(
        np.float64, SPEC.max_subsets, elements=st.floats(allow_nan=True, allow_infinity=True)
    ),
    n=st.integers(1, SPEC.max_subsets),
    temperature=st.floats(0.1, 20),
)
def test_decode_always_yields_a_valid_split(action: np.ndarray, n: int, temperature: float) -> None:
    subsets = [f"v{i}" for i in range(n)]
    w = decode(action, SPEC.mask(n), subsets, temperature=temperature)  # Weights: 0..100, sum 100
    assert list(w.keys()) == subsets
    # Each weight is the softmax share of its slot (non-finite -> 0, clipped to [-1, 1],
    # scaled by the temperature; masked slots left out), rounded: never more than 1 point off.
    logits = np.clip(np.nan_to_num(action[:n], nan=0.0, posinf=0.0, neginf=0.0), -1, 1)
    exact = np.exp((logits - logits.max()) * temperature)
    exact = 100 * exact / exact.sum()
    assert all(abs(w[s] - e) < 1 for s, e in zip(subsets, exact, strict=True)), (w, exact)


@given(n=st.integers(1, 7))
def test_masked_slots_get_no_weight_even_with_the_largest_action(n: int) -> None:
    action = np.full(SPEC.max_subsets, -1.0)
    action[n:] = 1.0
    w = decode(action, SPEC.mask(n), [f"v{i}" for i in range(n)])
    assert w.subsets == tuple(f"v{i}" for i in range(n))
    assert max(w.values()) - min(w.values()) <= 1  # equal actions: an even split of all 100


def test_decode_rejects_inconsistent_masks() -> None:
    with pytest.raises(ValueError, match="at least one"):
        decode(np.zeros(3), np.zeros(3, dtype=bool), [])
    with pytest.raises(ValueError, match="first len"):
        decode(np.zeros(3), np.array([False, True, True]), ["a", "b"])
    with pytest.raises(ValueError, match="entries but mask"):
        decode(np.zeros(3), np.ones(2, dtype=bool), ["a", "b"])


@given(data=st.data(), n=st.integers(1, 8))
def test_encode_weights_inverts_decode(data: st.DataObject, n: int) -> None:
    raw = data.draw(st.lists(st.integers(1, 100), min_size=n, max_size=n))
    from meshcore import largest_remainder

    w = Weights([f"v{i}" for i in range(n)], largest_remainder(raw))
    back = decode(encode_weights(w, SPEC), SPEC.mask(n), w.subsets)
    assert max(abs(back[s] - w[s]) for s in w) <= 1


def _obs(stats: list[SubsetStats]) -> Observation:
    return Observation(ROUTE, tuple(f"v{i}" for i in range(len(stats))), tuple(stats), 0.0, 12.0)


def test_encode_fits_the_space_and_marks_missing_data() -> None:
    obs = _obs(
        [SubsetStats(100, 0.01, 120, 70, 0.02), SubsetStats(math.nan, math.nan, math.nan, 30)]
    )
    vec = encode(obs, SPEC)
    assert SPEC.observation_space().contains(vec)
    assert vec[0] == 1 and vec[1] == 1 and vec[2] == pytest.approx(0.7)
    assert vec[3] == pytest.approx(1.0) and vec[5] == pytest.approx(120 / 250)
    assert vec[8] == 1 and vec[9] == 0 and vec[11] == 0
    assert vec[16:64].sum() == 0
    assert vec[-1] == pytest.approx(12 / 60)


def test_encode_rejects_more_subsets_than_slots() -> None:
    small = FeatureSpec(max_subsets=2)
    with pytest.raises(ValueError, match=r"handles 1\.\.2"):
        encode(
            _obs([SubsetStats(1, 0, 1, 34), SubsetStats(1, 0, 1, 33), SubsetStats(1, 0, 1, 33)]),
            small,
        )


def test_spec_hash_is_stable_and_layout_sensitive() -> None:
    # Pinned: exported models carry this hash, so a change refuses them all. If the layout
    # changed on purpose, update the literal (and _LAYOUT_VERSION) and retrain.
    assert FeatureSpec().hash == "8d261afdbdab1223"
    assert FeatureSpec(max_subsets=4).hash != FeatureSpec().hash
    assert FeatureSpec(slo_ms=300).hash != FeatureSpec().hash
    assert FeatureSpec.from_dict(FeatureSpec().to_dict()) == FeatureSpec()
    with pytest.raises(ValueError):
        FeatureSpec(slo_ms=-1)


def test_unknown_data_age_encodes_as_stale_never_as_nan() -> None:
    spec = FeatureSpec()
    stats = [SubsetStats(10.0, 0.0, 20.0, 100)]
    unknown = encode(dataclasses.replace(_obs(stats), staleness_s=math.nan), spec)
    ancient = encode(dataclasses.replace(_obs(stats), staleness_s=math.inf), spec)
    assert np.isfinite(unknown).all()
    assert np.array_equal(unknown, ancient)

"""The canonical slot order: a route's versions reach the network sorted by what it sees of them.

Why: the network reads a route as fixed slots, one per version. Fed in the order the route
lists them, renaming or reordering the versions of a route would hand the same mesh to other
input units and could change the split. Sorted by their own values (the slot's `encode`
features and every per-slot value of the observation extension), the same versions reach the
same units whatever their names and order, so reordering a route reorders its split the same
way (the permutation property), and one network serves any number of versions up to
``spec.max_subsets`` (absent slots last).

Versions that look exactly alike (every value equal) are interchangeable, so their outputs are
averaged: which of two identical rows comes first must not decide which gets more traffic.

Both sides use this module: training (`agents.training.wrappers.CanonicalSlots`, between the
observation extension and the action prior) and serving (`agents.network`), numpy only.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from agents.obs_extensions import slot_block_starts
from meshcore.features import PER_SUBSET, FeatureSpec

SLOT_ORDER = "canonical"
"""The order's name, as policy files record it (``slot_order``)."""

FIRST_KEYS = (0, 7, 2)
"""`encode` per-slot entries compared first, in this order, larger first: present (absent
slots last), capacity share (static while the configuration is) and weight; then every other
value of the slot in vector order."""


@lru_cache(maxsize=8)
def slot_columns(spec: FeatureSpec) -> np.ndarray:
    """(max_subsets, values per slot) indices of each slot's values in an extended vector,
    in comparison order (`FIRST_KEYS` first)."""
    k = spec.max_subsets
    own = list(FIRST_KEYS) + [f for f in range(PER_SUBSET) if f not in FIRST_KEYS]
    cols = np.array(
        [
            [j * PER_SUBSET + f for f in own] + [s + j for s in slot_block_starts(spec)]
            for j in range(k)
        ],
        dtype=np.int64,
    )
    cols.setflags(write=False)
    return cols


def _signatures(vecs: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(rows, max_subsets, values per slot) float32: each slot's values in comparison order
    (the extended vectors are float32; -0.0 reads as 0.0)."""
    rows = np.asarray(vecs, dtype=np.float32)
    return np.ascontiguousarray(rows[:, slot_columns(spec)]) + np.float32(0.0)


def canonical_orders(vecs: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """(rows, max_subsets) for extended vectors `vecs` (one row each): the slot each position
    of the canonical order takes its values from (largest values first, compared in
    `slot_columns`' order; identical slots keep their order)."""
    sig = _signatures(vecs, spec)
    n, k, m = sig.shape
    # Each float as an unsigned integer that sorts like it, complemented so the largest value
    # comes first, big-endian: a slot's values are then one byte string whose byte order is
    # the comparison order, and one stable argsort per route sorts them.
    bits = sig.view(np.uint32)
    ascending = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
    keys = (~ascending).astype(">u4").view(f"S{4 * m}").reshape(n, k)
    return np.argsort(keys, axis=1, kind="stable").astype(np.int64)


def canonical_vectors(vecs: np.ndarray, orders: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """`vecs` with each row's slots moved to their canonical positions (`orders` from
    `canonical_orders`); the route's values stay where they are."""
    rows = np.asarray(vecs)
    out = rows.copy()
    cols = slot_columns(spec)
    taken = cols[orders]  # (rows, k, values): source columns of each canonical position
    out[:, cols.reshape(-1)] = np.take_along_axis(rows, taken.reshape(len(rows), -1), axis=1)
    return out


def original_actions(
    actions: np.ndarray, orders: np.ndarray, canonical: np.ndarray, spec: FeatureSpec
) -> np.ndarray:
    """Actions decided in canonical order (one row per route, one value per position) moved
    back to the route's own slots, each value averaged over the positions whose slots are
    identical in `canonical` (the canonical vectors the actions were decided on)."""
    a = np.asarray(actions, dtype=np.float64)
    n, k = a.shape
    sig = _signatures(canonical, spec)
    same = np.zeros((n, k), dtype=bool)
    same[:, 1:] = np.all(sig[:, 1:] == sig[:, :-1], axis=2)
    group = np.cumsum(~same, axis=1) - 1 + (np.arange(n) * k)[:, None]
    sums = np.bincount(group.reshape(-1), weights=a.reshape(-1), minlength=n * k)
    counts = np.bincount(group.reshape(-1), minlength=n * k)
    averaged = (sums / np.maximum(counts, 1))[group]
    out = np.empty_like(averaged)
    np.put_along_axis(out, orders, averaged, axis=1)
    return out

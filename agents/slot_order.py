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

from dataclasses import dataclass
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


@dataclass(frozen=True)
class SortedSlots:
    """Extended vectors (one row per route) with their slots in canonical order.

    `orders[r, p]` is the slot of row `r` whose values sit at canonical position `p`;
    `vectors` are the rows with their slots moved there (the route's values stay where they
    are); `ties[r, p]` says position `p` is identical to position `p - 1` in every value."""

    orders: np.ndarray
    vectors: np.ndarray
    ties: np.ndarray

    def original_actions(self, actions: np.ndarray) -> np.ndarray:
        """Actions decided in canonical order (one row per route, one value per position)
        moved back to the route's own slots, each value averaged over the positions whose
        slots are identical."""
        a = np.asarray(actions, dtype=np.float64)
        n, k = a.shape
        group = np.cumsum(~self.ties, axis=1) - 1 + (np.arange(n) * k)[:, None]
        sums = np.bincount(group.reshape(-1), weights=a.reshape(-1), minlength=n * k)
        counts = np.bincount(group.reshape(-1), minlength=n * k)
        averaged = (sums / np.maximum(counts, 1))[group]
        out = np.empty_like(averaged)
        np.put_along_axis(out, self.orders, averaged, axis=1)
        return out


def sort_slots(vecs: np.ndarray, spec: FeatureSpec) -> SortedSlots:
    """Extended vectors `vecs` (rows, vector size) in canonical order: largest values first,
    compared in `slot_columns`' order; identical slots keep their order."""
    rows = np.asarray(vecs)
    cols = slot_columns(spec)
    # Each slot's values as float32 in comparison order (the extended vectors are float32;
    # adding 0.0 turns -0.0 into 0.0).
    sig = np.ascontiguousarray(rows.astype(np.float32, copy=False)[:, cols]) + np.float32(0.0)
    n, k, m = sig.shape
    # Each float as an unsigned integer that sorts like it, complemented so the largest value
    # comes first, big-endian: a slot's values are then one byte string whose byte order is
    # the comparison order, and one stable argsort per route sorts them.
    bits = sig.view(np.uint32)
    ascending = np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000))
    keys = (~ascending).astype(">u4").view(f"S{4 * m}").reshape(n, k)
    orders = np.argsort(keys, axis=1, kind="stable").astype(np.int64)

    vectors = rows.copy()
    taken = cols[orders]  # (rows, k, values): source columns of each canonical position
    vectors[:, cols.reshape(-1)] = np.take_along_axis(rows, taken.reshape(n, -1), axis=1)

    ranked = np.take_along_axis(sig, orders[:, :, None], axis=1)
    ties = np.zeros((n, k), dtype=bool)
    ties[:, 1:] = np.all(ranked[:, 1:] == ranked[:, :-1], axis=2)
    return SortedSlots(orders, vectors, ties)

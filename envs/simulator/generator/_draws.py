"""The few ways the generator draws from a numpy ``Generator``, and its time grid.

Every draw of the generator goes through these helpers, so the draws that decide a scenario's
bytes are few and easy to audit. Internal to `envs.simulator.generator`.
"""

from __future__ import annotations

import math

import numpy as np

STEP_S = 5
"""Step of every generated scenario and the grid event times are rounded down to (s)."""


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A float in lo..hi."""
    return lo + (hi - lo) * float(rng.random())


def integer(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in lo..hi, both included."""
    return int(rng.integers(lo, hi + 1))


def chance(rng: np.random.Generator, p: float) -> bool:
    """True with probability p."""
    return float(rng.random()) < p


def floor_to(x: float, step: float) -> float:
    """x rounded down to a multiple of step (tolerating float error just below one)."""
    return math.floor(x / step + 1e-9) * step


def to_step(x: float) -> int:
    """A time in whole steps of 5 s, rounded down (s)."""
    return int(floor_to(x, STEP_S))


def pick(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """k distinct indices out of n (all n when k > n), in random order."""
    return [int(i) for i in rng.permutation(n)[: min(k, n)]]

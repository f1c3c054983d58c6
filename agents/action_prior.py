"""The action prior: what a PPO network's output is added to before `decode`.

Why a module of its own: the training env wrapper (`agents.training.wrappers`), the imitation
teacher and the serving policies (`agents.network`) must hand `decode` the very same logits for
the same network output, so the prior, the correction shape (`action_gain`) and its inverse
live in one place that needs numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from agents.baselines import sqrt_shares
from meshcore.errors import ConfigError
from meshcore.features import PER_SUBSET, FeatureSpec

ACTION_PRIORS = ("none", "capacity", "hold", "sqrt")
"""Known action priors: what the network's output is added to before `decode`."""

HOLD_FLOOR = 0.0025
"""Smallest weight share (of the largest) the "hold" prior represents: e^-6, decode's range."""


def capacity_prior(obs_vec: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Action (in decode's units) whose decode is the capacity-proportional split.

    Reads ``capacity_share`` of each present slot from the encoded observation; the largest
    subset gets 0, others ``log(share / max_share) / temperature`` (clipped to -1), absent slots
    -1. Why: a policy that only learns a *correction* to the split people already use starts
    from a good operating point instead of from an equal split, which overloads small subsets.
    """
    k = spec.max_subsets
    per = np.asarray(obs_vec, dtype=np.float64)[: k * PER_SUBSET].reshape(k, PER_SUBSET)
    present = per[:, 0] > 0.5
    share = np.maximum(per[:, 7], 1e-9)
    prior = np.full(k, -1.0)
    if present.any():
        logits = np.log(share) / spec.action_temperature
        logits -= logits[present].max()
        prior[present] = np.clip(logits[present], -1.0, 1.0)
    return prior


def sqrt_prior(obs_vec: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Action whose decode is the square-root split (`agents.baselines.sqrt_shares` of the
    nominal capacity shares at the route utilization), like `capacity_prior`.

    Reads capacity shares from the encoded observation and the route utilization from the
    "utilization" extension (its last value, right after `encode`'s vector); falls back to
    `capacity_prior` without that input or where the rule does not apply. Subsets the rule
    drops get -1 (decode's smallest weight). Why: on the suite the square-root split is the
    best static baseline (steady-90, many-subsets, diurnal-bursts), so a network that only
    corrects it starts from there, and its residual to the oracle is small and smooth in load.
    """
    vec = np.asarray(obs_vec, dtype=np.float64).reshape(-1)
    k = spec.max_subsets
    if vec.size < spec.obs_size + k + 1:
        return capacity_prior(vec, spec)
    per = vec[: k * PER_SUBSET].reshape(k, PER_SUBSET)
    present = per[:, 0] > 0.5
    utilization = float(vec[spec.obs_size + k])
    if not present.any():
        return capacity_prior(vec, spec)
    share = np.maximum(per[present, 7], 1e-9)
    share = share / share.sum()
    shares = sqrt_shares(list(share), utilization)
    if shares is None:
        return capacity_prior(vec, spec)
    x = np.asarray(shares, dtype=np.float64)
    prior = np.full(k, -1.0)
    logits = np.log(np.maximum(x, 1e-12)) / spec.action_temperature
    logits -= logits.max()
    prior[present] = np.clip(logits, -1.0, 1.0)
    return prior


def has_any_data(obs_vec: np.ndarray, spec: FeatureSpec) -> bool:
    """True when at least one present subset slot has data (``has_data`` feature set)."""
    k = spec.max_subsets
    per = np.asarray(obs_vec, dtype=np.float64)[: k * PER_SUBSET].reshape(k, PER_SUBSET)
    return bool(np.any((per[:, 0] > 0.5) & (per[:, 1] > 0.5)))


def hold_prior(obs_vec: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Action whose decode keeps the currently configured weights (up to rounding).

    The largest weight gets +1 and the others ``1 + log(w / w_max) / temperature`` down to -1,
    so decode's whole [-1, 1] range holds weights down to `HOLD_FLOOR` of the largest. Why: a
    network that outputs a *change* of the split acts like an integrating controller and keeps
    a decision (e.g. a drained canary) without needing memory.
    """
    k = spec.max_subsets
    per = np.asarray(obs_vec, dtype=np.float64)[: k * PER_SUBSET].reshape(k, PER_SUBSET)
    present = per[:, 0] > 0.5
    prior = np.full(k, -1.0)
    if present.any():
        w = per[:, 2]
        top = max(float(w[present].max()), 1e-9)
        rel = np.maximum(w / top, HOLD_FLOOR)
        prior[present] = np.clip(1.0 + np.log(rel[present]) / spec.action_temperature, -1.0, 1.0)
    return prior


def check_action_gain(gain: float) -> float:
    """`gain` as a float, or ConfigError unless 0 < gain <= 1."""
    g = float(gain)
    if not (math.isfinite(g) and 0.0 < g <= 1.0):
        raise ConfigError(f"action gain must be in (0, 1], got {gain}")
    return g


def shape_correction(action: np.ndarray, gain: float) -> np.ndarray:
    """The correction added to the prior: ``gain * a + (1 - gain) * a**3`` for a in [-1, 1].

    Odd, increasing, and maps [-1, 1] onto itself, so the whole range of corrections stays
    reachable (draining a canary needs a full -1), while near 0 one unit of network output
    moves the split `gain` times as much. Why: with decode's temperature 3 an output error of
    0.01 shifts a subset's share by 3 %, i.e. half a weight point at 90 % load, where that
    costs 10-25 % more bad requests; a gain below 1 makes the calm, near-prior outputs that
    much less sensitive to the network's imprecision and to telemetry noise.
    """
    a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    if gain >= 1.0:
        return a
    return gain * a + (1.0 - gain) * a**3


def unshape_correction(correction: np.ndarray, gain: float) -> np.ndarray:
    """Inverse of `shape_correction` on [-1, 1] (Cardano: the cubic has one real root, polished
    by Newton steps)."""
    d = np.clip(np.asarray(correction, dtype=np.float64), -1.0, 1.0)
    if gain >= 1.0:
        return d
    c = 1.0 - gain
    if c > 1e-3:
        p, q = gain / c, -d / c
        root = np.sqrt(q * q / 4.0 + p**3 / 27.0)
        a = np.cbrt(-q / 2.0 + root) + np.cbrt(-q / 2.0 - root)
    else:  # nearly linear: Cardano cancels badly, d itself is close
        a = d.copy()
    for _ in range(3):  # Newton polish; the slope is at least `gain` > 0
        a = a - (gain * a + c * a**3 - d) / (gain + 3.0 * c * a * a)
    return np.clip(a, -1.0, 1.0)


def prior_action(obs_vec: np.ndarray, spec: FeatureSpec, prior: str) -> tuple[np.ndarray, bool]:
    """(the action the prior alone would hand `decode`, whether the network's correction is
    added to it): see `apply_action_prior`. Split out so an ensemble computes it once for all
    its members."""
    if prior not in ACTION_PRIORS:
        raise ConfigError(f"unknown action prior {prior!r}; known: {', '.join(ACTION_PRIORS)}")
    if not has_any_data(obs_vec, spec):
        return capacity_prior(obs_vec, spec), False
    if prior == "capacity":
        return capacity_prior(obs_vec, spec), True
    if prior == "hold":
        return hold_prior(obs_vec, spec), True
    if prior == "sqrt":
        return sqrt_prior(obs_vec, spec), True
    return np.zeros(spec.max_subsets), True


def corrected_action(
    action: np.ndarray, prior: tuple[np.ndarray, bool], gain: float = 1.0
) -> np.ndarray:
    """`prior_action`'s result plus the network's action shaped by `shape_correction`, clipped
    to [-1, 1] (the prior alone where the network is not consulted)."""
    base, consulted = prior
    if not consulted:
        return base
    a = shape_correction(np.asarray(action, dtype=np.float64).reshape(-1), gain)
    return np.clip(a + base, -1.0, 1.0)


def apply_action_prior(
    action: np.ndarray,
    obs_vec: np.ndarray,
    spec: FeatureSpec,
    prior: str,
    gain: float = 1.0,
) -> np.ndarray:
    """The action `decode` receives: the network's action in [-1, 1], shaped by
    `shape_correction` with `gain`, plus the prior, clipped.

    Shared by the training env wrapper and `NumpyPolicy`, so both decode the same logits.
    Before any telemetry (no subset has data, e.g. the first tick of a route) the network's
    output is ignored and the split is capacity-proportional: the network would be reading an
    all-zero load picture it cannot interpret, and one bad split then costs a queue that takes
    many steps to drain.
    """
    return corrected_action(action, prior_action(obs_vec, spec, prior), gain)

"""The action prior: what a PPO network's output is added to before `decode`.

The network outputs a correction to the square-root split (`sqrt_prior`); before any
telemetry the split is capacity-proportional and the network is not consulted.

Why a module of its own: the training env wrapper (`agents.training.wrappers`), the imitation
teacher and the serving policies (`agents.network`) must hand `decode` the very same logits for
the same network output, so the prior lives in one place that needs numpy only.
"""

from __future__ import annotations

import numpy as np

from agents.baselines import sqrt_shares
from meshcore.features import PER_SUBSET, FeatureSpec

ACTION_PRIOR = "sqrt"
"""The prior's name, as policy files record it (``action_prior``)."""


def capacity_prior(obs_vec: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Action (in decode's units) whose decode is the capacity-proportional split.

    Reads ``capacity_share`` of each present slot from the encoded observation; the largest
    subset gets 0, others ``log(share / max_share) / temperature`` (clipped to -1), absent slots
    -1.
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
    observation extension (its utilization block's last value, right after `encode`'s vector,
    see `agents.obs_extensions`); `capacity_prior` where the rule does not apply. Subsets the
    rule drops get -1 (decode's smallest weight).
    """
    vec = np.asarray(obs_vec, dtype=np.float64).reshape(-1)
    k = spec.max_subsets
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


def prior_action(obs_vec: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, bool]:
    """(the action the prior alone would hand `decode`, whether the network's correction is
    added to it) for the extended observation `obs_vec`: see `apply_action_prior`. Split out so
    an ensemble computes it once for all its members."""
    if not has_any_data(obs_vec, spec):
        return capacity_prior(obs_vec, spec), False
    return sqrt_prior(obs_vec, spec), True


def corrected_action(action: np.ndarray, prior: tuple[np.ndarray, bool]) -> np.ndarray:
    """`prior_action`'s result plus the network's action clipped to [-1, 1], clipped to
    [-1, 1] (the prior alone where the network is not consulted)."""
    base, consulted = prior
    if not consulted:
        return base
    a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
    return np.clip(a + base, -1.0, 1.0)


def apply_action_prior(action: np.ndarray, obs_vec: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The action `decode` receives: the network's action in [-1, 1] plus the prior, clipped.

    Shared by the training env wrapper and `NumpyPolicy`, so both decode the same logits.
    Before any telemetry (no subset has data, e.g. the first tick of a route) the network's
    output is ignored and the split is capacity-proportional: the network would be reading an
    all-zero load picture it cannot interpret.
    """
    return corrected_action(action, prior_action(obs_vec, spec))

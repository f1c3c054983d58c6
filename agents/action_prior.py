"""The action prior: what a PPO network's output is added to before `decode`.

The network outputs a correction to the square-root split (`sqrt_prior`); before any
telemetry the split is capacity-proportional and the network is not consulted.

Why a module of its own: the training env wrapper (`agents.training.wrappers`), the imitation
teacher and the serving policies (`agents.network`) must hand `decode` the very same logits for
the same network output, so the prior lives in one place that needs numpy only.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

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


# ---- many rows at once: `prior_action` and `corrected_action` as arrays ----------------------


@lru_cache(maxsize=4096)
def _sqrt_steps(capacity: tuple[float, ...], k: int) -> tuple[float, ...]:
    """What `sqrt_shares` of the normalized `capacity` shares computes before it looks at the
    load (static while a route's hints are), padded to `k` slots, one block of k after the
    other: the slots by decreasing share, those shares, their square roots, and per number m
    of active slots the exact sums of the m largest shares and of their square roots."""
    share = np.maximum(np.asarray(capacity, dtype=np.float64), 1e-9)
    mu = [float(x) for x in share / share.sum()]
    order = sorted(range(len(mu)), key=lambda i: (-mu[i], i))
    by_size = [mu[i] for i in order]
    roots = [math.sqrt(m) for m in by_size]
    sizes = range(1, len(mu) + 1)
    zeros, nans = [0.0] * (k - len(mu)), [math.nan] * (k - len(mu))
    sums = [math.fsum(by_size[:m]) for m in sizes]
    root_sums = [math.fsum(roots[:m]) for m in sizes]
    blocks = ([float(i) for i in order], zeros, by_size, zeros, roots, zeros, sums, nans)
    return tuple(itertools.chain(*blocks, root_sums, nans))


def _sqrt_priors(vecs: np.ndarray, present: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """`sqrt_prior` of every row (rows with a present slot), NaN rows where the square-root
    rule does not apply (`capacity_prior` then)."""
    k = spec.max_subsets
    rows = len(vecs)
    share = vecs[:, : k * PER_SUBSET].reshape(rows, k, PER_SUBSET)[:, :, 7]
    load = vecs[:, spec.obs_size + k]
    n = present.sum(axis=1)
    slot = np.arange(k)[None, :]
    prefix = (present == (slot < n[:, None])).all(axis=1)
    steps: list[float] = []
    for shares, mask, count, first in zip(
        share.tolist(), present.tolist(), n.tolist(), prefix.tolist(), strict=True
    ):
        kept = shares[:count] if first else [x for x, p in zip(shares, mask, strict=True) if p]
        steps.extend(_sqrt_steps(tuple(kept), k))
    order, by_size, roots, sums, root_sums = np.array(steps).reshape(rows, 5, k).transpose(1, 0, 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        level = (sums - load[:, None]) / root_sums
        last = by_size - roots * level
    fits = last > 0
    fits[:, 0] = True
    active = k - np.argmax(fits[:, ::-1], axis=1)  # the largest set whose last slot gets > 0
    chosen = level[np.arange(rows), active - 1][:, None]
    with np.errstate(invalid="ignore"):
        rates = np.where(slot < active[:, None], by_size - roots * chosen, 0.0)
    rates[:, 0] = np.where(active == 1, load, rates[:, 0])
    served = np.array([math.fsum(r) for r in rates.tolist()])
    applies = (load > 0) & (load < sums[np.arange(rows), n - 1]) & (served > 0)
    slots = np.argsort(~present, axis=1, kind="stable")  # present slots first, in order
    target = np.take_along_axis(slots, np.where(slot < n[:, None], order, slot).astype(int), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(slot < n[:, None], rates / served[:, None], 1.0)
    x = np.ones((rows, k))
    np.put_along_axis(x, target, shares, axis=1)
    return _logit_prior(np.log(np.maximum(x, 1e-12)) / spec.action_temperature, present, applies)


def _logit_prior(logits: np.ndarray, present: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per row: the logits shifted so the largest present one is 0, clipped to [-1, 1],
    -1 in absent slots; NaN rows where `keep` is False."""
    with np.errstate(invalid="ignore"):
        top = np.where(present, logits, -np.inf).max(axis=1)
        prior = np.where(present, np.clip(logits - top[:, None], -1.0, 1.0), -1.0)
    return np.where(keep[:, None], prior, np.nan)


def prior_actions(obs_vecs: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """`prior_action` of every row of `obs_vecs` (extended observations): (actions, one row
    each; whether the network's correction is added, per row). The same values."""
    vecs = np.asarray(obs_vecs, dtype=np.float64)
    k = spec.max_subsets
    per = vecs[:, : k * PER_SUBSET].reshape(len(vecs), k, PER_SUBSET)
    present = per[:, :, 0] > 0.5
    consulted = np.any(present & (per[:, :, 1] > 0.5), axis=1)
    share_logits = np.log(np.maximum(per[:, :, 7], 1e-9)) / spec.action_temperature
    capacity = _logit_prior(share_logits, present, np.ones(len(vecs), dtype=bool))
    out = capacity.copy()
    rows = np.flatnonzero(consulted)
    if rows.size:
        sqrt = _sqrt_priors(vecs[rows], present[rows], spec)
        out[rows] = np.where(np.isnan(sqrt[:, :1]), capacity[rows], sqrt)
    return out, consulted


def corrected_actions(actions: np.ndarray, prior: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`corrected_action` of every row (`prior` as `prior_actions` returns it)."""
    base, consulted = prior
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    return np.where(consulted[:, None], np.clip(a + base, -1.0, 1.0), base)

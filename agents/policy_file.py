"""Serve a trained PPO policy with numpy alone: the controller never imports torch.

Training (`agents.ppo`) exports the actor network of a stable-baselines3 PPO model, the
`VecNormalize` observation statistics and the `FeatureSpec` it was trained on into one `.npz`
file. This module loads that file with ``allow_pickle=False`` (a model file is data, never
code), refuses it when its feature layout does not match, and runs
``encode -> normalize -> MLP -> action prior -> decode`` for every decision, exactly as the
training env did (parity with SB3's deterministic ``predict`` is tested).

File format (every entry a plain numpy array; strings are 0-d unicode arrays):

=================  ==========================================================================
 key               meaning
=================  ==========================================================================
 format_version    int, `FORMAT_VERSION`
 spec_json         `FeatureSpec.to_dict()` as JSON
 spec_hash         `FeatureSpec.hash` of that spec (checked against it on load)
 activation        hidden-layer activation: "tanh" or "relu" (SB3's ``activation_fn``)
 n_layers          number of Linear layers, hidden ones plus the action head
 w{i}, b{i}        Linear layer i: weight (out, in) and bias (out,), as in torch
 obs_mean/obs_var  VecNormalize running mean / variance per observation entry
 clip_obs, eps     VecNormalize ``clip_obs`` and ``epsilon``
 action_prior      "none", "capacity", "sqrt" or "hold" (see `apply_action_prior`)
 action_gain       float in (0, 1], see `shape_correction` (optional, 1.0: linear)
 obs_extension     one of `OBS_EXTENSIONS`: inputs appended to `encode` (optional, "none";
                   see `extend_observation`)
 metadata_json     free-form JSON (training config, versions) for humans; optional
 n_members         number of networks of an `EnsemblePolicy` (optional, 1); member 0 is the
                   entries above, member j >= 1 the same per-network entries (activation to
                   obs_extension, w{i}, b{i}) prefixed ``m{j}.``
=================  ==========================================================================
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.baselines import sqrt_shares
from meshcore.errors import ConfigError
from meshcore.features import PER_SUBSET, FeatureSpec, decode, encode
from meshcore.model import Observation, Weights

FORMAT_VERSION = 1
"""Version of the `.npz` layout above; bumped on any incompatible change."""

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.npz"
"""The policy shipped with meshpilot (what ``--policy ppo`` serves)."""

ACTION_PRIORS = ("none", "capacity", "hold", "sqrt")
"""Known action priors: what the network's output is added to before `decode`."""

HOLD_FLOOR = 0.0025
"""Smallest weight share (of the largest) the "hold" prior represents: e^-6, decode's range."""

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
}
_HEADER_KEYS = ("format_version", "spec_json", "spec_hash")
"""Entries a policy file holds once, whatever its number of networks."""
_MEMBER_REQUIRED = (
    "activation",
    "n_layers",
    "obs_mean",
    "obs_var",
    "clip_obs",
    "eps",
    "action_prior",
)
"""Entries every network of a file must have (besides its ``w{i}``/``b{i}``)."""
_REQUIRED = (*_HEADER_KEYS, *_MEMBER_REQUIRED)


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


OBS_EXTENSIONS = (
    "none",
    "utilization",
    "utilization-trend",
    "utilization-trend-ema",
    "utilization-trend-ema2",
    "utilization-trend-ema2-recent",
)
"""Extra inputs appended to `encode`'s vector (see `extend_observation`)."""

TREND_FEATURES = (2, 4, 6)
"""`encode` per-slot entries whose change since the last tick "utilization-trend" appends:
weight, error_ratio and slow_ratio (see `meshcore.features`). Not p99: a difference of
two noisy p99 samples doubles their noise's variance, and slow_ratio, read from the same
histogram, carries the latency news without it (measured: the same recipe with the p99 change
met 15 and 14 of issue #3's claims, without it 15 and 16)."""


EMA_FEATURES = (5, 6)
"""`encode` per-slot entries (p99/slo, slow_ratio) whose exponential moving average
"utilization-trend-ema" appends, next to the averaged utilizations."""

EMA_ALPHAS: dict[str, tuple[float, ...]] = {
    "utilization-trend-ema": (0.2,),
    "utilization-trend-ema2": (0.2, 0.05),
    "utilization-trend-ema2-recent": (0.2, 0.05),
}
"""Weight of the newest tick in each moving average an extension appends: 0.2 is a time
constant of ~5 ticks (25 s at the suite's 5 s step, on top of the 30 s rate window), 0.05 ~20
ticks (100 s)."""

_REMEMBERING = ("utilization-trend", *EMA_ALPHAS)
"""Extensions that compare with the route's previous tick (`TrendMemory` keeps it)."""

RECENT_EXTENSIONS = ("utilization-trend-ema2-recent",)
"""Extensions that also append each slot's newest-interval p99/slo and slow ratio
(`SubsetStats.recent_p99_ms`, `recent_slow_ratio`), before the moving averages."""


def extension_size(spec: FeatureSpec, extension: str) -> int:
    """How many values `extend_observation` appends for `extension`."""
    k = spec.max_subsets
    if extension == "none":
        return 0
    if extension == "utilization":
        return k + 1
    if extension == "utilization-trend":
        return 2 * (k + 1) + len(TREND_FEATURES) * k
    if extension in EMA_ALPHAS:
        averaged = (k + 1) + len(EMA_FEATURES) * k
        recent = 2 * k if extension in RECENT_EXTENSIONS else 0
        return (
            2 * (k + 1) + len(TREND_FEATURES) * k + recent + len(EMA_ALPHAS[extension]) * averaged
        )
    raise ConfigError(f"unknown observation extension {extension!r}; known: {OBS_EXTENSIONS}")


def extension_low(spec: FeatureSpec, extension: str) -> float:
    """Lower bound of every extended input: trends are changes, so they can be negative."""
    return -spec.p99_clip if extension in _REMEMBERING else 0.0


def _utilization(obs: Observation, spec: FeatureSpec) -> np.ndarray:
    extra = np.zeros(spec.max_subsets + 1, dtype=np.float64)
    caps = obs.capacity_hint_rps
    if caps and all(math.isfinite(c) and c > 0 for c in caps):
        known_rps = 0.0
        known_weight = 0
        for i, st in enumerate(obs.stats):
            if st.has_data and math.isfinite(st.rps):
                extra[i] = max(st.rps, 0.0) / caps[i]
                known_rps += max(st.rps, 0.0)
                known_weight += st.weight
        if known_weight > 0:  # subsets whose sample was dropped: scale up by their weight
            extra[-1] = known_rps * 100.0 / known_weight / math.fsum(caps)
    return np.clip(extra, 0.0, spec.p99_clip)


def _recent(obs: Observation, spec: FeatureSpec) -> np.ndarray:
    """Per slot: newest-interval p99/slo (clipped to p99_clip), then newest-interval slow
    ratio; 0 where unknown."""
    k = spec.max_subsets
    out = np.zeros(2 * k, dtype=np.float64)
    for i, st in enumerate(obs.stats):
        if math.isfinite(st.recent_p99_ms):
            out[i] = min(max(st.recent_p99_ms, 0.0) / spec.slo_ms, spec.p99_clip)
        if math.isfinite(st.recent_slow_ratio):
            out[k + i] = min(max(st.recent_slow_ratio, 0.0), 1.0)
    return out


def _trend(vec: np.ndarray, previous: np.ndarray | None, spec: FeatureSpec) -> np.ndarray:
    """Per-slot utilization, route utilization and `TREND_FEATURES` of `vec` minus those of
    `previous` (the last tick's extended vector of the same route); 0 where either tick had no
    data for a slot, and all 0 without a previous tick."""
    k = spec.max_subsets
    trend = np.zeros(k + 1 + len(TREND_FEATURES) * k, dtype=np.float64)
    if previous is None or previous.shape[0] < vec.shape[0]:
        return trend
    n = k * PER_SUBSET
    now_per = vec[:n].reshape(k, PER_SUBSET).astype(np.float64)
    before_per = previous[:n].reshape(k, PER_SUBSET).astype(np.float64)
    both = (now_per[:, 1] > 0.5) & (before_per[:, 1] > 0.5)
    now_util = vec[spec.obs_size : spec.obs_size + k + 1].astype(np.float64)
    before_util = previous[spec.obs_size : spec.obs_size + k + 1].astype(np.float64)
    trend[:k] = np.where(both, now_util[:k] - before_util[:k], 0.0)
    if now_util[k] > 0 and before_util[k] > 0:
        trend[k] = now_util[k] - before_util[k]
    present = (now_per[:, 0] > 0.5) & (before_per[:, 0] > 0.5)
    for j, feature in enumerate(TREND_FEATURES):
        keep = present if feature == 2 else both
        delta = np.where(keep, now_per[:, feature] - before_per[:, feature], 0.0)
        trend[k + 1 + j * k : k + 1 + (j + 1) * k] = delta
    return trend


def _averaged_has_data(vec: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Which of `_averaged`'s values of an extended vector `vec` had data this tick."""
    k = spec.max_subsets
    slot = vec[1 : k * PER_SUBSET : PER_SUBSET] > 0.5
    route = vec[spec.obs_size + k] > 0
    return np.concatenate([slot, [route], *([slot] * len(EMA_FEATURES))])


def _averaged(vec: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(values, has data) of what the moving averages follow: per-slot utilization, route
    utilization and `EMA_FEATURES` of an extended vector `vec`."""
    k = spec.max_subsets
    per = vec[: k * PER_SUBSET].reshape(k, PER_SUBSET).astype(np.float64)
    util = vec[spec.obs_size : spec.obs_size + k + 1].astype(np.float64)
    values = np.concatenate([util, *(per[:, f] for f in EMA_FEATURES)])
    return values, _averaged_has_data(vec, spec)


def _averages(
    vec: np.ndarray, previous: np.ndarray | None, spec: FeatureSpec, alphas: Sequence[float]
) -> list[np.ndarray]:
    """One block of moving averages per weight in `alphas` (newest tick's weight), each blended
    into the same block of `previous` (this function's blocks end the previous vector, in
    order). A slot without data keeps its average; one with no average yet (no previous tick,
    or no data nor average before) starts from its value."""
    now, has = _averaged(vec, spec)
    if previous is None or previous.shape[0] < vec.shape[0]:
        return [np.where(has, now, 0.0) for _ in alphas]
    size = now.size
    had = _averaged_has_data(previous, spec)
    had[spec.max_subsets] = False  # the route's average: started only if it is non-zero
    first = previous.shape[0] - size * len(alphas)
    out = []
    for i, alpha in enumerate(alphas):
        before = previous[first + i * size : first + (i + 1) * size].astype(np.float64)
        started = had | (before != 0.0)
        blended = np.where(started, before + alpha * (now - before), now)
        out.append(np.where(has, blended, before))
    return out


def extend_observation(
    vec: np.ndarray,
    obs: Observation,
    spec: FeatureSpec,
    extension: str,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """`encode`'s vector plus the extension's values (float32).

    "utilization": per slot, observed rps / nominal capacity hint (0 without data or hint),
    then route rps / total nominal capacity, the route rate estimated from the subsets with
    data as if the others carried their configured weights (Prometheus drops samples); all
    clipped to [0, p99_clip]. Why: `encode` gives capacity only as shares, so the policy
    cannot tell 50 % from 90 % load except through noisy latencies, while the best split
    depends on exactly that.

    "utilization-trend": the same, then how those utilizations and each slot's weight, error
    ratio and slow ratio (`TREND_FEATURES`) changed since `previous` (this function's result
    for the same route one tick earlier; None on a route's first tick gives zeros), clipped
    to [-p99_clip, p99_clip]. Why: telemetry is a rate over a window (30 s) several ticks (5 s)
    long, so a burst or a capacity loss moves the windowed level by only a fraction per tick;
    the change from the last tick is (newest interval - oldest interval) / ticks per window,
    i.e. it shows the new interval at once, where the level takes the whole window.

    "utilization-trend-ema": the same, then exponential moving averages (weight 0.2 per tick,
    `EMA_ALPHAS`) of the utilizations and of each slot's p99/slo and slow ratio
    (`EMA_FEATURES`); "utilization-trend-ema2" a second block of the same averages with weight
    0.05. Why: during a capacity loss the split that is right depends on the degraded
    capacity, which each tick shows only through one noisy window (p99 noise, bursts, dropped
    samples); the averages hold the evidence of the last half minute or so, the slow one of
    the last minutes.

    "utilization-trend-ema2-recent": "utilization-trend-ema2" with, between the trend inputs
    and the averages, each slot's newest-interval p99/slo (clipped to p99_clip) and slow ratio
    (`SubsetStats.recent_p99_ms`, `recent_slow_ratio`; 0 where unknown). Why: the queue that
    decides the next interval's latencies is the one of the last few seconds; in the window
    it is averaged with 25 s of the past, so a tick-to-tick wobble of the window reads like a
    change of capacity. Measured (docs/benchmarks.md): the split held in latency-spike's
    degraded phase spread by 0.88 instead of 1.24 points.
    """
    size = extension_size(spec, extension)
    base = np.asarray(vec, dtype=np.float32)
    if size == 0:
        return base
    head = np.concatenate([base, _utilization(obs, spec).astype(np.float32)])
    if extension == "utilization":
        return head
    prev = None if previous is None else np.asarray(previous, dtype=np.float32)
    trend = np.clip(_trend(head, prev, spec), -spec.p99_clip, spec.p99_clip)
    averages = _averages(head, prev, spec, EMA_ALPHAS.get(extension, ()))
    clipped = [np.clip(a, 0.0, spec.p99_clip).astype(np.float32) for a in averages]
    recent = _recent(obs, spec) if extension in RECENT_EXTENSIONS else np.zeros(0)
    return np.concatenate([head, trend.astype(np.float32), recent.astype(np.float32), *clipped])


class TrendMemory:
    """The last extended vector per route and subset list, for the extensions that compare
    with the previous tick (trend, moving averages).

    Keyed by route and subset names, so a route whose subsets change starts afresh instead of
    comparing different slots; `clear` on reset (a new episode or a policy reload).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[object, tuple[str, ...]], np.ndarray] = {}

    def clear(self) -> None:
        self._last.clear()

    def extend(
        self, vec: np.ndarray, obs: Observation, spec: FeatureSpec, extension: str
    ) -> np.ndarray:
        """`extend_observation` with this route's previous tick, remembered for the next."""
        key = (obs.route, tuple(obs.subsets))
        out = extend_observation(vec, obs, spec, extension, self._last.get(key))
        if extension in _REMEMBERING:
            self._last[key] = out
        return out


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


class NumpyPolicy:
    """The exported PPO actor as a `Policy`: deterministic (the Gaussian mean), numpy only.

    `last_raw_action` is the action handed to `decode` at the last decision (Box[-1, 1]^K,
    after the action prior), kept for the audit log.
    """

    name = "ppo"

    def __init__(
        self,
        *,
        spec: FeatureSpec,
        layers: list[tuple[np.ndarray, np.ndarray]],
        activation: str,
        obs_mean: np.ndarray,
        obs_var: np.ndarray,
        clip_obs: float,
        eps: float,
        action_prior: str = "none",
        obs_extension: str = "none",
        action_gain: float = 1.0,
        source: str = "<memory>",
    ) -> None:
        if activation not in _ACTIVATIONS:
            raise ConfigError(
                f"{source}: unknown activation {activation!r}; known: {sorted(_ACTIVATIONS)}"
            )
        if action_prior not in ACTION_PRIORS:
            raise ConfigError(f"{source}: unknown action prior {action_prior!r}")
        if not layers:
            raise ConfigError(f"{source}: the network has no layers")
        if obs_extension not in OBS_EXTENSIONS:
            raise ConfigError(f"{source}: unknown observation extension {obs_extension!r}")
        try:
            self.action_gain = check_action_gain(action_gain)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        n_in = spec.obs_size + extension_size(spec, obs_extension)
        width = n_in
        for i, (w, b) in enumerate(layers):
            if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[1] != width:
                raise ConfigError(
                    f"{source}: layer {i} has shape {w.shape}/{b.shape}, expected input {width}"
                )
            width = w.shape[0]
        if width != spec.max_subsets:
            raise ConfigError(
                f"{source}: the network outputs {width} values, the spec has "
                f"{spec.max_subsets} subset slots"
            )
        if obs_mean.shape != (n_in,) or obs_var.shape != (n_in,):
            raise ConfigError(
                f"{source}: normalization statistics have shape {obs_mean.shape}, "
                f"expected ({n_in},)"
            )
        self.spec = spec
        self.source = source
        self._layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in layers]
        self._act = _ACTIVATIONS[activation]
        self.activation = activation
        self._mean = obs_mean.astype(np.float64)
        self._std = np.sqrt(obs_var.astype(np.float64) + eps)
        self._clip = float(clip_obs)
        self.action_prior = action_prior
        self.obs_extension = obs_extension
        self._memory = TrendMemory()
        self.last_raw_action: list[float] = []

    # ---- the network -------------------------------------------------------------------
    def normalize(self, obs_vec: np.ndarray) -> np.ndarray:
        """VecNormalize's transform: clip((x - mean) / sqrt(var + eps), -clip, clip)."""
        x = (np.asarray(obs_vec, dtype=np.float64) - self._mean) / self._std
        return np.clip(x, -self._clip, self._clip).astype(np.float32)

    def mean_action(self, normalized_obs: np.ndarray) -> np.ndarray:
        """Actor MLP on normalized observations (shape (obs,) or (n, obs)) -> Gaussian mean."""
        x = np.asarray(normalized_obs, dtype=np.float64)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            x = x @ w.T + b
            if i < last:
                x = self._act(x)
        return x

    def predict(self, obs_vec: np.ndarray) -> np.ndarray:
        """What SB3's ``predict(obs, deterministic=True)`` returns: clip(mean, -1, 1)."""
        return np.clip(self.mean_action(self.normalize(obs_vec)), -1.0, 1.0)

    def action_for(self, obs_vec: np.ndarray) -> np.ndarray:
        """Network input (encoded, extended observation) -> the action `decode` receives."""
        return apply_action_prior(
            self.predict(obs_vec), obs_vec, self.spec, self.action_prior, self.action_gain
        )

    def observation_action(self, obs: Observation) -> np.ndarray:
        """`action_for` of the observation as this policy's network sees it (with the route's
        previous tick for the extensions that use it, which it remembers)."""
        vec = self._memory.extend(encode(obs, self.spec), obs, self.spec, self.obs_extension)
        return self.action_for(vec)

    # ---- the Policy protocol -----------------------------------------------------------
    def decide(self, obs: Observation) -> Weights:
        action = self.observation_action(obs)
        self.last_raw_action = [float(v) for v in action]
        return _decode_for(action, obs, self.spec)

    def reset(self) -> None:
        self.last_raw_action = []
        self._memory.clear()


def _decode_for(action: np.ndarray, obs: Observation, spec: FeatureSpec) -> Weights:
    mask = spec.mask(len(obs.subsets))
    return decode(action, mask, obs.subsets, temperature=spec.action_temperature)


class EnsemblePolicy:
    """Several PPO policies trained alike from different seeds; writes the split of the mean
    of their actions (the logits `decode` receives).

    Why: at 80-90 % load one weight point costs 10-25 % more bad requests, and each trained
    network misses the teacher by a point or two in its own, seed-dependent places (measured:
    the same recipe lands at 14 to 16 of issue #3's 18 claims depending on the seed). Averaging
    independent errors shrinks them, the way bagging does, at the price of one more small
    matrix product per member and tick.
    """

    name = "ppo"

    def __init__(self, members: Sequence[NumpyPolicy]) -> None:
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least two member policies")
        hashes = {m.spec.hash for m in members}
        if len(hashes) != 1:
            raise ConfigError(
                f"ensemble members were trained on different feature specs: {sorted(hashes)}"
            )
        self.members = list(members)
        self.spec = members[0].spec
        self.source = members[0].source
        self._memories = {m.obs_extension: TrendMemory() for m in members}
        self.last_raw_action: list[float] = []

    def decide(self, obs: Observation) -> Weights:
        """The members' mean action. Encoding, the observation extension and the action prior
        are the same for members that share them, so each is computed once per tick; only the
        networks run per member (the same numbers as each member's `observation_action`)."""
        encoded = encode(obs, self.spec)
        vecs = {
            ext: memory.extend(encoded, obs, self.spec, ext)
            for ext, memory in self._memories.items()
        }
        priors: dict[tuple[str, str], tuple[np.ndarray, bool]] = {}
        actions = []
        for m in self.members:
            vec = vecs[m.obs_extension]
            key = (m.obs_extension, m.action_prior)
            if key not in priors:
                priors[key] = prior_action(vec, self.spec, m.action_prior)
            actions.append(corrected_action(m.predict(vec), priors[key], m.action_gain))
        action = np.mean(actions, axis=0)
        self.last_raw_action = [float(v) for v in action]
        return _decode_for(action, obs, self.spec)

    def reset(self) -> None:
        self.last_raw_action = []
        for memory in self._memories.values():
            memory.clear()
        for m in self.members:
            m.reset()


# ---- the file ----------------------------------------------------------------------------
def _text(value: object) -> str:
    return str(np.asarray(value).item()) if np.asarray(value).ndim == 0 else str(value)


def save_npz(
    path: str | Path,
    *,
    spec: FeatureSpec,
    layers: list[tuple[np.ndarray, np.ndarray]],
    activation: str,
    obs_mean: np.ndarray,
    obs_var: np.ndarray,
    clip_obs: float,
    eps: float,
    action_prior: str = "none",
    obs_extension: str = "none",
    action_gain: float = 1.0,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a policy file in the format of the module docstring (float32 weights)."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.asarray(FORMAT_VERSION, dtype=np.int64),
        "spec_json": np.asarray(json.dumps(spec.to_dict(), sort_keys=True)),
        "spec_hash": np.asarray(spec.hash),
        "activation": np.asarray(activation),
        "n_layers": np.asarray(len(layers), dtype=np.int64),
        "obs_mean": np.asarray(obs_mean, dtype=np.float64),
        "obs_var": np.asarray(obs_var, dtype=np.float64),
        "clip_obs": np.asarray(clip_obs, dtype=np.float64),
        "eps": np.asarray(eps, dtype=np.float64),
        "action_prior": np.asarray(action_prior),
        "obs_extension": np.asarray(obs_extension),
        "action_gain": np.asarray(check_action_gain(action_gain), dtype=np.float64),
        "metadata_json": np.asarray(json.dumps(dict(metadata or {}), sort_keys=True, default=str)),
    }
    for i, (w, b) in enumerate(layers):
        arrays[f"w{i}"] = np.asarray(w, dtype=np.float32)
        arrays[f"b{i}"] = np.asarray(b, dtype=np.float32)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    return out


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"{path}: policy file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ConfigError(f"{path}: not a readable policy .npz file ({err})") from err


_MEMBER_KEYS = (*_MEMBER_REQUIRED, "obs_extension", "action_gain")
"""Per-network entries of a policy file; an ensemble's member j >= 1 stores them (and its
``w{i}``/``b{i}``) under the prefix ``m{j}.``, member 0 without a prefix."""


def _is_member_key(key: str) -> bool:
    return key in _MEMBER_KEYS or (key[:1] in "wb" and key[1:].isdigit())


def _member_arrays(arrays: Mapping[str, np.ndarray], path: Path) -> list[dict[str, np.ndarray]]:
    """The per-network arrays of every member of a file, without prefixes."""
    try:
        n = int(arrays["n_members"]) if "n_members" in arrays else 1
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path}: malformed n_members ({err})") from err
    if not 1 <= n <= 64:
        raise ConfigError(f"{path}: n_members must be 1..64, got {n}")
    members = [{k: v for k, v in arrays.items() if _is_member_key(k)}]
    for j in range(1, n):
        prefix = f"m{j}."
        members.append({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
    return members


def _member_policy(arrays: Mapping[str, np.ndarray], spec: FeatureSpec, source: str) -> NumpyPolicy:
    missing = [k for k in _MEMBER_REQUIRED if k not in arrays]
    if missing:
        raise ConfigError(f"{source}: policy file lacks {', '.join(missing)}")
    try:
        n_layers = int(arrays["n_layers"])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: malformed n_layers ({err})") from err
    layer_keys = [(f"w{i}", f"b{i}") for i in range(n_layers)]
    absent = [k for pair in layer_keys for k in pair if k not in arrays]
    if absent:
        raise ConfigError(f"{source}: policy file lacks layer arrays {', '.join(absent)}")
    layers = [(arrays[w], arrays[b]) for w, b in layer_keys]
    for name, arr in [("obs_mean", arrays["obs_mean"]), ("obs_var", arrays["obs_var"])] + [
        (k, arrays[k]) for pair in layer_keys for k in pair
    ]:
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise ConfigError(f"{source}: array {name} is not finite floating point")
    try:
        clip_obs = float(arrays["clip_obs"])
        eps = float(arrays["eps"])
        gain = float(arrays["action_gain"]) if "action_gain" in arrays else 1.0
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: malformed normalization or action_gain ({err})") from err
    if not (math.isfinite(clip_obs) and clip_obs > 0 and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"{source}: invalid normalization clip {clip_obs} / epsilon {eps}")
    if np.any(arrays["obs_var"] < 0):
        raise ConfigError(f"{source}: obs_var has negative entries")
    return NumpyPolicy(
        spec=spec,
        layers=layers,
        activation=_text(arrays["activation"]),
        obs_mean=arrays["obs_mean"],
        obs_var=arrays["obs_var"],
        clip_obs=clip_obs,
        eps=eps,
        action_prior=_text(arrays["action_prior"]),
        obs_extension=_text(arrays["obs_extension"]) if "obs_extension" in arrays else "none",
        action_gain=gain,
        source=source,
    )


def _checked_spec(
    arrays: Mapping[str, np.ndarray], p: Path, expected_spec: FeatureSpec | None
) -> FeatureSpec:
    missing = [k for k in _REQUIRED if k not in arrays]
    if missing:
        raise ConfigError(f"{p}: policy file lacks {', '.join(missing)}")
    try:
        version = int(arrays["format_version"])
        spec_dict = json.loads(_text(arrays["spec_json"]))
        spec = FeatureSpec.from_dict(spec_dict)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{p}: malformed policy metadata ({err})") from err
    if version != FORMAT_VERSION:
        raise ConfigError(f"{p}: policy format {version}; this meshpilot reads {FORMAT_VERSION}")
    stored_hash = _text(arrays["spec_hash"])
    if spec.hash != stored_hash:
        raise ConfigError(
            f"{p}: feature-spec hash mismatch: the file says {stored_hash} but the FeatureSpec it "
            f"carries hashes to {spec.hash}; the file is corrupt or was edited"
        )
    if expected_spec is not None and expected_spec.hash != spec.hash:
        raise ConfigError(
            f"{p}: feature-spec hash mismatch: the model was trained on {spec.hash}, this "
            f"controller encodes observations with {expected_spec.hash}; retrain or export the "
            "model for this feature spec"
        )
    return spec


def load_numpy_policy(
    path: str | Path, *, expected_spec: FeatureSpec | None = None
) -> NumpyPolicy | EnsemblePolicy:
    """Load and check a policy file; every problem is a `ConfigError` naming the file.

    The file's `FeatureSpec` must hash to the hash stored next to it (else the file was edited
    or corrupted) and, when `expected_spec` is given, equal the caller's layout (else the model
    would read observations it was not trained on). A file with ``n_members`` > 1 is an
    `EnsemblePolicy`.
    """
    p = Path(path)
    return _policy_from(_read_arrays(p), p, expected_spec)


def _policy_from(
    arrays: Mapping[str, np.ndarray], p: Path, expected_spec: FeatureSpec | None
) -> NumpyPolicy | EnsemblePolicy:
    spec = _checked_spec(arrays, p, expected_spec)
    policies = [
        _member_policy(m, spec, str(p) if j == 0 else f"{p} (member {j})")
        for j, m in enumerate(_member_arrays(arrays, p))
    ]
    return policies[0] if len(policies) == 1 else EnsemblePolicy(policies)


def save_ensemble_npz(
    path: str | Path, members: Sequence[str | Path], *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Combine policy files (single networks or ensembles) into one ensemble file.

    Every member is loaded and checked first, and all must share one feature spec, so a
    combined file never holds a network the controller would refuse alone.
    """
    if len(members) < 2:
        raise ConfigError("an ensemble needs at least two policy files")
    nets: list[dict[str, np.ndarray]] = []
    spec_hashes: set[str] = set()
    head: dict[str, np.ndarray] = {}
    for src in members:
        src_path = Path(src)
        arrays = _read_arrays(src_path)
        _policy_from(arrays, src_path, None)  # every check a single file gets
        spec_hashes.add(_text(arrays["spec_hash"]))
        head = head or {k: arrays[k] for k in _HEADER_KEYS}
        nets.extend(_member_arrays(arrays, src_path))
    if len(spec_hashes) != 1:
        raise ConfigError(
            f"ensemble members were trained on different feature specs: {sorted(spec_hashes)}"
        )
    out_arrays: dict[str, np.ndarray] = {**head, **nets[0]}
    for j, net in enumerate(nets[1:], start=1):
        out_arrays.update({f"m{j}.{k}": v for k, v in net.items()})
    out_arrays["n_members"] = np.asarray(len(nets), dtype=np.int64)
    meta = {"ensemble_of": [str(m) for m in members], **dict(metadata or {})}
    out_arrays["metadata_json"] = np.asarray(json.dumps(meta, sort_keys=True, default=str))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        np.savez_compressed(fh, **out_arrays)  # type: ignore[arg-type]
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The free-form ``metadata_json`` of a policy file ({} when absent)."""
    arrays = _read_arrays(Path(path))
    if "metadata_json" not in arrays:
        return {}
    try:
        data = json.loads(_text(arrays["metadata_json"]))
    except ValueError as err:
        raise ConfigError(f"{path}: malformed metadata_json ({err})") from err
    return data if isinstance(data, dict) else {}


def load_ppo_policy(
    path: str | None, *, expected_spec: FeatureSpec | None = None
) -> NumpyPolicy | EnsemblePolicy:
    """`--policy ppo[:PATH]`: the model at `path`, or the shipped default when `path` is None.

    `expected_spec` defaults to ``FeatureSpec()``, the layout the controller encodes with.
    """
    target = DEFAULT_MODEL if path is None else Path(path)
    return load_numpy_policy(target, expected_spec=expected_spec or FeatureSpec())

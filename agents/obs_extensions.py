"""The observation extension: inputs a PPO network sees besides `encode`'s vector.

Why a module of its own: training (`agents.training.wrappers.ExtendObservation`) and serving
(`agents.network`) must build the same extended vector tick by tick, including the memory of a
route's previous tick (`TrendMemory`); its layout (`extension_size`, the feature indices) is
defined here once, with numpy only.

Layout of what `extend_observation` appends to `encode`'s vector (k = ``spec.max_subsets``):

=====================  ======  ============================================================
 block                  size    values
=====================  ======  ============================================================
 utilization            k + 1   per slot observed rps / capacity hint, then the route's
 trend                  4k + 1  change since the last tick of the utilizations, then of each
                                slot's `TREND_FEATURES` (weight, error ratio, slow ratio)
 newest interval        2k      per slot newest-interval p99 / slo, then slow ratio
 fast moving averages   3k + 1  utilizations and each slot's `EMA_FEATURES` (p99 / slo, slow
                                ratio), newest tick weighted by ``EMA_ALPHAS[0]``
 slow moving averages   3k + 1  the same with ``EMA_ALPHAS[1]``
=====================  ======  ============================================================
"""

from __future__ import annotations

import math

import numpy as np

from meshcore.features import PER_SUBSET, FeatureSpec
from meshcore.model import Observation

OBS_EXTENSION = "utilization-trend-ema2-recent"
"""The extension's name, as policy files record it (``obs_extension``)."""

TREND_FEATURES = (2, 4, 6)
"""`encode` per-slot entries whose change since the last tick the trend block holds: weight,
error_ratio and slow_ratio (see `meshcore.features`)."""

EMA_FEATURES = (5, 6)
"""`encode` per-slot entries (p99/slo, slow_ratio) whose moving averages follow the averaged
utilizations."""

EMA_ALPHAS = (0.2, 0.05)
"""Weight of the newest tick in each moving average, one block each: 0.2 is a time constant of
~5 ticks, 0.05 of ~20 ticks."""


def extension_size(spec: FeatureSpec) -> int:
    """How many values `extend_observation` appends."""
    k = spec.max_subsets
    averaged = (k + 1) + len(EMA_FEATURES) * k
    return 2 * (k + 1) + len(TREND_FEATURES) * k + 2 * k + len(EMA_ALPHAS) * averaged


def extension_low(spec: FeatureSpec) -> float:
    """Lower bound of every extended input: trends are changes, so they can be negative."""
    return -spec.p99_clip


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


def _averages(vec: np.ndarray, previous: np.ndarray | None, spec: FeatureSpec) -> list[np.ndarray]:
    """One block of moving averages per weight in `EMA_ALPHAS` (newest tick's weight), each
    blended into the same block of `previous` (these blocks end the previous vector, in order).
    A slot without data keeps its average; one with no average yet (no previous tick, or no
    data nor average before) starts from its value."""
    now, has = _averaged(vec, spec)
    if previous is None or previous.shape[0] < vec.shape[0]:
        return [np.where(has, now, 0.0) for _ in EMA_ALPHAS]
    size = now.size
    had = _averaged_has_data(previous, spec)
    had[spec.max_subsets] = False  # the route's average: started only if it is non-zero
    first = previous.shape[0] - size * len(EMA_ALPHAS)
    out = []
    for i, alpha in enumerate(EMA_ALPHAS):
        before = previous[first + i * size : first + (i + 1) * size].astype(np.float64)
        started = had | (before != 0.0)
        blended = np.where(started, before + alpha * (now - before), now)
        out.append(np.where(has, blended, before))
    return out


def extend_observation(
    vec: np.ndarray,
    obs: Observation,
    spec: FeatureSpec,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """`encode`'s vector `vec` of `obs` plus the extension's blocks (float32; the layout in the
    module docstring).

    Utilization: per slot, observed rps / nominal capacity hint (0 without data or hint), then
    route rps / total nominal capacity, the route rate estimated from the subsets with data as
    if the others carried their configured weights (Prometheus drops samples); all clipped to
    [0, p99_clip]. `encode` gives capacity only as shares; these say how loaded the route is.

    Trend: how those utilizations and each slot's weight, error ratio and slow ratio changed
    since `previous` (this function's result for the same route one tick earlier; None on a
    route's first tick gives zeros), clipped to [-p99_clip, p99_clip]. The windowed telemetry
    moves by one interval per tick, so its change shows the newest interval at once.

    Newest interval: each slot's `SubsetStats.recent_p99_ms` / slo (clipped to p99_clip) and
    `recent_slow_ratio` (0 where unknown): the latency of the last interval alone, next to the
    window's.

    Moving averages: per weight in `EMA_ALPHAS`, exponential moving averages of the
    utilizations and of each slot's p99/slo and slow ratio (`EMA_FEATURES`), clipped to
    [0, p99_clip]; a slot without data this tick keeps its average.
    """
    base = np.asarray(vec, dtype=np.float32)
    head = np.concatenate([base, _utilization(obs, spec).astype(np.float32)])
    prev = None if previous is None else np.asarray(previous, dtype=np.float32)
    trend = np.clip(_trend(head, prev, spec), -spec.p99_clip, spec.p99_clip)
    averages = _averages(head, prev, spec)
    clipped = [np.clip(a, 0.0, spec.p99_clip).astype(np.float32) for a in averages]
    recent = _recent(obs, spec)
    return np.concatenate([head, trend.astype(np.float32), recent.astype(np.float32), *clipped])


class TrendMemory:
    """The last extended vector per route and subset list, for the inputs that compare with
    the previous tick (trend, moving averages).

    Keyed by route and subset names, so a route whose subsets change starts afresh instead of
    comparing different slots; `clear` on reset (a new episode or a policy reload).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[object, tuple[str, ...]], np.ndarray] = {}

    def clear(self) -> None:
        self._last.clear()

    def extend(self, vec: np.ndarray, obs: Observation, spec: FeatureSpec) -> np.ndarray:
        """`extend_observation` with this route's previous tick, remembered for the next."""
        key = (obs.route, tuple(obs.subsets))
        out = extend_observation(vec, obs, spec, self._last.get(key))
        self._last[key] = out
        return out

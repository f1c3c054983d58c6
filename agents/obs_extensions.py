"""Observation extensions: inputs a PPO network sees besides `encode`'s vector.

Why a module of its own: training (`agents.training.wrappers.ExtendObservation`) and serving
(`agents.network`) must build the same extended vector tick by tick, including the memory of a
route's previous tick (`TrendMemory`); the feature layout of every extension (`extension_size`,
the feature indices) is defined here once, with numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from meshcore.errors import ConfigError
from meshcore.features import PER_SUBSET, FeatureSpec
from meshcore.model import Observation

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

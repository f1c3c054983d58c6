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

import itertools
import math
import operator
from collections.abc import Sequence

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


def slot_block_starts(spec: FeatureSpec) -> tuple[int, ...]:
    """Where each per-slot block of the extension starts in the extended vector: slot j's value
    of a block is at its start + j. The route's values (its utilization, their trend and moving
    averages) are the ones no block covers."""
    k = spec.max_subsets
    util = spec.obs_size
    trend = util + k + 1
    trend_blocks = [trend, *(trend + k + 1 + j * k for j in range(len(TREND_FEATURES)))]
    recent = trend + k + 1 + len(TREND_FEATURES) * k
    averages = recent + 2 * k
    size = k + 1 + len(EMA_FEATURES) * k
    average_blocks = [
        start
        for i in range(len(EMA_ALPHAS))
        for start in (
            averages + i * size,
            *(averages + i * size + k + 1 + j * k for j in range(len(EMA_FEATURES))),
        )
    ]
    return (util, *trend_blocks, recent, recent + k, *average_blocks)


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

    def extend_many(self, observations: Sequence[Observation], spec: FeatureSpec) -> np.ndarray:
        """`extend(encode(obs, spec), obs, spec)` of each observation in order, one row each,
        computed as arrays (`encode_many`, `extend_many`): the same float32 values. A route
        seen twice sees its first row as the previous tick of its second. Every observation
        is checked first, so a bad one raises before anything is remembered."""
        for obs in observations:
            if not 1 <= len(obs.subsets) <= spec.max_subsets:
                spec.mask(len(obs.subsets))  # raises, naming the limits
        keys = [(obs.route, tuple(obs.subsets)) for obs in observations]
        width = spec.obs_size + extension_size(spec)
        out = np.empty((len(observations), width), dtype=np.float32)
        start = 0
        while start < len(keys):
            stop, seen = start, set()
            while stop < len(keys) and keys[stop] not in seen:
                seen.add(keys[stop])
                stop += 1
            slots = _Slots(observations[start:stop], spec)
            previous = [self._last.get(key) for key in keys[start:stop]]
            out[start:stop] = _extend_slots(_encode_slots(slots, spec), slots, spec, previous)
            kept = out[start:stop].copy()  # rows the caller cannot modify
            self._last.update(zip(keys[start:stop], kept, strict=True))
            start = stop
        return out


# ---- many routes at once: the functions above, as arrays with one row per route -------------


_STATS = operator.attrgetter(
    "rps", "error_ratio", "p99_ms", "weight", "slow_ratio", "recent_p99_ms", "recent_slow_ratio"
)
"""The `SubsetStats` fields the features read, in the order of `_Slots`' columns."""


class _Slots:
    """What `encode` and the extension read from each observation, as (routes, slots) arrays
    (NaN in empty slots), and per-route values computed as the scalar code computes them."""

    def __init__(self, observations: Sequence[Observation], spec: FeatureSpec) -> None:
        k = spec.max_subsets
        fields = 7
        rows: list[tuple[float, ...]] = []
        caps: list[float] = []
        meta: list[tuple[float, float, float, float]] = []
        for obs in observations:
            stats, hint = obs.stats, obs.capacity_hint_rps
            rows.extend(map(_STATS, stats))
            caps.extend(hint or (math.nan,) * len(stats))
            if len(stats) < k:
                rows.extend([(math.nan,) * fields] * (k - len(stats)))
                caps.extend([math.nan] * (k - len(stats)))
            meta.append((len(stats), obs.staleness_s, math.fsum(hint), 1.0 if hint else 0.0))
        count = len(observations)
        table = np.fromiter(itertools.chain.from_iterable(rows), np.float64, len(rows) * fields)
        table = table.reshape(count, k, fields)
        columns = table.transpose(2, 0, 1)  # one (routes, slots) array per field of _STATS
        self.rps, self.error, self.p99, self.weight = columns[:4]
        self.slow, self.recent_p99, self.recent_slow = columns[4:]
        n, staleness, self.cap_total, hinted = np.array(meta, dtype=np.float64).reshape(-1, 4).T
        self.n = n.astype(np.int64)
        self.present = np.arange(k)[None, :] < self.n[:, None]
        self.caps = np.fromiter(caps, np.float64, count * k).reshape(count, k)
        usable = np.isfinite(self.caps) & (self.caps > 0)
        self.caps_ok = (hinted > 0) & np.where(self.present, usable, True).all(axis=1)
        stale_s = np.where(np.isnan(staleness), np.inf, staleness)  # unknown age: stale
        self.staleness = np.minimum(np.maximum(stale_s, 0.0) / spec.staleness_scale_s, 1.0)
        known = ~np.isnan(self.rps)
        sums = [math.fsum(row) for row in np.where(known, self.rps, 0.0).tolist()]
        self.total = np.where(known.any(axis=1), sums, math.nan)  # `Observation.total_rps`
        scale = math.log1p(spec.rps_scale)
        self.route_load = np.array(
            [math.log1p(max(t if math.isfinite(t) else 0.0, 0.0)) / scale for t in sums]
        )


def _unit(x: np.ndarray, top: float) -> np.ndarray:
    """min(max(x, 0), top) with non-finite x read as 0, as `encode` clamps its inputs."""
    return np.minimum(np.maximum(np.where(np.isfinite(x), x, 0.0), 0.0), top)


def encode_many(observations: Sequence[Observation], spec: FeatureSpec) -> np.ndarray:
    """`meshcore.features.encode` of each observation, one float32 row each (the same values,
    computed as arrays)."""
    return _encode_slots(_Slots(observations, spec), spec)


def _encode_slots(d: _Slots, spec: FeatureSpec) -> np.ndarray:
    k = spec.max_subsets
    per = np.zeros((len(d.n), k, PER_SUBSET), dtype=np.float64)
    has = d.present & ~np.isnan(d.rps)
    shared = has & (np.isfinite(d.total) & (d.total > 0))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        per[:, :, 0] = d.present
        per[:, :, 1] = has
        per[:, :, 2] = np.where(d.present, d.weight / 100.0, 0.0)
        per[:, :, 3] = np.where(shared, np.maximum(d.rps, 0.0) / d.total[:, None], 0.0)
        per[:, :, 4] = np.where(d.present, _unit(d.error, 1.0), 0.0)
        p99 = np.minimum(_unit(d.p99, np.inf) / spec.slo_ms, spec.p99_clip)
        per[:, :, 5] = np.where(d.present, p99, 0.0)
        per[:, :, 6] = np.where(d.present, _unit(d.slow, 1.0), 0.0)
        by_caps = d.caps / d.cap_total[:, None]
        even = (1.0 / d.n)[:, None]
        per[:, :, 7] = np.where(d.present, np.where((d.cap_total > 0)[:, None], by_caps, even), 0.0)
    vec = np.zeros((len(d.n), spec.obs_size), dtype=np.float32)
    vec[:, : k * PER_SUBSET] = per.reshape(len(d.n), k * PER_SUBSET)
    vec[:, k * PER_SUBSET] = d.route_load
    vec[:, k * PER_SUBSET + 1] = d.staleness
    return np.clip(vec, 0.0, spec.p99_clip)


def extend_many(
    vecs: np.ndarray,
    observations: Sequence[Observation],
    spec: FeatureSpec,
    previous: Sequence[np.ndarray | None],
) -> np.ndarray:
    """`extend_observation(vecs[i], observations[i], spec, previous[i])` for every row, as
    arrays (the same float32 values); a previous vector of another length counts as none."""
    base = np.asarray(vecs, dtype=np.float32)
    return _extend_slots(base, _Slots(observations, spec), spec, previous)


def _extend_slots(
    base: np.ndarray, d: _Slots, spec: FeatureSpec, previous: Sequence[np.ndarray | None]
) -> np.ndarray:
    k = spec.max_subsets
    head = np.concatenate([base, _utilization_many(d, spec).astype(np.float32)], axis=1)
    width = head.shape[1] + extension_size(spec) - (k + 1)
    before = np.zeros((len(d.n), width), dtype=np.float32)
    known = np.zeros(len(d.n), dtype=bool)
    for i, p in enumerate(previous):
        if p is not None and p.shape[0] == width:
            before[i], known[i] = p, True
    trend = np.clip(_trend_many(head, before, known, spec), -spec.p99_clip, spec.p99_clip)
    averages = _averages_many(head, before, known, spec)
    clipped = [np.clip(a, 0.0, spec.p99_clip).astype(np.float32) for a in averages]
    recent = _recent_many(d, spec).astype(np.float32)
    return np.concatenate([head, trend.astype(np.float32), recent, *clipped], axis=1)


def _utilization_many(d: _Slots, spec: FeatureSpec) -> np.ndarray:
    """`_utilization` of every row."""
    k = spec.max_subsets
    extra = np.zeros((len(d.n), k + 1), dtype=np.float64)
    seen = d.caps_ok[:, None] & d.present & np.isfinite(d.rps)
    rps = np.where(seen, np.maximum(d.rps, 0.0), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        extra[:, :k] = np.where(seen, rps / d.caps, 0.0)
        known_rps = np.zeros(len(d.n))
        for j in range(k):  # left to right, as the scalar loop adds
            known_rps = known_rps + rps[:, j]
        known_weight = np.where(seen, d.weight, 0.0).sum(axis=1)
        route = known_rps * 100.0 / known_weight / d.cap_total
        extra[:, k] = np.where(d.caps_ok & (known_weight > 0), route, 0.0)
    return np.clip(extra, 0.0, spec.p99_clip)


def _recent_many(d: _Slots, spec: FeatureSpec) -> np.ndarray:
    """`_recent` of every row."""
    p99 = np.minimum(np.maximum(d.recent_p99, 0.0) / spec.slo_ms, spec.p99_clip)
    slow = np.minimum(np.maximum(d.recent_slow, 0.0), 1.0)
    return np.concatenate(
        [
            np.where(d.present & np.isfinite(d.recent_p99), p99, 0.0),
            np.where(d.present & np.isfinite(d.recent_slow), slow, 0.0),
        ],
        axis=1,
    )


def _trend_many(
    head: np.ndarray, before: np.ndarray, known: np.ndarray, spec: FeatureSpec
) -> np.ndarray:
    """`_trend` of every row (`known`: whether a row has a previous vector)."""
    k = spec.max_subsets
    n = k * PER_SUBSET
    rows = len(head)
    now_per = head[:, :n].reshape(rows, k, PER_SUBSET).astype(np.float64)
    before_per = before[:, :n].reshape(rows, k, PER_SUBSET).astype(np.float64)
    both = (now_per[:, :, 1] > 0.5) & (before_per[:, :, 1] > 0.5)
    now_util = head[:, spec.obs_size : spec.obs_size + k + 1].astype(np.float64)
    before_util = before[:, spec.obs_size : spec.obs_size + k + 1].astype(np.float64)
    present = (now_per[:, :, 0] > 0.5) & (before_per[:, :, 0] > 0.5)
    route = (now_util[:, k] > 0) & (before_util[:, k] > 0)
    blocks = [
        np.where(both, now_util[:, :k] - before_util[:, :k], 0.0),
        np.where(route, now_util[:, k] - before_util[:, k], 0.0)[:, None],
    ]
    for feature in TREND_FEATURES:
        keep = present if feature == 2 else both
        blocks.append(np.where(keep, now_per[:, :, feature] - before_per[:, :, feature], 0.0))
    return np.where(known[:, None], np.concatenate(blocks, axis=1), 0.0)


def _averaged_many(vec: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """`_averaged` of every row of `vec` (extended vectors, or their heads)."""
    k = spec.max_subsets
    rows = len(vec)
    per = vec[:, : k * PER_SUBSET].reshape(rows, k, PER_SUBSET).astype(np.float64)
    util = vec[:, spec.obs_size : spec.obs_size + k + 1].astype(np.float64)
    values = np.concatenate([util, *(per[:, :, f] for f in EMA_FEATURES)], axis=1)
    slot = vec[:, 1 : k * PER_SUBSET : PER_SUBSET] > 0.5
    route = vec[:, spec.obs_size + k] > 0
    has = np.concatenate([slot, route[:, None], *([slot] * len(EMA_FEATURES))], axis=1)
    return values, has


def _averages_many(
    head: np.ndarray, before: np.ndarray, known: np.ndarray, spec: FeatureSpec
) -> list[np.ndarray]:
    """`_averages` of every row (`known`: whether a row has a previous vector)."""
    now, has = _averaged_many(head, spec)
    _, had = _averaged_many(before, spec)
    had[:, spec.max_subsets] = False  # the route's average: started only if it is non-zero
    size = now.shape[1]
    first = before.shape[1] - size * len(EMA_ALPHAS)
    fresh = np.where(has, now, 0.0)
    out = []
    for i, alpha in enumerate(EMA_ALPHAS):
        last = before[:, first + i * size : first + (i + 1) * size].astype(np.float64)
        started = had | (last != 0.0)
        blended = np.where(started, last + alpha * (now - last), now)
        out.append(np.where(known[:, None], np.where(has, blended, last), fresh))
    return out

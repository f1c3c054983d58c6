"""Relief: the one move the guard lets through faster than ``max_step``.

The step limit exists so that a policy cannot send much traffic to a version before the next
observations show whether it copes. Its price is paid when a version is already in visible
distress: at 10 points per 5 s tick, taking 70 points off an overloaded version keeps it
overloaded for half a minute, and the backlog it builds keeps requests slow for minutes after
(a queue drains only at the spare capacity). Flagger's rollback follows the same asymmetry:
promotion is stepped, rollback is immediate.

So, when the proposal takes weight off a subset the telemetry shows in distress (a slow ratio
or 5xx ratio of at least ``threshold``; the slow ratio of the rate window or of the newest
scrape interval, which shows a fault the window still averages with the healthy seconds before
it), `relieve` moves that weight at once, but only onto subsets the telemetry shows healthy
(data, every ratio below half the threshold) and only up to what the proposal gives them.
Weight the healthy subsets cannot take stays step-limited.
"""

from __future__ import annotations

import math

from meshcore import Observation, Weights, largest_remainder


def distressed(observation: Observation, threshold: float) -> set[str]:
    """Subsets with data whose 5xx ratio, slow ratio or newest-interval slow ratio is at least
    `threshold` (0..1)."""
    out = set()
    for name, st in zip(observation.subsets, observation.stats, strict=True):
        if not st.has_data:
            continue
        slow = (st.slow_ratio, st.recent_slow_ratio)
        if _at_least(st.error_ratio, threshold) or any(_at_least(r, threshold) for r in slow):
            out.add(name)
    return out


def healthy(observation: Observation, threshold: float) -> set[str]:
    """Subsets with data whose 5xx ratio and slow ratio are both below ``threshold / 2``, and
    whose newest-interval slow ratio is too when known; a subset whose slow ratio is unknown
    counts only if its p99 is within the SLO."""
    half = threshold / 2.0
    out = set()
    for name, st in zip(observation.subsets, observation.stats, strict=True):
        if not st.has_data or not _below(st.error_ratio, half):
            continue
        if math.isfinite(st.slow_ratio):
            ok = st.slow_ratio < half and not _at_least(st.recent_slow_ratio, half)
        else:
            ok = _below(st.p99_ms, observation.slo_ms)
        if ok:
            out.add(name)
    return out


def _at_least(value: float, threshold: float) -> bool:
    return math.isfinite(value) and value >= threshold


def _below(value: float, bound: float) -> bool:
    return math.isfinite(value) and math.isfinite(bound) and value < bound


def relieve(
    stepped: Weights, target: Weights, sick: set[str], well: set[str]
) -> tuple[Weights, int]:
    """(`stepped` with the rest of the way to `target` taken at once where that takes weight off
    a `sick` subset and gives it to a `well` one, points so moved).

    `stepped` is the step-limited move toward `target` (same subsets, same order). The points
    moved are min(what sick subsets still lose, what well subsets still gain), taken from and
    given to each in proportion to its remaining distance (largest remainder), so every subset
    ends between its stepped and its target weight and the sum stays 100.
    """
    names = stepped.subsets
    lose = [max(stepped[s] - target[s], 0) if s in sick else 0 for s in names]
    gain = [max(target[s] - stepped[s], 0) if s in well and s not in sick else 0 for s in names]
    moved = min(sum(lose), sum(gain))
    if moved <= 0:
        return stepped, 0
    off = largest_remainder([float(v) for v in lose], moved)
    on = largest_remainder([float(v) for v in gain], moved)
    values = [w - o + g for w, o, g in zip(stepped.values_tuple, off, on, strict=True)]
    return Weights(names, values), moved

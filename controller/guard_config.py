"""`GuardConfig`: how hard the guard (`controller.guard`) holds a policy back, checked.

One frozen value per controller (from the settings' ``guard`` section) and, where a
ManagedRoute's ``spec.guard`` says so, one per route. Every field is validated when the value
is made: a bad setting fails at start-up or makes its ManagedRoute invalid, never a tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from meshcore import WEIGHT_TOTAL, ConfigError

__all__ = ["GuardConfig"]


def _check_points(owner: str, name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{owner}: {name} must be an integer in {lo}..{hi} points, got {value!r}")
    return value


def _check_seconds(owner: str, name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{owner}: {name} must be a finite number of seconds >= 0, got {value!r}")


def _frozen_points(owner: str, name: str, values: Mapping[str, int]) -> Mapping[str, int]:
    checked: dict[str, int] = {}
    for subset, points in values.items():
        if not isinstance(subset, str) or not subset:
            raise ConfigError(f"{owner}: {name} keys must be subset names, got {subset!r}")
        checked[subset] = _check_points(owner, f"{name}[{subset!r}]", points, 0, WEIGHT_TOTAL)
    return MappingProxyType(checked)


@dataclass(frozen=True)
class GuardConfig:
    """How hard the guard holds the policy back. Invalid values raise `ConfigError`."""

    max_step: int = 10
    """Max points any one subset may gain or lose per tick (default 10). With a 5 s tick a
    full shift takes at least 50 s — time for the next observations to show a bad canary
    before most traffic reaches it. 1..100."""

    floors: Mapping[str, int] = field(default_factory=dict)
    """Minimum weight per subset name in points (default: none). Keeps a stable version warm
    and observable whatever the policy says. Subsets not named have floor 0; names that a
    route does not have are ignored. Must sum to at most 100, or no split could satisfy them."""

    hold_s: float = 30.0
    """How long to keep the current weights after data was last fresh (s, default 30). A
    Prometheus hiccup of a few scrapes should not move traffic either way."""

    stale_after_s: float = 30.0
    """Data older than this counts as stale (s, default 30): one rate window. Acting on a
    window that no longer describes the mesh is worse than not acting."""

    decay_step: int = 5
    """Max points per subset per tick when drifting toward the baseline after ``hold_s``
    (default 5): slower than ``max_step`` because we drift blind, without data. 1..100."""

    baseline: Mapping[str, int] | None = None
    """The safe split, as points by subset name (default None: the weights the guard first saw
    on the route, i.e. what the operator had configured before meshpilot took over — an equal
    split could send a third of the traffic to an untested canary). Restricted to a route's
    subsets and rescaled to 100 with largest remainder; if it gives a route no positive weight,
    that route falls back to its first-seen weights. Always lifted to the floors."""

    min_change: int = 3
    """Smallest total change worth writing (L1 points, default 3): a policy proposal that
    differs from the current weights by fewer points in total is not written; one that differs
    by more is approached step by step, however small `max_step` makes each step. 1 means
    "never write the same weights twice"; the default 3 also skips moving a single point
    between two subsets, the jitter a learned policy shows on about a third of its ticks
    (``bench/write_rate.py``: the shipped policy writes on 42 % of ticks with 1, 12 % with 3,
    same bad fraction) - every write makes istiod push new config to the proxies. It leaves
    the split at most one point per subset from the proposal. Guard-initiated moves (pins,
    decay, floor repair) ignore it, and so does a proposal that takes weight off a subset in
    distress (see `relief_ratio`) and gives none to another in distress: the last point of an
    overloaded version is not jitter. 1..200."""

    relief_ratio: float = 0.2
    """A subset whose observed slow ratio (requests over the SLO, over the rate window or the
    newest scrape interval) or 5xx ratio is at least this (0..1, default 0.2) is in visible
    distress: weight the policy takes off it moves at once, without ``max_step``, to subsets
    observed healthy (every ratio below half of this), up to what the proposal gives them.
    Stepping away from an overloaded version only lets its backlog grow. 1 means only a
    version failing every request is relieved at once."""

    def __post_init__(self) -> None:
        owner = "GuardConfig"
        _check_points(owner, "max_step", self.max_step, 1, WEIGHT_TOTAL)
        ratio = self.relief_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ConfigError(f"{owner}: relief_ratio must be a number in (0, 1], got {ratio!r}")
        _check_points(owner, "decay_step", self.decay_step, 1, WEIGHT_TOTAL)
        _check_points(owner, "min_change", self.min_change, 1, 2 * WEIGHT_TOTAL)
        _check_seconds(owner, "hold_s", self.hold_s)
        _check_seconds(owner, "stale_after_s", self.stale_after_s)
        floors = _frozen_points(owner, "floors", self.floors)
        if sum(floors.values()) > WEIGHT_TOTAL:
            raise ConfigError(
                f"{owner}: floors {dict(floors)} sum to {sum(floors.values())} points; "
                f"no split of {WEIGHT_TOTAL} can satisfy them"
            )
        object.__setattr__(self, "floors", floors)
        if self.baseline is not None:
            baseline = _frozen_points(owner, "baseline", self.baseline)
            if sum(baseline.values()) == 0:
                raise ConfigError(f"{owner}: baseline {dict(baseline)} gives no subset any weight")
            object.__setattr__(self, "baseline", baseline)

"""Value types of the observe/act contract: what a route is, what was seen, what to write.

These types are shared by the simulator, the Gymnasium env and the live controller, so they
are pure data with validation and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

WEIGHT_TOTAL = 100


@dataclass(frozen=True, order=True)
class RouteRef:
    """Which weighted route is managed.

    `route` is the http route's ``name`` or, when the route has no name, its index in
    ``spec.http``. `host` is the destination host whose subsets are weighted.
    """

    namespace: str
    virtual_service: str
    route: str | int
    host: str

    @property
    def key(self) -> str:
        """Stable text id `namespace/virtual_service/route` for logs, the API and the store."""
        return f"{self.namespace}/{self.virtual_service}/{self.route}"

    @classmethod
    def parse(cls, key: str, *, host: str = "") -> RouteRef:
        """Inverse of `key`; a purely numeric route part becomes an index."""
        parts = key.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"route key must be 'namespace/virtualservice/route', got {key!r}")
        ns, vs, route = parts
        return cls(ns, vs, int(route) if route.isdigit() else route, host or vs)


@dataclass(frozen=True)
class SubsetStats:
    """What Prometheus reports for one subset over one rate window; NaN where it had no data.

    rps: requests per second; error_ratio: 5xx / all (0..1); p99_ms: 99th percentile latency in
    ms; weight: the weight currently configured (0..100); slow_ratio: fraction of requests slower
    than the SLO (0..1), NaN when the profile cannot compute it. recent_p99_ms and
    recent_slow_ratio: the same two over the newest scrape interval only (PromQL ``irate``, the
    last two samples), NaN when unknown: they show a backlog that builds or drains now, which
    the window's average mixes with the previous 25 s. recent_rps: requests per second over
    that newest interval, NaN when unknown: a burst shows in it a tick after it starts, in
    `rps` only as the window fills with it.
    """

    rps: float
    error_ratio: float
    p99_ms: float
    weight: int
    slow_ratio: float = math.nan
    recent_p99_ms: float = math.nan
    recent_slow_ratio: float = math.nan
    recent_rps: float = math.nan

    @property
    def has_data(self) -> bool:
        """True when at least the request rate is known."""
        return not math.isnan(self.rps)


BALANCERS = ("least_request", "random")
"""Load-balancing policies an `Observation` can name (`Observation.balancer`)."""


@dataclass(frozen=True)
class Observation:
    """One route at one instant: ordered subsets, their stats, and how old the data is (s).

    capacity_hint_rps: nominal capacity per subset (rps), empty when not configured; slo_ms:
    the latency bound behind `SubsetStats.slow_ratio` (ms), NaN when unknown; window_s: the
    span of the rate window behind the stats (s; rate x window_s is the window's request
    count), NaN when unknown; balancer: how each subset's requests are spread over its
    replicas (`BALANCERS`: Envoy's least-request, Istio's default, or random, which queues
    like round robin's independent per-replica streams), which sets how much a subset near
    its capacity queues.
    """

    route: RouteRef
    subsets: tuple[str, ...]
    stats: tuple[SubsetStats, ...]
    timestamp_s: float
    staleness_s: float = 0.0
    capacity_hint_rps: tuple[float, ...] = field(default=())
    slo_ms: float = math.nan
    window_s: float = math.nan
    balancer: str = "least_request"

    def __post_init__(self) -> None:
        if len(self.subsets) != len(self.stats):
            raise ValueError(
                f"observation of {self.route.key}: {len(self.subsets)} subsets "
                f"but {len(self.stats)} stats"
            )
        if len(set(self.subsets)) != len(self.subsets):
            raise ValueError(f"observation of {self.route.key}: duplicate subset names")
        if self.capacity_hint_rps and len(self.capacity_hint_rps) != len(self.subsets):
            raise ValueError("capacity_hint_rps must give one value per subset")
        if self.balancer not in BALANCERS:
            raise ValueError(
                f"observation of {self.route.key}: balancer {self.balancer!r} is not one of "
                f"{list(BALANCERS)}"
            )

    @property
    def weights(self) -> Weights:
        """The weights configured when the observation was taken."""
        return Weights(self.subsets, tuple(s.weight for s in self.stats))

    @property
    def total_rps(self) -> float:
        """Sum of the known per-subset rates (rps); NaN if no subset has data."""
        known = [s.rps for s in self.stats if not math.isnan(s.rps)]
        return math.fsum(known) if known else math.nan

    def stat(self, subset: str) -> SubsetStats:
        return self.stats[self.subsets.index(subset)]


class Weights(Mapping[str, int]):
    """Integer route weights, each 0..100, summing to exactly 100 — the only thing we write.

    Construction validates, so holding a `Weights` proves the values are writable.
    """

    __slots__ = ("_subsets", "_values")

    def __init__(self, subsets: Sequence[str], values: Sequence[int]) -> None:
        subsets = tuple(subsets)
        if len(subsets) == 0:
            raise ValueError("weights need at least one subset")
        if len(subsets) != len(values):
            raise ValueError(f"weights: {len(subsets)} subsets but {len(values)} values")
        if len(set(subsets)) != len(subsets):
            raise ValueError(f"weights: duplicate subset names in {list(subsets)}")
        for name in subsets:
            if not isinstance(name, str) or not name:
                raise ValueError(f"weights: subset names must be non-empty strings, got {name!r}")
        checked: list[int] = []
        for name, value in zip(subsets, values, strict=True):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"weights: {name}={value!r} is not an integer (got {type(value).__name__})"
                )
            if not 0 <= value <= WEIGHT_TOTAL:
                raise ValueError(f"weights: {name}={value} is outside 0..{WEIGHT_TOTAL}")
            checked.append(int(value))
        total = sum(checked)
        if total != WEIGHT_TOTAL:
            raise ValueError(
                f"weights must sum to {WEIGHT_TOTAL}, got {total} "
                f"({dict(zip(subsets, checked, strict=True))})"
            )
        self._subsets = subsets
        self._values = tuple(checked)

    @classmethod
    def from_dict(cls, values: Mapping[str, int]) -> Weights:
        return cls(tuple(values.keys()), tuple(values.values()))

    @classmethod
    def single(cls, subsets: Sequence[str], target: str) -> Weights:
        """All traffic to `target`."""
        return cls(subsets, [WEIGHT_TOTAL if s == target else 0 for s in subsets])

    @property
    def subsets(self) -> tuple[str, ...]:
        return self._subsets

    @property
    def values_tuple(self) -> tuple[int, ...]:
        return self._values

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self._subsets, self._values, strict=True))

    def __getitem__(self, key: str) -> int:
        try:
            return self._values[self._subsets.index(key)]
        except ValueError:
            raise KeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._subsets)

    def __len__(self) -> int:
        return len(self._subsets)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Weights):
            return self.as_dict() == other.as_dict()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.as_dict().items())))

    def __repr__(self) -> str:
        return f"Weights({self.as_dict()})"

    def __str__(self) -> str:
        """The split as operators read it in logs and reasons: ``{v1: 90, v2: 10}``."""
        return "{" + ", ".join(f"{s}: {v}" for s, v in self.as_dict().items()) + "}"

    def l1_distance(self, other: Weights) -> int:
        """Sum of absolute weight changes between two splits of the same subsets (points)."""
        return sum(abs(self[s] - other.get(s, 0)) for s in self._subsets) + sum(
            other[s] for s in other if s not in self._subsets
        )


def finite(x: object) -> bool:
    """True for an int or a float that is neither NaN nor infinite: the check every reader of
    telemetry makes before it trusts a value (stats are NaN where nothing was measured)."""
    return isinstance(x, (int, float)) and math.isfinite(x)


def largest_remainder(shares: Sequence[float], total: int = WEIGHT_TOTAL) -> list[int]:
    """Round non-negative shares to integers summing to `total` (Hamilton's method).

    Ties break toward the lower index so the result is deterministic.
    """
    cleaned = [s if (s > 0 and math.isfinite(s)) else 0.0 for s in shares]
    mass = math.fsum(cleaned)
    if mass <= 0:
        raise ValueError("largest_remainder needs at least one positive share")
    exact = [s * total / mass for s in cleaned]
    floors = [math.floor(x) for x in exact]
    missing = total - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:missing]:
        floors[i] += 1
    return floors

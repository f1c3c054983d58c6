"""Seeded random meshes: reproducible scenarios for training, validation and held-out tests.

The hand-written public suite is too small to train on or to claim generalization from, so
`sample_scenario(seed)` turns one integer into one valid `Scenario`, and `write_scenario` into an
ordinary scenario YAML file that the strict `load_scenario` reads back unchanged. Three disjoint
seed ranges (`SEED_RANGES`) keep training, validation and test meshes apart; the public suite is
hand-written and lies in none of them.

All randomness comes from ``numpy.random.default_rng([seed, stream])``, never global state:
stream 0 picks the family when none is given, stream 1 draws the base mesh, stream 2 the
family's events. So one seed gives the same mesh under every family (a family only says what
happens to it), and the same seed gives byte-identical YAML. Only ``Generator.random`` and
``Generator.integers`` are used, whose streams numpy keeps stable. Values are rounded (times to
the 5 s step, service times to 0.1 ms) so the files stay readable and round-trip exactly.

Base mesh (the same draws for every family):

============================  ==================================================================
parameter                     range
============================  ==================================================================
versions                      2..8, named v1..vN
replicas                      1..8 per version
service_ms                    5..80 ms, log-uniform
service_dist, cv              exponential or lognormal (1/2 each); lognormal cv 0.5..3.0
error_rate                    0..0.5 % per version
load.rps                      30..100 % of the total nominal capacity (sum of capacity_rps)
slo_ms                        k x the largest service_ms, k 3..25, clipped to 20..2000 ms
duration_s, step_s            600..1800 s in 60 s steps; step_s 5 s
balancer                      least_request (80 %) or random (20 %)
initial_weights               none = capacity-proportional (30 %), a random split (50 %), or a
                              canary split: vN gets 0..20, the others by capacity (20 %)
telemetry                     defaults (80 %), or drop_prob 0..0.05 and noise 0..0.2 (20 %)
============================  ==================================================================

Events and load modulations (what the families use):

============================  ==================================================================
kind                          range
============================  ==================================================================
error (ramp or burst)         error_rate 1..40 %; ramp 0 s (half the time) or 30..300 s
latency degradation           service_ms 1.5..5 x base; ramp 0..120 s
capacity loss                 capacity_factor 0.1..0.8; ramp 0..60 s
explicit recovery             capacity_factor back to 1 over 30..300 s, 60..600 s after a loss
replica change                replicas to another value in 1..8 (down or up); ramp 0 s
tail growth                   cv to 0.5 above base .. 3.0 (lognormal versions)
combined                      capacity_factor 0.2..0.8 with error_rate 1..20 % in one event
flapping                      one version, 2..4 events of 10..60 s, every 2..4 x that long;
                              error_rate 5..40 % or capacity_factor 0.1..0.5
load bursts                   1..3, factor 1.2..2.0, 15..180 s, starting in 10..85 % of the run
diurnal load                  amplitude 0.1..0.5, period 0.5..2 x duration_s, phase 0..period;
                              with probability 0.85 the peak stays <= 0.95 x capacity (or the
                              amplitude is 0.1)
lossy telemetry               drop_prob 0.1..0.4, noise 0.2..1.0, window_s 15, 30 or 60 s
timing                        at_s in 10..60 % of duration_s; ramps at most 10 % of duration_s;
                              60 % of events revert after duration_s 60..600 s and are over
                              (both ramps included) before 90 % of the run, the rest persist
feasibility                   with probability 0.85 a capacity-reducing event is drawn (version
                              and severity) so that, with every such event of the episode at
                              once, the capacity left is still >= load / 0.95 when the ranges
                              allow it; so most meshes stay feasible, some do not
============================  ==================================================================

Families (`FAMILY_DESCRIPTIONS`; drawn uniformly from the seed when none is given):

================  ==============================================================================
family            what happens (an episode has 0..4 events)
================  ==============================================================================
steady            nothing: no events, constant load
error-fault       1..2 error events on distinct versions
latency-fault     1..2 latency degradations
capacity-loss     1..2 capacity losses on distinct versions, each reverting after duration_s
                  (1/2), recovering through an explicit recovery event (1/5) or persisting
replica-change    1..3 replica changes on distinct versions, down or up
flapping          one version: 2..4 short errors or capacity losses in a row
load-burst        1..3 load bursts, no events
diurnal           diurnal load, no events
heavy-tail        every version lognormal with cv 1.5..2.5; a tail growth event (1/2)
lossy-telemetry   lossy telemetry and one capacity loss or latency degradation (1/2 each)
mixed             2..4 events of distinct kinds (error, latency, capacity loss, replica change,
                  combined), the second starting while the first is active; 1..2 load bursts
                  (1/2), diurnal load (3/10)
================  ==============================================================================

The same tables, with the commands that produce a set, are in docs/scenario-generator.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import yaml

from envs.simulator.scenario import Scenario, ScenarioError, parse_scenario
from meshcore.model import WEIGHT_TOTAL, largest_remainder

FAMILY_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        "steady": "no events, constant load: the split alone decides the tail",
        "error-fault": "1..2 error ramps or bursts (error_rate 1..40 %)",
        "latency-fault": "1..2 latency degradations (service_ms 1.5..5 x)",
        "capacity-loss": "1..2 capacity losses that revert, recover over a ramp, or persist",
        "replica-change": "1..3 replica changes of versions, down or up, some rolled back",
        "flapping": "one version fails briefly 2..4 times in a row (errors or capacity)",
        "load-burst": "1..3 load bursts of 1.2..2x, no events",
        "diurnal": "sinusoidal load (amplitude 0.1..0.5), no events",
        "heavy-tail": "every version lognormal with cv 1.5..2.5, sometimes a tail growth",
        "lossy-telemetry": "one capacity or latency fault seen through dropped, noisy samples",
        "mixed": "2..4 events of different kinds, two overlapping; often bursts or diurnal load",
    }
)
"""Every family and what happens in its episodes (the base mesh is drawn the same way)."""

FAMILIES: tuple[str, ...] = tuple(FAMILY_DESCRIPTIONS)

MAX_SEED = 2**63 - 1
"""Largest accepted seed: seeds are 0..2^63-1 so they fit a signed 64-bit integer anywhere."""

SEED_RANGES: Mapping[str, range] = MappingProxyType(
    {
        "train": range(0, 1_000_000),
        "validation": range(1_000_000, 1_100_000),
        "test": range(2_000_000, 2_100_000),
    }
)
"""Disjoint seed ranges: train on the first, select models on the second, report on the third."""

# Ranges of the base mesh, both ends included (how each is drawn: the module docstring).
VERSIONS = (2, 8)
REPLICAS = (1, 8)
SERVICE_MS = (5.0, 80.0)
CV = (0.5, 3.0)
BASE_ERROR_RATE = (0.0, 0.005)
LOAD_FRACTION = (0.3, 1.0)
SLO_FACTOR = (3.0, 25.0)
SLO_MS = (20.0, 2000.0)
DURATION_S = (600, 1800)
MAX_EVENTS = 4
FEASIBLE_UTILIZATION = 0.95
"""Utilization that counts as feasible when severities are drawn: load <= 0.95 x capacity."""

_STEP_S = 5
_STREAM_FAMILY, _STREAM_MESH, _STREAM_EVENTS = 0, 1, 2
_P_ENFORCE_FEASIBLE = 0.85
_P_RECOVERS = 0.6


class GeneratorError(ScenarioError):
    """An unknown family or seed range, or a seed outside 0..2^63-1."""


def seed_range(name: str) -> range:
    """The seeds of one named set (``train``, ``validation`` or ``test``)."""
    try:
        return SEED_RANGES[name]
    except KeyError:
        raise GeneratorError(
            f"unknown seed range {name!r}; use one of {', '.join(SEED_RANGES)}"
        ) from None


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise GeneratorError(f"a seed must be an integer, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise GeneratorError(f"a seed must be within 0..2^63-1, got {seed}")


def _check_family(family: str) -> None:
    if family not in FAMILY_DESCRIPTIONS:
        raise GeneratorError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")


# ---- drawing helpers ---------------------------------------------------------------------


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(rng.random())


def _int(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in lo..hi, both included."""
    return int(rng.integers(lo, hi + 1))


def _chance(rng: np.random.Generator, p: float) -> bool:
    return float(rng.random()) < p


def _floor_to(x: float, step: float) -> float:
    return math.floor(x / step + 1e-9) * step


def _time(x: float) -> int:
    """A time in whole steps of 5 s, rounded down (s)."""
    return int(_floor_to(x, _STEP_S))


def _pick(rng: np.random.Generator, n: int, k: int) -> list[int]:
    """k distinct indices out of n (all n when k > n), in random order."""
    return [int(i) for i in rng.permutation(n)[: min(k, n)]]


@dataclass
class _Draft:
    """A scenario being drawn: plain data plus the worst-case capacity per version (rps)."""

    duration_s: int
    rps: float
    subsets: list[dict[str, Any]]
    worst_capacity: list[float]
    slo_ms: float
    balancer: str
    initial_weights: dict[str, int] | None
    telemetry: dict[str, float]
    events: list[dict[str, Any]] = field(default_factory=list)
    diurnal: dict[str, float] | None = None
    bursts: list[dict[str, float]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.subsets)

    def name(self, i: int) -> str:
        return str(self.subsets[i]["name"])

    def retained_floor(self, i: int) -> float:
        """Smallest share of version i's capacity that may remain with the load still feasible
        (<= 0 when the others alone carry it)."""
        spare = sum(self.worst_capacity) - self.rps / FEASIBLE_UTILIZATION
        return 1.0 - spare / self.worst_capacity[i]

    def choose_for_loss(self, rng: np.random.Generator, enforce: bool, most: float) -> int:
        """A version to weaken: when enforcing feasibility, one that can lose capacity down to
        the share `most` (the mildest severity of the event kind) and keep the load feasible."""
        if enforce:
            fits = [i for i in range(self.n) if self.retained_floor(i) <= most]
            if fits:
                return fits[_int(rng, 0, len(fits) - 1)]
        return _int(rng, 0, self.n - 1)


def _draw_mesh(rng: np.random.Generator) -> _Draft:
    n = _int(rng, *VERSIONS)
    subsets: list[dict[str, Any]] = []
    for i in range(n):
        log_lo, log_hi = math.log(SERVICE_MS[0]), math.log(SERVICE_MS[1])
        service = round(math.exp(_uniform(rng, log_lo, log_hi)), 1)
        service = min(max(service, SERVICE_MS[0]), SERVICE_MS[1])
        sub: dict[str, Any] = {
            "name": f"v{i + 1}",
            "replicas": _int(rng, *REPLICAS),
            "service_ms": service,
        }
        lognormal = _chance(rng, 0.5)
        cv = round(_uniform(rng, *CV), 2)
        if lognormal:
            sub["service_dist"] = "lognormal"
            sub["cv"] = cv
        sub["error_rate"] = round(_uniform(rng, *BASE_ERROR_RATE), 4)
        subsets.append(sub)
    capacity = [s["replicas"] * 1000.0 / s["service_ms"] for s in subsets]
    total = sum(capacity)
    fraction = _uniform(rng, *LOAD_FRACTION)
    rps_lo = math.ceil(LOAD_FRACTION[0] * total * 10) / 10
    rps_hi = math.floor(LOAD_FRACTION[1] * total * 10) / 10
    rps = min(max(round(fraction * total, 1), rps_lo), rps_hi)
    k = _uniform(rng, *SLO_FACTOR)
    slo = float(min(max(round(k * max(s["service_ms"] for s in subsets)), SLO_MS[0]), SLO_MS[1]))
    duration = 60 * _int(rng, DURATION_S[0] // 60, DURATION_S[1] // 60)
    balancer = "random" if _chance(rng, 0.2) else "least_request"
    weights: dict[str, int] | None = None
    shape = float(rng.random())
    if shape >= 0.3:
        if shape < 0.8:
            shares = [-math.log(1.0 - float(rng.random())) for _ in range(n)]
            values = largest_remainder(shares)
        else:
            canary = _int(rng, 0, 20)
            values = [*largest_remainder(capacity[:-1], WEIGHT_TOTAL - canary), canary]
        weights = {s["name"]: v for s, v in zip(subsets, values, strict=True)}
    telemetry: dict[str, float] = {}
    if _chance(rng, 0.2):
        telemetry = {
            "drop_prob": round(_uniform(rng, 0.0, 0.05), 3),
            "noise": round(_uniform(rng, 0.0, 0.2), 2),
        }
    return _Draft(
        duration_s=duration,
        rps=rps,
        subsets=subsets,
        worst_capacity=capacity,
        slo_ms=slo,
        balancer=balancer,
        initial_weights=weights,
        telemetry=telemetry,
    )


# ---- events --------------------------------------------------------------------------------


def _timing(
    rng: np.random.Generator,
    d: _Draft,
    ramp: tuple[float, float],
    *,
    at: float | None = None,
    recovers: bool | None = None,
) -> dict[str, Any]:
    """at_s, ramp_s and (when it reverts) duration_s of one event, well inside the episode:
    it starts in 10..60 % of the run and, when it reverts, is over before 90 %."""
    span = d.duration_s
    at_s = _time(_uniform(rng, 0.1 * span, 0.6 * span) if at is None else at)
    ramp_s = _time(min(_uniform(rng, *ramp), 0.1 * span))
    timing: dict[str, Any] = {"at_s": at_s, "ramp_s": ramp_s}
    if recovers if recovers is not None else _chance(rng, _P_RECOVERS):
        longest = min(600.0, 0.9 * span - at_s - 2 * ramp_s)
        timing["duration_s"] = _time(_uniform(rng, 60.0, longest))
    return timing


def _add(d: _Draft, i: int, values: dict[str, float], timing: dict[str, Any]) -> None:
    d.events.append({"subset": d.name(i), "set": values, **timing})


def _error_event(
    rng: np.random.Generator, d: _Draft, *, at: float | None = None, i: int | None = None
) -> None:
    i = _int(rng, 0, d.n - 1) if i is None else i
    rate = round(_uniform(rng, 0.01, 0.40), 3)
    burst = _chance(rng, 0.5)
    _add(d, i, {"error_rate": rate}, _timing(rng, d, (0, 0) if burst else (30, 300), at=at))


def _latency_event(rng: np.random.Generator, d: _Draft, *, at: float | None = None) -> None:
    enforce = _chance(rng, _P_ENFORCE_FEASIBLE)
    i = d.choose_for_loss(rng, enforce, 1 / 1.5)
    floor = d.retained_floor(i)
    slowest = 5.0
    if enforce and 0 < floor <= 1 / 1.5:
        slowest = min(slowest, 1 / floor)
    factor = _uniform(rng, 1.5, slowest)
    base = float(d.subsets[i]["service_ms"])
    least, most = math.ceil(base * 15) / 10, math.floor(base * slowest * 10) / 10
    target = min(max(round(base * factor, 1), least), most)
    d.worst_capacity[i] *= base / target
    _add(d, i, {"service_ms": target}, _timing(rng, d, (0, 120), at=at))


def _capacity_factor(
    rng: np.random.Generator, d: _Draft, i: int, lo: float, hi: float, enforce: bool
) -> float:
    floor = d.retained_floor(i)
    if enforce and floor <= hi:
        lo = max(lo, floor)
    factor = min(math.ceil(_uniform(rng, lo, hi) * 100) / 100, hi)
    d.worst_capacity[i] *= factor
    return factor


def _capacity_event(
    rng: np.random.Generator,
    d: _Draft,
    *,
    at: float | None = None,
    i: int | None = None,
    recovers: bool | None = None,
) -> dict[str, Any]:
    enforce = _chance(rng, _P_ENFORCE_FEASIBLE)
    i = d.choose_for_loss(rng, enforce, 0.8) if i is None else i
    factor = _capacity_factor(rng, d, i, 0.1, 0.8, enforce)
    timing = _timing(rng, d, (0, 60), at=at, recovers=recovers)
    _add(d, i, {"capacity_factor": factor}, timing)
    return timing


def _replica_event(
    rng: np.random.Generator, d: _Draft, *, at: float | None = None, i: int | None = None
) -> None:
    enforce = _chance(rng, _P_ENFORCE_FEASIBLE)
    i = _int(rng, 0, d.n - 1) if i is None else i
    current = int(d.subsets[i]["replicas"])
    fewest = 1
    if enforce:
        fewest = max(1, math.ceil(d.retained_floor(i) * current - 1e-9))
    can_drop = current > fewest
    down = current == REPLICAS[1] or (can_drop and _chance(rng, 0.5))
    if down:
        target = _int(rng, max(REPLICAS[0], min(fewest, current - 1)), current - 1)
        d.worst_capacity[i] *= target / current
    else:
        target = _int(rng, current + 1, REPLICAS[1])
    _add(d, i, {"replicas": target}, _timing(rng, d, (0, 0), at=at))


def _tail_event(rng: np.random.Generator, d: _Draft) -> None:
    lognormal = [i for i, s in enumerate(d.subsets) if s.get("service_dist") == "lognormal"]
    if not lognormal:
        return
    i = lognormal[_int(rng, 0, len(lognormal) - 1)]
    base = float(d.subsets[i]["cv"])
    target = round(_uniform(rng, min(base + 0.5, CV[1]), CV[1]), 2)
    _add(d, i, {"cv": target}, _timing(rng, d, (0, 300)))


def _combined_event(rng: np.random.Generator, d: _Draft, *, at: float | None = None) -> None:
    enforce = _chance(rng, _P_ENFORCE_FEASIBLE)
    i = d.choose_for_loss(rng, enforce, 0.8)
    factor = _capacity_factor(rng, d, i, 0.2, 0.8, enforce)
    rate = round(_uniform(rng, 0.01, 0.20), 3)
    _add(d, i, {"capacity_factor": factor, "error_rate": rate}, _timing(rng, d, (0, 60), at=at))


def _bursts(rng: np.random.Generator, d: _Draft, count: int) -> None:
    for _ in range(count):
        length = _time(_uniform(rng, 15, 180))
        at = _time(_uniform(rng, 0.1 * d.duration_s, 0.85 * d.duration_s - length))
        factor = round(_uniform(rng, 1.2, 2.0), 2)
        d.bursts.append({"at_s": at, "duration_s": length, "factor": factor})
    d.bursts.sort(key=lambda b: b["at_s"])


def _diurnal(rng: np.random.Generator, d: _Draft) -> None:
    period = _time(_uniform(rng, 0.5 * d.duration_s, 2.0 * d.duration_s))
    highest = 0.5
    if _chance(rng, _P_ENFORCE_FEASIBLE):
        capacity = sum(s["replicas"] * 1000.0 / s["service_ms"] for s in d.subsets)
        highest = min(highest, max(0.1, FEASIBLE_UTILIZATION * capacity / d.rps - 1.0))
    d.diurnal = {
        "amplitude": math.floor(_uniform(rng, 0.1, highest) * 100) / 100,
        "period_s": period,
        "phase_s": _time(_uniform(rng, 0, period)),
    }


def _lossy(rng: np.random.Generator, d: _Draft) -> None:
    d.telemetry = {
        "window_s": [15, 30, 60][_int(rng, 0, 2)],
        "drop_prob": round(_uniform(rng, 0.1, 0.4), 3),
        "noise": round(_uniform(rng, 0.2, 1.0), 2),
    }


# ---- families ------------------------------------------------------------------------------


def _steady(rng: np.random.Generator, d: _Draft) -> None:
    """Nothing happens."""


def _error_fault(rng: np.random.Generator, d: _Draft) -> None:
    for i in _pick(rng, d.n, _int(rng, 1, 2)):
        _error_event(rng, d, i=i)


def _latency_fault(rng: np.random.Generator, d: _Draft) -> None:
    for _ in range(_int(rng, 1, 2)):
        _latency_event(rng, d)


def _capacity_loss(rng: np.random.Generator, d: _Draft) -> None:
    for i in _pick(rng, d.n, _int(rng, 1, 2)):
        how = float(rng.random())
        timing = _capacity_event(rng, d, i=i, recovers=how < 0.5)
        if 0.5 <= how < 0.7:
            start = timing["at_s"] + timing["ramp_s"]
            at = _time(min(start + _uniform(rng, 60, 600), 0.8 * d.duration_s))
            ramp = _time(min(_uniform(rng, 30, 300), 0.1 * d.duration_s))
            _add(d, i, {"capacity_factor": 1.0}, {"at_s": max(at, start), "ramp_s": ramp})


def _replica_change(rng: np.random.Generator, d: _Draft) -> None:
    for i in _pick(rng, d.n, _int(rng, 1, 3)):
        _replica_event(rng, d, i=i)


def _flapping(rng: np.random.Generator, d: _Draft) -> None:
    errors = _chance(rng, 0.5)
    enforce = _chance(rng, _P_ENFORCE_FEASIBLE)
    i = _int(rng, 0, d.n - 1) if errors else d.choose_for_loss(rng, enforce, 0.5)
    if errors:
        values: dict[str, float] = {"error_rate": round(_uniform(rng, 0.05, 0.40), 3)}
    else:
        values = {"capacity_factor": _capacity_factor(rng, d, i, 0.1, 0.5, enforce)}
    count = _int(rng, 2, MAX_EVENTS)
    on = _time(_uniform(rng, 10, 60))
    every = _time(on * _uniform(rng, 2, 4))
    start = _time(_uniform(rng, 0.1 * d.duration_s, 0.4 * d.duration_s))
    last = 0.9 * d.duration_s
    while count > 2 and start + (count - 1) * every + on > last:
        count -= 1
    every = min(every, _time((last - start - on) / (count - 1)))
    for k in range(count):
        _add(d, i, dict(values), {"at_s": start + k * every, "ramp_s": 0, "duration_s": on})


def _load_burst(rng: np.random.Generator, d: _Draft) -> None:
    _bursts(rng, d, _int(rng, 1, 3))


def _diurnal_load(rng: np.random.Generator, d: _Draft) -> None:
    _diurnal(rng, d)


def _heavy_tail(rng: np.random.Generator, d: _Draft) -> None:
    for sub in d.subsets:
        sub["service_dist"] = "lognormal"
        sub["cv"] = round(_uniform(rng, 1.5, 2.5), 2)
    if _chance(rng, 0.5):
        _tail_event(rng, d)


def _lossy_telemetry(rng: np.random.Generator, d: _Draft) -> None:
    _lossy(rng, d)
    if _chance(rng, 0.5):
        _capacity_event(rng, d)
    else:
        _latency_event(rng, d)


_MIXED_KINDS: tuple[Callable[..., Any], ...] = (
    _error_event,
    _latency_event,
    _capacity_event,
    _replica_event,
    _combined_event,
)


def _mixed(rng: np.random.Generator, d: _Draft) -> None:
    kinds = _pick(rng, len(_MIXED_KINDS), _int(rng, 2, MAX_EVENTS))
    _MIXED_KINDS[kinds[0]](rng, d)
    first = d.events[0]
    end = first["at_s"] + first["ramp_s"] + first.get("duration_s", d.duration_s)
    overlap = _uniform(rng, first["at_s"], min(end, 0.6 * d.duration_s))
    _MIXED_KINDS[kinds[1]](rng, d, at=overlap)
    for k in kinds[2:]:
        _MIXED_KINDS[k](rng, d)
    if _chance(rng, 0.5):
        _bursts(rng, d, _int(rng, 1, 2))
    if _chance(rng, 0.3):
        _diurnal(rng, d)


_FAMILY_DRAWS: Mapping[str, Callable[[np.random.Generator, _Draft], None]] = {
    "steady": _steady,
    "error-fault": _error_fault,
    "latency-fault": _latency_fault,
    "capacity-loss": _capacity_loss,
    "replica-change": _replica_change,
    "flapping": _flapping,
    "load-burst": _load_burst,
    "diurnal": _diurnal_load,
    "heavy-tail": _heavy_tail,
    "lossy-telemetry": _lossy_telemetry,
    "mixed": _mixed,
}


# ---- public API ----------------------------------------------------------------------------


def family_of(seed: int) -> str:
    """The family `sample_scenario(seed)` uses when none is given."""
    _check_seed(seed)
    rng = np.random.default_rng([int(seed), _STREAM_FAMILY])
    return FAMILIES[_int(rng, 0, len(FAMILIES) - 1)]


def sample_scenario(seed: int, family: str | None = None) -> Scenario:
    """The validated scenario ``gen-<family>-<seed>``; the family is drawn from the seed when
    None. Raises `GeneratorError` for an unknown family or a seed outside 0..2^63-1."""
    _check_seed(seed)
    if family is None:
        family = family_of(seed)
    _check_family(family)
    draft = _draw_mesh(np.random.default_rng([int(seed), _STREAM_MESH]))
    _FAMILY_DRAWS[family](np.random.default_rng([int(seed), _STREAM_EVENTS]), draft)
    name = f"gen-{family}-{int(seed)}"
    return parse_scenario(_draft_data(name, draft), source=name)


def sample_scenarios(first_seed: int, count: int, family: str | None = None) -> list[Scenario]:
    """Scenarios for seeds first_seed .. first_seed + count - 1, in seed order."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise GeneratorError(f"count must be a whole number >= 0, got {count!r}")
    _check_seed(first_seed)
    if count:
        _check_seed(int(first_seed) + count - 1)
    return [sample_scenario(int(first_seed) + k, family) for k in range(count)]


def _draft_data(name: str, d: _Draft) -> dict[str, Any]:
    load: dict[str, Any] = {"rps": d.rps}
    if d.diurnal is not None:
        load["diurnal"] = d.diurnal
    if d.bursts:
        load["bursts"] = d.bursts
    events = sorted(d.events, key=lambda e: e["at_s"])
    return {
        "name": name,
        "duration_s": d.duration_s,
        "step_s": _STEP_S,
        "slo_ms": d.slo_ms,
        "load": load,
        "subsets": d.subsets,
        "balancer": d.balancer,
        "events": events,
        "telemetry": d.telemetry,
        "initial_weights": d.initial_weights,
    }


def _plain(value: Any) -> Any:
    """JSON-mode data with whole floats as ints, so a file says 600, not 600.0."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def scenario_data(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain YAML-able data, fields at their defaults left out."""
    data: dict[str, Any] = _plain(scenario.model_dump(mode="json", exclude_defaults=True))
    return data


class _Flow(dict[str, Any]):
    """A mapping written on one line, like the suite's subsets and events."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, True)
)


def scenario_yaml(scenario: Scenario, *, comment: str | None = None) -> str:
    """The text of a scenario file: optional ``# comment`` lines, then the YAML, one line per
    subset, event and burst."""
    data = scenario_data(scenario)
    for key in ("subsets", "events"):
        if key in data:
            data[key] = [_Flow(item) for item in data[key]]
    if "bursts" in data["load"]:
        data["load"]["bursts"] = [_Flow(item) for item in data["load"]["bursts"]]
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=1000)
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + text
    return text


def write_scenario(scenario: Scenario, path: str | Path, *, comment: str | None = None) -> Path:
    """Write `scenario` as a YAML file that `load_scenario` reads back equal; returns the path."""
    p = Path(path)
    try:
        p.write_text(scenario_yaml(scenario, comment=comment), encoding="utf-8")
    except OSError as err:
        raise GeneratorError(f"{p}: cannot write scenario file ({err.strerror or err})") from err
    return p

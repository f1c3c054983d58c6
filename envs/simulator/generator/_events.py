"""Events and load modulations of generated scenarios, each drawn onto a `Draft`.

Each function draws one kind from the seed's event stream and appends it to the draft; the
families (`envs.simulator.generator._families`) combine them. Events that take capacity away
also lower the draft's worst-case capacity, so later draws can keep the load feasible.

Kinds and ranges (what the families use):

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

Internal to `envs.simulator.generator`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs.simulator.generator._draws import chance, integer, to_step, uniform
from envs.simulator.generator._mesh import CV, FEASIBLE_UTILIZATION, REPLICAS, Draft

P_ENFORCE_FEASIBLE = 0.85
"""Probability that a capacity-reducing draw keeps the load feasible (module docstring)."""
P_RECOVERS = 0.6
"""Probability that an event reverts after its duration_s instead of persisting."""


def timing_of(
    rng: np.random.Generator,
    d: Draft,
    ramp: tuple[float, float],
    *,
    at: float | None = None,
    recovers: bool | None = None,
) -> dict[str, Any]:
    """at_s, ramp_s and (when it reverts) duration_s of one event, well inside the episode:
    it starts in 10..60 % of the run and, when it reverts, is over before 90 %."""
    span = d.duration_s
    at_s = to_step(uniform(rng, 0.1 * span, 0.6 * span) if at is None else at)
    ramp_s = to_step(min(uniform(rng, *ramp), 0.1 * span))
    timing: dict[str, Any] = {"at_s": at_s, "ramp_s": ramp_s}
    if recovers if recovers is not None else chance(rng, P_RECOVERS):
        longest = min(600.0, 0.9 * span - at_s - 2 * ramp_s)
        timing["duration_s"] = to_step(uniform(rng, 60.0, longest))
    return timing


def add(d: Draft, i: int, values: dict[str, float], timing: dict[str, Any]) -> None:
    d.events.append({"subset": d.name(i), "set": values, **timing})


def error_event(
    rng: np.random.Generator, d: Draft, *, at: float | None = None, i: int | None = None
) -> None:
    i = integer(rng, 0, d.n - 1) if i is None else i
    rate = round(uniform(rng, 0.01, 0.40), 3)
    burst = chance(rng, 0.5)
    add(d, i, {"error_rate": rate}, timing_of(rng, d, (0, 0) if burst else (30, 300), at=at))


def latency_event(rng: np.random.Generator, d: Draft, *, at: float | None = None) -> None:
    enforce = chance(rng, P_ENFORCE_FEASIBLE)
    i = d.choose_for_loss(rng, enforce, 1 / 1.5)
    floor = d.retained_floor(i)
    slowest = 5.0
    if enforce and 0 < floor <= 1 / 1.5:
        slowest = min(slowest, 1 / floor)
    factor = uniform(rng, 1.5, slowest)
    base = float(d.subsets[i]["service_ms"])
    least, most = math.ceil(base * 15) / 10, math.floor(base * slowest * 10) / 10
    target = min(max(round(base * factor, 1), least), most)
    d.worst_capacity[i] *= base / target
    add(d, i, {"service_ms": target}, timing_of(rng, d, (0, 120), at=at))


def capacity_factor(
    rng: np.random.Generator, d: Draft, i: int, lo: float, hi: float, enforce: bool
) -> float:
    floor = d.retained_floor(i)
    if enforce and floor <= hi:
        lo = max(lo, floor)
    factor = min(math.ceil(uniform(rng, lo, hi) * 100) / 100, hi)
    d.worst_capacity[i] *= factor
    return factor


def capacity_event(
    rng: np.random.Generator,
    d: Draft,
    *,
    at: float | None = None,
    i: int | None = None,
    recovers: bool | None = None,
) -> dict[str, Any]:
    enforce = chance(rng, P_ENFORCE_FEASIBLE)
    i = d.choose_for_loss(rng, enforce, 0.8) if i is None else i
    factor = capacity_factor(rng, d, i, 0.1, 0.8, enforce)
    timing = timing_of(rng, d, (0, 60), at=at, recovers=recovers)
    add(d, i, {"capacity_factor": factor}, timing)
    return timing


def replica_event(
    rng: np.random.Generator, d: Draft, *, at: float | None = None, i: int | None = None
) -> None:
    enforce = chance(rng, P_ENFORCE_FEASIBLE)
    i = integer(rng, 0, d.n - 1) if i is None else i
    current = int(d.subsets[i]["replicas"])
    fewest = 1
    if enforce:
        fewest = max(1, math.ceil(d.retained_floor(i) * current - 1e-9))
    can_drop = current > fewest
    down = current == REPLICAS[1] or (can_drop and chance(rng, 0.5))
    if down:
        target = integer(rng, max(REPLICAS[0], min(fewest, current - 1)), current - 1)
        d.worst_capacity[i] *= target / current
    else:
        target = integer(rng, current + 1, REPLICAS[1])
    add(d, i, {"replicas": target}, timing_of(rng, d, (0, 0), at=at))


def tail_event(rng: np.random.Generator, d: Draft) -> None:
    lognormal = [i for i, s in enumerate(d.subsets) if s.get("service_dist") == "lognormal"]
    if not lognormal:
        return
    i = lognormal[integer(rng, 0, len(lognormal) - 1)]
    base = float(d.subsets[i]["cv"])
    target = round(uniform(rng, min(base + 0.5, CV[1]), CV[1]), 2)
    add(d, i, {"cv": target}, timing_of(rng, d, (0, 300)))


def combined_event(rng: np.random.Generator, d: Draft, *, at: float | None = None) -> None:
    enforce = chance(rng, P_ENFORCE_FEASIBLE)
    i = d.choose_for_loss(rng, enforce, 0.8)
    factor = capacity_factor(rng, d, i, 0.2, 0.8, enforce)
    rate = round(uniform(rng, 0.01, 0.20), 3)
    add(d, i, {"capacity_factor": factor, "error_rate": rate}, timing_of(rng, d, (0, 60), at=at))


def add_bursts(rng: np.random.Generator, d: Draft, count: int) -> None:
    for _ in range(count):
        length = to_step(uniform(rng, 15, 180))
        at = to_step(uniform(rng, 0.1 * d.duration_s, 0.85 * d.duration_s - length))
        factor = round(uniform(rng, 1.2, 2.0), 2)
        d.bursts.append({"at_s": at, "duration_s": length, "factor": factor})
    d.bursts.sort(key=lambda b: b["at_s"])


def add_diurnal(rng: np.random.Generator, d: Draft) -> None:
    period = to_step(uniform(rng, 0.5 * d.duration_s, 2.0 * d.duration_s))
    highest = 0.5
    if chance(rng, P_ENFORCE_FEASIBLE):
        capacity = sum(s["replicas"] * 1000.0 / s["service_ms"] for s in d.subsets)
        highest = min(highest, max(0.1, FEASIBLE_UTILIZATION * capacity / d.rps - 1.0))
    d.diurnal = {
        "amplitude": math.floor(uniform(rng, 0.1, highest) * 100) / 100,
        "period_s": period,
        "phase_s": to_step(uniform(rng, 0, period)),
    }


def add_lossy_telemetry(rng: np.random.Generator, d: Draft) -> None:
    d.telemetry = {
        "window_s": [15, 30, 60][integer(rng, 0, 2)],
        "drop_prob": round(uniform(rng, 0.1, 0.4), 3),
        "noise": round(uniform(rng, 0.2, 1.0), 2),
    }

"""The scenario families: what happens to the base mesh in one family's episodes.

Each family is one function of (event stream, draft) built from the event kinds of
`envs.simulator.generator._events`; `FAMILY_DRAWS` maps every name of `FAMILIES` to it.

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

Internal to `envs.simulator.generator`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from envs.simulator.generator._draws import chance, integer, pick, to_step, uniform
from envs.simulator.generator._events import (
    P_ENFORCE_FEASIBLE,
    add,
    add_bursts,
    add_diurnal,
    add_lossy_telemetry,
    capacity_event,
    capacity_factor,
    combined_event,
    error_event,
    latency_event,
    replica_event,
    tail_event,
)
from envs.simulator.generator._mesh import Draft

MAX_EVENTS = 4
"""Most events an episode has (flapping and mixed draw up to this many)."""


def _steady(rng: np.random.Generator, d: Draft) -> None:
    """Nothing happens."""


def _error_fault(rng: np.random.Generator, d: Draft) -> None:
    for i in pick(rng, d.n, integer(rng, 1, 2)):
        error_event(rng, d, i=i)


def _latency_fault(rng: np.random.Generator, d: Draft) -> None:
    for _ in range(integer(rng, 1, 2)):
        latency_event(rng, d)


def _capacity_loss(rng: np.random.Generator, d: Draft) -> None:
    for i in pick(rng, d.n, integer(rng, 1, 2)):
        how = float(rng.random())
        timing = capacity_event(rng, d, i=i, recovers=how < 0.5)
        if 0.5 <= how < 0.7:
            start = timing["at_s"] + timing["ramp_s"]
            at = to_step(min(start + uniform(rng, 60, 600), 0.8 * d.duration_s))
            ramp = to_step(min(uniform(rng, 30, 300), 0.1 * d.duration_s))
            add(d, i, {"capacity_factor": 1.0}, {"at_s": max(at, start), "ramp_s": ramp})


def _replica_change(rng: np.random.Generator, d: Draft) -> None:
    for i in pick(rng, d.n, integer(rng, 1, 3)):
        replica_event(rng, d, i=i)


def _flapping(rng: np.random.Generator, d: Draft) -> None:
    errors = chance(rng, 0.5)
    enforce = chance(rng, P_ENFORCE_FEASIBLE)
    i = integer(rng, 0, d.n - 1) if errors else d.choose_for_loss(rng, enforce, 0.5)
    if errors:
        values: dict[str, float] = {"error_rate": round(uniform(rng, 0.05, 0.40), 3)}
    else:
        values = {"capacity_factor": capacity_factor(rng, d, i, 0.1, 0.5, enforce)}
    count = integer(rng, 2, MAX_EVENTS)
    on = to_step(uniform(rng, 10, 60))
    every = to_step(on * uniform(rng, 2, 4))
    start = to_step(uniform(rng, 0.1 * d.duration_s, 0.4 * d.duration_s))
    last = 0.9 * d.duration_s
    while count > 2 and start + (count - 1) * every + on > last:
        count -= 1
    every = min(every, to_step((last - start - on) / (count - 1)))
    for k in range(count):
        add(d, i, dict(values), {"at_s": start + k * every, "ramp_s": 0, "duration_s": on})


def _load_burst(rng: np.random.Generator, d: Draft) -> None:
    add_bursts(rng, d, integer(rng, 1, 3))


def _diurnal_load(rng: np.random.Generator, d: Draft) -> None:
    add_diurnal(rng, d)


def _heavy_tail(rng: np.random.Generator, d: Draft) -> None:
    for sub in d.subsets:
        sub["service_dist"] = "lognormal"
        sub["cv"] = round(uniform(rng, 1.5, 2.5), 2)
    if chance(rng, 0.5):
        tail_event(rng, d)


def _lossy_telemetry(rng: np.random.Generator, d: Draft) -> None:
    add_lossy_telemetry(rng, d)
    if chance(rng, 0.5):
        capacity_event(rng, d)
    else:
        latency_event(rng, d)


_MIXED_KINDS: tuple[Callable[..., Any], ...] = (
    error_event,
    latency_event,
    capacity_event,
    replica_event,
    combined_event,
)


def _mixed(rng: np.random.Generator, d: Draft) -> None:
    kinds = pick(rng, len(_MIXED_KINDS), integer(rng, 2, MAX_EVENTS))
    _MIXED_KINDS[kinds[0]](rng, d)
    first = d.events[0]
    end = first["at_s"] + first["ramp_s"] + first.get("duration_s", d.duration_s)
    overlap = uniform(rng, first["at_s"], min(end, 0.6 * d.duration_s))
    _MIXED_KINDS[kinds[1]](rng, d, at=overlap)
    for k in kinds[2:]:
        _MIXED_KINDS[k](rng, d)
    if chance(rng, 0.5):
        add_bursts(rng, d, integer(rng, 1, 2))
    if chance(rng, 0.3):
        add_diurnal(rng, d)


FAMILY_DRAWS: Mapping[str, Callable[[np.random.Generator, Draft], None]] = {
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
"""The draw of every family, by name; each appends to the draft what happens in its episode."""

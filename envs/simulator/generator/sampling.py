"""From a seed to a validated `Scenario`: which family, then the base mesh, then its events.

Each seed feeds three independent streams, ``numpy.random.default_rng([seed, stream])``:
stream 0 picks the family when none is given, stream 1 draws the base mesh, stream 2 the
family's events. So one seed gives the same mesh under every family, and a family only says
what happens to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.simulator.generator._draws import STEP_S, integer
from envs.simulator.generator._families import FAMILY_DRAWS
from envs.simulator.generator._mesh import Draft, draw_mesh
from envs.simulator.generator.catalog import (
    FAMILIES,
    GeneratorError,
    check_family,
    check_seed,
)
from envs.simulator.scenario import Scenario, parse_scenario

_STREAM_FAMILY, _STREAM_MESH, _STREAM_EVENTS = 0, 1, 2


def family_of(seed: int) -> str:
    """The family `sample_scenario(seed)` uses when none is given."""
    check_seed(seed)
    rng = np.random.default_rng([int(seed), _STREAM_FAMILY])
    return FAMILIES[integer(rng, 0, len(FAMILIES) - 1)]


def sample_scenario(seed: int, family: str | None = None) -> Scenario:
    """The validated scenario ``gen-<family>-<seed>``; the family is drawn from the seed when
    None. Raises `GeneratorError` for an unknown family or a seed outside 0..2^63-1."""
    check_seed(seed)
    if family is None:
        family = family_of(seed)
    check_family(family)
    draft = draw_mesh(np.random.default_rng([int(seed), _STREAM_MESH]))
    FAMILY_DRAWS[family](np.random.default_rng([int(seed), _STREAM_EVENTS]), draft)
    name = f"gen-{family}-{int(seed)}"
    return parse_scenario(_draft_data(name, draft), source=name)


def sample_scenarios(first_seed: int, count: int, family: str | None = None) -> list[Scenario]:
    """Scenarios for seeds first_seed .. first_seed + count - 1, in seed order."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise GeneratorError(f"count must be a whole number >= 0, got {count!r}")
    check_seed(first_seed)
    if count:
        check_seed(int(first_seed) + count - 1)
    return [sample_scenario(int(first_seed) + k, family) for k in range(count)]


def _draft_data(name: str, d: Draft) -> dict[str, Any]:
    load: dict[str, Any] = {"rps": d.rps}
    if d.diurnal is not None:
        load["diurnal"] = d.diurnal
    if d.bursts:
        load["bursts"] = d.bursts
    events = sorted(d.events, key=lambda e: e["at_s"])
    return {
        "name": name,
        "duration_s": d.duration_s,
        "step_s": STEP_S,
        "slo_ms": d.slo_ms,
        "load": load,
        "subsets": d.subsets,
        "balancer": d.balancer,
        "events": events,
        "telemetry": d.telemetry,
        "initial_weights": d.initial_weights,
        "warmup_s": STEP_S,
    }

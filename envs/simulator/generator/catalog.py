"""What the generator can be asked for: the families, the seed ranges and the accepted seeds.

Kept apart from the drawing so the command line and the benchmarks can list families and seed
ranges, and check a user's input, without anything else of the generator.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from envs.simulator.scenario import ScenarioError

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


def check_seed(seed: int) -> None:
    """Raise `GeneratorError` unless `seed` is an integer in 0..2^63-1."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise GeneratorError(f"a seed must be an integer, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise GeneratorError(f"a seed must be within 0..2^63-1, got {seed}")


def check_family(family: str) -> None:
    """Raise `GeneratorError` unless `family` is one of `FAMILIES`."""
    if family not in FAMILY_DESCRIPTIONS:
        raise GeneratorError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")

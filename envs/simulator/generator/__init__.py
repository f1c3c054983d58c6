"""Seeded random meshes: reproducible scenarios for training, validation and held-out tests.

The hand-written public suite is too small to train on or to claim generalization from, so
`sample_scenario(seed)` turns one integer into one valid `Scenario`, and `write_scenario` into an
ordinary scenario YAML file that the strict `load_scenario` reads back unchanged. Three disjoint
seed ranges (`SEED_RANGES`) keep training, validation and test meshes apart; the public suite is
hand-written and lies in none of them.

All randomness comes from ``numpy.random.default_rng([seed, stream])``, never global state:
stream 0 picks the family when none is given, stream 1 draws the base mesh, stream 2 the
family's events. So one seed gives the same mesh under every family (a family only says what
happens to it), and the same seed gives byte-identical YAML. Only ``Generator.random``,
``Generator.integers`` and ``Generator.permutation`` are used. Values are rounded (times to the
5 s step, service times to 0.1 ms) so the files stay readable and round-trip exactly.

One module per job, all re-exported here:

===================  ===========================================================================
module               job
===================  ===========================================================================
catalog              the families, the seed ranges, checking a seed or family
sampling             seed -> family -> base mesh -> events -> validated `Scenario`
files                a scenario as plain data, YAML text and a file
_mesh                the base mesh (versions, load, SLO, weights, telemetry) and its ranges
_events              every event kind and load modulation, with their ranges
_families            what each family draws, from the event kinds
_draws               the few ways anything is drawn, and the 5 s time grid
===================  ===========================================================================

The tables of ranges are in the docstrings of ``_mesh``, ``_events`` and ``_families``; the same
tables, with the commands that produce a set, are in docs/scenario-generator.md.
"""

from envs.simulator.generator._families import MAX_EVENTS
from envs.simulator.generator._mesh import (
    BASE_ERROR_RATE,
    CV,
    DURATION_S,
    FEASIBLE_UTILIZATION,
    LOAD_FRACTION,
    REPLICAS,
    SERVICE_MS,
    SLO_FACTOR,
    SLO_MS,
    VERSIONS,
)
from envs.simulator.generator.catalog import (
    FAMILIES,
    FAMILY_DESCRIPTIONS,
    MAX_SEED,
    SEED_RANGES,
    GeneratorError,
    seed_range,
)
from envs.simulator.generator.files import scenario_data, scenario_yaml, write_scenario
from envs.simulator.generator.sampling import family_of, sample_scenario, sample_scenarios

__all__ = [
    "BASE_ERROR_RATE",
    "CV",
    "DURATION_S",
    "FAMILIES",
    "FAMILY_DESCRIPTIONS",
    "FEASIBLE_UTILIZATION",
    "LOAD_FRACTION",
    "MAX_EVENTS",
    "MAX_SEED",
    "REPLICAS",
    "SEED_RANGES",
    "SERVICE_MS",
    "SLO_FACTOR",
    "SLO_MS",
    "VERSIONS",
    "GeneratorError",
    "family_of",
    "sample_scenario",
    "sample_scenarios",
    "scenario_data",
    "scenario_yaml",
    "seed_range",
    "write_scenario",
]

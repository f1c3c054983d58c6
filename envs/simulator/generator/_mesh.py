"""The base mesh of a generated scenario: versions, load, SLO, balancer, weights, telemetry.

Every family starts from the same base mesh (drawn from the seed's mesh stream), so a family
only says what happens to it. Ranges, both ends included:

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
warmup_s                      5 s (one control step at the initial weights before t = 0)
============================  ==================================================================

Internal to `envs.simulator.generator`, which re-exports the range constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.simulator.generator._draws import chance, integer, uniform
from meshcore.model import WEIGHT_TOTAL, largest_remainder

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
FEASIBLE_UTILIZATION = 0.95
"""Utilization that counts as feasible when severities are drawn: load <= 0.95 x capacity."""


@dataclass
class Draft:
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
                return fits[integer(rng, 0, len(fits) - 1)]
        return integer(rng, 0, self.n - 1)


def draw_mesh(rng: np.random.Generator) -> Draft:
    """The base mesh, with no events, drawn from `rng` (the seed's mesh stream)."""
    n = integer(rng, *VERSIONS)
    subsets: list[dict[str, Any]] = []
    for i in range(n):
        log_lo, log_hi = math.log(SERVICE_MS[0]), math.log(SERVICE_MS[1])
        service = round(math.exp(uniform(rng, log_lo, log_hi)), 1)
        service = min(max(service, SERVICE_MS[0]), SERVICE_MS[1])
        sub: dict[str, Any] = {
            "name": f"v{i + 1}",
            "replicas": integer(rng, *REPLICAS),
            "service_ms": service,
        }
        lognormal = chance(rng, 0.5)
        cv = round(uniform(rng, *CV), 2)
        if lognormal:
            sub["service_dist"] = "lognormal"
            sub["cv"] = cv
        sub["error_rate"] = round(uniform(rng, *BASE_ERROR_RATE), 4)
        subsets.append(sub)
    capacity = [s["replicas"] * 1000.0 / s["service_ms"] for s in subsets]
    total = sum(capacity)
    fraction = uniform(rng, *LOAD_FRACTION)
    rps_lo = math.ceil(LOAD_FRACTION[0] * total * 10) / 10
    rps_hi = math.floor(LOAD_FRACTION[1] * total * 10) / 10
    rps = min(max(round(fraction * total, 1), rps_lo), rps_hi)
    k = uniform(rng, *SLO_FACTOR)
    slo = float(min(max(round(k * max(s["service_ms"] for s in subsets)), SLO_MS[0]), SLO_MS[1]))
    duration = 60 * integer(rng, DURATION_S[0] // 60, DURATION_S[1] // 60)
    balancer = "random" if chance(rng, 0.2) else "least_request"
    weights: dict[str, int] | None = None
    shape = float(rng.random())
    if shape >= 0.3:
        if shape < 0.8:
            shares = [-math.log(1.0 - float(rng.random())) for _ in range(n)]
            values = largest_remainder(shares)
        else:
            canary = integer(rng, 0, 20)
            values = [*largest_remainder(capacity[:-1], WEIGHT_TOTAL - canary), canary]
        weights = {s["name"]: v for s, v in zip(subsets, values, strict=True)}
    telemetry: dict[str, float] = {}
    if chance(rng, 0.2):
        telemetry = {
            "drop_prob": round(uniform(rng, 0.0, 0.05), 3),
            "noise": round(uniform(rng, 0.0, 0.2), 2),
        }
    return Draft(
        duration_s=duration,
        rps=rps,
        subsets=subsets,
        worst_capacity=capacity,
        slo_ms=slo,
        balancer=balancer,
        initial_weights=weights,
        telemetry=telemetry,
    )

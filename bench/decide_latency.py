"""What the policy's decisions add to a control tick: many routes decided per tick.

`bench/tick_latency.py` measures observe + decide + act against real servers with a scripted
policy, so the policy's own cost is measured here. Every tick `--routes` routes of
`--versions` versions each are decided, on real telemetry: `--meshes` simulated meshes (loads
from 50 % to 85 % of their capacity, different seeds), route i reading mesh i mod `--meshes`
with its rates and capacity hints scaled by its own factor in 0.9..1.1, every route with its
own memory. Per tick, `--ticks` times after a warm-up tick, for

* ``ppo batched``: the shipped policy's `decide_many` (one forward pass per network);
* ``ppo one by one``: its `decide` per route;
* ``supervised ppo one by one``: the policy behind the supervisor (planner fallback) as
  `serve` wraps it, `decide` per route, as the control loop calls it;
* ``supervised ppo batched``: the same with `decide_many`.

Prints median and p95 per tick in ms (the planner's first ticks include its service-time
fits, so they set the p95) and one JSON line per mode.

    python bench/decide_latency.py [--routes 1000] [--versions 8] [--ticks 30] [--modes ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.registry import make_policy
from agents.supervisor import SupervisedPolicy
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import parse_scenario
from meshcore.model import Observation, RouteRef, Weights

VERSIONS: list[dict[str, Any]] = [
    {"name": "a", "replicas": 2, "service_ms": 10},
    {"name": "b", "replicas": 2, "service_ms": 20},
    {"name": "c", "replicas": 1, "service_ms": 15},
    {"name": "d", "replicas": 1, "service_ms": 20},
    {"name": "e", "replicas": 3, "service_ms": 25},
    {"name": "f", "replicas": 1, "service_ms": 25, "service_dist": "lognormal", "cv": 1.5},
    {"name": "g", "replicas": 4, "service_ms": 40},
    {"name": "h", "replicas": 2, "service_ms": 30, "error_rate": 0.02},
]
"""Versions of every mesh (the first `--versions`): a 4x spread of capacity, one lognormal,
one with 2 % 5xx."""

MODES = ("ppo-batched", "ppo-one-by-one", "supervised-one-by-one", "supervised-batched")


def observations(routes: int, versions: int, meshes: int, ticks: int) -> list[list[Observation]]:
    """Per tick, one observation per route (see the module docstring)."""
    subsets = VERSIONS[:versions]
    capacity = sum(s["replicas"] * 1000.0 / s["service_ms"] for s in subsets)
    sims = []
    for m in range(meshes):
        load = capacity * (0.5 + 0.35 * m / max(meshes - 1, 1))
        scenario = {"name": f"mesh-{m}", "duration_s": 3600, "slo_ms": 250, "subsets": subsets}
        scenario["load"] = {"rps": round(load, 1)}
        sims.append(MeshSimulator(parse_scenario(scenario), seed=m))
    factors = np.random.default_rng(0).uniform(0.9, 1.1, routes)
    out = []
    for _ in range(ticks):
        seen = []
        for sim in sims:
            sim.step(sim.weights)
            seen.append(sim.observe())
        tick = []
        for i in range(routes):
            obs, f = seen[i % meshes], float(factors[i])
            stats = tuple(dataclasses.replace(s, rps=s.rps * f) for s in obs.stats)
            caps = tuple(c * f for c in obs.capacity_hint_rps)
            route = RouteRef("bench", f"vs{i}", "primary", f"svc{i}")
            tick.append(dataclasses.replace(obs, route=route, stats=stats, capacity_hint_rps=caps))
        out.append(tick)
    return out


def decider(mode: str) -> Callable[[list[Observation]], list[Weights]]:
    """A fresh policy for `mode`, as a function of one tick's observations."""
    ppo = make_policy("ppo")
    policy = SupervisedPolicy(ppo) if mode.startswith("supervised") else ppo
    if mode.endswith("batched"):
        return policy.decide_many  # type: ignore[attr-defined,no-any-return]
    return lambda tick: [policy.decide(obs) for obs in tick]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--routes", type=int, default=1000, help="routes decided per tick")
    ap.add_argument("--versions", type=int, default=8, help="versions per route (2..8)")
    ap.add_argument("--meshes", type=int, default=16, help="simulated meshes the routes read")
    ap.add_argument("--ticks", type=int, default=30, help="measured ticks")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = ap.parse_args()
    ticks = observations(args.routes, args.versions, args.meshes, args.ticks + 1)
    for mode in args.modes:
        decide = decider(mode)
        times = []
        for i, tick in enumerate(ticks):
            start = time.perf_counter()
            decide(tick)
            if i:  # the first tick is the warm-up
                times.append((time.perf_counter() - start) * 1000.0)
        result = {
            "mode": mode,
            "routes": args.routes,
            "versions": args.versions,
            "ticks": len(times),
            "median_ms": round(statistics.median(times), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1),
        }
        print(
            f"{mode:24} {args.routes} routes x {args.versions} versions: "
            f"median {result['median_ms']} ms, p95 {result['p95_ms']} ms per tick"
        )
        print(json.dumps({"bench": "decide_latency", **result}), flush=True)


if __name__ == "__main__":
    main()

"""Simulator throughput: simulated requests per second of CPU time (issue: >= 2 M/s).

A 4-subset route at 4,000 rps (about 80 % load, least-request balancing) is simulated for a
fixed simulated duration after one warm-up run (numba compiles on first use); the figure is
requests / process CPU seconds, measured, never asserted.
"""

from __future__ import annotations

import argparse
import json
import time

from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import parse_scenario
from meshcore import Weights


def scenario(duration_s: float) -> dict[str, object]:
    return {
        "name": "bench-4x4000",
        "duration_s": duration_s,
        "step_s": 5,
        "load": {"rps": 4000},
        "subsets": [
            {"name": "v1", "replicas": 8, "service_ms": 5},
            {"name": "v2", "replicas": 6, "service_ms": 5},
            {"name": "v3", "replicas": 4, "service_ms": 4, "service_dist": "lognormal", "cv": 1.5},
            {"name": "v4", "replicas": 4, "service_ms": 6},
        ],
    }


def measure(duration_s: float, seed: int) -> tuple[int, float]:
    sim = MeshSimulator(parse_scenario(scenario(duration_s)), seed=seed)
    w = Weights(["v1", "v2", "v3", "v4"], [35, 26, 22, 17])
    start = time.process_time()
    while not sim.done:
        sim.step(w)
    cpu = time.process_time() - start
    return sim.summary().requests, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration-s", type=float, default=1800, help="simulated s (1800)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    measure(10, seed=0)
    runs = [measure(args.duration_s, seed=i) for i in range(args.repeats)]
    rates = sorted(n / cpu for n, cpu in runs)
    result = {
        "bench": "simulator_throughput",
        "route": "4 subsets, 4000 rps, least_request",
        "requests_per_run": runs[0][0],
        "requests_per_cpu_s_median": rates[len(rates) // 2],
        "requests_per_cpu_s_min": rates[0],
        "target_requests_per_cpu_s": 2_000_000,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:28s} {v:,.0f}" if isinstance(v, float) else f"{k:28s} {v}")


if __name__ == "__main__":
    main()

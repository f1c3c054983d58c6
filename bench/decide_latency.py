"""What the policy's decisions add to a control tick: `decide` for many routes, per tick.

`bench/tick_latency.py` measures observe + decide + act against real servers with a scripted
policy, so the network's own cost is measured here: the policy decides for `--routes` routes
(4 subsets each, real telemetry from the simulator, every route with its own trend memory)
per tick, `--ticks` times after a warm-up tick; prints median and p90 per tick in ms.

    python bench/decide_latency.py [--policy ppo ppo:OTHER.npz ...] [--routes 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.registry import make_policy
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import load_scenario
from meshcore.model import Observation, RouteRef


def observations(routes: int, ticks: int) -> list[list[Observation]]:
    """Per tick, one observation per route: a 4-subset scenario's telemetry, renamed."""
    sim = MeshSimulator(load_scenario("many-subsets"), seed=0)
    out = []
    for _ in range(ticks):
        sim.step(sim.weights)
        obs = sim.observe()
        out.append(
            [
                dataclasses.replace(obs, route=RouteRef("ns", f"vs{i}", "r", "h"))
                for i in range(routes)
            ]
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", nargs="+", default=["ppo"], help="policy names (as in evaluate)")
    ap.add_argument("--routes", type=int, default=100, help="routes decided per tick")
    ap.add_argument("--ticks", type=int, default=30, help="measured ticks")
    args = ap.parse_args()
    ticks = observations(args.routes, args.ticks + 1)
    for name in args.policy:
        policy = make_policy(name)
        policy.reset()
        times = []
        for i, tick in enumerate(ticks):
            start = time.perf_counter()
            for obs in tick:
                policy.decide(obs)
            if i:  # the first tick is the warm-up
                times.append((time.perf_counter() - start) * 1000.0)
        q = statistics.quantiles(times, n=10)
        result = {
            "policy": name,
            "routes": args.routes,
            "median_ms": round(statistics.median(times), 2),
            "p90_ms": round(q[-1], 2),
        }
        med, p90 = result["median_ms"], result["p90_ms"]
        print(f"{name:30} {args.routes} routes: median {med} ms, p90 {p90} ms per tick")
        print(json.dumps({"bench": "decide_latency", **result}))


if __name__ == "__main__":
    main()

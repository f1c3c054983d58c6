"""How often the controller writes a route: the shipped policy behind the guard, on the suite.

Each write is a VirtualService PATCH (a few ms of apiserver CPU) and an istiod push to every
proxy, so the share of ticks that write sets both the control tick's cost at scale (see
``bench/tick_latency.py``, whose realistic case writes 10 % of the routes per tick) and the
load meshpilot puts on the mesh's control plane.

For every suite scenario and seed, the policy decides every step on the simulator's telemetry
(`SimulatedMesh`, as in ``meshpilot simulate``), the `Guard` reviews each proposal against the
weights in force and only its writes are applied; once with every ``--min-change`` value.
Prints, per scenario, the share of ticks with a write and the episode's bad-request fraction.

    python bench/write_rate.py [--policy ppo] [--seeds 3] [--min-change 1 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.registry import make_policy
from controller.guard import Guard, GuardConfig
from envs.simulator.engine import MeshSimulator
from envs.simulator.mesh import SimulatedMesh
from envs.simulator.scenario import Scenario, load_scenario, suite_paths


def run(scenario: Scenario, policy_name: str, seed: int, min_change: int) -> tuple[float, float]:
    """(share of ticks that wrote, bad-request fraction) of one guarded episode."""
    sim = MeshSimulator(scenario, seed=seed)
    mesh = SimulatedMesh({sim.route: sim})
    route = sim.route
    policy = make_policy(policy_name)
    policy.reset()
    guard = Guard(GuardConfig(min_change=min_change, max_step=100, stale_after_s=1e9))
    ticks = writes = 0
    while not sim.done:
        obs = mesh.observe([route])[route]
        current = mesh.current(route)
        verdict = guard.review(
            route=route,
            current=current,
            proposed=policy.decide(obs),
            observation=obs,
            now_s=sim.t_s,
        )
        ticks += 1
        if verdict.write:
            writes += 1
            mesh.apply(route, verdict.weights)
        mesh.advance()
    return writes / ticks, sim.summary().bad_fraction


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", default="ppo", help="policy name, as for meshpilot simulate (ppo)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per scenario (3)")
    p.add_argument(
        "--min-change",
        type=int,
        nargs="+",
        default=[1, 3],
        help="guard min_change values to compare (L1 points; default 1 3, 3 is the default)",
    )
    args = p.parse_args()
    started = time.perf_counter()
    print(
        f"share of ticks that write (and bad fraction), policy {args.policy} behind the guard "
        f"(max_step 100 so only min_change filters), seeds 0..{args.seeds - 1}"
    )
    header = "".join(f"  min_change {m:<3d}          " for m in args.min_change)
    print(f"{'scenario':18s}{header}")
    totals: dict[int, list[float]] = {m: [] for m in args.min_change}
    for path in suite_paths():
        scenario = load_scenario(path)
        cells = []
        for m in args.min_change:
            rows = [run(scenario, args.policy, seed, m) for seed in range(args.seeds)]
            share = statistics.mean(r[0] for r in rows)
            bad = statistics.mean(r[1] for r in rows)
            totals[m].append(share)
            cells.append(f"  {100 * share:5.1f} % ({bad:.4f})       ")
        print(f"{scenario.name:18s}{''.join(cells)}")
    means = "".join(f"  {100 * statistics.mean(totals[m]):5.1f} %                " for m in totals)
    print(f"{'mean':18s}{means}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

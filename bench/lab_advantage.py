"""Does the served policy's advantage over the best classic rule survive a real data plane?

Why: every claim about the learned controller is measured in the simulator. This bench runs
one changing scenario (``latency-spike-600``: the suite's two versions and load, v1 loses 60 %
of its capacity from 200 s to 500 s, on a 600 s clock) in the simulator and on the lab (real
Envoy, real backends and Prometheus; `meshpilot.lab_evaluation.run_lab`), and prints how much
of the simulated advantage is kept:

    kept = (rule_lab - policy_lab) / (rule_sim - policy_sim)

with bad-request fractions (mean over seeds). The policy runs as served (behind the
supervisor and `serve`'s default guard; on the lab on the wall clock), the rule raw: the best
of the six classic rules in the simulator, chosen there (over ``--sim-seeds`` seeds) and run
on the lab with the same seeds as the policy. The lab runs in real time: ``2 x --seeds x 600``
s plus a rate window between runs (about an hour with 3 seeds). The goal (issue 17) is
``kept >= 80 %``. Prints, never asserts.

    nice -n 10 .venv/bin/python bench/lab_advantage.py [--policy ppo] [--seeds 3]
        [--sim-seeds 10] [--duration 600] [--out runs/bench/lab_advantage.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.evaluate import raw_setup, run_evaluation, summarize  # noqa: E402
from agents.rollout import Gate, Setup  # noqa: E402
from envs.simulator.scenario import Scenario, parse_scenario  # noqa: E402
from meshcore.ports import Policy  # noqa: E402
from meshpilot.lab_evaluation import run_lab  # noqa: E402
from meshpilot.served import served_setup  # noqa: E402

RULES = ("equal", "proportional", "sqrt", "greedy", "canary", "ewma")
"""The classic rules the policy is compared with (raw: yardsticks)."""

SCENARIO = {
    "name": "latency-spike-600",
    "duration_s": 600,
    "step_s": 5,
    "slo_ms": 250,
    "load": {"rps": 180},
    "subsets": [
        {"name": "v1", "replicas": 3, "service_ms": 20, "error_rate": 0.001},
        {"name": "v2", "replicas": 3, "service_ms": 20, "error_rate": 0.001},
    ],
    "events": [{"at_s": 200, "subset": "v1", "set": {"capacity_factor": 0.4}, "duration_s": 300}],
}
"""`latency-spike` (the suite's) on a 600 s clock, as docs/benchmarks.md shows it."""


def setup_for(policy: str) -> Setup:
    """A `Setup` running `policy` as served and every other name raw."""

    def setup(name: str) -> tuple[Policy, Gate | None]:
        return served_setup(name) if name == policy else raw_setup(name)

    return setup


def bad_fractions(
    report: dict[str, dict[str, dict[str, Any]]], scenario: Scenario
) -> dict[str, float]:
    """Mean bad fraction per policy of `scenario` in a `summarize` report."""
    return {name: float(entry["bad_fraction"]) for name, entry in report[scenario.name].items()}


def kept(rule_sim: float, policy_sim: float, rule_lab: float, policy_lab: float) -> float:
    """Share (0..1, may exceed 1 or be negative) of the simulated advantage kept on the lab;
    NaN when the policy has no advantage in the simulator."""
    advantage = rule_sim - policy_sim
    return (rule_lab - policy_lab) / advantage if advantage > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="ppo", help="the policy (as served; default ppo)")
    parser.add_argument("--seeds", type=int, default=3, help="lab seeds 0..N-1 (default 3)")
    parser.add_argument(
        "--sim-seeds", type=int, default=10, help="simulator seeds 0..N-1 (default 10)"
    )
    parser.add_argument(
        "--duration", type=float, default=600.0, help="scenario length, s (default 600)"
    )
    parser.add_argument("--window", type=float, default=10.0, help="lab rate window, s (10)")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    scenario = parse_scenario(SCENARIO).with_changes(duration_s=args.duration)
    setup = setup_for(args.policy)
    names = [args.policy, *RULES]
    started = time.monotonic()
    sim_results = run_evaluation(
        [scenario], names, list(range(args.sim_seeds)), workers=1, progress=False, setup=setup
    )
    sim = bad_fractions(summarize(sim_results, [scenario], names), scenario)
    rule = min(RULES, key=lambda r: sim[r])
    print(f"simulator ({args.sim_seeds} seeds): {args.policy} as served {sim[args.policy]:.4f}, "
          f"best rule {rule} {sim[rule]:.4f}", flush=True)  # fmt: skip
    lab_report, _ = run_lab(
        [scenario],
        [args.policy, rule],
        list(range(args.seeds)),
        setup=setup,
        window_s=args.window,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    lab = bad_fractions(lab_report, scenario)
    share = kept(sim[rule], sim[args.policy], lab[rule], lab[args.policy])
    print(f"lab ({args.seeds} seeds): {args.policy} as served {lab[args.policy]:.4f}, "
          f"{rule} {lab[rule]:.4f}")  # fmt: skip
    print(f"advantage kept on the lab: {share:.1%} (goal >= 80 %); "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        per_seed = {
            name: lab_report[scenario.name][name]["per_seed"]["bad_fraction"]
            for name in (args.policy, rule)
        }
        numbers = {"scenario": SCENARIO, "duration_s": args.duration, "sim": sim, "rule": rule}
        numbers |= {"lab": lab, "lab_per_seed": per_seed, "argv": sys.argv}
        numbers["kept"] = None if math.isnan(share) else share
        args.out.write_text(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`meshpilot simulate SCENARIO --policy NAME`: one episode with a fixed policy, scored."""

from __future__ import annotations

import argparse
import json

from agents.registry import make_policy, policy_names
from agents.rollout import run_episode
from envs.simulator.scenario import load_scenario
from meshpilot.commands.arg_types import non_negative_int


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run one simulated episode with one policy and print its scores",
        description=(
            "Simulate SCENARIO request by request for its full duration with POLICY setting "
            "the weights every step_s, then print the bad-request fraction (errors or slower "
            "than slo_ms), request-weighted p99 and mean latency (ms), 5xx fraction, churn "
            "(mean weight points moved per step) and the number of requests."
        ),
    )
    p.add_argument(
        "scenario",
        help="scenario YAML file, or the name of a scenario in the public suite (e.g. steady-80)",
    )
    p.add_argument(
        "--policy",
        default="proportional",
        help=f"policy that sets the weights (default: proportional; one of {policy_names()})",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed; same seed, same run (0)"
    )
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    policy = make_policy(args.policy)
    summary, _ = run_episode(scenario, policy, seed=args.seed)
    result = {"scenario": scenario.name, "policy": args.policy, "seed": args.seed}
    result.update(summary.as_dict())
    if args.json:
        print(json.dumps(result))
    else:
        print(f"scenario      {scenario.name}  (policy {args.policy}, seed {args.seed})")
        print(f"bad_fraction  {summary.bad_fraction:.5f}")
        print(f"p99_ms        {summary.p99_ms:.1f}")
        print(f"mean_ms       {summary.mean_ms:.1f}")
        print(f"error_rate    {summary.error_rate:.5f}")
        print(f"churn         {summary.churn:.3f}")
        print(f"requests      {summary.requests}")
    return 0

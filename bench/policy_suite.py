"""The shipped policy against every baseline and the oracle on the public suite.

Runs `meshpilot evaluate` over the whole suite (>= 10 seeds; every policy sees the same
arrival traces), prints the table, and checks issue #3's claims on the measured numbers:

* steady scenarios: ppo <= 1.02 x the best static baseline (equal, proportional, sqrt);
* changing scenarios: ppo <= 0.90 x the best non-oracle baseline;
* every scenario: ppo <= 1.25 x the oracle.

Each claim prints MET or NOT MET with the ratio; nothing is asserted or cached.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from agents.evaluate import format_table, resolve_scenarios, run_evaluation, summarize, write_json
from envs.simulator.scenario import SUITE_DIR
from meshpilot.commands.arg_types import non_negative_int, positive_int

STATIC = ("equal", "proportional", "sqrt")
BASELINES = (*STATIC, "greedy", "canary", "ewma")
STEADY = ("steady-50", "steady-80", "steady-90", "many-subsets")


def claims(
    report: dict[str, dict[str, dict[str, float]]], ppo: str
) -> list[tuple[str, float, float, bool]]:
    rows = []
    for scenario, by_policy in report.items():
        mine = by_policy[ppo]["bad_fraction"]
        if scenario in STEADY:
            best = min(by_policy[p]["bad_fraction"] for p in STATIC)
            rows.append((f"{scenario}: ppo / best static", mine / best, 1.02, mine <= 1.02 * best))
        else:
            best = min(by_policy[p]["bad_fraction"] for p in BASELINES)
            rows.append(
                (f"{scenario}: ppo / best baseline", mine / best, 0.90, mine <= 0.90 * best)
            )
        oracle = by_policy["oracle"]["bad_fraction"]
        rows.append((f"{scenario}: ppo / oracle", mine / oracle, 1.25, mine <= 1.25 * oracle))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=positive_int, default=10, help="seeds per scenario (10)")
    parser.add_argument(
        "--first-seed",
        type=non_negative_int,
        default=0,
        help="first seed (0): seeds S..S+N-1; e.g. 100 checks the claims on held-out traces",
    )
    parser.add_argument("--policy", default="ppo", help="learned policy to judge (ppo)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--out", default="runs/bench/policy_suite.json", help="JSON report")
    args = parser.parse_args()
    scenarios = resolve_scenarios([str(SUITE_DIR)])
    policies = [args.policy, *BASELINES, "oracle"]
    start = time.monotonic()
    results = run_evaluation(
        scenarios,
        policies,
        list(range(args.first_seed, args.first_seed + args.seeds)),
        workers=args.workers,
        progress=True,
    )
    report = summarize(results, scenarios, policies)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out)
    print(format_table(report))
    print(f"\n{len(results)} episodes in {time.monotonic() - start:.0f} s; JSON: {args.out}\n")
    met = 0
    rows = claims(report, args.policy)
    for label, ratio, limit, ok in rows:
        met += ok
        print(f"{label:45s} {ratio:6.3f}  (limit {limit:.2f})  {'MET' if ok else 'NOT MET'}")
    print(f"\nclaims met: {met} of {len(rows)}")
    print(json.dumps({"bench": "policy_suite", "claims_met": met, "claims": len(rows)}))


if __name__ == "__main__":
    main()

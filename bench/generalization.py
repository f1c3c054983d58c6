"""How policies do on meshes they never saw: generated scenarios of a seed range, and the suite.

Generates `--count` scenarios from the named seed range of `envs.simulator.generator` (the test
range by default: claims are measured there, once per candidate; `validation` is for choosing
recipes), runs every policy on each with `--seeds` simulator seeds, and prints, per policy:

* geometric mean of its bad fraction over the oracle's, and over the best classic rule's
  (equal, proportional, sqrt, greedy, canary, ewma; the best per scenario, in hindsight);
* the share of scenarios where it is no worse than the best classic rule, how many are worse
  than `WORST_LIMIT` times it, and the worst ten scenarios by that ratio;
* the same split into steady (no events, no load modulation) and changing scenarios, and a table
  per family, against the best rule and against the oracle; mean churn (weight points moved
  per step) as the write-rate proxy.

Run the oracles that see the truth late (`oracle-late`, `oracle-hindsight`) beside the
candidates to see how far a controller reacting to telemetry can get: per family against the
oracle, `oracle-late` shows where a gap is inference (it is the oracle's equal there) and
where it is reaction (docs/benchmarks.md, "The validation range").

Ratios use bad fractions floored at `--floor` (1e-4 by default), so scenarios where every
policy is nearly perfect do not dominate a geometric mean with noise. `--suite-seeds N` adds the
public suite with N seeds as a second test set. Nothing is cached or asserted; `--out` writes
the per-scenario numbers as JSON next to the command line that produced them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.evaluate import raw_setup, resolve_scenarios, run_evaluation, summarize
from agents.rollout import Gate
from envs.simulator.generator import sample_scenario, seed_range
from envs.simulator.scenario import Scenario, suite_paths
from meshcore.ports import Policy
from meshpilot.served import served_setup

CLASSIC = ("equal", "proportional", "sqrt", "greedy", "canary", "ewma")
"""Fixed rules people use today: the yardstick of 'never much worse than a simple rule'."""
WORST_LIMIT = 1.5
"""Issue 15's per-scenario bound: no scenario worse than this many times the best rule."""


def served_candidates(name: str) -> tuple[Policy, Gate | None]:
    """`serve`'s wrapping for candidates; the classic rules stay raw: the question is whether
    the served controller does worse than a rule as people run it (a static config)."""
    return raw_setup(name) if name in CLASSIC else served_setup(name)


def family(scenario: Scenario) -> str:
    """The generator family in a generated scenario's name (``gen-<family>-<seed>``)."""
    parts = scenario.name.split("-")
    return "-".join(parts[1:-1]) if parts[0] == "gen" else "suite"


def is_steady(scenario: Scenario) -> bool:
    """No events and no load modulation: a static split is optimal."""
    load = scenario.load
    return not scenario.events and load.diurnal is None and not load.bursts


def geomean(values: Sequence[float]) -> float:
    return float(math.exp(np.mean(np.log(values)))) if values else math.nan


def ratios(
    report: Mapping[str, Mapping[str, Mapping[str, Any]]], policy: str, floor: float
) -> dict[str, dict[str, float]]:
    """Per scenario: the policy's bad fraction over the oracle's and the best classic rule's."""
    out: dict[str, dict[str, float]] = {}
    for name, entries in report.items():
        if policy not in entries:
            continue
        rules = [entries[r]["bad_fraction"] for r in CLASSIC if r in entries]
        if not rules:
            continue  # no yardstick measured: nothing to compare with
        mine = entries[policy]["bad_fraction"] + floor
        best_rule = min(rules) + floor
        row = {"vs_rule": mine / best_rule, "churn": entries[policy]["churn"]}
        if "oracle" in entries:
            row["vs_oracle"] = mine / (entries["oracle"]["bad_fraction"] + floor)
        out[name] = row
    return out


def describe(
    title: str,
    scenarios: Sequence[Scenario],
    report: Mapping[str, Mapping[str, Mapping[str, Any]]],
    policies: Sequence[str],
    floor: float,
) -> dict[str, Any]:
    """Print the tables of one scenario set; return them as JSON-able data."""
    by_name = {s.name: s for s in scenarios}
    print(f"\n== {title}: {len(scenarios)} scenarios ==")
    header = f"{'policy':14s} {'vs oracle':>9s} {'vs best rule':>12s} {'<= rule':>8s}"
    above = f"> {WORST_LIMIT:g}x"
    print(f"{header} {above:>7s} {'steady vs rule':>14s} {'changing vs rule':>16s} {'churn':>6s}")
    summary: dict[str, Any] = {}
    if not any(r in policies for r in CLASSIC):
        print("no classic rule among the policies: no ratios (--out keeps every bad fraction)")
    for policy in policies:
        rows = ratios(report, policy, floor)
        if not rows:
            continue
        vs_rule = [r["vs_rule"] for r in rows.values()]
        vs_oracle = [r["vs_oracle"] for r in rows.values() if "vs_oracle" in r]
        steady = [r["vs_rule"] for n, r in rows.items() if is_steady(by_name[n])]
        changing = [r["vs_rule"] for n, r in rows.items() if not is_steady(by_name[n])]
        at_most = float(np.mean([v <= 1.0 + 1e-9 for v in vs_rule]))
        over = sum(v > WORST_LIMIT for v in vs_rule)
        churn = float(np.mean([r["churn"] for r in rows.values()]))
        print(
            f"{policy:14s} {geomean(vs_oracle):9.3f} {geomean(vs_rule):12.3f} {at_most:8.0%} "
            f"{over:7d} {geomean(steady):14.3f} {geomean(changing):16.3f} {churn:6.2f}"
        )
        worst = sorted(rows.items(), key=lambda kv: -kv[1]["vs_rule"])[:10]
        families: dict[str, list[float]] = {}
        families_oracle: dict[str, list[float]] = {}
        for name, r in rows.items():
            families.setdefault(family(by_name[name]), []).append(r["vs_rule"])
            if "vs_oracle" in r:
                families_oracle.setdefault(family(by_name[name]), []).append(r["vs_oracle"])
        summary[policy] = {
            "geomean_vs_oracle": geomean(vs_oracle),
            "geomean_vs_best_rule": geomean(vs_rule),
            "share_at_most_best_rule": at_most,
            "count_above_worst_limit": over,
            "geomean_steady_vs_best_rule": geomean(steady),
            "geomean_changing_vs_best_rule": geomean(changing),
            "mean_churn": churn,
            "worst_vs_best_rule": [[n, r["vs_rule"]] for n, r in worst],
            "families_vs_best_rule": {f: geomean(v) for f, v in sorted(families.items())},
            "families_vs_oracle": {f: geomean(v) for f, v in sorted(families_oracle.items())},
        }
    for policy in policies:
        if policy not in summary or policy in CLASSIC or policy == "oracle":
            continue
        listed = ", ".join(f"{n} {v:.2f}x" for n, v in summary[policy]["worst_vs_best_rule"])
        print(f"worst ten for {policy} (vs best rule): {listed}")
        for against in ("best_rule", "oracle"):
            fams = summary[policy][f"families_vs_{against}"]
            if fams:
                print(f"per family for {policy} (vs {against.replace('_', ' ')}): " + ", ".join(
                    f"{f} {v:.2f}x" for f, v in fams.items()
                ))  # fmt: skip
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--range", default="test", choices=("train", "validation", "test"),
                   help="seed range of the generated scenarios (test)")  # fmt: skip
    p.add_argument(
        "--count",
        type=int,
        default=200,
        help="generated scenarios (200; 0 runs the public suite alone, with --suite-seeds)",
    )
    p.add_argument(
        "--skip",
        type=int,
        default=0,
        help="start this many seeds into the range (0): a second, fresh set of the validation "
        "range is `--skip 180 --count 120`",
    )
    p.add_argument("--seeds", type=int, default=2, help="simulator seeds per scenario (2)")
    p.add_argument("--suite-seeds", type=int, default=0,
                   help="also run the public suite with this many seeds (0: skip)")  # fmt: skip
    p.add_argument(
        "--policies",
        default="ppo,planner,oracle," + ",".join(CLASSIC),
        help="comma-separated policies (ppo, planner, oracle and the classic rules)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes (1)")
    p.add_argument("--floor", type=float, default=1e-4, help="bad-fraction floor of ratios")
    p.add_argument("--out", type=Path, help="write the per-scenario report as JSON here")
    p.add_argument(
        "--as-served",
        action="store_true",
        help="run the candidates as `meshpilot serve` does (supervisor + default guard, see "
        "meshpilot.served); the yardsticks (oracle and the classic rules) stay raw",
    )
    args = p.parse_args(argv)
    setup = served_candidates if args.as_served else raw_setup
    policies = [x for x in args.policies.split(",") if x]
    seeds = seed_range(args.range)
    if args.count < 0 or args.skip < 0 or args.skip + args.count > len(seeds):
        p.error(f"--skip {args.skip} --count {args.count} is not within the {args.range} range "
                f"({len(seeds)} seeds)")  # fmt: skip
    if args.count == 0 and args.suite_seeds < 1:
        p.error("--count 0 runs the public suite alone: give --suite-seeds N (N >= 1)")
    started = time.monotonic()
    out: dict[str, Any] = {"command": " ".join(sys.argv), "generated": {}}
    out["as_served"] = args.as_served
    out["generated_summary"] = None

    def measure(title: str, scenarios: Sequence[Scenario], sim_seeds: int) -> tuple[Any, Any]:
        """Every policy on `scenarios` with seeds 0..sim_seeds-1: the per-scenario report and
        its printed tables."""
        results = run_evaluation(
            scenarios,
            policies,
            list(range(sim_seeds)),
            workers=args.workers,
            progress=True,
            setup=setup,
        )
        report = summarize(results, scenarios, policies)
        return report, describe(title, scenarios, report, policies, args.floor)

    if args.count > 0:
        first = seeds.start + args.skip
        generated = [sample_scenario(first + i) for i in range(args.count)]
        out["generated"], out["generated_summary"] = measure(
            f"{args.range} range, seeds {first}..{first + args.count - 1}, {args.seeds} sim seeds",
            generated,
            args.seeds,
        )
    if args.suite_seeds > 0:
        suite = resolve_scenarios([str(p) for p in suite_paths()])
        out["suite"], out["suite_summary"] = measure(
            f"public suite, {args.suite_seeds} sim seeds", suite, args.suite_seeds
        )
    print(f"\n{time.monotonic() - started:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

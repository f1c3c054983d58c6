"""`meshpilot evaluate`: every policy on every scenario on the same seeds -> JSON, table, plots.

``--mesh sim`` (the default) scores policies in the simulator (`agents.evaluate`). ``--mesh lab``
replays each scenario on the local live mesh instead (`envs.lab.replay`): one lab per scenario
(`LabSpec.from_scenario`), every policy and seed in turn on it, in real time, the controller
reading Prometheus and writing Envoy's route file as `meshpilot serve --mesh lab` does. Both
report the same JSON; lab entries add ``mesh`` and ``lab_runs``.
"""

from __future__ import annotations

import argparse
import sys

from agents.evaluate import (
    format_table,
    raw_setup,
    resolve_scenarios,
    run_evaluation,
    summarize,
    write_json,
    write_plots,
)
from agents.registry import policy_names
from agents.rollout import Setup
from envs.simulator.scenario import SUITE_DIR
from meshcore.errors import ConfigError
from meshpilot.commands.arg_types import (
    non_negative_int,
    output_dir,
    output_file,
    positive_float,
    positive_int,
)
from meshpilot.lab_evaluation import lab_notes, run_lab
from meshpilot.served import is_yardstick, served_setup

AS_SERVED_NOTE = (
    "as served: every policy ran behind the supervisor and the guard with serve's default "
    "settings{raw}"
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score policies against each other on scenarios, on the same seeds",
        description=(
            "Run every POLICY on every SCENARIO for seeds S..S+N-1 (--first-seed S, default 0; "
            "seed k replays the same requests for every policy), then report per scenario and "
            "policy the mean over seeds of the bad-request fraction (errors or slower than "
            "slo_ms) with a 95 % t-interval, p99 and mean latency (ms), 5xx fraction, churn "
            "(weight points moved per step) and the ratio to the oracle's bad fraction, as a "
            "table on stdout and optionally as JSON and PNG plots."
        ),
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        action="extend",
        metavar="SCENARIO",
        help=(
            "suite scenario names (e.g. steady-80), scenario YAML files or directories of them "
            f"(default: the whole public suite, {SUITE_DIR})"
        ),
    )
    p.add_argument(
        "--policy",
        nargs="+",
        action="extend",
        required=True,
        metavar="NAME",
        help=f"policies to compare, any of: {', '.join(policy_names())}",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        metavar="N",
        help="how many seeds (default 3 in the simulator, 1 on the lab)",
    )
    p.add_argument(
        "--first-seed",
        type=non_negative_int,
        default=0,
        metavar="S",
        help=(
            "first seed (default 0): the seeds are S..S+N-1; seeds other than those a result "
            "was tuned on check that it holds on traces it has not seen"
        ),
    )
    p.add_argument(
        "--out",
        type=output_file,
        metavar="FILE.json",
        help="write the JSON report here (its directory must exist)",
    )
    p.add_argument(
        "--plots",
        type=output_dir,
        metavar="DIR",
        help="write weights_<scenario>.png (first seed) and bad_fraction.png into DIR "
        "(created if missing; its parent must exist)",
    )
    p.add_argument(
        "--duration-s",
        type=positive_float,
        metavar="S",
        help="override every scenario's duration (simulated seconds), for quick runs",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes for episodes (default 1; results do not depend on it)",
    )
    p.add_argument(
        "--as-served",
        action="store_true",
        help=(
            "run every policy as `meshpilot serve` runs it with default settings: behind the "
            "supervisor (unless named supervised:...) and the guard (max_step, min_change, "
            "hold on stale data; no pins), on the simulator's clock (on the lab: the wall "
            "clock); the oracles stay raw (yardsticks). Report names stay as given; each "
            "entry says as_served"
        ),
    )
    p.add_argument(
        "--mesh",
        choices=("sim", "lab"),
        default="sim",
        help=(
            "where episodes run: sim (default), or lab: the local live mesh (real Envoy, "
            "backends and Prometheus on 127.0.0.1; needs envoy and prometheus), one lab per "
            "scenario, each scenario's load and events replayed IN REAL TIME for every policy "
            "and seed (a 1800 s scenario takes 30 min per policy: see --lab-duration). The "
            "oracles there know the scenario's schedule, not the queues"
        ),
    )
    p.add_argument(
        "--lab-duration",
        type=positive_float,
        metavar="S",
        help=(
            "with --mesh lab: run each scenario for S wall-clock seconds (the lab runs in "
            "real time; default: the scenario's duration_s); events at or after S are "
            "skipped (the JSON's lab_runs notes say so)"
        ),
    )
    p.add_argument(
        "--lab-window",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="with --mesh lab: PromQL rate window (s, default 10: serve's lab default)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    scenarios = resolve_scenarios(args.scenarios or [str(SUITE_DIR)], duration_s=args.duration_s)
    policies = list(dict.fromkeys(args.policy))
    n_seeds = args.seeds if args.seeds is not None else (1 if args.mesh == "lab" else 3)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    setup: Setup = served_setup if args.as_served else raw_setup
    if args.mesh == "lab":
        if args.workers > 1:
            raise ConfigError("--workers: the lab runs one episode at a time (use 1)")
        report, results = run_lab(
            scenarios,
            policies,
            seeds,
            setup=setup,
            duration_s=args.lab_duration,
            window_s=args.lab_window,
            progress=None if args.quiet else _progress,
        )
    else:
        if args.lab_duration is not None:
            raise ConfigError("--lab-duration needs --mesh lab (in the simulator: --duration-s)")
        results = run_evaluation(
            scenarios,
            policies,
            seeds,
            workers=args.workers,
            trace_seed=seeds[0] if args.plots else None,
            progress=not args.quiet,
            setup=setup,
        )
        report = summarize(results, scenarios, policies)
    if args.out:
        write_json(report, args.out)
    if args.plots:
        write_plots(report, results, args.plots)
    print(format_table(report))
    if args.mesh == "lab":
        for line in lab_notes(report):
            print(line)
    if args.as_served:
        raw = [p for p in policies if is_yardstick(p)]
        print(AS_SERVED_NOTE.format(raw=f" ({', '.join(raw)}: raw yardsticks)" if raw else ""))
    if args.out:
        print(f"\nreport: {args.out}", file=sys.stderr)
    return 0


# ---- the lab --------------------------------------------------------------------------------


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

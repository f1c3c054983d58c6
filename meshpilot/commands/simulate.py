"""`meshpilot simulate SCENARIO --policy NAME`: one episode with a fixed policy, scored.

`--trace FILE.csv` and `--plot FILE.png` show what the policy did, step by step: the weights
in force, each version's traffic, p99 and 5xx, the step's bad fraction and the reasons the
guard or the supervisor gave — a score alone does not tell *why* a policy lost.
`--as-served` runs the policy as `meshpilot serve` does (`meshpilot.served`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from agents.registry import make_policy, policy_names
from agents.rollout import EpisodeTrace, run_episode
from envs.simulator.scenario import load_scenario
from meshcore.errors import ConfigError
from meshpilot.commands.arg_types import non_negative_int, output_file
from meshpilot.served import served_setup


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="run one simulated episode with one policy and print its scores",
        description=(
            "Simulate SCENARIO request by request for its full duration with POLICY setting "
            "the weights every step_s, then print the bad-request fraction (errors or slower "
            "than slo_ms), request-weighted p99 and mean latency (ms), 5xx fraction, churn "
            "(mean weight points moved per step) and the number of requests. --trace and "
            "--plot show what the policy did step by step."
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
    p.add_argument(
        "--as-served",
        action="store_true",
        help=(
            "run the policy as `meshpilot serve` runs it with default settings: behind the "
            "supervisor (unless named supervised:...) and the guard (max_step, min_change, "
            "hold on stale data; no pins), on the simulator's clock; oracle* stay raw"
        ),
    )
    p.add_argument(
        "--trace",
        type=output_file,
        metavar="FILE.csv",
        help=(
            "write one CSV row per control step: t_s (end of step, s), w_<v> (weights in "
            "force, points), proposed_<v> (the policy's, points), the step's true rps_<v> "
            "(requests/s), p99_ms_<v> (ms) and err_<v> (5xx ratio; both empty without "
            "requests), requests, bad_fraction, wrote (1: new weights written), intervened "
            "(1: guard or supervisor changed the outcome), reason (the guard's and the "
            "supervisor's, as serve records them; empty when none), then what the planner "
            "believed after the step's decision: est_health_<v> (capacity factor, 1 = "
            "nominal) and est_error_<v> (5xx rate), for the planner and every policy behind "
            "the supervisor (empty for other policies)"
        ),
    )
    p.add_argument(
        "--plot",
        type=output_file,
        metavar="FILE.png",
        help=(
            "draw weights, p99 and 5xx per version and the bad fraction over time as a PNG, "
            "with markers where the guard or supervisor intervened"
        ),
    )
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    if args.as_served:
        policy, gate = served_setup(args.policy)
    else:
        policy, gate = make_policy(args.policy), None
    want_trace = bool(args.trace or args.plot)
    summary, trace = run_episode(scenario, policy, seed=args.seed, trace=want_trace, gate=gate)
    if trace is not None and args.trace:
        write_trace_csv(trace, args.trace)
    if trace is not None and args.plot:
        title = f"{scenario.name}: {args.policy}{' as served' if gate else ''}, seed {args.seed}"
        write_trace_plot(trace, args.plot, title=title, slo_ms=scenario.slo_ms)
    result: dict[str, object] = {"scenario": scenario.name, "policy": args.policy}
    result["seed"] = args.seed
    result.update(summary.as_dict())
    result["as_served"] = gate is not None
    if args.json:
        print(json.dumps(result))
    else:
        served = ", as served" if gate is not None else ""
        print(f"scenario      {scenario.name}  (policy {args.policy}{served}, seed {args.seed})")
        print(f"bad_fraction  {summary.bad_fraction:.5f}")
        print(f"p99_ms        {summary.p99_ms:.1f}")
        print(f"mean_ms       {summary.mean_ms:.1f}")
        print(f"error_rate    {summary.error_rate:.5f}")
        print(f"churn         {summary.churn:.3f}")
        print(f"requests      {summary.requests}")
    return 0


# ---- the trace as CSV -----------------------------------------------------------------------
def trace_columns(subsets: Sequence[str]) -> list[str]:
    """The CSV header of `write_trace_csv` for these versions."""
    per_version = ("w", "proposed", "rps", "p99_ms", "err")
    cols = [f"{kind}_{v}" for kind in per_version for v in subsets]
    estimates = [f"{kind}_{v}" for kind in ("est_health", "est_error") for v in subsets]
    return ["t_s", *cols, "requests", "bad_fraction", "wrote", "intervened", "reason", *estimates]


def _cell(x: float | int | None) -> str:
    """CSV text of a number: empty for None and NaN (pandas reads both back as NaN)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return str(x) if isinstance(x, int) else format(x, ".10g")


def trace_rows(trace: EpisodeTrace) -> list[list[str]]:
    """One row per step, in `trace_columns` order."""
    subsets = trace.subsets
    rows = []
    for i, t_s in enumerate(trace.t_s):
        proposed = trace.proposed[i]
        row = [_cell(t_s)]
        row += [_cell(trace.weights[i][v]) for v in subsets]
        row += [_cell(None if proposed is None else proposed.get(v)) for v in subsets]
        row += [_cell(trace.rps[i][v]) for v in subsets]
        row += [_cell(trace.p99_ms[i][v]) for v in subsets]
        row += [_cell(trace.error_ratio[i][v]) for v in subsets]
        row += [_cell(trace.requests[i]), _cell(trace.bad_fraction[i])]
        row += [_cell(int(trace.wrote[i])), _cell(int(trace.intervened[i])), trace.reason[i]]
        est = trace.estimates[i] or {}
        row += [_cell(est[v][0] if v in est else None) for v in subsets]
        row += [_cell(est[v][1] if v in est else None) for v in subsets]
        rows.append(row)
    return rows


def write_trace_csv(trace: EpisodeTrace, path: str | Path) -> Path:
    """Write the per-step trace as CSV (header `trace_columns`), atomically (temp + rename)."""
    out = Path(path)
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(trace_columns(trace.subsets))
            writer.writerows(trace_rows(trace))
        os.replace(tmp, out)
    except OSError as err:
        raise ConfigError(f"--trace {path}: cannot write ({err.strerror or err})") from err
    return out


# ---- the trace as a plot --------------------------------------------------------------------
def write_trace_plot(trace: EpisodeTrace, path: str | Path, *, title: str, slo_ms: float) -> Path:
    """A PNG (matplotlib, Agg) of the episode: weights in force, p99 (ms, with the SLO) and
    5xx ratio per version, the step's bad fraction; vertical markers at the steps where the
    guard or the supervisor intervened (`EpisodeTrace.intervened`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    subsets = trace.subsets
    t = trace.t_s
    fig = Figure(figsize=(10, 9), layout="constrained")
    FigureCanvasAgg(fig)
    ax_w, ax_p99, ax_err, ax_bad = fig.subplots(4, 1, sharex=True)
    for v in subsets:
        ax_w.step(t, [w[v] for w in trace.weights], where="pre", label=v)
        ax_p99.plot(t, [s[v] for s in trace.p99_ms], label=v)
        ax_err.plot(t, [s[v] for s in trace.error_ratio], label=v)
    ax_w.set_ylim(-2, 102)
    ax_w.set_ylabel("weight (points)")
    ax_w.legend(loc="upper right", fontsize=7, ncols=min(max(len(subsets), 1), 6))
    ax_p99.axhline(slo_ms, color="grey", linestyle=":", linewidth=1, label="SLO")
    ax_p99.set_ylabel("p99 (ms)")
    if any(p > 0 for s in trace.p99_ms for p in s.values() if math.isfinite(p)):
        ax_p99.set_yscale("log")
    ax_err.set_ylabel("5xx ratio")
    ax_bad.plot(t, trace.bad_fraction, color="black", linewidth=1)
    ax_bad.set_ylabel("bad fraction")
    ax_bad.set_xlabel("simulated time (s), end of step")
    marks = [ts for ts, hit in zip(t, trace.intervened, strict=True) if hit]
    if marks:
        for ax in (ax_w, ax_bad):
            where = ax.get_xaxis_transform()
            ax.vlines(marks, 0, 1, transform=where, colors="tab:red", linewidth=0.6, alpha=0.35)
        ax_w.plot([], [], color="tab:red", alpha=0.5, label="guard/supervisor intervened")
        ax_w.legend(loc="upper right", fontsize=7, ncols=min(len(subsets) + 1, 6))
    fig.suptitle(title, fontsize=10)
    out = Path(path)
    try:
        fig.savefig(out, dpi=100, format="png")
    except OSError as err:
        raise ConfigError(f"--plot {path}: cannot write ({err.strerror or err})") from err
    return out

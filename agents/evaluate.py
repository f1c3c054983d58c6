"""Score policies against each other: every policy, every scenario, the same seeds.

This is the engine of `meshpilot evaluate` (DESIGN.md gives the JSON contract). Fairness comes
from the simulator: seed k draws the same arrival trace whatever weights a policy writes, so
policies are compared on identical requests and differences between them are paired, not
sampling noise of different traffic. Each episode builds a fresh policy, so results do not
depend on the order of episodes or on how many worker processes ran them.

Report, per scenario and policy (means over seeds of per-episode scores, 95 % t-intervals over
seeds, JSON ``null`` where a value is undefined):

============================  ===============================================================
 key                          meaning
============================  ===============================================================
 bad_fraction                 requests that errored or exceeded the SLO, over all requests
 p99_ms, mean_ms              request-weighted latency of the episode (ms)
 error_rate                   5xx fraction
 churn                        mean weight points moved per control step
 n_seeds                      episodes behind the means
 <metric>_ci95                [lo, hi] 95 % t-interval of the mean over seeds, clipped to
                              the metric's range (>= 0; <= 1 for fractions); null for 1 seed
 oracle_ratio                 bad_fraction / the oracle's bad_fraction (means over the same
                              seeds); null when the oracle was not evaluated or scored 0
 requests                     mean requests per episode
 seeds, duration_s            which seeds ran, simulated seconds per episode
 per_seed                     every metric per seed, in `seeds` order (for paired tests)
 as_served                    true when the policy ran as served (a `Gate` between its
                              proposals and the writes, see `run_evaluation`'s `setup`),
                              false when its proposals were written as they came
============================  ===============================================================
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from tqdm import tqdm

from agents.registry import make_policy
from agents.rollout import EpisodeTrace, Gate, Setup, run_episode
from envs.simulator.engine import EpisodeSummary
from envs.simulator.scenario import SUITE_DIR, Scenario, ScenarioError, load_scenario
from meshcore.errors import ConfigError
from meshcore.ports import Policy

METRICS = ("bad_fraction", "p99_ms", "mean_ms", "error_rate", "churn")
"""Per-episode scores aggregated over seeds, in report order."""

ORACLE = "oracle"


@dataclass(frozen=True)
class EpisodeResult:
    """One policy on one scenario with one seed; `trace` only when asked for (plots);
    `as_served` when a gate reviewed its proposals."""

    scenario: str
    policy: str
    seed: int
    summary: EpisodeSummary
    trace: EpisodeTrace | None = None
    as_served: bool = False


# ---- scenarios ------------------------------------------------------------------------------
def _suite_names() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def resolve_scenarios(specs: Sequence[str], *, duration_s: float | None = None) -> list[Scenario]:
    """Suite names (``steady-80``), scenario files or directories of ``*.yaml`` -> scenarios.

    `duration_s` (s) overrides every scenario's duration, for quick runs. Raises
    `ScenarioError` naming the argument for anything missing, malformed or duplicated.
    """
    if not specs:
        raise ScenarioError("no scenarios given")
    scenarios: list[Scenario] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            files = sorted(path.glob("*.yaml"))
            if not files:
                raise ScenarioError(f"{spec}: directory holds no *.yaml scenario files")
            scenarios.extend(load_scenario(f) for f in files)
        elif not path.exists() and not path.suffix and spec not in _suite_names():
            raise ScenarioError(
                f"{spec}: no such scenario file, and not a suite scenario "
                f"(suite: {', '.join(_suite_names())})"
            )
        else:
            scenarios.append(load_scenario(path))
    names = [s.name for s in scenarios]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ScenarioError(f"scenario names must be unique, got {dupes} more than once")
    if duration_s is not None:
        try:
            scenarios = [s.with_changes(duration_s=duration_s) for s in scenarios]
        except ValidationError as err:
            raise ScenarioError(f"--duration-s {duration_s}: {err.errors()[0]['msg']}") from err
    return scenarios


# ---- running --------------------------------------------------------------------------------
def raw_setup(name: str) -> tuple[Policy, Gate | None]:
    """The default `Setup`: the named policy alone, every proposal written as it comes."""
    return make_policy(name), None


def _run_one(task: tuple[Scenario, str, int, bool, Setup]) -> EpisodeResult:
    scenario, policy_name, seed, want_trace, setup = task
    policy, gate = setup(policy_name)
    summary, trace = run_episode(scenario, policy, seed=seed, trace=want_trace, gate=gate)
    return EpisodeResult(scenario.name, policy_name, seed, summary, trace, gate is not None)


def run_evaluation(
    scenarios: Sequence[Scenario],
    policies: Sequence[str],
    seeds: Sequence[int],
    *,
    workers: int = 1,
    trace_seed: int | None = None,
    progress: bool = False,
    setup: Setup = raw_setup,
) -> list[EpisodeResult]:
    """Run every (scenario, policy, seed) episode; traces are kept for `trace_seed` only.

    Policies are checked (built once) before anything runs, so a bad name fails fast with
    `ConfigError`. `workers` > 1 spreads episodes over processes (spawned, so nothing but
    the arguments is shared); results come back in task order either way. `setup` builds a
    fresh policy and gate for every episode from the name the user gave (default
    `raw_setup`: no gate); with workers it must be a module-level function, so that it
    pickles (e.g. ``meshpilot.served.served_setup``, the policy as `meshpilot serve` runs it).
    """
    if not policies:
        raise ConfigError("no policies given")
    if not seeds:
        raise ConfigError("no seeds given")
    for name in dict.fromkeys(policies):
        setup(name)
    tasks = [
        (sc, pol, seed, seed == trace_seed, setup)
        for sc in scenarios
        for pol in policies
        for seed in seeds
    ]
    bar = tqdm(total=len(tasks), desc="episodes", unit="ep", disable=not progress, leave=False)
    results: list[EpisodeResult] = []
    try:
        if workers <= 1:
            for task in tasks:
                results.append(_run_one(task))
                bar.update()
        else:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for result in pool.map(_run_one, tasks):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


# ---- aggregation ----------------------------------------------------------------------------
def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


_UPPER = {"bad_fraction": 1.0, "error_rate": 1.0}
"""Metrics bounded above (fractions); every metric is bounded below by 0."""


def _mean_ci(values: Sequence[float], upper: float = math.inf) -> tuple[float, list[float | None]]:
    """Mean and 95 % Student-t interval over seeds, clipped to the metric's range [0, upper]."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean()) if arr.size else math.nan
    if arr.size < 2 or not np.all(np.isfinite(arr)):
        return mean, [None, None]
    from scipy import stats  # deferred: `meshpilot --help` should not load scipy.stats

    half = float(stats.t.ppf(0.975, arr.size - 1) * arr.std(ddof=1) / math.sqrt(arr.size))
    return mean, [max(mean - half, 0.0), min(mean + half, upper)]


def summarize(
    results: Iterable[EpisodeResult],
    scenarios: Sequence[Scenario],
    policies: Sequence[str],
) -> dict[str, dict[str, dict[str, Any]]]:
    """The `meshpilot evaluate` JSON document (see the module docstring for every key)."""
    by_key: dict[tuple[str, str], list[EpisodeResult]] = {}
    for r in results:
        by_key.setdefault((r.scenario, r.policy), []).append(r)
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for sc in scenarios:
        entries: dict[str, dict[str, Any]] = {}
        for pol in dict.fromkeys(policies):
            runs = sorted(by_key.get((sc.name, pol), []), key=lambda r: r.seed)
            if not runs:
                continue
            entry: dict[str, Any] = {}
            per_seed: dict[str, list[float | None]] = {}
            for metric in METRICS:
                values = [float(getattr(r.summary, metric)) for r in runs]
                mean, ci = _mean_ci(values, _UPPER.get(metric, math.inf))
                entry[metric] = _num(mean)
                entry[f"{metric}_ci95"] = ci
                per_seed[metric] = [_num(v) for v in values]
            entry["n_seeds"] = len(runs)
            entry["oracle_ratio"] = None
            entry["requests"] = float(np.mean([r.summary.requests for r in runs]))
            entry["seeds"] = [r.seed for r in runs]
            entry["duration_s"] = sc.duration_s
            entry["per_seed"] = per_seed
            entry["as_served"] = all(r.as_served for r in runs)
            entries[pol] = entry
        oracle = entries.get(ORACLE)
        if oracle is not None:
            for entry in entries.values():
                entry["oracle_ratio"] = _oracle_ratio(entry, oracle)
        report[sc.name] = entries
    return report


def _oracle_ratio(entry: Mapping[str, Any], oracle: Mapping[str, Any]) -> float | None:
    """Ratio of mean bad fractions over the seeds both ran (paired by seed)."""
    mine = dict(zip(entry["seeds"], entry["per_seed"]["bad_fraction"], strict=True))
    ref = dict(zip(oracle["seeds"], oracle["per_seed"]["bad_fraction"], strict=True))
    common = [s for s in mine if s in ref and mine[s] is not None and ref[s] is not None]
    if not common:
        return None
    denom = float(np.mean([ref[s] for s in common]))
    if denom <= 0:
        return None
    return float(np.mean([mine[s] for s in common])) / denom


def write_json(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report atomically (temp file + rename) as strict JSON (no NaN); the
    directory must exist (none is created)."""
    out = Path(path)
    try:
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    except OSError as err:
        raise ConfigError(f"--out {path}: cannot write ({err.strerror or err})") from err
    return out


# ---- presentation ---------------------------------------------------------------------------
def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(report: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A fixed-width text table: one row per scenario and policy."""
    header = (
        f"{'scenario':<18} {'policy':<14} {'bad_fraction':>12} {'95% CI':>19} "
        f"{'x oracle':>8} {'p99_ms':>8} {'mean_ms':>8} {'5xx':>7} {'churn':>6} {'seeds':>5}"
    )
    lines = [header, "-" * len(header)]
    for scenario, entries in report.items():
        first = True
        for policy, e in entries.items():
            lo, hi = e["bad_fraction_ci95"]
            ci = f"[{_fmt(lo, '.4f')}, {_fmt(hi, '.4f')}]"
            lines.append(
                f"{scenario if first else '':<18} {policy:<14} {_fmt(e['bad_fraction'], '.5f'):>12}"
                f" {ci:>19} {_fmt(e['oracle_ratio'], '.2f'):>8} {_fmt(e['p99_ms'], '.1f'):>8}"
                f" {_fmt(e['mean_ms'], '.1f'):>8} {_fmt(e['error_rate'], '.4f'):>7}"
                f" {_fmt(e['churn'], '.2f'):>6} {e['n_seeds']:>5}"
            )
            first = False
    return "\n".join(lines)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(
    report: Mapping[str, Mapping[str, Mapping[str, Any]]],
    results: Sequence[EpisodeResult],
    out_dir: str | Path,
) -> list[Path]:
    """PNG files: ``weights_<scenario>.png`` (weights over time per policy, from the traced
    seed) and ``bad_fraction.png`` (per scenario and policy, with 95 % CI error bars)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    try:
        out.mkdir(exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--plots {out_dir}: cannot create ({err.strerror or err})") from err
    written: list[Path] = []
    traces: dict[str, dict[str, EpisodeTrace]] = {}
    for r in results:
        if r.trace is not None:
            traces.setdefault(r.scenario, {})[r.policy] = r.trace
    for scenario, per_policy in traces.items():
        policies = [p for p in report.get(scenario, {}) if p in per_policy]
        if not policies:
            continue
        fig = Figure(figsize=(9, 1.9 * len(policies) + 0.8), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(policies), 1, sharex=True, squeeze=False)[:, 0]
        for ax, pol in zip(axes, policies, strict=True):
            tr = per_policy[pol]
            subsets = list(tr.weights[0]) if tr.weights else []
            # Weights written at a step hold over the step that ends at t_s: draw from t = 0.
            t0 = tr.t_s[0] - (tr.t_s[1] - tr.t_s[0]) if len(tr.t_s) > 1 else 0.0
            series = [[tr.weights[0][s]] + [w[s] for w in tr.weights] for s in subsets]
            ax.stackplot([t0, *tr.t_s], series, labels=subsets, step="pre")
            bad = report[scenario][pol]["bad_fraction"]
            ax.set_title(f"{pol}  (bad fraction {_fmt(bad, '.4f')}, mean over seeds)", fontsize=9)
            ax.set_ylim(0, 100)
            ax.set_ylabel("weight")
        axes[0].legend(loc="upper right", fontsize=7, ncols=min(len(subsets), 6))
        axes[-1].set_xlabel("simulated time (s)")
        fig.suptitle(f"{scenario}: route weights over time (seed {_trace_seed(results, scenario)})")
        path = out / f"weights_{_safe(scenario)}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    written.append(_bar_chart(report, out / "bad_fraction.png"))
    return written


def _trace_seed(results: Sequence[EpisodeResult], scenario: str) -> int | str:
    for r in results:
        if r.scenario == scenario and r.trace is not None:
            return r.seed
    return "?"


def _bar_chart(report: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scenarios = list(report)
    policies = list(dict.fromkeys(p for entries in report.values() for p in entries))
    bars: dict[str, tuple[list[float], list[float], list[float], list[float]]] = {}
    width = 0.8 / max(len(policies), 1)
    for j, pol in enumerate(policies):
        xs, ys, lows, highs = [], [], [], []
        for i, sc in enumerate(scenarios):
            e = report[sc].get(pol)
            if e is None or e["bad_fraction"] is None:
                continue
            y = float(e["bad_fraction"])
            lo, hi = e["bad_fraction_ci95"]
            xs.append(i + (j - (len(policies) - 1) / 2) * width)
            ys.append(y)
            lows.append(y if lo is None else float(lo))
            highs.append(y if hi is None else float(hi))
        bars[pol] = (xs, ys, lows, highs)
    positive = [y for _, ys, _, _ in bars.values() for y in ys if y > 0]
    log = bool(positive) and max(positive) / min(positive) > 50
    fig = Figure(figsize=(max(7.0, 0.35 * len(scenarios) * max(len(policies), 1)), 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for pol, (xs, ys, lows, highs) in bars.items():
        # On a log axis an interval reaching 0 or below is drawn down to a tenth of the bar.
        lo_err = [
            min(y - lo, 0.9 * y) if log else max(y - lo, 0.0)
            for y, lo in zip(ys, lows, strict=True)
        ]
        hi_err = [max(hi - y, 0.0) for y, hi in zip(ys, highs, strict=True)]
        ax.bar(xs, ys, width, yerr=[lo_err, hi_err], capsize=2, label=pol)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(scenarios)), scenarios, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("bad-request fraction (mean over seeds, 95 % CI)")
    ax.legend(fontsize=8, ncols=min(len(policies), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path

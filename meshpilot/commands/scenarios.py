"""`meshpilot scenarios sample|show`: generated scenario sets, and a look at any scenario file.

`sample` writes the seeded random meshes of `envs.simulator.generator` as ordinary scenario files
(so `simulate`, `evaluate` and `train` take them like the suite); `show` says what a scenario
file will do before anybody spends a simulation on it: the versions and their capacities, the
load against that capacity, the SLO, the telemetry and the events in time order, optionally as
a plot of load and effective capacity over time. Effective values come from the simulator's own
`MeshSimulator.true_state`, so the picture is what the simulation runs, overlaps included.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.simulator.engine import MeshSimulator
from envs.simulator.generator import (
    FAMILIES,
    FAMILY_DESCRIPTIONS,
    MAX_SEED,
    SEED_RANGES,
    GeneratorError,
    family_of,
    sample_scenario,
    write_scenario,
)
from envs.simulator.scenario import Scenario, load_scenario
from meshpilot.commands.arg_types import output_dir, output_file, positive_int

_PLOT_POINTS = 1801
"""Samples of the timeline for `--plot` (about one per second of a 1800 s episode)."""


def _seed(text: str) -> int:
    """A seed of the generator: an integer 0..2^63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be within 0..2^63-1, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scenarios",
        help="write seeded random scenario files, or describe a scenario file",
        description=(
            "sample: write generated scenarios (one YAML file per seed, reproducible byte for "
            "byte) for training and held-out evaluation; show: describe a scenario file."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ranges = ", ".join(f"{k} {r.start}..{r.stop - 1}" for k, r in SEED_RANGES.items())

    s = actions.add_parser(
        "sample",
        help="write COUNT generated scenarios for seeds SEED..SEED+COUNT-1 into DIR",
        description=(
            "Write DIR/gen-<family>-<seed>.yaml for seeds SEED..SEED+COUNT-1 and print one line "
            f"per file. Seed ranges by purpose: {ranges}. Families: "
            + "; ".join(f"{k}: {v}" for k, v in FAMILY_DESCRIPTIONS.items())
            + "."
        ),
    )
    s.add_argument(
        "--seed", type=_seed, default=0, metavar="N", help="first seed, 0..2^63-1 (default 0)"
    )
    s.add_argument(
        "--count", type=positive_int, default=1, metavar="M", help="how many files (default 1)"
    )
    s.add_argument(
        "--out",
        required=True,
        type=output_dir,
        metavar="DIR",
        help="directory to write into (created if missing; its parent must exist)",
    )
    s.add_argument(
        "--family",
        choices=FAMILIES,
        metavar="NAME",
        help=f"one family for every file (default: drawn from each seed): {', '.join(FAMILIES)}",
    )
    s.add_argument("--json", action="store_true", help="print one JSON summary instead")
    s.set_defaults(run=run_sample)

    w = actions.add_parser(
        "show",
        help="describe a scenario: versions, load, SLO, telemetry, events (optionally a plot)",
        description=(
            "Print a scenario's versions (replicas, mean service time in ms, distribution, cv, "
            "nominal capacity in rps, initial weight), its load and utilization (load / total "
            "nominal capacity; peak over time against the effective capacity), SLO, telemetry "
            "and events in time order."
        ),
    )
    w.add_argument(
        "file", metavar="FILE", help="scenario YAML file, or the name of one in the public suite"
    )
    w.add_argument(
        "--plot",
        type=output_file,
        metavar="FILE.png",
        help="also draw load and each version's effective capacity over time, with the events",
    )
    w.add_argument("--json", action="store_true", help="print exactly one JSON object")
    w.set_defaults(run=run_show)


# ---- sample --------------------------------------------------------------------------------


def run_sample(args: argparse.Namespace) -> int:
    last = args.seed + args.count - 1
    if last > MAX_SEED:
        raise GeneratorError(f"seeds {args.seed}..{last} go past 2^63-1")
    out = Path(args.out)
    try:
        out.mkdir(exist_ok=True)
    except OSError as err:
        raise GeneratorError(f"{out}: cannot create directory ({err.strerror or err})") from err
    files = []
    for seed in range(args.seed, last + 1):
        family = args.family or family_of(seed)
        scenario = sample_scenario(seed, family)
        flag = f" --family {family}" if args.family else ""
        comment = (
            f"family {family}, seed {seed}: {FAMILY_DESCRIPTIONS[family]}\n"
            f"meshpilot scenarios sample --seed {seed} --count 1{flag} --out DIR"
        )
        path = write_scenario(scenario, out / f"{scenario.name}.yaml", comment=comment)
        total = sum(s.capacity_rps for s in scenario.subsets)
        entry = {
            "path": str(path),
            "name": scenario.name,
            "seed": seed,
            "family": family,
            "versions": len(scenario.subsets),
            "events": len(scenario.events),
            "utilization": round(scenario.load.rps / total, 4),
        }
        files.append(entry)
        if not args.json:
            print(
                f"{path}  versions {entry['versions']}  events {entry['events']}  "
                f"utilization {entry['utilization']:.2f}"
            )
    if args.json:
        summary = {
            "out": str(out),
            "first_seed": args.seed,
            "count": args.count,
            "family": args.family,
            "files": files,
        }
        print(json.dumps(summary))
    return 0


# ---- show ----------------------------------------------------------------------------------


def _timeline(scenario: Scenario, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Load (rps) and each version's effective capacity (rps, shape versions x times) at
    `times`, as the simulator applies them."""
    sim = MeshSimulator(scenario)
    load = np.array([sim.load_rps(float(t)) for t in times])
    caps = np.array([[s.capacity_rps for s in sim.true_state(float(t)).subsets] for t in times]).T
    return load, caps


def _set_text(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in values.items())


def describe(scenario: Scenario) -> dict[str, Any]:
    """Everything `show` prints, as plain data (rates in rps, times in s, latencies in ms)."""
    weights = scenario.start_weights()
    total = sum(s.capacity_rps for s in scenario.subsets)
    times = np.arange(scenario.n_steps) * scenario.step_s + scenario.step_s / 2
    load, caps = _timeline(scenario, times)
    capacity = caps.sum(axis=0)
    low = int(np.argmin(capacity))
    load_info = scenario.load.model_dump(mode="json")
    load_info.update(
        utilization=scenario.load.rps / total,
        peak_rps=float(load.max()),
        peak_utilization=float((load / capacity).max()),
    )
    events = []
    for ev in sorted(scenario.events, key=lambda e: e.at_s):
        back = None if ev.duration_s is None else ev.at_s + ev.ramp_s + ev.duration_s
        events.append(
            {
                "at_s": ev.at_s,
                "subset": ev.subset,
                "set": dict(ev.set),
                "ramp_s": ev.ramp_s,
                "duration_s": ev.duration_s,
                "reverts_at_s": back,
            }
        )
    return {
        "name": scenario.name,
        "duration_s": scenario.duration_s,
        "step_s": scenario.step_s,
        "slo_ms": scenario.slo_ms,
        "timeout_ms": scenario.timeout_ms,
        "balancer": scenario.balancer,
        "versions": [
            {
                "name": s.name,
                "replicas": s.replicas,
                "service_ms": s.service_ms,
                "service_dist": s.service_dist,
                "cv": s.cv if s.service_dist == "lognormal" else 1.0,
                "error_rate": s.error_rate,
                "capacity_factor": s.capacity_factor,
                "capacity_rps": s.capacity_rps,
                "initial_weight": weights[s.name],
            }
            for s in scenario.subsets
        ],
        "initial_weights": "given" if scenario.initial_weights is not None else "proportional",
        "warmup_s": scenario.warmup_s,
        "capacity_rps": total,
        "min_capacity_rps": float(capacity[low]),
        "min_capacity_at_s": float(times[low]),
        "load": load_info,
        "telemetry": scenario.telemetry.model_dump(mode="json"),
        "events": events,
    }


def _print_rows(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """An indented table with left-aligned columns."""
    width = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip())


def _print_table(info: dict[str, Any]) -> None:
    print(
        f"scenario   {info['name']}  ({info['duration_s']:g} s, step {info['step_s']:g} s, "
        f"balancer {info['balancer']})"
    )
    print(f"slo        {info['slo_ms']:g} ms  (timeout {info['timeout_ms']:g} ms)")
    given = info["initial_weights"] == "given"
    warmup = f", run {info['warmup_s']:g} s before t = 0 (unscored)" if info["warmup_s"] > 0 else ""
    print(
        "versions   initial weights "
        + ("as given" if given else "proportional to nominal capacity (none given)")
        + warmup
    )
    head = ("name", "replicas", "service_ms", "dist", "cv", "error_rate", "capacity_rps", "weight")
    rows = [
        (
            v["name"],
            str(v["replicas"]),
            f"{v['service_ms']:g}",
            v["service_dist"],
            f"{v['cv']:.2f}",
            f"{v['error_rate']:.4f}",
            f"{v['capacity_rps']:.1f}"
            + (f" (x{v['capacity_factor']:g})" if v["capacity_factor"] != 1 else ""),
            str(v["initial_weight"]),
        )
        for v in info["versions"]
    ]
    rows.append(("total", "", "", "", "", "", f"{info['capacity_rps']:.1f}", "100"))
    _print_rows(head, rows)
    load = info["load"]
    print(f"load       {load['rps']:g} rps, utilization {load['utilization']:.2f} of capacity")
    if load["diurnal"]:
        d = load["diurnal"]
        print(
            f"           diurnal amplitude {d['amplitude']:g}, period {d['period_s']:g} s, "
            f"phase {d['phase_s']:g} s"
        )
    for b in load["bursts"]:
        print(f"           burst x{b['factor']:g} at {b['at_s']:g} s for {b['duration_s']:g} s")
    lowest = ""
    if info["min_capacity_rps"] < info["capacity_rps"] * (1 - 1e-9):
        lowest = f" (lowest {info['min_capacity_rps']:.1f} rps at {info['min_capacity_at_s']:g} s)"
    print(
        f"           peak {load['peak_rps']:.1f} rps; peak utilization "
        f"{load['peak_utilization']:.2f} of the effective capacity{lowest}"
    )
    t = info["telemetry"]
    print(
        f"telemetry  window {t['window_s']:g} s, scrape {t['scrape_s']:g} s, "
        f"drop_prob {t['drop_prob']:g}, noise {t['noise']:g}"
    )
    if not info["events"]:
        print("events     none")
        return
    print("events     in time order")
    event_head = ("at_s", "subset", "set", "ramp_s", "duration_s", "reverts_at_s")
    event_rows = [
        (
            f"{e['at_s']:g}",
            e["subset"],
            _set_text(e["set"]),
            f"{e['ramp_s']:g}",
            "-" if e["duration_s"] is None else f"{e['duration_s']:g}",
            "never" if e["reverts_at_s"] is None else f"{e['reverts_at_s']:g}",
        )
        for e in info["events"]
    ]
    _print_rows(event_head, event_rows)


def plot_scenario(scenario: Scenario, path: Path) -> Path:
    """A PNG of the load and each version's effective capacity over time (rps vs s), with
    bursts shaded and events marked where they start (solid) and revert (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = min(_PLOT_POINTS, max(2, math.ceil(scenario.duration_s) + 1))
    times = np.linspace(0.0, scenario.duration_s, points)
    load, caps = _timeline(scenario, times)
    colors = {s.name: f"C{i % 10}" for i, s in enumerate(scenario.subsets)}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, cap in zip(scenario.subset_names, caps, strict=True):
        ax.plot(times, cap, color=colors[name], lw=1.2, label=f"{name} capacity")
    ax.plot(times, caps.sum(axis=0), color="0.4", ls="--", lw=1.2, label="total capacity")
    ax.plot(times, load, color="black", lw=2, label="load")
    for b in scenario.load.bursts:
        ax.axvspan(b.at_s, b.at_s + b.duration_s, color="0.85", zorder=0)
    top = 1.25 * max(float(load.max()), float(caps.sum(axis=0).max()))
    for ev in scenario.events:
        color = colors[ev.subset]
        ax.axvline(ev.at_s, color=color, lw=1, alpha=0.8)
        ax.text(
            ev.at_s, top, f" {ev.subset}: {_set_text(ev.set)}", rotation=90, va="top",
            ha="right", fontsize=7, color=color,
        )  # fmt: skip
        if ev.duration_s is not None:
            ax.axvline(ev.at_s + ev.ramp_s + ev.duration_s, color=color, lw=1, ls=":")
    ax.set_xlim(0, scenario.duration_s)
    ax.set_ylim(0, top)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("rps")
    ax.set_title(f"{scenario.name}: load and effective capacity")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except OSError as err:
        raise GeneratorError(f"{path}: cannot write plot ({err.strerror or err})") from err
    finally:
        plt.close(fig)
    return path


def run_show(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.file)
    info = describe(scenario)
    if args.plot:
        info["plot"] = str(plot_scenario(scenario, Path(args.plot)))
    if args.json:
        print(json.dumps(info))
    else:
        _print_table(info)
        if args.plot:
            print(f"plot       {info['plot']}")
    return 0

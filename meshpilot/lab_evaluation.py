"""`meshpilot evaluate --mesh lab`: every policy on every scenario, replayed on the live lab.

One lab per scenario (`LabSpec.from_scenario`), brought up in a temporary directory and shared
by every policy and seed in turn, in real time; the controller reads Prometheus and writes
Envoy's route file as `meshpilot serve --mesh lab` does (`envs.lab.replay` plays the
scenario's load and events). The report is `agents.evaluate.summarize`'s, plus ``mesh`` and
``lab_runs`` per entry.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.evaluate import EpisodeResult, raw_setup, summarize
from agents.rollout import EpisodeTrace, Gate, Setup
from controller.steps import with_hints
from envs.simulator.scenario import Scenario
from meshcore.errors import ConfigError
from meshcore.model import Observation, RouteRef, Weights
from meshcore.ports import Actuator, Policy

if TYPE_CHECKING:  # deferred at run time: the lab and the simulator load only when used
    from envs.lab.lab import LabState
    from envs.lab.replay import LabRun

__all__ = ["LAB_SETTLE_S", "decider", "lab_notes", "run_lab"]

LAB_SETTLE_S = 2.0
"""Pause (s) beyond one rate window between two runs on the same lab, so each run starts with
no traffic of the previous one in its Prometheus window (as the first run on a fresh lab)."""


def run_lab(
    scenarios: Sequence[Scenario],
    policies: Sequence[str],
    seeds: Sequence[int],
    *,
    setup: Setup = raw_setup,
    duration_s: float | None = None,
    window_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[EpisodeResult]]:
    """Every (scenario, policy, seed) on the lab: the `summarize` report (plus ``mesh`` and
    ``lab_runs`` per entry) and the episode results (traces of the first seed, for plots).

    Each scenario gets its own lab in a temporary directory, brought up once, shared by its
    runs (`replay_scenario` puts weights and backends back to the start before each run, and
    each run waits one rate window first so Prometheus holds none of the previous run's
    traffic), and taken down afterwards. `duration_s`: wall-clock seconds per run (default the
    scenario's). Policies are built (and bad names refused) before any lab starts.
    """
    from envs.lab.lab import lab_down, lab_up
    from envs.lab.replay import refuse_warmup
    from envs.lab.spec import LabSpec

    if not policies:
        raise ConfigError("no policies given")
    for sc in scenarios:
        refuse_warmup(sc)
    for name in policies:
        setup(name)
    results: list[EpisodeResult] = []
    lab_runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    reported: list[Scenario] = []
    for sc in scenarios:
        run_s = sc.duration_s if duration_s is None else duration_s
        if run_s < sc.step_s:
            raise ConfigError(
                f"--lab-duration {run_s:g}: shorter than {sc.name}'s control step ({sc.step_s:g} s)"
            )
        reported.append(sc.with_changes(duration_s=run_s))
        with tempfile.TemporaryDirectory(prefix="meshpilot-evaluate-lab-") as tmp:
            state_dir = Path(tmp) / "lab"
            if progress is not None:
                progress(
                    f"{sc.name}: bringing a lab up ({len(policies)} policies x "
                    f"{len(seeds)} seeds x {run_s:g} s, real time)"
                )
            lab, _ = lab_up(LabSpec.from_scenario(sc), state_dir, seed=seeds[0])
            try:
                first = True
                for name in policies:
                    for seed in seeds:
                        if not first:
                            time.sleep(window_s + LAB_SETTLE_S)
                        first = False
                        if progress is not None:
                            progress(f"{sc.name}: {name} seed {seed} ...")
                        run, as_served = _lab_episode(
                            lab, sc, name, seed, setup, run_s, window_s, progress
                        )
                        results.append(
                            _result(sc.name, name, seed, run, as_served, seed == seeds[0])
                        )
                        lab_runs.setdefault((sc.name, name), []).append(
                            {
                                "seed": seed,
                                **{k: v for k, v in run.as_dict().items() if k != "metrics"},
                            }
                        )
                        if progress is not None:
                            m = run.metrics()
                            progress(
                                f"{sc.name}: {name} seed {seed}: bad fraction "
                                f"{m['bad_fraction']:.4f}, p99 {m['p99_ms']:.1f} ms, "
                                f"5xx {m['error_rate']:.4f}, {m['requests']} requests"
                            )
            finally:
                lab_down(state_dir)
    report = summarize(results, reported, policies)
    for sc_name, entries in report.items():
        for pol, entry in entries.items():
            entry["mesh"] = "lab"
            entry["lab_runs"] = lab_runs.get((sc_name, pol), [])
    return report, results


def _lab_episode(
    lab: LabState,
    scenario: Scenario,
    name: str,
    seed: int,
    setup: Setup,
    run_s: float,
    window_s: float,
    progress: Callable[[str], None] | None,
) -> tuple[LabRun, bool]:
    """One policy on the running lab, wired as `meshpilot serve --mesh lab` wires it."""
    from envs.lab.replay import replay_scenario
    from meshpilot.lab_ports import lab_ports

    policy, gate = setup(name)
    policy.reset()
    route = lab.spec.routes()[0]
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        ports = lab_ports(lab, stack, window_s=window_s, slo_ms=scenario.slo_ms)
        decide = decider(
            policy, gate, ports.actuator, route, scenario, failures, ports.capacity_hints[route]
        )
        run = replay_scenario(
            lab,
            scenario,
            decide,
            observer=ports.observer,
            actuator=ports.actuator,
            duration_s=run_s,
            seed=seed,
            progress=progress,
        )
    if failures:
        run.notes.append(f"policy {name} failed {len(failures)} times (held): {failures[0]}")
    return run, gate is not None


def lab_notes(report: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One line per distinct note of the lab runs: what the lab could not replay exactly."""
    lines: list[str] = []
    for sc_name, entries in report.items():
        for pol, entry in entries.items():
            for run in entry.get("lab_runs", []):
                for note in run.get("notes", []):
                    line = f"note ({sc_name}, {pol}, seed {run['seed']}): {note}"
                    if line not in lines:
                        lines.append(line)
    return lines


def decider(
    policy: Policy,
    gate: Gate | None,
    actuator: Actuator,
    route: RouteRef,
    scenario: Scenario,
    failures: list[str],
    capacity_hints: Mapping[str, float] | None = None,
) -> Callable[[Observation | None, float], Weights | None]:
    """The replay's `decide`: the policy on the observation with the lab file's capacity hints
    and SLO filled in (as the loop fills them), then the gate (as served) on the wall clock.

    A policy that raises holds the route for that step (as `serve` does), and the failure is
    kept in `failures`. An oracle gets a simulator of the scenario whose clock follows the
    replay, so it reads the scenario's true parameters at each step (not the lab's queues).
    """
    truth = _bind_truth(policy, scenario, route)

    def decide(raw: Observation | None, t_s: float) -> Weights | None:
        obs = with_hints(raw, capacity_hints, slo_ms=scenario.slo_ms)  # as the loop does
        if truth is not None:
            truth.t_s = t_s
        proposed: Weights | None = None
        if obs is not None:
            try:
                proposed = policy.decide(obs)
            except Exception as err:
                failures.append(f"{type(err).__name__}: {err}")
        if gate is None:
            return proposed
        try:
            current = actuator.current(route)
        except Exception as err:  # the route file unreadable this step: hold, as serve does
            failures.append(f"{type(err).__name__}: {err}")
            return None
        verdict = gate.review(
            route=route,
            current=current,
            proposed=proposed,
            observation=obs,
            now_s=time.time(),
        )
        return verdict.weights if verdict.write else None

    return decide


def _bind_truth(policy: Policy, scenario: Scenario, route: RouteRef) -> Any:
    bind = getattr(policy, "bind_simulator", None)
    if not callable(bind):
        return None
    from envs.simulator.engine import MeshSimulator

    truth = MeshSimulator(scenario, route=route)
    bind(truth)
    return truth


def _result(
    scenario: str, policy: str, seed: int, run: LabRun, as_served: bool, traced: bool
) -> EpisodeResult:
    from envs.simulator.engine import EpisodeSummary

    m = run.metrics()
    summary = EpisodeSummary(
        bad_fraction=float(m["bad_fraction"]),
        p99_ms=float(m["p99_ms"]),
        mean_ms=float(m["mean_ms"]),
        error_rate=float(m["error_rate"]),
        churn=float(m["churn"]),
        requests=int(m["requests"]),
    )
    trace = None
    if traced and run.steps:
        trace = EpisodeTrace(t_s=[s.t_s for s in run.steps], weights=[s.weights for s in run.steps])
    return EpisodeResult(scenario, policy, seed, summary, trace, as_served)

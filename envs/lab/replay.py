"""Replay a scenario file on the running lab: its load, its events at their times, a controller.

Why: `meshpilot evaluate` scores policies in the simulator; the lab is where those scores meet
real Envoy, real sockets and real Prometheus. Replaying the *same* scenario file here — the
same Poisson load (mean rate, diurnal sine, bursts), the same events interpreted the way the
simulator interprets them, the same control interval — makes a lab run comparable to a
simulated one, so `bench/fidelity.py` can say where the simulator is wrong.

How events are interpreted (as `envs.simulator.engine.MeshSimulator.true_state` does): at
``at_s`` a subset's fields move linearly to the ``set`` values over ``ramp_s`` seconds; with
``duration_s`` they move back to the values they had before, over the same ramp, starting at
``at_s + ramp_s + duration_s``. Each such move is one `FaultAction`, sent to the backends'
control endpoint (`envs.lab.traffic.apply_fault`), which ramps linearly itself. The lab's
replicas are fixed while Envoy runs, so a ``replicas`` change becomes a ``capacity_factor``
change with the same total capacity (``factor * replicas / nominal replicas``): the same
throughput, but fewer queues that are each faster, and a linear ramp where the simulator
changes whole replicas; each such event carries a note.

The controller side comes in as ports (`meshcore.ports.Observer`, `meshcore.ports.Actuator`):
`envs` may not import the controller. Every ``step_s`` the replay observes the route, fills in
the capacity hints and the SLO as `meshpilot serve` does, asks `decide`, and writes what it
returns (None: write nothing this step). Scores are computed client-side from every request
the load generator sent, with the simulator's own histogram quantile, so lab and simulator
report p99 by the same estimator.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from envs.lab import backend_client
from envs.lab.lab import LabState
from envs.lab.load_process import LoadGenerator
from envs.lab.load_result import LoadResult
from envs.lab.traffic import FAULT_FIELDS, apply_fault
from envs.simulator.engine import subset_values_at
from envs.simulator.scenario import Scenario, ScenarioError
from envs.simulator.telemetry import EDGES_MS, N_BINS, quantile_ms
from meshcore.model import Observation, RouteRef, Weights
from meshcore.ports import Actuator, Observer

__all__ = [
    "EventSchedule",
    "FaultAction",
    "LabRun",
    "StepRecord",
    "client_metrics",
    "event_schedule",
    "lab_values",
    "play_events",
    "refuse_warmup",
    "replay_scenario",
    "restore_nominal",
]

Decide = Callable[[Observation | None, float], Weights | None]
"""(this step's observation or None when the observer failed, seconds since the start) ->
weights to write, or None to write nothing this step."""

LOAD_TIMEOUT_MARGIN_S = 2.0
"""The client waits this much longer than the scenario's timeout (s), so Envoy's 504 at
``timeout_ms``, not the client, decides that a request timed out."""


# ---- the event schedule --------------------------------------------------------------------


@dataclass(frozen=True)
class FaultAction:
    """One move of one subset's backend parameters: reach `changes` over `ramp_s` seconds,
    starting `at_s` seconds into the run. why: which event, for logs and notes."""

    at_s: float
    subset: str
    changes: Mapping[str, float]
    ramp_s: float
    why: str


@dataclass(frozen=True)
class EventSchedule:
    """The fault actions of a scenario in time order, and what the lab could not replay
    exactly (notes for humans)."""

    actions: tuple[FaultAction, ...]
    notes: tuple[str, ...] = ()


def lab_values(scenario: Scenario, subset: str, t_s: float) -> dict[str, float]:
    """What the lab's backends of `subset` should run at `t_s` (s) to match the simulator:
    error_rate, service_ms, cv and a capacity_factor that folds in the replica count
    (``capacity_factor * replicas / nominal replicas``)."""
    sub = next(s for s in scenario.subsets if s.name == subset)
    values = subset_values_at(scenario, subset, t_s)
    replicas = max(1, round(values["replicas"]))
    return {
        "error_rate": min(max(values["error_rate"], 0.0), 1.0),
        "service_ms": values["service_ms"],
        "cv": values["cv"],
        "capacity_factor": values["capacity_factor"] * replicas / sub.replicas,
    }


def _lab_fields(keys: Sequence[str]) -> list[str]:
    """Scenario `set` keys -> the backend fields that carry them (replicas -> capacity)."""
    out = ["capacity_factor" if k == "replicas" else k for k in keys]
    return [f for f in FAULT_FIELDS if f in out]


def event_schedule(scenario: Scenario, *, duration_s: float | None = None) -> EventSchedule:
    """Every event of `scenario` as `FaultAction`s (start, and restore when it has a
    duration), in time order; actions at or after `duration_s` (default: the scenario's) are
    left out with a note."""
    end_s = scenario.duration_s if duration_s is None else duration_s
    actions: list[FaultAction] = []
    notes: list[str] = []
    for i, ev in enumerate(scenario.events):
        fields = _lab_fields(list(ev.set))
        if "replicas" in ev.set:
            notes.append(
                f"event {i} ({ev.subset} replicas -> {int(ev.set['replicas'])}): the lab's "
                "replicas are fixed, replayed as a capacity_factor change of the same total "
                "capacity"
            )
        moves = [(ev.at_s, f"event {i}")]
        if ev.duration_s is not None:
            moves.append((ev.at_s + ev.ramp_s + ev.duration_s, f"event {i} restored"))
        for at_s, why in moves:
            if at_s >= end_s:
                notes.append(f"{why} at {at_s:g} s skipped: the run ends at {end_s:g} s")
                continue
            reached = lab_values(scenario, ev.subset, at_s + ev.ramp_s)
            changes = {f: reached[f] for f in fields}
            actions.append(FaultAction(at_s, ev.subset, changes, ev.ramp_s, why))
    actions.sort(key=lambda a: a.at_s)
    return EventSchedule(tuple(actions), tuple(notes))


def play_events(
    actions: Sequence[FaultAction],
    apply: Callable[[FaultAction], None],
    *,
    now: Callable[[], float],
    wait: Callable[[float], bool],
    start_s: float | None = None,
) -> list[tuple[float, FaultAction]]:
    """Call `apply` for each action when `now() - start_s` reaches its ``at_s``.

    now: a monotonic clock (s); wait(seconds): block that long, True when the run is being
    stopped (then the remaining actions are not applied); start_s: the run's time zero on
    `now`'s clock (default: `now()` at the call). Returns (seconds since start when applied,
    action) for every action applied, in order.
    """
    t0 = now() if start_s is None else start_s
    done: list[tuple[float, FaultAction]] = []
    for action in actions:
        delay = action.at_s - (now() - t0)
        if delay > 0 and wait(delay):
            break
        apply(action)
        done.append((now() - t0, action))
    return done


def restore_nominal(lab: LabState, scenario: Scenario, service: str) -> None:
    """Put every subset of `service` back to the scenario's nominal values at once."""
    for sub in scenario.subsets:
        apply_fault(lab, service, sub.name, lab_values_nominal(scenario, sub.name))


def lab_values_nominal(scenario: Scenario, subset: str) -> dict[str, float]:
    """The backend values of `subset` before any event."""
    sub = next(s for s in scenario.subsets if s.name == subset)
    return {f: float(getattr(sub, f)) for f in FAULT_FIELDS}


# ---- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """One control step: t_s (s since the start, when the decision was taken); weights: the
    split in force after it; proposed: what `decide` returned (None: nothing); observed:
    whether the observer answered; error: why the step could not observe or write."""

    t_s: float
    weights: dict[str, int]
    proposed: dict[str, int] | None
    observed: bool
    error: str = ""


def _histogram(latency_ms: np.ndarray) -> np.ndarray:
    """Latencies (ms) -> counts over the simulator's buckets (upper bounds inclusive)."""
    idx = np.searchsorted(EDGES_MS, latency_ms, side="left")
    return np.bincount(idx, minlength=N_BINS)[:N_BINS]


def client_metrics(
    load: LoadResult, slo_ms: float, start_weights: Mapping[str, int], steps: Sequence[StepRecord]
) -> dict[str, float | int]:
    """The `meshpilot evaluate` metrics of one run, from what the client saw.

    bad_fraction: requests that failed (5xx, or no answer) or took longer than `slo_ms`,
    over all requests sent; p99_ms: the simulator's histogram quantile over every request
    with a measured latency (ms); mean_ms: their mean (ms); error_rate: the failed share;
    churn: weight points moved per control step (half the L1 change, from `start_weights`);
    requests: how many were sent. NaN where nothing was sent.
    """
    lat = load.latency_ms[np.isfinite(load.latency_ms)]
    prev = dict(start_weights)
    moved = 0.0
    for step in steps:
        moved += sum(abs(step.weights.get(k, 0) - prev.get(k, 0)) for k in prev) / 2.0
        prev = step.weights
    return {
        "bad_fraction": load.bad_fraction(slo_ms),
        "p99_ms": quantile_ms(_histogram(lat), 0.99) if lat.size else math.nan,
        "mean_ms": float(lat.mean()) if lat.size else math.nan,
        "error_rate": load.error_fraction(),
        "churn": moved / max(len(steps), 1),
        "requests": load.sent,
    }


@dataclass
class LabRun:
    """One scenario replayed on the lab: what the client saw, the weights per step, the
    events applied (s since the start, action) and notes."""

    scenario: str
    duration_s: float
    slo_ms: float
    start_weights: dict[str, int]
    load: LoadResult
    steps: list[StepRecord] = field(default_factory=list)
    applied: list[tuple[float, FaultAction]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float | int]:
        """`client_metrics` of the run."""
        return client_metrics(self.load, self.slo_ms, self.start_weights, self.steps)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able record (metrics, weights per step, events applied, notes)."""
        m = self.metrics()
        return {
            "metrics": {k: (v if math.isfinite(v) else None) for k, v in m.items()},
            "steps": [
                {"t_s": s.t_s, "weights": s.weights, "observed": s.observed, "error": s.error}
                for s in self.steps
            ],
            "events": [
                {"t_s": t, "at_s": a.at_s, "subset": a.subset, "set": dict(a.changes)}
                for t, a in self.applied
            ],
            "notes": list(self.notes),
        }


# ---- the replay ----------------------------------------------------------------------------


def _route_of(lab: LabState) -> tuple[RouteRef, str]:
    if len(lab.spec.services) != 1:
        raise ValueError(
            f"a scenario replays on a one-service lab (LabSpec.from_scenario), "
            f"this one has {len(lab.spec.services)}"
        )
    svc = lab.spec.services[0]
    return svc.route(lab.spec.namespace), svc.name


def refuse_warmup(scenario: Scenario) -> None:
    """Raise `ScenarioError` for a scenario with a warmup (`Scenario.warmup_s`): the lab starts
    on idle backends and does not replay one, and silently skipping it would score a different
    run than the simulator's."""
    if scenario.warmup_s > 0:
        raise ScenarioError(
            f"scenario {scenario.name!r} has warmup_s {scenario.warmup_s:g}: the lab starts on "
            "idle backends and does not replay a warmup; set warmup_s: 0 to run it on the lab"
        )


def _check_lab(lab: LabState, scenario: Scenario) -> None:
    refuse_warmup(scenario)
    svc = lab.spec.services[0]
    if svc.subset_names != scenario.subset_names:
        raise ValueError(
            f"the lab runs {list(svc.subset_names)}, the scenario {scenario.name!r} has "
            f"{list(scenario.subset_names)}: bring the lab up with LabSpec.from_scenario"
        )


def _with_hints(obs: Observation, scenario: Scenario) -> Observation:
    """Capacity hints (nominal rps) and the SLO, as `meshpilot serve` fills them in."""
    if math.isnan(obs.slo_ms):
        obs = replace(obs, slo_ms=scenario.slo_ms)
    if not obs.capacity_hint_rps:
        caps = {s.name: s.capacity_rps for s in scenario.subsets}
        if all(s in caps for s in obs.subsets):
            obs = replace(obs, capacity_hint_rps=tuple(caps[s] for s in obs.subsets))
    return obs


def replay_scenario(
    lab: LabState,
    scenario: Scenario,
    decide: Decide | None,
    *,
    observer: Observer | None = None,
    actuator: Actuator | None = None,
    duration_s: float | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> LabRun:
    """Run `scenario` on `lab` (up with ``LabSpec.from_scenario(scenario)``) in real time.

    The route is first set to the scenario's start weights and the backends to its nominal
    values, their generators reseeded with `seed` (with the load's arrival times, a run's
    randomness is the seed's: two policies on the same seed meet the same service times and
    errors, request by request, whatever ran before on the lab). Then the load runs for
    `duration_s` (default the scenario's; s) while a thread applies the event schedule and
    this thread takes a control step at 0, ``step_s``, ``2 step_s``, ... (as the simulator
    decides before each interval): observe through `observer`, `decide`, write through
    `actuator`. Without `decide` no step is taken (a static split: `observer` and `actuator`
    may then be None, and the start weights are written through `actuator` only when one is
    given). Afterwards the backends are back at their nominal values, so the next run on the
    same lab starts clean.
    progress: called with one line per control step (for a CLI).
    """
    route, service = _route_of(lab)
    _check_lab(lab, scenario)
    if decide is not None and (observer is None or actuator is None):
        raise ValueError("a controlled replay needs an observer and an actuator")
    run_s = scenario.duration_s if duration_s is None else float(duration_s)
    if not run_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    schedule = event_schedule(scenario, duration_s=run_s)
    start = Weights.from_dict(scenario.start_weights())
    restore_nominal(lab, scenario, service)
    backend_client.reseed(lab.control_url, seed)
    if actuator is not None:
        actuator.apply(route, start)
    notes = list(schedule.notes)
    if run_s < scenario.duration_s:
        notes.append(f"shortened to {run_s:g} s of the scenario's {scenario.duration_s:g} s")

    gen = LoadGenerator(
        f"127.0.0.1:{lab.listener_port}",
        [(service, scenario.load)],
        run_s,
        seed=seed,
        timeout_s=scenario.timeout_ms / 1000.0 + LOAD_TIMEOUT_MARGIN_S,
    )
    stop = threading.Event()
    applied: list[tuple[float, FaultAction]] = []
    failures: list[BaseException] = []

    def apply(action: FaultAction) -> None:
        apply_fault(lab, service, action.subset, action.changes, ramp_s=action.ramp_s)

    def events() -> None:
        try:
            applied.extend(
                play_events(schedule.actions, apply, now=time.monotonic, wait=stop.wait, start_s=t0)
            )
        except BaseException as err:  # re-raised in the caller's thread
            failures.append(err)

    steps: list[StepRecord] = []
    gen.start()
    t0 = time.monotonic()
    player = threading.Thread(target=events, name="meshpilot-replay-events", daemon=True)
    player.start()
    in_flight: BaseException | None = None
    try:
        k = 0
        while decide is not None and k * scenario.step_s < run_s:
            if stop.wait(max(k * scenario.step_s - (time.monotonic() - t0), 0.0)):
                break
            if failures:
                raise failures[0]
            assert observer is not None and actuator is not None
            last = Weights.from_dict(steps[-1].weights) if steps else start
            steps.append(control_step(route, scenario, decide, observer, actuator, t0, last))
            if progress is not None:
                s = steps[-1]
                weights = " ".join(f"{n}={w}" for n, w in s.weights.items())
                tail = f"  ({s.error})" if s.error else ""
                progress(f"{scenario.name} t={s.t_s:6.1f}s {weights}{tail}")
            k += 1
        remaining = run_s - (time.monotonic() - t0)
        if remaining > 0:
            stop.wait(remaining)
    except BaseException as err:
        in_flight = err
        raise
    finally:
        stop.set()
        result = gen.stop()
        player.join()
        try:
            restore_nominal(lab, scenario, service)
        except Exception:
            if in_flight is None:
                raise
    if failures:
        raise failures[0]
    return LabRun(
        scenario=scenario.name,
        duration_s=run_s,
        slo_ms=scenario.slo_ms,
        start_weights=start.as_dict(),
        load=result,
        steps=steps,
        applied=applied,
        notes=notes,
    )


def control_step(
    route: RouteRef,
    scenario: Scenario,
    decide: Decide,
    observer: Observer,
    actuator: Actuator,
    t0: float,
    last: Weights,
) -> StepRecord:
    """Observe, decide, write: one step. A failing observer gives `decide` None; a failing
    write leaves `last` (the split of the step before) in force and says why."""
    t_s = time.monotonic() - t0
    error = ""
    obs: Observation | None
    try:
        obs = _with_hints(observer.observe([route])[route], scenario)
    except Exception as err:
        obs, error = None, f"observe: {type(err).__name__}: {err}"
    proposed = decide(obs, t_s)
    try:
        if proposed is not None:
            in_force = actuator.apply(route, proposed)
        else:
            in_force = actuator.current(route)
    except Exception as err:
        error = f"write: {type(err).__name__}: {err}"
        in_force = _read_back(actuator, route, last)
    return StepRecord(
        t_s=t_s,
        weights=in_force.as_dict(),
        proposed=None if proposed is None else proposed.as_dict(),
        observed=obs is not None,
        error=error,
    )


def _read_back(actuator: Actuator, route: RouteRef, last: Weights) -> Weights:
    """The split in force after a failed write: a write can land and only its confirmation
    fail, so the route is read back; `last` when that read fails too."""
    try:
        return actuator.current(route)
    except Exception:
        return last

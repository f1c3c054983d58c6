"""`MeshSimulator`: one weighted route, simulated request by request, step by step.

It owns the ground truth (every request's fate, for scoring) and reports, per step, what a
Prometheus scraping Envoy would report over its rate window (for the controller). Traffic
randomness and telemetry randomness use separate generators seeded from one seed, so the
arrival trace of a seed is the same whatever weights a policy picks: every policy is scored
on the same requests.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from envs.simulator import kernel
from envs.simulator.scenario import Scenario
from envs.simulator.telemetry import EDGES_S, N_BINS, istio_bucket_counts, quantile_ms
from meshcore.model import Observation, RouteRef, SubsetStats, Weights

QUEUE_LIMIT = 1024
"""Requests waiting or in service per replica before Envoy's circuit breaker answers 503
(Envoy's default max_pending_requests/max_requests is 1024 per cluster)."""

DEFAULT_ROUTE = RouteRef("lirmm-services", "sim", "default", "sim.lirmm-services.svc.cluster.local")


@dataclass(frozen=True)
class SubsetTruth:
    """The true state of one subset at one instant (what the oracle may know).

    mu_rps: service rate of one replica (req/s) after the capacity factor.
    """

    name: str
    replicas: int
    service_ms: float
    service_dist: str
    cv: float
    error_rate: float
    capacity_factor: float

    @property
    def mu_rps(self) -> float:
        return 1000.0 / self.service_ms * self.capacity_factor

    @property
    def capacity_rps(self) -> float:
        return self.replicas * self.mu_rps


@dataclass(frozen=True)
class TrueState:
    """Ground truth for the coming step: arrival rate (rps) and every subset's parameters."""

    t_s: float
    load_rps: float
    slo_ms: float
    timeout_ms: float
    balancer: str
    subsets: tuple[SubsetTruth, ...]


@dataclass(frozen=True)
class StepCounts:
    """Ground truth of one step per subset (arrays ordered like the scenario's subsets)."""

    t_s: float
    count: np.ndarray
    errors: np.ndarray
    slow: np.ndarray
    bad: np.ndarray
    lat_sum_ms: np.ndarray
    hist: np.ndarray

    @property
    def total(self) -> int:
        return int(self.count.sum())

    def istio_buckets(self, subset_index: int) -> np.ndarray:
        return istio_bucket_counts(self.hist[subset_index])


@dataclass(frozen=True)
class EpisodeSummary:
    """Scores of a run: bad_fraction (errored or slower than the SLO), request-weighted p99 and
    mean latency (ms), 5xx fraction, churn (mean traffic moved per control step, in weight
    points: half the L1 change), and requests served."""

    bad_fraction: float
    p99_ms: float
    mean_ms: float
    error_rate: float
    churn: float
    requests: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "bad_fraction": self.bad_fraction,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "error_rate": self.error_rate,
            "churn": self.churn,
            "requests": self.requests,
        }


def _value_at(base: float, target: float, start: float, ramp: float, t: float) -> float:
    if t < start:
        return base
    if ramp <= 0 or t >= start + ramp:
        return target
    return base + (target - base) * (t - start) / ramp


def _change_times(scenario: Scenario) -> tuple[float, ...]:
    """Every time (s) where the load or a parameter jumps or a ramp starts or ends."""
    times: set[float] = set()
    for b in scenario.load.bursts:
        times.update((b.at_s, b.at_s + b.duration_s))
    for ev in scenario.events:
        times.update((ev.at_s, ev.at_s + ev.ramp_s))
        if ev.duration_s is not None:
            back = ev.at_s + ev.ramp_s + ev.duration_s
            times.update((back, back + ev.ramp_s))
    return tuple(sorted(times))


SUBSET_FIELDS = ("replicas", "service_ms", "cv", "error_rate", "capacity_factor")
"""A version's parameters that events may change."""


def subset_values_at(scenario: Scenario, subset: str, t_s: float) -> dict[str, float]:
    """`subset`'s `SUBSET_FIELDS` at time `t_s` (s): its file values with every event applied
    (linear ramps, and back over the same ramp after ``duration_s``), unclamped and unrounded.
    The one reading of events, for the simulator and for the lab's replay."""
    sub = next(s for s in scenario.subsets if s.name == subset)
    values = {f: float(getattr(sub, f)) for f in SUBSET_FIELDS}
    for ev in scenario.events:
        if ev.subset != subset:
            continue
        for field, target in ev.set.items():
            base = values[field]
            v = _value_at(base, target, ev.at_s, ev.ramp_s, t_s)
            if ev.duration_s is not None:
                back = ev.at_s + ev.ramp_s + ev.duration_s
                v = _value_at(v, base, back, ev.ramp_s, t_s)
            values[field] = v
    return values


class MeshSimulator:
    """Per-request simulator of one route; `step(weights)` advances `scenario.step_s` seconds."""

    def __init__(self, scenario: Scenario, *, seed: int = 0, route: RouteRef = DEFAULT_ROUTE):
        self.scenario = scenario
        self.route = route
        self._names = scenario.subset_names
        self._max_reps = np.array(
            [
                max(
                    [sub.replicas]
                    + [
                        int(e.set["replicas"])
                        for e in scenario.events
                        if e.subset == sub.name and "replicas" in e.set
                    ]
                )
                for sub in scenario.subsets
            ],
            dtype=np.int64,
        )
        self._rep_offset = np.concatenate([[0], np.cumsum(self._max_reps)[:-1]]).astype(np.int64)
        self._window_steps = max(1, math.ceil(scenario.telemetry.window_s / scenario.step_s))
        self._change_times = _change_times(scenario)
        self.reset(seed)

    # ---- state -------------------------------------------------------------------------

    def reset(self, seed: int) -> None:
        """Start over at t=0 with fresh queues and generators derived from `seed`."""
        traffic_seq, telemetry_seq = np.random.SeedSequence(seed).spawn(2)
        self._rng = np.random.Generator(np.random.PCG64(traffic_seq))
        self._tel_rng = np.random.Generator(np.random.PCG64(telemetry_seq))
        n_rep = int(self._max_reps.sum())
        self._free_at = np.zeros(n_rep)
        self._deps = np.zeros((n_rep, QUEUE_LIMIT))
        self._head = np.zeros(n_rep, dtype=np.int64)
        self._tail = np.zeros(n_rep, dtype=np.int64)
        self.t_s = 0.0
        self.step_index = 0
        self._weights = Weights.from_dict(self.scenario.start_weights())
        self.pending = self._weights
        """Weights an actuator applied, used by the next `step` through `SimulatedMesh`."""
        self._window: deque[StepCounts] = deque(maxlen=self._window_steps)
        self.last_step: StepCounts | None = None
        self._forget_scores()
        self._warm_up()

    def _forget_scores(self) -> None:
        """Zero what `summary` reports: the episode's counts start here."""
        n_sub = len(self._names)
        self._ep_count = np.zeros(n_sub, dtype=np.int64)
        self._ep_errors = np.zeros(n_sub, dtype=np.int64)
        self._ep_bad = np.zeros(n_sub, dtype=np.int64)
        self._ep_lat_ms = 0.0
        self._ep_hist = np.zeros(N_BINS, dtype=np.int64)
        self._ep_moved = 0.0
        self._ep_steps = 0

    def _warm_up(self) -> None:
        """Run `scenario.warmup_s` at the initial weights, ending at t = 0, then forget the
        scores but keep the queues and the telemetry window (`Scenario.warmup_s`)."""
        n = self.scenario.n_warmup_steps
        if n == 0:
            return
        self.t_s = -n * self.scenario.step_s
        self._free_at[:] = self.t_s
        for _ in range(n):
            self.step(self._weights)
        self.t_s = 0.0
        self.step_index = 0
        self._forget_scores()

    @property
    def weights(self) -> Weights:
        return self._weights

    @property
    def done(self) -> bool:
        return self.step_index >= self.scenario.n_steps

    @property
    def subsets(self) -> tuple[str, ...]:
        return self._names

    # ---- ground truth ------------------------------------------------------------------
    def load_rps(self, t_s: float) -> float:
        """Mean arrival rate at time `t_s` (rps) with diurnal and burst modulation."""
        load = self.scenario.load
        rate = load.rps
        if load.diurnal is not None:
            d = load.diurnal
            rate *= 1.0 + d.amplitude * math.sin(2 * math.pi * (t_s + d.phase_s) / d.period_s)
        for b in load.bursts:
            if b.at_s <= t_s < b.at_s + b.duration_s:
                rate *= b.factor
        return rate

    def true_state(self, t_s: float | None = None) -> TrueState:
        """True parameters at `t_s` (default: the middle of the coming step)."""
        t = self.t_s + self.scenario.step_s / 2 if t_s is None else t_s
        subsets = []
        for sub in self.scenario.subsets:
            values = subset_values_at(self.scenario, sub.name, t)
            subsets.append(
                SubsetTruth(
                    name=sub.name,
                    replicas=max(1, round(values["replicas"])),
                    service_ms=values["service_ms"],
                    service_dist=sub.service_dist,
                    cv=values["cv"],
                    error_rate=min(max(values["error_rate"], 0.0), 1.0),
                    capacity_factor=values["capacity_factor"],
                )
            )
        sc = self.scenario
        return TrueState(
            t_s=t,
            load_rps=self.load_rps(t),
            slo_ms=sc.slo_ms,
            timeout_ms=sc.timeout_ms,
            balancer=sc.balancer,
            subsets=tuple(subsets),
        )

    def replica_backlog_s(self, subset_index: int) -> np.ndarray:
        """Seconds each replica slot of one subset stays busy with work already accepted (0
        when idle): the queue a controller that saw every served interval could know of."""
        start = int(self._rep_offset[subset_index])
        stop = start + int(self._max_reps[subset_index])
        return np.maximum(self._free_at[start:stop] - self.t_s, 0.0)

    def nominal_capacity_rps(self) -> tuple[float, ...]:
        """Capacity per subset as deployed (before any event), in rps."""
        return tuple(s.capacity_rps for s in self.scenario.subsets)

    # ---- stepping ----------------------------------------------------------------------
    def step(self, weights: Weights) -> StepCounts:
        """Apply `weights`, simulate one control interval, and return its ground truth."""
        if set(weights.subsets) != set(self._names):
            raise ValueError(
                f"weights name {sorted(weights.subsets)} but the route has {sorted(self._names)}"
            )
        sc = self.scenario
        moved = self._weights.l1_distance(weights) / 2.0
        self._weights = weights
        dt = sc.step_s
        t0 = self.t_s
        n_sub = len(self._names)
        shares = np.array([weights[name] for name in self._names], dtype=np.float64) / 100.0
        cum = np.where(shares > 0, np.cumsum(shares), -1.0)
        cum[int(np.flatnonzero(shares > 0)[-1])] = 2.0
        count = np.zeros(n_sub, dtype=np.int64)
        errors = np.zeros(n_sub, dtype=np.int64)
        slow = np.zeros(n_sub, dtype=np.int64)
        bad = np.zeros(n_sub, dtype=np.int64)
        lat_sum = np.zeros(n_sub)
        hist = np.zeros((n_sub, N_BINS), dtype=np.int64)
        edges = [t0, *self._changes_within(t0, t0 + dt), t0 + dt]
        for a, b in itertools.pairwise(edges):
            self._serve(a, b, cum, count, errors, slow, bad, lat_sum, hist)
        self.t_s = t0 + dt
        self.step_index += 1
        counts = StepCounts(self.t_s, count, errors, slow, bad, lat_sum * 1000.0, hist)
        self._window.append(counts)
        self.last_step = counts
        self._ep_count += count
        self._ep_errors += errors
        self._ep_bad += bad
        self._ep_lat_ms += float(lat_sum.sum()) * 1000.0
        self._ep_hist += hist.sum(axis=0)
        self._ep_moved += moved
        self._ep_steps += 1
        return counts

    def _changes_within(self, start_s: float, end_s: float) -> list[float]:
        """Times strictly inside (start_s, end_s) where the load or a parameter jumps or a ramp
        starts or ends (s): a step is served in pieces split there, each at its own middle's
        values, so an event or a burst that starts mid-step counts from its start. A step
        without one is served whole at its middle."""
        eps = 1e-9 * max(1.0, abs(end_s))
        return [t for t in self._change_times if start_s + eps < t < end_s - eps]

    def _serve(
        self,
        start_s: float,
        end_s: float,
        cum: np.ndarray,
        count: np.ndarray,
        errors: np.ndarray,
        slow: np.ndarray,
        bad: np.ndarray,
        lat_sum: np.ndarray,
        hist: np.ndarray,
    ) -> None:
        """Draw the arrivals of [start_s, end_s) and serve them at the middle's true values,
        adding to the step's counters."""
        sc = self.scenario
        truth = self.true_state((start_s + end_s) / 2.0)
        span = end_s - start_s
        rng = self._rng
        n = int(rng.poisson(truth.load_rps * span))
        arrivals = start_s + np.sort(rng.random(n)) * span
        u_subset = rng.random(n)
        u_rep1 = rng.random(n)
        u_rep2 = rng.random(n)
        std_exp = rng.standard_exponential(n)
        std_norm = rng.standard_normal(n)
        u_error = rng.random(n)
        reps = np.array([s.replicas for s in truth.subsets], dtype=np.int64)
        reps = np.minimum(reps, self._max_reps)
        dist = np.array(
            [
                kernel.DIST_LOGNORMAL if s.service_dist == "lognormal" else kernel.DIST_EXPONENTIAL
                for s in truth.subsets
            ],
            dtype=np.int64,
        )
        mean_s = np.array([s.service_ms / s.capacity_factor / 1000.0 for s in truth.subsets])
        sigma2 = np.log1p(np.array([s.cv for s in truth.subsets]) ** 2)
        ln_mu = np.log(mean_s) - sigma2 / 2.0
        err = np.array([s.error_rate for s in truth.subsets])
        kernel.simulate_step(
            arrivals,
            u_subset,
            u_rep1,
            u_rep2,
            std_exp,
            std_norm,
            u_error,
            cum,
            reps,
            self._rep_offset,
            dist,
            mean_s,
            ln_mu,
            np.sqrt(sigma2),
            err,
            kernel.BALANCER_LEAST_REQUEST
            if sc.balancer == "least_request"
            else kernel.BALANCER_RANDOM,
            sc.timeout_ms / 1000.0,
            sc.slo_ms / 1000.0,
            QUEUE_LIMIT,
            self._free_at,
            self._deps,
            self._head,
            self._tail,
            EDGES_S,
            count,
            errors,
            slow,
            bad,
            lat_sum,
            hist,
        )

    # ---- what the controller sees ------------------------------------------------------
    def _stats(self, steps: list[StepCounts], weights: Weights, noisy: bool) -> Observation:
        tel = self.scenario.telemetry
        span_s = len(steps) * self.scenario.step_s
        stats = []
        for i, name in enumerate(self._names):
            c = sum(int(s.count[i]) for s in steps)
            w = weights[name]
            if noisy and tel.drop_prob > 0 and self._tel_rng.random() < tel.drop_prob:
                stats.append(SubsetStats(math.nan, math.nan, math.nan, w))
                continue
            noise = self._tel_rng.standard_normal() if noisy and tel.noise > 0 else 0.0
            if c == 0 or span_s <= 0:
                stats.append(SubsetStats(0.0 if span_s > 0 else math.nan, math.nan, math.nan, w))
                continue
            hist = np.sum([s.hist[i] for s in steps], axis=0)
            p99 = quantile_ms(hist, 0.99)
            newest = steps[-1]
            recent_c = int(newest.count[i])
            recent_p99 = quantile_ms(newest.hist[i], 0.99)
            if noise:
                p99 = max(p99 * (1.0 + tel.noise * noise), 0.0)
                if recent_c:
                    recent_p99 = max(recent_p99 * (1.0 + tel.noise * noise), 0.0)
            stats.append(
                SubsetStats(
                    rps=c / span_s,
                    error_ratio=sum(int(s.errors[i]) for s in steps) / c,
                    p99_ms=p99,
                    weight=w,
                    slow_ratio=sum(int(s.slow[i]) for s in steps) / c,
                    recent_p99_ms=recent_p99,
                    recent_slow_ratio=int(newest.slow[i]) / recent_c if recent_c else math.nan,
                    recent_rps=recent_c / self.scenario.step_s,
                )
            )
        return Observation(
            route=self.route,
            subsets=self._names,
            stats=tuple(stats),
            timestamp_s=self.t_s,
            staleness_s=self.t_s % tel.scrape_s if tel.scrape_s > self.scenario.step_s else 0.0,
            capacity_hint_rps=self.nominal_capacity_rps(),
            slo_ms=self.scenario.slo_ms,
            window_s=span_s if span_s > 0 else math.nan,
            balancer=self.scenario.balancer,
        )

    def observe(self) -> Observation:
        """Telemetry over the last `telemetry.window_s`, with configured drops and noise.

        A subset that got no requests in the window reports rps 0 and NaN ratio/p99, as
        Prometheus does for a zero rate. Before the first step every value is NaN.
        """
        return self._stats(list(self._window), self._weights, noisy=True)

    def observe_last_step(self) -> Observation:
        """Noise-free telemetry of the last step only (what the reward is computed from)."""
        steps = [self.last_step] if self.last_step is not None else []
        return self._stats(steps, self._weights, noisy=False)

    def summary(self) -> EpisodeSummary:
        """Scores of everything simulated since the last reset."""
        total = int(self._ep_count.sum())
        if total == 0:
            return EpisodeSummary(math.nan, math.nan, math.nan, math.nan, 0.0, 0)
        return EpisodeSummary(
            bad_fraction=int(self._ep_bad.sum()) / total,
            p99_ms=quantile_ms(self._ep_hist, 0.99),
            mean_ms=self._ep_lat_ms / total,
            error_rate=int(self._ep_errors.sum()) / total,
            churn=self._ep_moved / max(self._ep_steps, 1),
            requests=total,
        )

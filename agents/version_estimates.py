"""How the planner's estimates of one version move with one tick's telemetry.

`VersionEstimate` is what `agents.planner.PlannerPolicy` knows of a version (its service
time, health and error rate; the planner's module docstring says how each is read), and
`EstimateUpdates` takes one tick's evidence for many versions at once: the relaxation toward
healthy and the error ratio at once, then, as arrays, the p99 checks of the relaxations, the
service-time fits, the health inversions of the slow ratios and the p99 alarms.
Why a module of its own: these are the planner's reading of telemetry, with their own
constants; the planner plans on what they produce.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agents.version_model import (
    HEALTH_RANGE,
    fit_service_ms_each,
    infer_health_each,
    infer_health_from_p99_each,
    model_p99_ms_each,
)
from meshcore.model import SubsetStats, finite

MIN_RPS = 0.5
"""Below this rate (rps) a version's ratios are too noisy to update its estimates."""
SERVICE_FITS = 12
"""Healthy observations averaged into a version's first service-time estimate; later ones move
it with weight 1 / SERVICE_FITS."""
FIT_HEALTH = 0.9
"""Least health estimate at which a version's healthy-looking windows keep refitting its
service time once it has `SERVICE_FITS` fits: the fit assumes the nominal capacity, so a
version the estimates blame for a capacity loss would have the loss absorbed, fit after fit,
into a longer service time (more, slower replicas in the model, which queue less near
capacity), the loss forgotten and the version loaded to the edge of its real capacity
(chosen on the validation range; docs/experiments.md, "The service-time fit of a version
the estimates blame")."""
HEALTHY_SLOW = 0.05
"""Largest slow ratio of a window that looks healthy: the only windows the service-time fit
trusts (a faulty or overloaded version's p99 would make its healthy service time look slow,
and keep it out for good), and the most a window may show while a saturated newest interval
is taken for one noisy interval (`SATURATED_SHED`)."""
FAULT_DROP = 0.7
"""A health estimate below this fraction of the current one is a fault, believed at once;
smaller moves are smoothed with weight `HEALTH_GAIN`, so queue noise does not move the split.
Only while the newest interval agrees (its slow ratio above `HEALTHY_SLOW`, where it has
one): a window that is slow while its newest interval is clean holds a slowdown that has
passed (a stall of the client or the machine, a fault that ended), and is smoothed too."""
HEALTH_GAIN = 0.3
SLOW_SATURATED = 0.9
"""Slow ratios above this only say the version is saturated (health at most its rate over its
nominal capacity), not by how much: the inversion reads them as this value, so one overloaded
window does not drive the estimate to the floor and the split to the other extreme."""
SATURATED_SHED = 0.9
"""A version whose newest-interval slow ratio is above `SLOW_SATURATED` while its window's is
above `HEALTHY_SLOW` receives more than it serves and builds a backlog: its health is at once
set to at most this fraction of its rate over its nominal capacity, so the split sheds enough
to drain the backlog instead of holding the version at the edge of overload (each saturated
tick sheds again). The window's ratio lags: a capacity loss that saturates a version shows in
full in the newest interval a tick later, in a 60 s window's only after a minute, while the
backlog grows; the window only has to agree that the version is slow, so one noisy interval
does not cut it (chosen on the validation range against both ratios above `SLOW_SATURATED`;
docs/experiments.md, "How the serving defaults were chosen")."""
NOMINAL_BAND = (1.0, 1.2)
"""Health readings within this band count as nominal (1): a version that looks a little faster
than nominal is not given more than its nominal share. Readings below 1 are kept (smoothed by
`HEALTH_GAIN`): a version served at 95 % of its capacity whose queues the model underrates (a
heavy tail, or random balancing on a route configured as least-request) shows it only as a
reading a little below 1."""
RELAX_P99 = 1.2
"""A version with traffic relaxes toward nominal health only while its observed p99 is at
most this many times the model's p99 at the relaxed health (chosen on 180 meshes of the
validation range against 1.0 and 1.5: a tolerance for the noise of a histogram's p99)."""
SLOW_EVIDENCE_Z = 2.0
"""The health inversion reads a window's slow ratio r of n requests as its lower bound
``r - z sqrt(r / n)`` (at least 0: the count of slow requests is about Poisson). One slow
request among the 300 a lightly used version serves in a window is 0.3 %, which the model
at a loose SLO can only explain as a large capacity loss; a heavy-tailed version shows such
strays all the time (chosen on the validation range against 0, 1 and 3)."""
P99_ALARM_Z = 4.0
"""A newest interval whose p99, over the model's at the version's current estimate and that
interval's rate, is this many standard deviations above what that ratio (in log) was while
the version was healthy is a fault the slow ratio has not shown yet (a loose SLO is crossed
only once a backlog is seconds deep): the health is at once set to the one whose modelled
p99 matches, where that is lower. A heavy-tailed version's p99 wanders far, a light-tailed
one's little; each is judged against its own spread."""
P99_ALARM_MIN = 2.0
"""The least ratio of the newest p99 to its healthy level that `P99_ALARM_Z` acts on."""
P99_SPREAD_FITS = 12
"""Healthy intervals a version's p99 spread is learned from before `P99_ALARM_Z` acts; later
ones move it with weight 1 / (2 x P99_SPREAD_FITS)."""
P99_ALARM_WINDOW = 2.0
"""`P99_ALARM_Z` holds only while the window's p99 is at least this many times the model's at
the window's rate: one interval's p99 of a heavy-tailed version is a handful of requests."""
P99_ALARM_RPS = 40.0
"""Least newest-interval rate (rps) for `P99_ALARM_Z`: at the default 5 s scrape, 200 requests,
so the p99 is not one stray slow request."""
ALARM_RATE_KEPT = 0.8
"""`P99_ALARM_Z` holds only while the newest interval's rate is at least this fraction of the
window's: a rate that fell leaves a backlog (a burst or an overload that ended) whose
draining p99 is no stationary queue's."""
RATE_WINDOW_S = 30.0
"""The rate window (s) the planner assumes when it counts a window's requests (rate x
window) for an observation that does not say its own (`Observation.window_s`): the default
of `meshpilot serve` on Prometheus and of the simulator."""


@dataclass
class VersionEstimate:
    """What the planner has learned about one version (see the module docstring)."""

    service_ms: float = math.nan
    health: float = 1.0
    error: float = 0.0
    fits: int = 0
    healthy_seen: int = 0
    p99_spread_n: int = 0
    p99_resid_mean: float = 0.0
    p99_resid_var: float = 0.0
    """How far (log of observed over modelled) the newest-interval p99 strays while the
    version is healthy: exponentially weighted mean and variance (`P99_ALARM_Z`)."""
    idle_since_s: float = math.nan
    """When the split in force last took this version to 0 points (s, the observation's
    clock); NaN while it has traffic."""


def service_ms(est: VersionEstimate, slo_ms: float) -> float:
    """The healthy service time the model uses (ms): the fit, at most a third of the SLO;
    a tenth of the SLO before any fit."""
    return min(est.service_ms, slo_ms / 3.0) if finite(est.service_ms) else slo_ms / 10.0


def model_service_ms(est: VersionEstimate, capacity_rps: float, slo_ms: float) -> float:
    """`service_ms`, at least one replica's worth of the nominal capacity (ms): the service
    time every use of the model starts from."""
    return max(service_ms(est, slo_ms), 1000.0 / capacity_rps)


def slow_ratio_bound(slow_ratio: float, rps: float, window_s: float = math.nan) -> float:
    """The lower bound (0..1) the health inversion reads for a window's `slow_ratio` at
    `rps` requests per second over `window_s` seconds (`SLOW_EVIDENCE_Z`; `RATE_WINDOW_S`
    where the window is unknown, not positive or infinite)."""
    ratio = min(max(slow_ratio, 0.0), 1.0)
    requests = rps * (window_s if finite(window_s) and window_s > 0 else RATE_WINDOW_S)
    if not requests > 0:
        return 0.0  # no requests, no evidence
    return max(ratio - SLOW_EVIDENCE_Z * math.sqrt(ratio / requests), 0.0)


@dataclass(frozen=True, slots=True)
class _Relaxation:
    """A health that relaxed upward this tick on a version with traffic, to check against
    its p99 (`EstimateUpdates._check_relaxations`): rates in rps, times in ms."""

    est: VersionEstimate
    health_before: float
    cap: float
    service_ms: float
    rps: float
    p99_ms: float
    random: bool


@dataclass(frozen=True, slots=True)
class _P99Fit:
    """A healthy window's p99 at its rate, for the service-time fit."""

    est: VersionEstimate
    cap: float
    rps: float
    p99_ms: float
    random: bool


@dataclass(frozen=True, slots=True)
class _SlowReading:
    """A window's slow ratio (its lower bound, `slow_ratio_bound`) at its rate, for the health
    inversion; `current`: the newest interval agrees the version is slow (or has no data)."""

    est: VersionEstimate
    cap: float
    rps: float
    slow_ratio: float
    slo_ms: float
    random: bool
    current: bool


@dataclass(frozen=True, slots=True)
class _P99Reading:
    """The newest interval's p99 and rate, and the window's, for the p99 alarm
    (`P99_ALARM_Z`); `service_ms` as the model used it when the stats came in; `calm`: the
    window and the newest interval look healthy, so the interval adds to the version's
    healthy spread."""

    est: VersionEstimate
    cap: float
    service_ms: float
    recent_rps: float
    recent_p99_ms: float
    rps: float
    p99_ms: float
    random: bool
    calm: bool


class EstimateUpdates:
    """One tick's evidence for many versions: the relaxation and the error ratio are taken at
    once; the p99 checks of the relaxations, the fits and then the health inversions are
    computed as arrays (`apply`)."""

    def __init__(self) -> None:
        self.relaxed: list[_Relaxation] = []
        self.fits: list[_P99Fit] = []
        self.slow: list[_SlowReading] = []
        self.saturated: list[tuple[VersionEstimate, float]] = []
        self.alarms: list[_P99Reading] = []

    def relax(
        self,
        est: VersionEstimate,
        factor: float,
        stats: SubsetStats,
        cap: float,
        slo_ms: float,
        random: bool = False,
    ) -> None:
        """Move `est`'s health and error rate toward healthy (log health and error times
        `factor`); a health that rose on a version with traffic and a p99 is checked against
        that p99 in `apply`. A version with weight whose sample is missing (a dropped scrape)
        keeps both: it is not known to be idle, and nothing says its fault is over. `random`:
        the version's replicas are behind a random balancer (else least-request)."""
        rps, p99 = stats.rps, stats.p99_ms
        if stats.weight > 0 and not finite(rps):
            return
        before = est.health
        est.health = math.exp(math.log(est.health) * factor)
        est.error *= factor
        if est.health > before and finite(rps) and rps >= MIN_RPS and finite(p99) and p99 > 0:
            svc = model_service_ms(est, cap, slo_ms)
            self.relaxed.append(_Relaxation(est, before, cap, svc, rps, p99, random))

    def observe(
        self,
        est: VersionEstimate,
        stats: SubsetStats,
        cap: float,
        slo_ms: float,
        window_s: float,
        random: bool = False,
        burst: bool = False,
    ) -> None:
        """Take one version's stats of a window of `window_s` seconds (NaN: unknown) as
        evidence: the error ratio at once; the service-time fit, the slow ratio's health
        inversion and the saturation cap in `apply` (behind a random balancer where
        `random`). During a `burst` of the route's rate only the error ratio and the fit are
        taken: the slowness a burst causes is load (the planner's module docstring)."""
        rps = stats.rps
        if not (finite(rps) and rps >= MIN_RPS):
            return
        if finite(stats.error_ratio):
            est.error = 0.5 * est.error + 0.5 * min(max(stats.error_ratio, 0.0), 1.0)
        healthy = (
            finite(stats.slow_ratio)
            and stats.slow_ratio <= HEALTHY_SLOW
            and finite(stats.p99_ms)
            and 0 < stats.p99_ms <= slo_ms
        )
        if healthy:
            est.healthy_seen += 1
        # The first SERVICE_FITS healthy observations, then every SERVICE_FITS-th while the
        # estimates do not blame the version for a capacity loss (FIT_HEALTH).
        due = est.healthy_seen <= SERVICE_FITS or est.healthy_seen % SERVICE_FITS == 0
        if healthy and due and (est.fits < SERVICE_FITS or est.health >= FIT_HEALTH):
            self.fits.append(_P99Fit(est, cap, rps, stats.p99_ms, random))
        if burst:
            return
        recent_p99, recent_rps = stats.recent_p99_ms, stats.recent_rps
        steady = finite(recent_rps) and recent_rps >= max(P99_ALARM_RPS, ALARM_RATE_KEPT * rps)
        if finite(recent_p99) and steady:
            svc = model_service_ms(est, cap, slo_ms)
            calm = healthy and finite(stats.recent_slow_ratio)
            calm = calm and stats.recent_slow_ratio <= HEALTHY_SLOW
            self.alarms.append(
                _P99Reading(est, cap, svc, recent_rps, recent_p99, rps, stats.p99_ms, random, calm)
            )
        if finite(stats.slow_ratio):
            evidence = min(slow_ratio_bound(stats.slow_ratio, rps, window_s), SLOW_SATURATED)
            recent = stats.recent_slow_ratio
            passed = finite(recent) and recent <= HEALTHY_SLOW
            self.slow.append(_SlowReading(est, cap, rps, evidence, slo_ms, random, not passed))
            if stats.slow_ratio > HEALTHY_SLOW and finite(recent) and recent > SLOW_SATURATED:
                self.saturated.append((est, SATURATED_SHED * rps / cap))

    def apply(self) -> None:
        self._check_relaxations()
        self._fit_service_times()
        self._infer_health()
        self._p99_alarms()
        for est, bound in self.saturated:
            est.health = max(min(est.health, bound), HEALTH_RANGE[0])

    def _check_relaxations(self) -> None:
        """Undo this tick's relaxation where the observed p99 is above `RELAX_P99` times the
        model's at the relaxed health h (capacity C h, service time m / h, same replicas)."""
        if not self.relaxed:
            return
        health = np.array([r.est.health for r in self.relaxed], dtype=np.float64)
        modelled = model_p99_ms_each(
            np.array([r.cap for r in self.relaxed]) * health,
            np.array([r.service_ms for r in self.relaxed]) / health,
            np.array([r.rps for r in self.relaxed]),
            np.array([r.random for r in self.relaxed]),
        ).tolist()
        for r, model in zip(self.relaxed, modelled, strict=True):
            if r.p99_ms > RELAX_P99 * model:
                r.est.health = r.health_before

    def _fit_service_times(self) -> None:
        if self.fits:
            fits = fit_service_ms_each(
                [f.cap for f in self.fits],
                [f.rps for f in self.fits],
                [f.p99_ms for f in self.fits],
                np.array([f.random for f in self.fits]),
            ).tolist()
            for est, fit in zip((f.est for f in self.fits), fits, strict=True):
                if not math.isnan(fit):
                    est.fits += 1
                    gain = 1.0 / min(est.fits, SERVICE_FITS)
                    previous = math.log(est.service_ms) if finite(est.service_ms) else 0.0
                    est.service_ms = math.exp((1 - gain) * previous + gain * math.log(fit))

    def _p99_alarms(self) -> None:
        """Lower at once the health of versions whose newest p99 is `P99_ALARM_Z` deviations
        above its healthy level, to the health whose modelled p99 matches it; a version
        whose newest interval is calm adds that interval to its healthy level instead."""
        if not self.alarms:
            return
        alarms = self.alarms
        health = np.array([a.est.health for a in alarms], dtype=np.float64)
        cap = np.array([a.cap for a in alarms])
        svc = np.array([a.service_ms for a in alarms])
        rate = np.array([a.recent_rps for a in alarms])
        p99s = np.array([a.recent_p99_ms for a in alarms])
        flags = np.array([a.random for a in alarms])
        both = model_p99_ms_each(
            np.tile(cap * health, 2),
            np.tile(svc / health, 2),
            np.concatenate([rate, np.array([a.rps for a in alarms])]),
            np.tile(flags, 2),
        )
        newest, window = both[: len(alarms)], both[len(alarms) :]
        window_p99s = np.nan_to_num(np.array([a.p99_ms for a in alarms]))
        agree = (window_p99s >= P99_ALARM_WINDOW * window).tolist()
        resid = np.log(np.maximum(p99s, 1e-9) / newest).tolist()
        hits = []
        for i, (alarm, r) in enumerate(zip(alarms, resid, strict=True)):
            est = alarm.est
            sd = math.sqrt(est.p99_resid_var)
            level = est.p99_resid_mean + max(P99_ALARM_Z * sd, math.log(P99_ALARM_MIN))
            if est.p99_spread_n >= P99_SPREAD_FITS and agree[i] and r >= level:
                hits.append(i)
            elif alarm.calm and math.isfinite(r):
                est.p99_spread_n += 1
                gain = 1.0 / min(est.p99_spread_n, 2 * P99_SPREAD_FITS)
                delta = r - est.p99_resid_mean
                est.p99_resid_mean += gain * delta
                est.p99_resid_var = (1 - gain) * (est.p99_resid_var + gain * delta * delta)
        if not hits:
            return
        hit = np.asarray(hits)
        read = infer_health_from_p99_each(
            cap[hit], svc[hit], rate[hit], p99s[hit], flags[hit]
        ).tolist()
        for i, h in zip(hit.tolist(), read, strict=True):
            alarms[i].est.health = min(alarms[i].est.health, h)

    def _infer_health(self) -> None:
        if not self.slow:
            return
        readings = self.slow
        inferred = infer_health_each(
            [r.cap for r in readings],
            [model_service_ms(r.est, r.cap, r.slo_ms) for r in readings],
            [r.rps for r in readings],
            [r.slow_ratio for r in readings],
            [r.slo_ms for r in readings],
            np.array([r.random for r in readings]),
        ).tolist()
        for reading, observed in zip(readings, inferred, strict=True):
            if math.isnan(observed):
                continue
            est = reading.est
            if NOMINAL_BAND[0] <= observed <= NOMINAL_BAND[1]:
                observed = 1.0
            if reading.current and observed < FAULT_DROP * est.health:  # a fault: at once
                est.health = observed
            else:
                est.health = math.exp(
                    (1 - HEALTH_GAIN) * math.log(est.health) + HEALTH_GAIN * math.log(observed)
                )

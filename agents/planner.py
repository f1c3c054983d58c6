"""The planner: the oracle's objective solved on parameters estimated from telemetry alone.

Why: the oracle (`agents.oracle`) knows every version's true capacity and error rate; a
controller only sees Prometheus. The planner estimates, per version and every tick, the three
numbers the oracle's queueing model (`agents.queueing`) needs and then picks the integer split
that minimizes the modelled bad-request fraction, exactly as the oracle does. It is a peer
baseline (``--policy planner``) and the fallback of the serving supervisor
(`agents.supervisor`), so it needs numpy only. `decide_many` decides a tick's routes at once:
the estimates and cost tables of all of them are computed as arrays. The model of one version
and its fits to telemetry are `agents.version_model`.

Estimates per version, from `SubsetStats` and the nominal capacity hint C (rps):

* **healthy service time** m (ms): the m at which the model of a healthy version of capacity C
  has the observed p99 at the observed rate, from observations that look healthy (slow ratio
  at most `HEALTHY_SLOW`, p99 within the SLO), averaged geometrically over the first
  `SERVICE_FITS` of them and then followed slowly, from every `SERVICE_FITS`-th (a new build
  under an old name); at most a third of the SLO; before any fit, a tenth of the SLO.
  Replicas r = round(C m / 1000) >= 1, and m is then set so that r / m = C exactly. It fixes
  the shape of the tail (few fast or many slow servers).
* **health** h (the capacity factor, 1 = nominal): the h at which the model's
  P(latency > SLO) at the version's observed rate equals its observed slow ratio (bisection in
  log h; the model is monotone in h). A drop below `FAULT_DROP` of the current estimate is
  taken at once (overload compounds); smaller moves are smoothed. The slow ratio is read as
  its lower confidence bound for the window's request count (`SLOW_EVIDENCE_Z`), so a few
  stray slow requests on a lightly used version are not a fault. A version saturated in the
  newest interval, and slow in the window, is capped at once at `SATURATED_SHED` of its rate
  over C, so its backlog drains instead of holding at the edge of overload. Where the window
  shows no slow requests beyond noise and the observed p99 is far below the model's at h
  (`RAISE_P99`), h rises at once to the least value that p99 allows: the slow ratio of a
  loose SLO cannot show that a backlog has drained.
* **error rate** e: exponentially smoothed 5xx ratio.

The split is planned for the route's rate over the window, or over the newest interval
(`SubsetStats.recent_rps`) when that is more than `BURST_RATIO` times higher: a burst
overloads versions a tick after it starts, and shows in full in the window's average only
after a whole window (30 s); a falling load is followed at the window's pace, so one
interval's noise does not move the split.

Every tick h and e first relax toward the healthy prior with time constant `recovery_s`,
then move with the evidence; a version without traffic gives none, so traffic returns to it
after a fault ends and is cut again if the fault is still there. At a load the other
versions carry well that return could take many minutes (any 5xx left in the estimate costs
more than the version's headroom saves), so a version the estimates still blame (`impaired`)
that has had no traffic for `probe_s` gets `probe_points`: its answers then say whether the
fault is over. A version with weight whose sample is missing keeps its estimates (it is not
known to be idle). A version with traffic relaxes only while its p99 agrees: where its observed
p99 is above `RELAX_P99` times the model's p99 at the relaxed health and its rate, h keeps
the tick's starting value. Under a loose SLO a version that lost capacity shows no slow
requests until it is overloaded, so without this a lasting loss is forgotten in a few
minutes and found again only by overloading the version, over and over; its p99 shows the
loss long before.

Without capacity hints the model has no scale: the planner then writes the square-root rule's
split (`agents.baselines.SqrtPolicy`). To keep a settled route still, the current split is kept
unless the new one lowers the modelled bad fraction by more than `min_gain` (relative) and
`min_gain_abs` (absolute). The model is only as good as its estimates, so the objective also
pulls each share toward the square-root split of the estimated capacities (`pull` x squared
share distance): a hedge that the model overrides only for a clear gain (a failing or
overloaded version).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.baselines import SqrtPolicy, route_rps, sqrt_shares
from agents.queueing import LeastRequestQueues, least_request_cost_tables, min_plus_splits
from agents.version_model import (
    HEALTH_RANGE,
    VersionModel,
    fit_service_ms_each,
    infer_health_each,
    model_p99_ms_each,
    shape,
)
from meshcore.model import WEIGHT_TOTAL, Observation, RouteRef, SubsetStats, Weights

MIN_RPS = 0.5
"""Below this rate (rps) a version's ratios are too noisy to update its estimates."""
SERVICE_FITS = 12
"""Healthy observations averaged into a version's first service-time estimate; later ones move
it with weight 1 / SERVICE_FITS."""
HEALTHY_SLOW = 0.05
"""Largest slow ratio of a window that looks healthy: the only windows the service-time fit
trusts (a faulty or overloaded version's p99 would make its healthy service time look slow,
and keep it out for good), and the most a window may show while a saturated newest interval
is taken for one noisy interval (`SATURATED_SHED`)."""
FAULT_DROP = 0.7
"""A health estimate below this fraction of the current one is a fault, believed at once;
smaller moves are smoothed with weight `HEALTH_GAIN`, so queue noise does not move the split."""
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
docs/benchmarks.md, "How the serving defaults were chosen")."""
NOMINAL_BAND = (1.0, 1.2)
"""Health readings within this band count as nominal (1): a version that looks a little faster
than nominal is not given more than its nominal share. Readings below 1 are kept (smoothed by
`HEALTH_GAIN`): a version served at 95 % of its capacity by a balancer the model does not know
(random picks queue more than least-request) shows it only as a reading a little below 1."""
PROBE_COST = 1.0
"""Cost (bad-fraction units) per point a probed version gets below `probe_points`: more than
any split can save, so a due probe is always written."""
IMPAIRED_HEALTH = 0.9
"""A health estimate below this (more than a tenth of the configured capacity gone) holds a
fault against a version (`impaired`)."""
IMPAIRED_ERROR = 0.01
"""An error-rate estimate above this (1 % 5xx) holds a fault against a version (`impaired`)."""
RELAX_P99 = 1.2
"""A version with traffic relaxes toward nominal health only while its observed p99 is at
most this many times the model's p99 at the relaxed health (chosen on 180 meshes of the
validation range against 1.0 and 1.5: a tolerance for the noise of a histogram's p99)."""
RAISE_P99 = 3.0
"""A version with traffic whose health estimate is below nominal, and whose observed p99 is
less than the model's p99 at that health and its rate divided by this, is faster than the
estimate allows: its health rises at once to the least (up to nominal) at which the model's
p99 is within `RELAX_P99` of the observed one. Only while its window's slow ratio shows no
slow requests beyond noise (`SLOW_EVIDENCE_Z`); where it does, the slow ratio is the
evidence. Why: after a burst or a fault, the slow ratio of
a loose SLO says nothing until a version is at the edge of overload, so an estimate lowered by
a transient backlog only relaxed at `recovery_s`, and the planner meanwhile believed the mesh
full and sacrificed a small version as the place for the overflow. The p99 shows the
headroom; the margin keeps a version that lost replicas (faster per request than the model's
slower service at the same capacity) from reading as recovered."""
BURST_RATIO = 1.1
"""The newest interval's rate replaces the window's as the rate to plan for when it is more
than this many times higher (chosen on 180 meshes of the validation range: 1.05 did as well,
1.2 worse; planning for the newest rate always moved the split more for less)."""
SLOW_EVIDENCE_Z = 2.0
"""The health inversion reads a window's slow ratio r of n requests as its lower bound
``r - z sqrt(r / n)`` (at least 0: the count of slow requests is about Poisson). One slow
request among the 300 a lightly used version serves in a window is 0.3 %, which the model
at a loose SLO can only explain as a large capacity loss; a heavy-tailed version shows such
strays all the time (chosen on the validation range against 0, 1 and 3)."""
RATE_WINDOW_S = 30.0
"""The rate window (s) the planner assumes when it counts a window's requests (rate x
window) for an observation that does not say its own (`Observation.window_s`): the default
of `meshpilot serve` on Prometheus and of the simulator."""
DEFAULT_SLO_MS = 250.0
"""SLO (ms) used when an observation does not say which one its slow ratios refer to."""


@dataclass
class VersionEstimate:
    """What the planner has learned about one version (see the module docstring)."""

    service_ms: float = math.nan
    health: float = 1.0
    error: float = 0.0
    fits: int = 0
    healthy_seen: int = 0
    idle_since_s: float = math.nan
    """When the split in force last took this version to 0 points (s, the observation's
    clock); NaN while it has traffic."""


@dataclass
class _RouteState:
    versions: dict[str, VersionEstimate] = field(default_factory=dict)
    last_t_s: float = math.nan
    last_rps: float = math.nan
    subsets: tuple[str, ...] = ()
    bad_table: np.ndarray | None = None
    models: tuple[VersionModel, ...] = ()
    rate_rps: float = math.nan
    slo_ms: float = math.nan


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def anchor_penalty(capacity_rps: list[float], load_rps: float) -> np.ndarray:
    """Per version and weight 0..100: squared distance of the share from the square-root
    split of `capacity_rps` at `load_rps` (capacity-proportional where that rule does not
    apply), the hedge that keeps a split near the rule unless the model sees a clear gain."""
    total = math.fsum(capacity_rps)
    shares = sqrt_shares(capacity_rps, load_rps) or [c / total for c in capacity_rps]
    frac = np.arange(WEIGHT_TOTAL + 1, dtype=np.float64) / WEIGHT_TOTAL
    return np.asarray((frac[None, :] - np.asarray(shares)[:, None]) ** 2)


class PlannerPolicy:
    """Model-based split from telemetry (see the module docstring); one instance, many routes.

    recovery_s: time constant (s) with which an unobserved version's estimates return to
    healthy; min_gain / min_gain_abs: how much lower (relative, absolute) the modelled bad
    fraction of a new split must be before the current split is replaced; pull: weight of the
    squared distance from the square-root split (bad-fraction units per squared share; 0.03
    chosen on 40 scenarios of the validation range against 0, 0.003 and 0.01); probe_s /
    probe_points: how long (s) a blamed version stays without traffic before it gets a probe,
    and how many points the probe gives it.
    """

    name = "planner"

    def __init__(
        self,
        *,
        recovery_s: float = 120.0,
        min_gain: float = 0.1,
        min_gain_abs: float = 5e-5,
        pull: float = 0.03,
        probe_s: float = 120.0,
        probe_points: int = 3,
    ) -> None:
        self.recovery_s = recovery_s
        self.probe_s = probe_s
        self.probe_points = probe_points
        self.min_gain = min_gain
        self.min_gain_abs = min_gain_abs
        self.pull = pull
        self._routes: dict[RouteRef, _RouteState] = {}
        self._fallback = SqrtPolicy()
        self.last_note: str | None = None
        self.last_notes: list[str | None] = []

    def reset(self) -> None:
        self._routes.clear()
        self._fallback.reset()
        self.last_note = None
        self.last_notes = []

    def estimates(self, route: RouteRef) -> dict[str, VersionEstimate]:
        """The current estimates of `route`'s versions (empty before its first decision)."""
        st = self._routes.get(route)
        return dict(st.versions) if st else {}

    def decide(self, obs: Observation) -> Weights:
        return self.decide_many([obs])[0]

    def decide_many(self, observations: Sequence[Observation]) -> list[Weights]:
        """`decide` for many routes: the same splits as one call per route in this order, the
        model's numbers for all routes computed as arrays at once. `last_notes` says, per
        route, which versions got a probe (None where none did); `last_note` is the last
        route's."""
        out: list[Weights] = []
        notes: list[str | None] = []
        for run in route_runs(observations):
            out.extend(self._decide_run(run, notes))
        self.last_notes = notes
        self.last_note = notes[-1] if notes else None
        return out

    def _decide_run(self, run: list[Observation], notes: list[str | None]) -> list[Weights]:
        """`decide_many` of routes that are all distinct: estimates first (fits, then
        health, each as one array), then one cost table per route and the splits; one note
        per route appended to `notes`."""
        decided: list[Weights | None] = [None] * len(run)
        probes: list[str | None] = [None] * len(run)
        planned: list[tuple[int, _RouteState, float, float]] = []
        work = _Updates()
        for i, obs in enumerate(run):
            caps = obs.capacity_hint_rps
            if len(caps) != len(obs.subsets) or not all(_finite(c) and c > 0 for c in caps):
                decided[i] = self._fallback.decide(obs)
                continue
            st = self._routes.setdefault(obs.route, _RouteState())
            slo_ms = obs.slo_ms if _finite(obs.slo_ms) and obs.slo_ms > 0 else DEFAULT_SLO_MS
            dt = obs.timestamp_s - st.last_t_s if _finite(st.last_t_s) else 0.0
            st.last_t_s = obs.timestamp_s
            relax = math.exp(-max(dt, 0.0) / self.recovery_s)
            for name, stats, cap in zip(obs.subsets, obs.stats, caps, strict=True):
                est = st.versions.setdefault(name, VersionEstimate())
                if stats.weight > 0:
                    est.idle_since_s = math.nan
                elif math.isnan(est.idle_since_s):
                    est.idle_since_s = obs.timestamp_s
                work.relax(est, relax, stats, cap, slo_ms)
                work.observe(est, stats, cap, slo_ms, obs.window_s)
            rate = planning_rps(obs)
            if _finite(rate) and rate > 0:
                st.last_rps = rate
            if _finite(st.last_rps) and st.last_rps > 0:
                planned.append((i, st, slo_ms, st.last_rps))
            else:
                decided[i] = current_split(obs) or self._fallback.decide(obs)
        work.apply()
        tables = []
        for i, st, slo_ms, rate in planned:
            obs = run[i]
            models = [
                self.model(st.versions[n], c, slo_ms)
                for n, c in zip(obs.subsets, obs.capacity_hint_rps, strict=True)
            ]
            tables.append((models, rate, slo_ms))
        costs = least_request_cost_tables(tables)
        pulled = []
        for (i, st, slo_ms, rate), (models, _, _), cost in zip(planned, tables, costs, strict=True):
            st.subsets, st.bad_table = run[i].subsets, cost
            st.models, st.rate_rps, st.slo_ms = tuple(models), rate, slo_ms
            if self.pull > 0:
                cost = cost + self.pull * anchor_penalty([m.capacity_rps for m in models], rate)
            probed = self._due_probes(run[i], st)
            if probed.any():
                short = np.maximum(self.probe_points - np.arange(WEIGHT_TOTAL + 1), 0)
                cost = cost + PROBE_COST * probed[:, None] * short[None, :]
                names = ", ".join(n for n, due in zip(run[i].subsets, probed, strict=True) if due)
                probes[i] = (
                    f"planner: probe of {names} ({self.probe_points} points): no traffic for "
                    f"{self.probe_s:g} s and a fault still in the estimates"
                )
            pulled.append(cost)
        for (i, _, _, _), cost, best in zip(planned, pulled, min_plus_splits(pulled), strict=True):
            decided[i] = self._keep_or_move(run[i], cost, best)
        notes.extend(probes)
        return [d for d in decided if d is not None]

    def _due_probes(self, obs: Observation, st: _RouteState) -> np.ndarray:
        """Per version of `obs`: whether it has had no traffic for `probe_s` or longer while the
        estimates still call it impaired (`impaired`)."""
        due = []
        for name in obs.subsets:
            est = st.versions[name]
            idle = _finite(est.idle_since_s) and obs.timestamp_s - est.idle_since_s >= self.probe_s
            due.append(idle and impaired(est))
        return np.array(due, dtype=bool)

    def _keep_or_move(self, obs: Observation, cost: np.ndarray, best: tuple[int, ...]) -> Weights:
        """The current split unless `best` lowers its cost by more than the margins."""
        current = current_split(obs)
        if current is not None:
            rows = np.arange(len(best))
            now = float(cost[rows, list(current.values_tuple)].sum())
            new = float(cost[rows, list(best)].sum())
            if now - new <= max(self.min_gain * now, self.min_gain_abs):
                return current
        return Weights(obs.subsets, list(best))

    def modelled_bad(self, route: RouteRef, weights: Weights) -> float:
        """The modelled bad-request fraction (0..1) of `weights` on `route` at the estimates
        of the last decision; NaN before the first one or for other versions."""
        st = self._routes.get(route)
        if st is None or st.bad_table is None or tuple(weights.subsets) != st.subsets:
            return math.nan
        rows = np.arange(len(st.subsets))
        return float(st.bad_table[rows, list(weights.values_tuple)].sum())

    def nominal_bad(self, route: RouteRef, weights: Weights, load_factor: float) -> float:
        """The modelled bad-request fraction (0..1) of `weights` on `route` fed `load_factor`
        times the rate of the last decision, every version at its configured capacity and
        without errors: how much headroom the split leaves for a burst, whatever the
        estimates say (NaN before the first decision or for other versions)."""
        st = self._routes.get(route)
        if st is None or not st.models or tuple(weights.subsets) != st.subsets:
            return math.nan
        share = np.asarray(weights.values_tuple, dtype=np.float64) / WEIGHT_TOTAL
        replicas = np.array([m.replicas for m in st.models], dtype=np.int64)
        mu = np.array([1000.0 / m.service_ms for m in st.models], dtype=np.float64)
        rate = share * st.rate_rps * load_factor
        return float(np.sum(share * LeastRequestQueues(replicas, mu, rate).slow(st.slo_ms)))

    @staticmethod
    def service_ms(est: VersionEstimate, slo_ms: float) -> float:
        """The healthy service time the model uses (ms): the fit, at most a third of the SLO;
        a tenth of the SLO before any fit."""
        return min(est.service_ms, slo_ms / 3.0) if _finite(est.service_ms) else slo_ms / 10.0

    @staticmethod
    def model_service_ms(est: VersionEstimate, capacity_rps: float, slo_ms: float) -> float:
        """`service_ms`, at least one replica's worth of the nominal capacity (ms): the
        service time every use of the model starts from."""
        return max(PlannerPolicy.service_ms(est, slo_ms), 1000.0 / capacity_rps)

    def model(self, est: VersionEstimate, capacity_rps: float, slo_ms: float) -> VersionModel:
        """The queueing model of a version with estimates `est`, nominal capacity (rps) and
        the route's SLO (ms)."""
        replicas, svc = shape(capacity_rps, self.model_service_ms(est, capacity_rps, slo_ms))
        return VersionModel(replicas, svc, min(max(est.error, 0.0), 1.0), est.health)


def impaired(est: VersionEstimate) -> bool:
    """Whether the estimates hold a fault against a version: capacity below
    `IMPAIRED_HEALTH` of the configured one or a 5xx rate above `IMPAIRED_ERROR`. Only such
    a version is worth a probe; one left idle because it is small is known well enough."""
    return est.health < IMPAIRED_HEALTH or est.error > IMPAIRED_ERROR


def slow_ratio_bound(slow_ratio: float, rps: float, window_s: float = math.nan) -> float:
    """The lower bound (0..1) the health inversion reads for a window's `slow_ratio` at
    `rps` requests per second over `window_s` seconds (`SLOW_EVIDENCE_Z`; `RATE_WINDOW_S`
    where the window is unknown, not positive or infinite)."""
    ratio = min(max(slow_ratio, 0.0), 1.0)
    requests = rps * (window_s if _finite(window_s) and window_s > 0 else RATE_WINDOW_S)
    if not requests > 0:
        return 0.0  # no requests, no evidence
    return max(ratio - SLOW_EVIDENCE_Z * math.sqrt(ratio / requests), 0.0)


def planning_rps(obs: Observation) -> float:
    """The rate (rps) the planner plans `obs`'s route for: `route_rps` (the window's), or the
    newest interval's total when every version reports one and it is more than `BURST_RATIO`
    times that; NaN when nothing usable was seen."""
    rate = route_rps(obs)
    recent = [stats.recent_rps for stats in obs.stats]
    if _finite(rate) and all(_finite(r) and r >= 0 for r in recent):
        newest = math.fsum(recent)
        if newest > BURST_RATIO * rate:
            return newest
    return rate


def current_split(obs: Observation) -> Weights | None:
    """The split in force on `obs`'s route, or None when its weights are not a valid split
    (integers 0..100 summing to 100)."""
    try:
        return obs.weights
    except ValueError:
        return None


def route_runs(observations: Sequence[Observation]) -> list[list[Observation]]:
    """`observations` cut, in order, into runs in which no route repeats: a route's second
    observation in one batch must see the state its first one left."""
    runs: list[list[Observation]] = [[]]
    seen: set[RouteRef] = set()
    for obs in observations:
        if obs.route in seen:
            runs.append([])
            seen = set()
        runs[-1].append(obs)
        seen.add(obs.route)
    return [run for run in runs if run]


class _Updates:
    """One tick's evidence for many versions: the relaxation and the error ratio are taken at
    once; the p99 checks of the relaxations, the fits and then the health inversions are
    computed as arrays (`apply`)."""

    def __init__(self) -> None:
        self.relaxed: list[tuple[VersionEstimate, float, float, float, float, float]] = []
        self.fits: list[tuple[VersionEstimate, float, float, float]] = []
        self.slow: list[tuple[VersionEstimate, float, float, float, float]] = []
        self.saturated: list[tuple[VersionEstimate, float]] = []
        self.p99s: list[tuple[VersionEstimate, float, float, float, float]] = []

    def relax(
        self, est: VersionEstimate, factor: float, stats: SubsetStats, cap: float, slo_ms: float
    ) -> None:
        """Move `est`'s health and error rate toward healthy (log health and error times
        `factor`); a health that rose on a version with traffic and a p99 is checked against
        that p99 in `apply`. A version with weight whose sample is missing (a dropped scrape)
        keeps both: it is not known to be idle, and nothing says its fault is over."""
        rps, p99 = stats.rps, stats.p99_ms
        if stats.weight > 0 and not _finite(rps):
            return
        before = est.health
        est.health = math.exp(math.log(est.health) * factor)
        est.error *= factor
        if est.health > before and _finite(rps) and rps >= MIN_RPS and _finite(p99) and p99 > 0:
            svc = PlannerPolicy.model_service_ms(est, cap, slo_ms)
            self.relaxed.append((est, before, cap, svc, rps, p99))

    def observe(
        self, est: VersionEstimate, stats: SubsetStats, cap: float, slo_ms: float, window_s: float
    ) -> None:
        """Take one version's stats of a window of `window_s` seconds (NaN: unknown) as
        evidence: the error ratio at once; the service-time fit, the slow ratio's health
        inversion and the saturation cap in `apply`."""
        rps = stats.rps
        if not (_finite(rps) and rps >= MIN_RPS):
            return
        if _finite(stats.error_ratio):
            est.error = 0.5 * est.error + 0.5 * min(max(stats.error_ratio, 0.0), 1.0)
        healthy = (
            _finite(stats.slow_ratio)
            and stats.slow_ratio <= HEALTHY_SLOW
            and _finite(stats.p99_ms)
            and 0 < stats.p99_ms <= slo_ms
        )
        if healthy:
            est.healthy_seen += 1
        # The first SERVICE_FITS healthy observations, then every SERVICE_FITS-th.
        due = est.healthy_seen <= SERVICE_FITS or est.healthy_seen % SERVICE_FITS == 0
        if healthy and due:
            self.fits.append((est, cap, rps, stats.p99_ms))
        evidence = math.nan
        if _finite(stats.slow_ratio):
            evidence = min(slow_ratio_bound(stats.slow_ratio, rps, window_s), SLOW_SATURATED)
            self.slow.append((est, cap, rps, evidence, slo_ms))
        if not evidence > 0 and _finite(stats.p99_ms) and stats.p99_ms > 0:
            # The slow ratio says nothing (none beyond noise, or unknown): the p99 may.
            svc = PlannerPolicy.model_service_ms(est, cap, slo_ms)
            self.p99s.append((est, cap, svc, rps, stats.p99_ms))
        if _finite(stats.slow_ratio):
            recent = stats.recent_slow_ratio
            if stats.slow_ratio > HEALTHY_SLOW and _finite(recent) and recent > SLOW_SATURATED:
                self.saturated.append((est, SATURATED_SHED * rps / cap))

    def apply(self) -> None:
        self._check_relaxations()
        self._fit_service_times()
        self._infer_health()
        self._raise_to_the_p99()
        for est, bound in self.saturated:
            est.health = max(min(est.health, bound), HEALTH_RANGE[0])

    def _check_relaxations(self) -> None:
        """Undo this tick's relaxation where the observed p99 is above `RELAX_P99` times the
        model's at the relaxed health h (capacity C h, service time m / h, same replicas)."""
        if not self.relaxed:
            return
        ests, befores, caps, svcs, rates, p99s = zip(*self.relaxed, strict=True)
        health = np.array([est.health for est in ests], dtype=np.float64)
        modelled = model_p99_ms_each(
            np.asarray(caps) * health, np.asarray(svcs) / health, np.asarray(rates)
        ).tolist()
        for est, before, model, observed in zip(ests, befores, modelled, p99s, strict=True):
            if observed > RELAX_P99 * model:
                est.health = before

    def _raise_to_the_p99(self, steps: int = 16) -> None:
        """Raise the health of versions whose observed p99 is below the model's at their
        health over `RAISE_P99` (see there) to the least of `steps` evenly spaced values up to
        nominal (1) at which the model's p99 is at most `RELAX_P99` times the observed one, or
        to nominal where none is."""
        below = [row for row in self.p99s if row[0].health < 1.0]
        if not below:
            return
        ests, *columns = zip(*below, strict=True)
        caps, svcs, rates, p99s = (np.asarray(col, dtype=np.float64) for col in columns)
        now = np.array([est.health for est in ests], dtype=np.float64)
        # Column 0: the current health; then `steps` values up to 1.
        health = now[:, None] + (1.0 - now)[:, None] * np.linspace(0.0, 1.0, steps + 1)[None, :]
        modelled = model_p99_ms_each(caps[:, None] * health, svcs[:, None] / health, rates[:, None])
        contradicted = modelled[:, 0] > RAISE_P99 * p99s
        fits = modelled <= RELAX_P99 * p99s[:, None]
        first = np.where(fits.any(axis=1), fits.argmax(axis=1), steps)
        for i in np.flatnonzero(contradicted):
            ests[i].health = float(health[i, first[i]])

    def _fit_service_times(self) -> None:
        if self.fits:
            _, caps, rates, p99s = zip(*self.fits, strict=True)
            fits = fit_service_ms_each(caps, rates, p99s).tolist()
            for (est, *_), fit in zip(self.fits, fits, strict=True):
                if not math.isnan(fit):
                    est.fits += 1
                    gain = 1.0 / min(est.fits, SERVICE_FITS)
                    previous = math.log(est.service_ms) if _finite(est.service_ms) else 0.0
                    est.service_ms = math.exp((1 - gain) * previous + gain * math.log(fit))

    def _infer_health(self) -> None:
        if not self.slow:
            return
        svcs = [PlannerPolicy.model_service_ms(est, cap, slo) for est, cap, _, _, slo in self.slow]
        _, caps, rates, slows, slos = zip(*self.slow, strict=True)
        inferred = infer_health_each(caps, svcs, rates, slows, slos).tolist()
        for (est, *_), observed in zip(self.slow, inferred, strict=True):
            if math.isnan(observed):
                continue
            if NOMINAL_BAND[0] <= observed <= NOMINAL_BAND[1]:
                observed = 1.0
            if observed < FAULT_DROP * est.health:  # a fault: believe it at once
                est.health = observed
            else:
                est.health = math.exp(
                    (1 - HEALTH_GAIN) * math.log(est.health) + HEALTH_GAIN * math.log(observed)
                )

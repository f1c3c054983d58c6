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
  under an old name) while the health estimate is at least `FIT_HEALTH` (a fit at nominal
  capacity would absorb a capacity loss into the service time); at most a third of the SLO;
  before any fit, a tenth of the SLO.
  Replicas r = round(C m / 1000) >= 1, and m is then set so that r / m = C exactly. It fixes
  the shape of the tail (few fast or many slow servers).
* **health** h (the capacity factor, 1 = nominal): the h at which the model's
  P(latency > SLO) at the version's observed rate equals its observed slow ratio (bisection in
  log h; the model is monotone in h). A drop below `FAULT_DROP` of the current estimate is
  taken at once (overload compounds) while the newest interval agrees the version is slow;
  smaller moves, and a slow window over a clean newest interval, are smoothed. The slow ratio
  is read as its lower confidence bound for the window's request count (`SLOW_EVIDENCE_Z`), so
  a few stray slow requests on a lightly used version are not a fault. A version saturated in
  the newest interval, and slow in the window, is capped at once at `SATURATED_SHED` of its
  rate over C, so its backlog drains instead of holding at the edge of overload. Where the
  SLO is many service times the slow ratio shows a capacity loss only once the backlog is
  seconds deep; the newest interval's p99 shows it at once. A newest p99 far above its
  modelled value, judged against how far that version's p99 strays while healthy
  (`P99_ALARM_Z`), with a window that agrees, is read as a fault at once: the health whose
  modelled p99 matches it.
* **error rate** e: exponentially smoothed 5xx ratio.

The split is planned for the route's rate over the window, or over the newest interval
(`SubsetStats.recent_rps`; 0 for a version without requests) when that is more than
`BURST_RATIO` times higher: a burst overloads versions a tick after it starts, and shows in
full in the window's average only after a whole window (30 s); a falling load is followed at
the window's pace, so one interval's noise does not move the split. A tick whose samples
cover less than `KNOWN_SHARE` of the weight leaves the rate where it was. While such a burst
shows, slow ratios and p99s are not read as health: the backlog a burst builds
before the split follows it is load, not lost capacity, and read as a capacity loss it
leaves the planner short of capacity for minutes, overflowing into one small version
(docs/experiments.md, "The supervisor's way back, one-point moves, and health readings
held during a burst").

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

The model queues each version as the route's balancer does (`Observation.balancer`): behind
least-request a version near its capacity queues far less than behind random balancing,
where every replica queues on its own; a planner that took one for the other would misread
the same slow ratio as a capacity loss, or load a version of many slow replicas too far.

Without capacity hints the model has no scale: the planner then writes the square-root rule's
split (`agents.baselines.SqrtPolicy`). To keep a settled route still, the current split is kept
unless the new one lowers the modelled bad fraction by more than `min_gain` (relative) and
`min_gain_abs` (absolute). The model is only as good as its estimates, so the objective also
pulls each share toward the square-root split of the estimated capacities (`pull` x squared
share distance): a hedge that the model overrides only for a clear gain (a failing or
overloaded version).

The estimates and the constants that read them (`HEALTHY_SLOW`, `SATURATED_SHED`, `RELAX_P99`,
...) are `agents.version_estimates`; the queueing model of one version is
`agents.version_model`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agents.baselines import SqrtPolicy, route_rps, sqrt_shares
from agents.queueing import BalancedQueues, exponential_cost_tables, min_plus_splits
from agents.version_estimates import EstimateUpdates, VersionEstimate, model_service_ms
from agents.version_model import VersionModel, shape
from meshcore.model import WEIGHT_TOTAL, Observation, RouteRef, Weights, finite

PROBE_COST = 1.0
"""Cost (bad-fraction units) per point a probed version gets below `probe_points`: more than
any split can save, so a due probe is always written."""
IMPAIRED_HEALTH = 0.9
"""A health estimate below this (more than a tenth of the configured capacity gone) holds a
fault against a version (`impaired`)."""
IMPAIRED_ERROR = 0.01
"""An error-rate estimate above this (1 % 5xx) holds a fault against a version (`impaired`)."""
BURST_RATIO = 1.1
"""The newest interval's rate replaces the window's as the rate to plan for when it is more
than this many times higher (chosen on 180 meshes of the validation range: 1.05 did as well,
1.2 worse; planning for the newest rate always moved the split more for less)."""
KNOWN_SHARE = 0.5
"""The route's rate is re-estimated only from a tick whose versions with a sample hold at least
this share of the weight in force; otherwise the last rate stands. Scaling a small version's
rate up by its weight (a dropped scrape of the big ones) multiplies its noise and its backlog
into the whole route's load."""
DEFAULT_SLO_MS = 250.0
"""SLO (ms) used when an observation does not say which one its slow ratios refer to."""


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
    random: bool = False


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
        work = EstimateUpdates()
        for i, obs in enumerate(run):
            caps = obs.capacity_hint_rps
            if len(caps) != len(obs.subsets) or not all(finite(c) and c > 0 for c in caps):
                decided[i] = self._fallback.decide(obs)
                continue
            st = self._routes.setdefault(obs.route, _RouteState())
            slo_ms = obs.slo_ms if finite(obs.slo_ms) and obs.slo_ms > 0 else DEFAULT_SLO_MS
            dt = obs.timestamp_s - st.last_t_s if finite(st.last_t_s) else 0.0
            st.last_t_s = obs.timestamp_s
            relax = math.exp(-max(dt, 0.0) / self.recovery_s)
            st.random = obs.balancer == "random"
            rate, burst = planning_rate(obs)
            for name, stats, cap in zip(obs.subsets, obs.stats, caps, strict=True):
                est = st.versions.setdefault(name, VersionEstimate())
                if stats.weight > 0:
                    est.idle_since_s = math.nan
                elif math.isnan(est.idle_since_s):
                    est.idle_since_s = obs.timestamp_s
                work.relax(est, relax, stats, cap, slo_ms, st.random)
                work.observe(est, stats, cap, slo_ms, obs.window_s, st.random, burst)
            if finite(rate) and rate > 0:
                st.last_rps = rate
            if finite(st.last_rps) and st.last_rps > 0:
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
        costs = exponential_cost_tables(tables, [st.random for _, st, _, _ in planned])
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
            idle = finite(est.idle_since_s) and obs.timestamp_s - est.idle_since_s >= self.probe_s
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
        queues = BalancedQueues(replicas, mu, rate, st.random)
        return float(np.sum(share * queues.slow(st.slo_ms)))

    def model(self, est: VersionEstimate, capacity_rps: float, slo_ms: float) -> VersionModel:
        """The queueing model of a version with estimates `est`, nominal capacity (rps) and
        the route's SLO (ms)."""
        replicas, svc = shape(capacity_rps, model_service_ms(est, capacity_rps, slo_ms))
        return VersionModel(replicas, svc, min(max(est.error, 0.0), 1.0), est.health)


def impaired(est: VersionEstimate) -> bool:
    """Whether the estimates hold a fault against a version: capacity below
    `IMPAIRED_HEALTH` of the configured one or a 5xx rate above `IMPAIRED_ERROR`. Only such
    a version is worth a probe; one left idle because it is small is known well enough."""
    return est.health < IMPAIRED_HEALTH or est.error > IMPAIRED_ERROR


def planning_rate(obs: Observation) -> tuple[float, bool]:
    """The rate (rps) the planner plans `obs`'s route for, and whether the route is bursting:
    `route_rps` (the window's), or, bursting, the newest interval's total when every version
    reports one and it is more than `BURST_RATIO` times that; NaN when nothing usable was seen,
    or too little of it (`KNOWN_SHARE`)."""
    known = sum(stats.weight for stats in obs.stats if finite(stats.rps))
    if known < KNOWN_SHARE * sum(stats.weight for stats in obs.stats):
        return math.nan, False
    rate = route_rps(obs)
    # a version without requests in the window had none in its newest interval either
    recent = [0.0 if stats.rps == 0 else stats.recent_rps for stats in obs.stats]
    if finite(rate) and all(finite(r) and r >= 0 for r in recent):
        newest = math.fsum(recent)
        if newest > BURST_RATIO * rate:
            return newest, True
    return rate, False


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

"""The planner: the oracle's objective solved on parameters estimated from telemetry alone.

Why: the oracle (`agents.oracle`) knows every version's true capacity and error rate; a
controller only sees Prometheus. The planner estimates, per version and every tick, the three
numbers the oracle's queueing model (`agents.queueing`) needs and then picks the integer split
that minimizes the modelled bad-request fraction, exactly as the oracle does. It is a peer
baseline (``--policy planner``) and the fallback of the serving supervisor
(`agents.supervisor`), so it needs numpy only.

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
  taken at once (overload compounds); smaller moves are smoothed.
* **error rate** e: exponentially smoothed 5xx ratio.

Every tick h and e first relax toward the healthy prior with time constant `recovery_s`,
then move with the evidence; a version without traffic gives none, so traffic returns to it
after a fault ends and is cut again if the fault is still there. Without capacity hints the
model has no scale: the planner then writes the square-root rule's split
(`agents.baselines.SqrtPolicy`). To keep a settled route still, the current split is kept
unless the new one lowers the modelled bad fraction by more than `min_gain` (relative) and
`min_gain_abs` (absolute). The model is only as good as its estimates, so the objective also
pulls each share toward the square-root split of the estimated capacities (`pull` x squared
share distance): a hedge that the model overrides only for a clear gain (a failing or
overloaded version).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agents.baselines import SqrtPolicy, route_rps, sqrt_shares
from agents.queueing import cost_table, min_plus_split, slow_probability
from meshcore.model import WEIGHT_TOTAL, Observation, RouteRef, SubsetStats, Weights

HEALTH_RANGE = (0.02, 1.5)
"""Bounds of the estimated capacity factor."""
MIN_RPS = 0.5
"""Below this rate (rps) a version's ratios are too noisy to update its estimates."""
SERVICE_FITS = 12
"""Healthy observations averaged into a version's first service-time estimate; later ones move
it with weight 1 / SERVICE_FITS."""
HEALTHY_SLOW = 0.05
"""Largest slow ratio of an observation the service-time fit trusts (a faulty or overloaded
version's p99 would make its healthy service time look slow, and keep it out for good)."""
FAULT_DROP = 0.7
"""A health estimate below this fraction of the current one is a fault, believed at once;
smaller moves are smoothed with weight `HEALTH_GAIN`, so queue noise does not move the split."""
HEALTH_GAIN = 0.3
SLOW_SATURATED = 0.9
"""Slow ratios above this only say the version is saturated (health at most its rate over its
nominal capacity), not by how much: the inversion reads them as this value, so one overloaded
window does not drive the estimate to the floor and the split to the other extreme."""
NOMINAL_BAND = (0.85, 1.2)
"""Health estimates within this band count as nominal (1): at high utilization the slow ratio
of a healthy version swings by 10x from one window to the next."""
DEFAULT_SLO_MS = 250.0
"""SLO (ms) used when an observation does not say which one its slow ratios refer to."""


@dataclass(frozen=True)
class VersionModel:
    """One version as the planner believes it is; satisfies `agents.queueing.QueueParams`."""

    replicas: int
    service_ms: float
    error_rate: float
    capacity_factor: float
    service_dist: str = "exponential"
    cv: float = 1.0

    @property
    def mu_rps(self) -> float:
        return 1000.0 / self.service_ms * self.capacity_factor

    @property
    def capacity_rps(self) -> float:
        return self.replicas * self.mu_rps


@dataclass
class VersionEstimate:
    """What the planner has learned about one version (see the module docstring)."""

    service_ms: float = math.nan
    health: float = 1.0
    error: float = 0.0
    fits: int = 0
    healthy_seen: int = 0


@dataclass
class _RouteState:
    versions: dict[str, VersionEstimate] = field(default_factory=dict)
    last_t_s: float = math.nan
    last_rps: float = math.nan
    subsets: tuple[str, ...] = ()
    bad_table: np.ndarray | None = None


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def shape(capacity_rps: float, service_ms: float) -> tuple[int, float]:
    """(replicas, service time in ms) with replicas / service time = `capacity_rps` exactly."""
    replicas = max(1, round(capacity_rps * service_ms / 1000.0))
    return replicas, replicas * 1000.0 / capacity_rps


def model_p99_ms(capacity_rps: float, service_ms: float, rate_rps: float) -> float:
    """The model's p99 latency (ms) of a healthy version fed `rate_rps` (bisection on the tail)."""
    replicas, svc = shape(capacity_rps, service_ms)
    model = VersionModel(replicas, svc, 0.0, 1.0)
    lo, hi = math.log(svc * 0.01), math.log(svc * 1e4)
    for _ in range(10):  # 1.3 % of the 1e6 range: p99 only needs to be near
        mid = (lo + hi) / 2.0
        tail = slow_probability(model, rate_rps, slo_ms=math.exp(mid), balancer="least_request")
        if float(tail[0]) > 0.01:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


def fit_service_ms(capacity_rps: float, rate_rps: float, p99_ms: float) -> float | None:
    """Mean service time (ms) at which a healthy version of nominal capacity `capacity_rps`
    fed `rate_rps` has p99 `p99_ms` in the model; None from 95 % of capacity on, where the p99
    says nothing about it. Searched from one replica up to 64 (bisection in log space)."""
    if rate_rps >= 0.95 * capacity_rps:
        return None
    lo, hi = math.log(1000.0 / capacity_rps), math.log(64 * 1000.0 / capacity_rps)
    if model_p99_ms(capacity_rps, math.exp(lo), rate_rps) >= p99_ms:
        return math.exp(lo)
    for _ in range(8):  # 1.6 % in service time
        mid = (lo + hi) / 2.0
        if model_p99_ms(capacity_rps, math.exp(mid), rate_rps) < p99_ms:
            lo = mid
        else:
            hi = mid
    return math.exp(lo)


def anchor_penalty(capacity_rps: list[float], load_rps: float) -> np.ndarray:
    """Per version and weight 0..100: squared distance of the share from the square-root
    split of `capacity_rps` at `load_rps` (capacity-proportional where that rule does not
    apply), the hedge that keeps a split near the rule unless the model sees a clear gain."""
    total = math.fsum(capacity_rps)
    shares = sqrt_shares(capacity_rps, load_rps) or [c / total for c in capacity_rps]
    frac = np.arange(WEIGHT_TOTAL + 1, dtype=np.float64) / WEIGHT_TOTAL
    return np.asarray((frac[None, :] - np.asarray(shares)[:, None]) ** 2)


def infer_health(
    capacity_rps: float, service_ms: float, rate_rps: float, slow_ratio: float, slo_ms: float
) -> float | None:
    """Capacity factor at which the model's P(latency > slo_ms) at `rate_rps` is `slow_ratio`.

    Clipped below to `HEALTH_RANGE`; None when even the best health in range predicts as many
    slow requests (a lightly loaded version: the ratio says nothing). The modelled slow
    probability falls as the factor rises, so a bisection in log space finds it."""
    replicas, svc = shape(capacity_rps, service_ms)
    lo, hi = math.log(HEALTH_RANGE[0]), math.log(HEALTH_RANGE[1])

    def slow(log_h: float) -> float:
        model = VersionModel(replicas, svc, 0.0, math.exp(log_h))
        return float(slow_probability(model, rate_rps, slo_ms=slo_ms, balancer="least_request")[0])

    if slow(hi) >= slow_ratio:  # no slower than the model at its best health: no evidence
        return None
    if slow(lo) <= slow_ratio:
        return math.exp(lo)
    for _ in range(10):  # 0.4 % in health
        mid = (lo + hi) / 2.0
        if slow(mid) > slow_ratio:
            lo = mid
        else:
            hi = mid
    return math.exp(hi)


class PlannerPolicy:
    """Model-based split from telemetry (see the module docstring); one instance, many routes.

    recovery_s: time constant (s) with which an unobserved version's estimates return to
    healthy; min_gain / min_gain_abs: how much lower (relative, absolute) the modelled bad
    fraction of a new split must be before the current split is replaced; pull: weight of the
    squared distance from the square-root split (bad-fraction units per squared share; 0.03
    chosen on 40 scenarios of the validation range against 0, 0.003 and 0.01).
    """

    name = "planner"

    def __init__(
        self,
        *,
        recovery_s: float = 120.0,
        min_gain: float = 0.1,
        min_gain_abs: float = 5e-5,
        pull: float = 0.03,
        balancer: str = "least_request",
    ) -> None:
        self.recovery_s = recovery_s
        self.min_gain = min_gain
        self.min_gain_abs = min_gain_abs
        self.pull = pull
        self.balancer = balancer
        self._routes: dict[RouteRef, _RouteState] = {}
        self._fallback = SqrtPolicy()

    def reset(self) -> None:
        self._routes.clear()
        self._fallback.reset()

    def estimates(self, route: RouteRef) -> dict[str, VersionEstimate]:
        """The current estimates of `route`'s versions (empty before its first decision)."""
        st = self._routes.get(route)
        return dict(st.versions) if st else {}

    def decide(self, obs: Observation) -> Weights:
        caps = list(obs.capacity_hint_rps)
        if len(caps) != len(obs.subsets) or not all(_finite(c) and c > 0 for c in caps):
            return self._fallback.decide(obs)
        st = self._routes.setdefault(obs.route, _RouteState())
        slo_ms = obs.slo_ms if _finite(obs.slo_ms) and obs.slo_ms > 0 else DEFAULT_SLO_MS
        dt = obs.timestamp_s - st.last_t_s if _finite(st.last_t_s) else 0.0
        st.last_t_s = obs.timestamp_s
        relax = math.exp(-max(dt, 0.0) / self.recovery_s)
        for name, stats, cap in zip(obs.subsets, obs.stats, caps, strict=True):
            est = st.versions.setdefault(name, VersionEstimate())
            est.health = math.exp(math.log(est.health) * relax)
            est.error *= relax
            self._update(est, stats, cap, slo_ms)
        rate = route_rps(obs)
        if _finite(rate) and rate > 0:
            st.last_rps = rate
        rate = st.last_rps
        current = self._current(obs)
        if not (_finite(rate) and rate > 0):
            return current or self._fallback.decide(obs)
        models = [
            self.model(st.versions[n], c, slo_ms) for n, c in zip(obs.subsets, caps, strict=True)
        ]
        cost = cost_table(models, rate, slo_ms=slo_ms, balancer=self.balancer)
        st.subsets, st.bad_table = obs.subsets, cost
        if self.pull > 0:
            cost = cost + self.pull * anchor_penalty([m.capacity_rps for m in models], rate)
        best = min_plus_split(cost)
        if current is not None:
            rows = np.arange(len(models))
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

    @staticmethod
    def service_ms(est: VersionEstimate, slo_ms: float) -> float:
        """The healthy service time the model uses (ms): the fit, at most a third of the SLO;
        a tenth of the SLO before any fit."""
        return min(est.service_ms, slo_ms / 3.0) if _finite(est.service_ms) else slo_ms / 10.0

    def model(self, est: VersionEstimate, capacity_rps: float, slo_ms: float) -> VersionModel:
        """The queueing model of a version with estimates `est`, nominal capacity (rps) and
        the route's SLO (ms)."""
        svc = max(self.service_ms(est, slo_ms), 1000.0 / capacity_rps)
        replicas, svc = shape(capacity_rps, svc)
        return VersionModel(replicas, svc, min(max(est.error, 0.0), 1.0), est.health)

    @staticmethod
    def _current(obs: Observation) -> Weights | None:
        values = [s.weight for s in obs.stats]
        valid = (isinstance(v, int) and not isinstance(v, bool) for v in values)
        if (
            all(valid)
            and all(0 <= v <= WEIGHT_TOTAL for v in values)
            and (sum(values) == WEIGHT_TOTAL)
        ):
            return Weights(obs.subsets, values)
        return None

    @staticmethod
    def _update(est: VersionEstimate, stats: SubsetStats, cap: float, slo_ms: float) -> None:
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
        # The first SERVICE_FITS healthy observations, then every SERVICE_FITS-th (a fit costs
        # about a hundred tail evaluations).
        due = est.healthy_seen <= SERVICE_FITS or est.healthy_seen % SERVICE_FITS == 0
        fit = fit_service_ms(cap, rps, stats.p99_ms) if healthy and due else None
        if fit is not None:
            est.fits += 1
            gain = 1.0 / min(est.fits, SERVICE_FITS)
            previous = math.log(est.service_ms) if _finite(est.service_ms) else 0.0
            est.service_ms = math.exp((1 - gain) * previous + gain * math.log(fit))
        if not _finite(stats.slow_ratio):
            return
        slow = min(stats.slow_ratio, SLOW_SATURATED)
        svc = max(PlannerPolicy.service_ms(est, slo_ms), 1000.0 / cap)
        observed = infer_health(cap, svc, rps, slow, slo_ms)
        if observed is None:
            return
        if NOMINAL_BAND[0] <= observed <= NOMINAL_BAND[1]:
            observed = 1.0
        if observed < FAULT_DROP * est.health:  # a fault: believe it at once
            est.health = observed
        else:
            est.health = math.exp(
                (1 - HEALTH_GAIN) * math.log(est.health) + HEALTH_GAIN * math.log(observed)
            )

"""Fixed-rule policies people use today, each a `Policy` over the same `Observation`.

They are the yardsticks the learned policy has to beat in `meshpilot evaluate`. Every one of
them sees only what the live controller sees (Prometheus-style stats, NaN where there was no
data, and the nominal capacity hint), always returns valid `Weights`, and keeps whatever state
it needs per route (keyed by ``obs.route``) so one instance can manage many routes;
``reset()`` forgets that state.

=============  ==============================================================================
 name          rule
=============  ==============================================================================
 equal         the same weight everywhere (Istio without a weighted route)
 proportional  weights proportional to nominal capacity
 sqrt          square-root rule: optimal static split for the *mean* latency of parallel
               M/M/1 queues, from nominal capacity and the observed route rate
 greedy        hill climbing: move 5 points from the subset with the worst smoothed score
               (p99 and 5xx) to the best one
 canary        Flagger's progressive canary analysis (step 10 %, max 50 %, 5 failed checks)
 ewma          weights toward capacity / (peak-EWMA latency x (1 + load)), after Linkerd
=============  ==============================================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from meshcore.model import WEIGHT_TOTAL, Observation, RouteRef, Weights, finite, largest_remainder


def _capacities(obs: Observation) -> list[float]:
    """Nominal capacity per subset (rps); all ones when the hint is missing or unusable."""
    caps = [c if finite(c) and c > 0 else 0.0 for c in obs.capacity_hint_rps]
    return caps if caps and sum(caps) > 0 else [1.0] * len(obs.subsets)


def _proportional(obs: Observation) -> Weights:
    return Weights(obs.subsets, largest_remainder(_capacities(obs)))


def route_rps(obs: Observation) -> float:
    """Best estimate of the route's arrival rate (rps) from a possibly incomplete observation.

    Subsets whose sample was dropped are filled in from the configured weights: the known
    rates are scaled by 100 / (their weights). NaN when nothing usable was seen.
    """
    known_rps = [s.rps for s in obs.stats if finite(s.rps)]
    if not known_rps:
        return math.nan
    total = math.fsum(known_rps)
    if len(known_rps) == len(obs.stats):
        return total
    known_weight = sum(s.weight for s in obs.stats if finite(s.rps))
    if known_weight <= 0:
        return math.nan
    return total * WEIGHT_TOTAL / known_weight


class EqualPolicy:
    """The same weight for every subset (Istio's behaviour without a weighted route)."""

    name = "equal"

    def decide(self, obs: Observation) -> Weights:
        return Weights(obs.subsets, largest_remainder([1.0] * len(obs.subsets)))

    def reset(self) -> None:
        return None


class ProportionalPolicy:
    """Weights proportional to each subset's nominal capacity (rps)."""

    name = "proportional"

    def decide(self, obs: Observation) -> Weights:
        return _proportional(obs)

    def reset(self) -> None:
        return None


def sqrt_rule(capacity_rps: Sequence[float], load_rps: float) -> list[float]:
    """Square-root rule: the rates x_i (rps) that minimize mean response time over parallel
    M/M/1 servers of rates mu_i carrying `load_rps` in total.

    x_i = mu_i - sqrt(mu_i) * (sum_S mu - lambda) / sum_S sqrt(mu) over the set S of the fastest
    servers that keeps every x_i > 0 (slower servers get 0). Needs 0 < lambda < sum mu.
    """
    mu = [float(m) for m in capacity_rps]
    total = math.fsum(m for m in mu if m > 0)
    if not (0 < load_rps < total):
        raise ValueError(f"sqrt rule needs 0 < load ({load_rps}) < total capacity ({total})")
    active = sorted((i for i, m in enumerate(mu) if m > 0), key=lambda i: (-mu[i], i))
    while True:
        excess = math.fsum(mu[i] for i in active) - load_rps
        k = excess / math.fsum(math.sqrt(mu[i]) for i in active)
        x = {i: mu[i] - math.sqrt(mu[i]) * k for i in active}
        if len(active) == 1:
            return [load_rps if i == active[0] else 0.0 for i in range(len(mu))]
        if x[active[-1]] > 0:
            return [x.get(i, 0.0) for i in range(len(mu))]
        active.pop()


def sqrt_shares(capacity_rps: Sequence[float], load_rps: float) -> list[float] | None:
    """`sqrt_rule` as traffic shares (sum 1), or None where the rule does not apply (no load,
    or at/over the total capacity). The rule is scale-free: capacities may be in rps or in
    shares of the total, with the load in the same unit."""
    total = math.fsum(c for c in capacity_rps if c > 0)
    if not (0 < load_rps < total):
        return None
    rates = sqrt_rule(capacity_rps, load_rps)
    served = math.fsum(rates)
    return [x / served for x in rates] if served > 0 else None


class SqrtPolicy:
    """Square-root rule on nominal capacity (`capacity_hint_rps`) and the observed route rate.

    It is the textbook optimum for *mean* latency of parallel M/M/1 queues (each subset seen as
    one server of its total capacity): faster subsets get more than their capacity share, slow
    ones are dropped at low load. Falls back to capacity-proportional weights while the route
    rate is unknown (no data yet) or at/over total capacity, where the rule does not apply; a
    rate seen earlier on the same route is reused while telemetry is missing.
    """

    name = "sqrt"

    def __init__(self) -> None:
        self._last_rps: dict[RouteRef, float] = {}

    def reset(self) -> None:
        self._last_rps.clear()

    def decide(self, obs: Observation) -> Weights:
        rate = route_rps(obs)
        if finite(rate) and rate > 0:
            self._last_rps[obs.route] = rate
        else:
            rate = self._last_rps.get(obs.route, math.nan)
        caps = _capacities(obs)
        if not (finite(rate) and 0 < rate < math.fsum(caps)):
            return _proportional(obs)
        rates = sqrt_rule(caps, rate)
        if not any(x > 0 for x in rates):  # rate below float resolution of the capacities
            return _proportional(obs)
        return Weights(obs.subsets, largest_remainder(rates))


@dataclass
class _GreedyRoute:
    p99_ms: dict[str, float] = field(default_factory=dict)
    error_ratio: dict[str, float] = field(default_factory=dict)
    last_move_s: float = -math.inf


class GreedyPolicy:
    """Hill climbing: move `step_points` of weight from the worst subset to the best one.

    A subset's score is ``p99 / slo_ms + error_ratio / 0.01`` on exponentially smoothed
    stats (smoothing factor `alpha` per observation): both terms equal 1 when 1 % of its
    requests are bad (the p99 sits on the SLO, or 1 % of requests fail), so latency and errors
    trade at par. It sheds load only from a subset out of that budget (score above
    `healthy_score`), only when the worst score exceeds the best by more than `hysteresis`
    (relative), and at most once per `cooldown_s` (default 30 s: one Prometheus rate window,
    the time a move needs to show in the stats; moving every 5 s step overshoots into
    overload at 80 % load). Subsets never observed are neither source nor target; a subset
    drained to 0 keeps its last score (it gets traffic back only if that score was good).
    No data at all: the current weights stay.
    """

    name = "greedy"

    def __init__(
        self,
        *,
        step_points: int = 5,
        alpha: float = 0.3,
        hysteresis: float = 0.1,
        cooldown_s: float = 30.0,
        slo_ms: float = 250.0,
        healthy_score: float = 1.0,
    ) -> None:
        if not 1 <= step_points <= WEIGHT_TOTAL:
            raise ValueError(f"step_points must be 1..{WEIGHT_TOTAL}, got {step_points}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.step_points = step_points
        self.alpha = alpha
        self.hysteresis = hysteresis
        self.cooldown_s = cooldown_s
        self.slo_ms = slo_ms
        self.healthy_score = healthy_score
        self._routes: dict[RouteRef, _GreedyRoute] = {}

    def reset(self) -> None:
        self._routes.clear()

    def _smooth(self, table: dict[str, float], name: str, value: float) -> None:
        if not finite(value):
            return
        old = table.get(name)
        table[name] = value if old is None else self.alpha * value + (1 - self.alpha) * old

    def scores(self, obs: Observation) -> dict[str, float]:
        """Current smoothed score per subset that has ever had a p99 (lower is better)."""
        st = self._routes.get(obs.route, _GreedyRoute())
        return {
            name: st.p99_ms[name] / self.slo_ms + st.error_ratio.get(name, 0.0) / 0.01
            for name in obs.subsets
            if name in st.p99_ms
        }

    def decide(self, obs: Observation) -> Weights:
        st = self._routes.setdefault(obs.route, _GreedyRoute())
        for name, s in zip(obs.subsets, obs.stats, strict=True):
            if finite(s.rps) and s.rps > 0:
                self._smooth(st.p99_ms, name, s.p99_ms)
                self._smooth(st.error_ratio, name, s.error_ratio)
        current = obs.weights.as_dict()
        if obs.timestamp_s - st.last_move_s < self.cooldown_s:
            return obs.weights
        scores = self.scores(obs)
        donors = [n for n in obs.subsets if n in scores and current[n] > 0]
        if not donors or len(scores) < 2:
            return obs.weights
        worst = max(donors, key=lambda n: scores[n])
        best = min(scores, key=lambda n: scores[n])
        if (
            worst == best
            or scores[worst] <= self.healthy_score
            or scores[worst] <= scores[best] * (1 + self.hysteresis)
        ):
            return obs.weights
        moved = min(self.step_points, current[worst])
        current[worst] -= moved
        current[best] += moved
        st.last_move_s = obs.timestamp_s
        return Weights(obs.subsets, [current[n] for n in obs.subsets])


@dataclass
class _CanaryRoute:
    canary_weight: int
    next_run_s: float
    phase: str = "progressing"
    failed_checks: int = 0


class CanaryPolicy:
    """Flagger's progressive canary analysis, iteration for iteration.

    Subsets: the first is the stable one (Flagger's ``primary``), all others are the canary
    (their weight is split by nominal capacity; Flagger itself has one canary). Defaults are
    those of Flagger's Istio tutorial: ``interval: 1m, threshold: 5, maxWeight: 50,
    stepWeight: 10``, metrics ``request-success-rate`` min 99 (%) and ``request-duration``
    max 500 (ms, p99). Every `interval_s` of observation time (in between the weights hold),
    following ``pkg/controller/scheduler.go``:

    1. phase promoting: route everything to the primary, phase succeeded (then hold forever);
    2. failed checks >= `threshold`: roll back (primary 100 %), phase failed (hold forever);
    3. canary weight 0: start, no analysis; otherwise run the checks on every canary subset
       with weight; a check fails if the 5xx ratio exceeds 1 %, the p99 exceeds 500 ms, or
       there is no data (Flagger: "no values found" halts advancement); a failed check adds
       one to the failed-check count (never reset during the analysis) and holds the weight;
    4. checks passed: canary weight += `step_weight` while below `max_weight`; once at or above
       it, promote (phase promoting).

    The starting canary weight is the route's current one (Flagger reads the route each
    iteration); the first iteration runs one interval after the first observation.
    Promotion: Flagger copies the canary's spec onto the primary Deployment and routes 100 %
    to the primary, so the weights it writes end at primary 100 / canary 0 after a success as
    after a failure. The simulator's subsets are fixed replica pools (the primary cannot take
    on the canary's code), so by default we write exactly those weights; ``promotion="canary"``
    instead sends everything to the canary pools (the new version keeps serving, on the
    canary's replicas).
    """

    name = "canary"

    def __init__(
        self,
        *,
        interval_s: float = 60.0,
        threshold: int = 5,
        max_weight: int = 50,
        step_weight: int = 10,
        min_success_rate_pct: float = 99.0,
        max_p99_ms: float = 500.0,
        promotion: Literal["primary", "canary"] = "primary",
    ) -> None:
        if interval_s <= 0 or threshold < 1 or not 0 < step_weight <= WEIGHT_TOTAL:
            raise ValueError("canary: interval_s > 0, threshold >= 1 and step_weight 1..100")
        if not 0 < max_weight <= WEIGHT_TOTAL:
            raise ValueError(f"canary: max_weight must be 1..{WEIGHT_TOTAL}, got {max_weight}")
        self.interval_s = interval_s
        self.threshold = threshold
        self.max_weight = max_weight
        self.step_weight = step_weight
        self.min_success_rate_pct = min_success_rate_pct
        self.max_p99_ms = max_p99_ms
        self.promotion = promotion
        self._routes: dict[RouteRef, _CanaryRoute] = {}

    def reset(self) -> None:
        self._routes.clear()

    def phase(self, route: RouteRef) -> str:
        """Flagger phase of `route`: progressing, promoting, succeeded or failed ("" if unseen)."""
        st = self._routes.get(route)
        return st.phase if st else ""

    def _split(self, obs: Observation, canary_weight: int) -> Weights:
        n = len(obs.subsets)
        if n == 1:
            return Weights(obs.subsets, [WEIGHT_TOTAL])
        caps = _capacities(obs)[1:]
        if sum(caps) <= 0:
            caps = [1.0] * (n - 1)
        values = [WEIGHT_TOTAL - canary_weight] + [0] * (n - 1)
        if canary_weight > 0:
            values[1:] = largest_remainder(caps, canary_weight)
        return Weights(obs.subsets, values)

    def _checks_pass(self, obs: Observation, weights: Weights) -> bool:
        for name, s in zip(obs.subsets[1:], obs.stats[1:], strict=True):
            if weights[name] <= 0:
                continue
            if not (finite(s.rps) and s.rps > 0 and finite(s.error_ratio)):
                return False  # no values found
            if 100.0 * (1.0 - s.error_ratio) < self.min_success_rate_pct:
                return False
            if not finite(s.p99_ms) or s.p99_ms > self.max_p99_ms:
                return False
        return True

    def _iterate(self, obs: Observation, st: _CanaryRoute) -> None:
        if st.phase == "promoting":
            st.canary_weight = 0 if self.promotion == "primary" else WEIGHT_TOTAL
            st.phase = "succeeded"
            return
        if st.phase != "progressing":
            return
        if st.failed_checks >= self.threshold:
            st.canary_weight = 0
            st.phase = "failed"
            return
        if st.canary_weight > 0 and not self._checks_pass(obs, self._split(obs, st.canary_weight)):
            st.failed_checks += 1
            return
        if st.canary_weight < self.max_weight:
            st.canary_weight = min(st.canary_weight + self.step_weight, WEIGHT_TOTAL)
        else:
            st.phase = "promoting"

    def decide(self, obs: Observation) -> Weights:
        if len(obs.subsets) == 1:
            return Weights(obs.subsets, [WEIGHT_TOTAL])
        st = self._routes.get(obs.route)
        if st is None:
            current = obs.weights
            st = _CanaryRoute(
                canary_weight=WEIGHT_TOTAL - current[obs.subsets[0]],
                next_run_s=obs.timestamp_s + self.interval_s,
            )
            self._routes[obs.route] = st
        elif obs.timestamp_s >= st.next_run_s:
            while st.next_run_s <= obs.timestamp_s:
                st.next_run_s += self.interval_s
            self._iterate(obs, st)
        return self._split(obs, st.canary_weight)


@dataclass
class _EwmaRoute:
    latency_ms: dict[str, float] = field(default_factory=dict)
    updated_s: dict[str, float] = field(default_factory=dict)


class EwmaPolicy:
    """Weights proportional to size / (peak-EWMA latency x (1 + load)), after Linkerd.

    Linkerd's proxy scores each *endpoint* by its peak-EWMA round-trip time times (pending
    requests + 1) and sends to the cheaper of two. At the route level we only have each
    subset's p99 (ms) and rate, so:

    * latency: jumps up to any p99 sample above the estimate (the "peak") and otherwise decays
      toward new samples with time constant `decay_s` (Linkerd's default 10 s);
    * load: utilization rps / nominal capacity (busy servers per replica, the route-level
      stand-in for pending requests; traffic share x n without a capacity hint);
    * size: the nominal capacity, because Linkerd balances over endpoints and a subset with
      four replicas offers four of them (without it a one-replica subset gets as much as a
      four-replica one and overloads);
    * damping: each step moves the weights a fraction `gain` (default 0.2) of the way to that
      target. Linkerd reacts per request to instantaneous pending counts; a route weight
      reacting at once to a p99 that lags by a 30 s window oscillates into overload.

    Like Linkerd's balancer it does not look at errors. A subset without data keeps its last
    estimate; one never seen gets the median of the others, so every subset keeps some traffic.
    """

    name = "ewma"

    def __init__(self, *, decay_s: float = 10.0, gain: float = 0.2) -> None:
        if decay_s <= 0:
            raise ValueError(f"decay_s must be positive, got {decay_s}")
        if not 0 < gain <= 1:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        self.decay_s = decay_s
        self.gain = gain
        self._routes: dict[RouteRef, _EwmaRoute] = {}

    def reset(self) -> None:
        self._routes.clear()

    def _update(self, st: _EwmaRoute, name: str, sample_ms: float, now_s: float) -> None:
        old = st.latency_ms.get(name)
        if old is None or sample_ms > old:
            st.latency_ms[name] = sample_ms
        else:
            dt = max(now_s - st.updated_s.get(name, now_s), 0.0)
            keep = math.exp(-dt / self.decay_s)
            st.latency_ms[name] = old * keep + sample_ms * (1.0 - keep)
        st.updated_s[name] = now_s

    def decide(self, obs: Observation) -> Weights:
        st = self._routes.setdefault(obs.route, _EwmaRoute())
        for name, s in zip(obs.subsets, obs.stats, strict=True):
            if finite(s.p99_ms) and s.p99_ms >= 0 and finite(s.rps) and s.rps > 0:
                self._update(st, name, s.p99_ms, obs.timestamp_s)
        known = sorted(st.latency_ms[n] for n in obs.subsets if n in st.latency_ms)
        if not known:
            return _proportional(obs)
        fallback = known[len(known) // 2]
        caps = _capacities(obs)
        has_hint = bool(obs.capacity_hint_rps) and any(c > 0 for c in obs.capacity_hint_rps)
        total = route_rps(obs)
        costs = []
        for i, (name, s) in enumerate(zip(obs.subsets, obs.stats, strict=True)):
            lat = max(st.latency_ms.get(name, fallback), 1e-3)
            if not (finite(s.rps) and s.rps >= 0):
                load = 0.0
            elif has_hint:
                load = s.rps / caps[i] if caps[i] > 0 else 0.0
            else:
                load = s.rps * len(obs.subsets) / total if finite(total) and total > 0 else 0.0
            costs.append(lat * (1.0 + load))
        size = caps if has_hint else [1.0] * len(caps)
        target = [z / c for z, c in zip(size, costs, strict=True)]
        mass = math.fsum(target)
        if not (math.isfinite(mass) and mass > 0):
            return _proportional(obs)
        current = [w / WEIGHT_TOTAL for w in obs.weights.values_tuple]
        mixed = [
            (1 - self.gain) * w + self.gain * t / mass for w, t in zip(current, target, strict=True)
        ]
        return Weights(obs.subsets, largest_remainder(mixed))

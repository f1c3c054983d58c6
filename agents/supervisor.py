"""The supervisor: a learned policy may steer a route only while it does no visible harm.

Why: a learned policy that keeps a mesh in overload, or keeps traffic on a version that fails,
does damage a static rule would not do, and will not be trusted in production. The supervisor
wraps a primary policy and a fallback (the model-based `agents.planner.PlannerPolicy` by
default; it is asked every tick, so its estimates are warm when needed) and, per route:

* **harm** is a tick where a version shows trouble the primary's proposal does not relieve:
  it is overloaded (the planner's estimated capacity is below its observed rate, or more than
  `overload_slow` of its requests miss the SLO) or a 5xx outlier (error ratio at least
  `error_outlier` and three times the others' median), and the proposal does not take at
  least `min_relief` points off it (a token cut of a point or two a tick leaves it in
  trouble for minutes);
  or its split's modelled bad fraction (the planner's queueing model at its estimates) is more
  than `model_ratio` times the planner's own split's plus `model_margin`; or it is so at
  `surge` times the current load with every version at its configured capacity (a split that
  loads one version near its capacity while others idle models as well as a balanced one at
  the current load, and is the first to overload when a burst comes; configured capacities,
  not estimates, so a version the estimates still blame after a fault ended does not make
  every split giving it traffic back look fragile; 1 turns the surge check off);
* after `harm_ticks` harmful ticks in a row (default 1: at the first; the hysteresis is on
  the way back) the route falls back: the fallback's split is written, and `last_note` says
  why (the live loop appends it to the decision's reason);
* the route returns to the primary after `hold_ticks` ticks in fallback, once the primary's
  proposal has shown no harm, in telemetry or in the planner's model, for `clear_ticks` ticks
  in a row (hysteresis: no flapping). The model's view counts too: a primary that would
  overload a version again must not get the route back to show it. On the way back the
  model's bar is higher (`back_ratio` and `back_margin` in place of `model_ratio` and
  `model_margin`): a proposal modelled right at the fallback threshold would otherwise hand
  the route back and forth, every hand-over a write, on a mesh where nothing changes.
  The supervisor cannot hold a route for ever on stale evidence: a version the fallback
  keeps without traffic relaxes toward its nominal health in the planner (its
  ``recovery_s``), and gets a probe of a few points after ``probe_s`` if the planner still
  blames it, so its answers tell whether the fault is over.
* **small moves must buy something**: while the primary steers, a proposal that moves no
  version by more than `quiet_points` from the current split is written only if the planner's
  model sees it lower the modelled bad fraction by more than `quiet_gain` (relative) and
  `quiet_gain_abs` (absolute); otherwise the current split stays. A learned policy answers the
  noise of a stationary mesh with moves of a few points; each is a VirtualService patch and an
  Envoy push that buys nothing. The gate only holds on a calm route: while some version misses
  the SLO on `quiet_slow` or more of its requests, in the window or in the newest interval, the
  model's estimates lag what the policy may be reacting to (a fault or a burst shows in the
  newest interval a tick or more before the planner believes it), so every move goes through,
  except one of at most `quiet_floor` points: a point of traffic buys nothing a later tick
  cannot buy. Slow is judged against each version's usual: near capacity some version is
  always a little slow, and a policy answers that noise with moves of a few points. Once a
  route has been watched for `quiet_learn` ticks, a version counts as slow only where its
  ratio also exceeds its usual (a moving average over about `quiet_learn` ticks) by
  `quiet_slow` or three times its usual deviation from it, whichever is larger: a fault or a
  burst, not the load it always carries. Bigger moves go through untouched.

Overload and slowness count only while some other version has room (below 80 % of its
estimated capacity): when every version is in trouble no split is to blame. A 5xx outlier
needs other versions to compare with. If the fallback itself fails, the primary is served
and the note says so.

`modes` tells which routes are in fallback. All state is per route; `reset()` forgets it.
`decide_many` decides a tick's routes with one batch call to the primary and one to the
planner, each with its notes in `last_notes`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from agents.planner import PlannerPolicy, current_split, route_runs
from meshcore.model import Observation, RouteRef, SubsetStats, Weights, finite
from meshcore.ports import Policy

MODE_POLICY = "policy"
MODE_FALLBACK = "fallback"


@dataclass
class _Usual:
    """A version's usual slow ratio (0..1, a moving average) and its usual absolute
    deviation from it, after `seen` readings."""

    level: float
    spread: float = 0.0
    seen: int = 1


@dataclass
class _RouteWatch:
    mode: str = MODE_POLICY
    harmful: int = 0
    clear: int = 0
    in_fallback: int = 0
    ticks: int = 0
    usual: dict[tuple[str, str], _Usual] = field(default_factory=dict)


class SupervisedPolicy:
    """`primary` behind the harm check of the module docstring; itself a `Policy`."""

    def __init__(
        self,
        primary: Policy,
        fallback: PlannerPolicy | None = None,
        *,
        harm_ticks: int = 1,
        hold_ticks: int = 24,
        clear_ticks: int = 6,
        overload_slow: float = 0.25,
        error_outlier: float = 0.05,
        model_ratio: float = 2.0,
        model_margin: float = 0.005,
        back_ratio: float = 1.5,
        back_margin: float = 0.0025,
        min_relief: int = 3,
        quiet_points: int = 5,
        quiet_gain: float = 0.05,
        quiet_gain_abs: float = 1e-4,
        quiet_slow: float = 0.05,
        quiet_floor: int = 1,
        quiet_learn: int = 12,
        surge: float = 1.3,
    ) -> None:
        self.primary = primary
        self.fallback = fallback or PlannerPolicy()
        self.name = f"{primary.name}+supervisor"
        self.harm_ticks = harm_ticks
        self.hold_ticks = hold_ticks
        self.clear_ticks = clear_ticks
        self.overload_slow = overload_slow
        self.error_outlier = error_outlier
        self.model_ratio = model_ratio
        self.model_margin = model_margin
        self.back_ratio = back_ratio
        self.back_margin = back_margin
        self.min_relief = min_relief
        self.quiet_points = quiet_points
        self.quiet_gain = quiet_gain
        self.quiet_gain_abs = quiet_gain_abs
        self.quiet_slow = quiet_slow
        self.quiet_floor = quiet_floor
        self.quiet_learn = quiet_learn
        self.surge = surge
        self.last_note: str | None = None
        self.last_notes: list[str | None] = []
        self._routes: dict[RouteRef, _RouteWatch] = {}

    @property
    def last_raw_action(self) -> object:
        """The primary's raw action (for the audit log), when it keeps one."""
        return getattr(self.primary, "last_raw_action", None)

    @property
    def last_raw_actions(self) -> object:
        """The primary's raw actions of its last `decide_many`, when it keeps them."""
        return getattr(self.primary, "last_raw_actions", None)

    def reset(self) -> None:
        self.primary.reset()
        self.fallback.reset()
        self._routes.clear()
        self.last_note = None
        self.last_notes = []

    def modes(self) -> dict[RouteRef, str]:
        """Per route seen so far: "policy" or "fallback"."""
        return {route: w.mode for route, w in self._routes.items()}

    def harm(self, obs: Observation, proposal: Weights) -> str | None:
        """Why `proposal` does visible harm on `obs`, or None (see the module docstring)."""
        estimates = self.fallback.estimates(obs.route)
        caps = obs.capacity_hint_rps
        capacity = []  # estimated capacity per version (rps), NaN where unknown
        for i, name in enumerate(obs.subsets):
            est = estimates.get(name)
            if est is None or not caps or not (finite(caps[i]) and caps[i] > 0):
                capacity.append(math.nan)
            else:
                capacity.append(caps[i] * est.health)
        # Whether a version could take load: below 80 % of its estimated capacity (or
        # unknown); when no other version could, no split is to blame.
        room = [
            not finite(cap) or not finite(s.rps) or s.rps < 0.8 * cap
            for cap, s in zip(capacity, obs.stats, strict=True)
        ]
        rooms = sum(room)

        for i, (name, stats) in enumerate(zip(obs.subsets, obs.stats, strict=True)):
            relieved = proposal[name] <= max(stats.weight - self.min_relief, 0)
            if not (finite(stats.rps) and stats.rps > 0) or relieved:
                continue
            if rooms - room[i] <= 0:
                continue
            cap_i = capacity[i]
            if finite(cap_i) and stats.rps > cap_i:
                return (
                    f"{name} is overloaded ({stats.rps:.0f} rps over an estimated "
                    f"{cap_i:.0f}) and keeps {proposal[name]} points"
                )
            if finite(stats.slow_ratio) and stats.slow_ratio >= self.overload_slow:
                return (
                    f"{name} misses the SLO on {stats.slow_ratio:.0%} of requests and keeps "
                    f"{proposal[name]} points"
                )
            if finite(stats.error_ratio) and stats.error_ratio >= self.error_outlier:
                others = [
                    s.error_ratio
                    for j, s in enumerate(obs.stats)
                    if j != i and finite(s.error_ratio) and finite(s.rps) and s.rps > 0
                ]
                if not others:
                    continue
                baseline = statistics.median(others)
                if stats.error_ratio >= 3.0 * baseline + 1e-3:
                    return (
                        f"{name} answers {stats.error_ratio:.0%} 5xx (others "
                        f"{baseline:.1%}) and keeps {proposal[name]} points"
                    )
        return None

    def modelled_harm(
        self, route: RouteRef, proposal: Weights, safe: Weights, *, returning: bool = False
    ) -> str | None:
        """Why `proposal` is much worse than the planner's `safe` split in the planner's model,
        or None; `returning` applies the way back's higher bar (`back_ratio`, `back_margin`)."""
        ratio, margin = (
            (self.back_ratio, self.back_margin)
            if returning
            else (self.model_ratio, self.model_margin)
        )
        mine = self.fallback.modelled_bad(route, proposal)
        theirs = self.fallback.modelled_bad(route, safe)
        if _much_worse(mine, theirs, ratio, margin):
            return (
                f"the split {proposal} is modelled at {mine:.1%} bad requests, "
                f"the planner's {safe} at {theirs:.1%}"
            )
        if self.surge > 1.0:
            mine = self.fallback.nominal_bad(route, proposal, self.surge)
            theirs = self.fallback.nominal_bad(route, safe, self.surge)
            if _much_worse(mine, theirs, ratio, margin):
                return (
                    f"at {self.surge:g}x the load on the configured capacities the split "
                    f"{proposal} is modelled at {mine:.1%} bad requests, the planner's {safe} at "
                    f"{theirs:.1%}"
                )
        return None

    def worth_moving(self, obs: Observation, proposal: Weights) -> str | None:
        """Why `proposal`, a small move from `obs`'s current split, is not worth a write
        (see the module docstring), or None."""
        current = current_split(obs)
        if current is None or set(proposal.subsets) != set(obs.subsets):
            return None  # no valid split in force: the guard deals with it
        moved = max(abs(proposal[n] - current[n]) for n in obs.subsets)
        if moved == 0 or moved > self.quiet_points:
            return None
        if moved <= self.quiet_floor:
            return f"{proposal} is a {moved}-point move: the current split stays"
        if not self.calm(obs):
            return None  # the model lags what the policy may see
        before = self.fallback.modelled_bad(obs.route, current)
        ordered = Weights(obs.subsets, [proposal[n] for n in obs.subsets])
        after = self.fallback.modelled_bad(obs.route, ordered)
        if not (finite(before) and finite(after)):
            return None
        if before - after > max(self.quiet_gain * before, self.quiet_gain_abs):
            return None
        return (
            f"{proposal} is a {moved}-point move the model sees no gain in (modelled bad "
            f"{before:.2%} -> {after:.2%}): the current split stays"
        )

    def calm(self, obs: Observation) -> bool:
        """Whether no version of `obs` is slow, against its usual once the route has been
        watched for `quiet_learn` ticks (see the module docstring)."""
        watch = self._routes.get(obs.route)
        learnt = watch is not None and watch.ticks >= self.quiet_learn
        for name, st in zip(obs.subsets, obs.stats, strict=True):
            for kind, ratio in _slow_readings(st):
                if not finite(ratio) or ratio < self.quiet_slow:
                    continue
                usual = watch.usual.get((name, kind)) if learnt and watch else None
                if usual is None:
                    return False
                if ratio > usual.level + max(self.quiet_slow, 3.0 * usual.spread):
                    return False
        return True

    def _learn_usual(self, obs: Observation, watch: _RouteWatch) -> None:
        """Fold `obs`'s slow ratios into each version's usual (a running mean for the first
        `quiet_learn` readings, then a moving average of that memory)."""
        watch.ticks += 1
        for name, st in zip(obs.subsets, obs.stats, strict=True):
            for kind, ratio in _slow_readings(st):
                if not finite(ratio):
                    continue
                usual = watch.usual.get((name, kind))
                if usual is None:
                    watch.usual[(name, kind)] = _Usual(ratio)
                    continue
                usual.seen += 1
                weight = 1.0 / min(usual.seen, self.quiet_learn)
                usual.spread += weight * (abs(ratio - usual.level) - usual.spread)
                usual.level += weight * (ratio - usual.level)

    def decide(self, obs: Observation) -> Weights:
        self._routes.setdefault(obs.route, _RouteWatch())
        self.last_note = None
        proposal = self.primary.decide(obs)
        try:
            safe: Weights | Exception = self.fallback.decide(obs)
        except Exception as exc:  # a broken fallback must not stop the route
            safe = exc
        primary_note = getattr(self.primary, "last_note", None)
        return self._supervise(obs, proposal, safe, self.fallback.last_note, primary_note)

    def decide_many(self, observations: Sequence[Observation]) -> list[Weights]:
        """`decide` of each observation in order (the same splits and notes, in
        `last_notes`): the primary and the planner each decide a batch's routes at once
        (`decide_many`, where the primary has it). If the planner fails, every route of the
        batch is served the primary's split, unchecked, with a note."""
        out: list[Weights] = []
        notes: list[str | None] = []
        for run in route_runs(observations):
            for obs in run:
                self._routes.setdefault(obs.route, _RouteWatch())
            many = getattr(self.primary, "decide_many", None)
            if many:
                proposals = many(run)
                primary_notes = list(getattr(self.primary, "last_notes", None) or [])
                if len(primary_notes) != len(run):  # a primary that keeps no note per route
                    primary_notes = [None] * len(run)
            else:
                proposals, primary_notes = [], []
                for obs in run:
                    proposals.append(self.primary.decide(obs))
                    primary_notes.append(getattr(self.primary, "last_note", None))
            try:
                safes: list[Weights] | Exception = self.fallback.decide_many(run)
            except Exception as exc:  # a broken fallback must not stop the routes
                safes = exc
            safe_notes = self.fallback.last_notes
            for i, obs in enumerate(run):
                safe = safes if isinstance(safes, Exception) else safes[i]
                safe_note = None if isinstance(safes, Exception) else safe_notes[i]
                out.append(self._supervise(obs, proposals[i], safe, safe_note, primary_notes[i]))
                notes.append(self.last_note)
        self.last_notes = notes
        return out

    def _supervise(
        self,
        obs: Observation,
        proposal: Weights,
        safe: Weights | Exception,
        safe_note: str | None = None,
        primary_note: str | None = None,
    ) -> Weights:
        """The split to write for `obs` given the primary's and the fallback's (see the module
        docstring; `safe_note` and `primary_note` are their notes on their splits, kept where
        that split is written); sets `last_note`."""
        watch = self._routes[obs.route]
        try:
            return self._judge(obs, watch, proposal, safe, safe_note, primary_note)
        finally:
            self._learn_usual(obs, watch)

    def _judge(
        self,
        obs: Observation,
        watch: _RouteWatch,
        proposal: Weights,
        safe: Weights | Exception,
        safe_note: str | None,
        primary_note: str | None,
    ) -> Weights:
        """`_supervise` before the tick's slow ratios are learnt as usual."""
        self.last_note = None
        if isinstance(safe, Exception):
            self.last_note = f"supervisor: {self.fallback.name} failed ({safe}); policy unchecked"
            return proposal
        seen = self.harm(obs, proposal)
        returning = watch.mode == MODE_FALLBACK
        why = seen or self.modelled_harm(obs.route, proposal, safe, returning=returning)
        if watch.mode == MODE_POLICY:
            watch.harmful = watch.harmful + 1 if why else 0
            if watch.harmful < self.harm_ticks:
                idle = None if why else self.worth_moving(obs, proposal)
                if idle is None:
                    self.last_note = primary_note
                    return proposal
                self.last_note = f"supervisor: {idle}"
                return current_split(obs) or proposal
            watch.mode, watch.in_fallback, watch.clear = MODE_FALLBACK, 0, 0
            self.last_note = f"supervisor: fallback to {self.fallback.name}: {why}"
            if safe_note:
                self.last_note += f"; {safe_note}"
            return safe
        watch.in_fallback += 1
        watch.clear = 0 if why else watch.clear + 1
        if watch.in_fallback >= self.hold_ticks and watch.clear >= self.clear_ticks:
            watch.mode, watch.harmful = MODE_POLICY, 0
            self.last_note = f"supervisor: back to {self.primary.name}: harmless for a while"
            if primary_note:
                self.last_note += f"; {primary_note}"
            return proposal
        self.last_note = f"supervisor: {self.fallback.name} in control" + (
            f" ({why})" if why else ""
        )
        if safe_note:
            self.last_note += f"; {safe_note}"
        return safe


def _slow_readings(st: SubsetStats) -> tuple[tuple[str, float], ...]:
    """A version's slow ratios the quiet gate reads, by kind: the window's and the newest
    interval's (their usual levels and noise differ)."""
    return (("window", st.slow_ratio), ("newest", st.recent_slow_ratio))


def _much_worse(mine: float, theirs: float, ratio: float, margin: float) -> bool:
    """Whether modelled bad fraction `mine` is more than `ratio` times `theirs` plus `margin`
    (False when either is not a number)."""
    return finite(mine) and finite(theirs) and mine > ratio * theirs + margin

"""Safety layer between the policy and the actuator: nothing reaches Istio without passing here.

A policy, learned or not, may propose any split at any moment. The guard bounds how fast
weights move (a max step per subset per tick), keeps every subset at or above its floor,
refuses to act on stale telemetry (hold the current split, then drift back to a safe baseline),
and lets operators pin, pause or shadow a route. It is pure: no I/O, time comes in as ``now_s``.
State is kept per route and behind a lock, because the API thread edits the controls while the
scheduler thread reviews.

Precedence of one review, first match wins:

1. ``paused`` — the operator paused the route: never write, keep the current weights.
2. ``shadow`` — the route (or the whole loop, via ``phase_hint``) is in shadow: run steps 3-5
   to learn what *would* be written, record it, never write.
3. ``overridden`` — an unexpired pin: write the pinned weights at once, exactly as pinned.
4. ``holding`` — data missing or stale: keep the current weights for ``hold_s``, then move
   toward the baseline by ``decay_step`` points per tick.
5. ``active`` — lift the proposal to the floors, then step toward it by at most ``max_step``,
   except that weight leaving a subset in visible distress for a healthy one moves at once
   (``relief_ratio``, see `controller.relief`).

A route whose weights cannot be read as a split (someone set them to sum to 110) gets no
review; `Guard.repair` says whether an unexpired pin may be written over them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from controller.guard_config import GuardConfig
from controller.relief import distressed, healthy, relieve
from meshcore import (
    WEIGHT_TOTAL,
    ConfigError,
    Observation,
    RouteRef,
    Weights,
    largest_remainder,
)

Phase = Literal["shadow", "active", "overridden", "holding", "paused"]
"""The phases a route can be in (DESIGN.md, "Data flow of one tick")."""

Mode = Literal["active", "shadow"]
"""The loop's default mode for a route; see `Guard.review`'s ``phase_hint``."""


@dataclass(frozen=True)
class Verdict:
    """What the guard decided for one route in one tick.

    ``weights`` is what to write when ``write`` is true, the current weights when nothing is to
    be written, and — in shadow — what would have been written. ``reason`` is for humans (the
    audit log and the API), e.g. ``"step clamped +40->+10 on v2"``.
    """

    weights: Weights
    write: bool
    phase: Phase
    reason: str


@dataclass(frozen=True)
class RouteControls:
    """A snapshot of the operator controls and data freshness of one route (for the API)."""

    paused: bool
    shadow: bool
    pin: Weights | None
    pin_until_s: float | None
    last_fresh_s: float | None


@dataclass
class _RouteState:
    paused: bool = False
    shadow: bool = False
    pin: Weights | None = None
    pin_until_s: float = math.inf
    first_seen_s: float | None = None
    initial: Weights | None = None
    last_fresh_s: float | None = None
    config: GuardConfig | None = None  # this route's own settings (a ManagedRoute's spec)


def _same_subsets(a: Weights, b: Weights) -> bool:
    return set(a.subsets) == set(b.subsets)


def _ordered_like(weights: Weights, like: Weights) -> Weights:
    return Weights(like.subsets, [weights[s] for s in like.subsets])


def lift_to_floors(target: Weights, floors: Mapping[str, int]) -> Weights:
    """Raise every subset of `target` to its floor (points), taking the difference from the rest.

    A target that already respects the floors comes back unchanged. Otherwise every subset gets
    its floor plus a share of the remaining ``100 - sum(floors)`` points proportional to how far
    the target had it above its floor, rounded with largest remainder (deterministic).
    """
    names = target.subsets
    floor = [floors.get(s, 0) for s in names]
    spare = WEIGHT_TOTAL - sum(floor)
    if spare < 0:
        raise ConfigError(f"floors {dict(floors)} sum to more than {WEIGHT_TOTAL} points")
    values = list(target.values_tuple)
    if all(v >= f for v, f in zip(values, floor, strict=True)):
        return target
    if spare == 0:
        return Weights(names, floor)
    # Some subset is below its floor, so the excess above the floors sums to more than `spare`.
    extra = largest_remainder([max(v - f, 0) for v, f in zip(values, floor, strict=True)], spare)
    return Weights(names, [f + e for f, e in zip(floor, extra, strict=True)])


def step_toward(current: Weights, target: Weights, max_step: int) -> Weights:
    """Move from `current` toward `target` by at most `max_step` points per subset.

    Exact algorithm (weights in `current`'s subset order):

    1. clamp each subset's change to ``[-max_step, +max_step]``;
    2. the clamped split sums to ``100 + surplus``. While the surplus is positive, take one
       point back from the subset that rose the most; while it is negative, give one point back
       to the subset that fell the most (ties: the earlier subset).

    Step 2 only undoes part of a move, never reverses one, so every subset ends between its
    current and its target weight (a floor that both respect holds in the result), within
    ``max_step`` of current, and the sum is exactly 100. It always terminates: the surplus
    equals the total rise minus the total fall, so a subset with room is always there. When
    ``current != target`` at least one point moves, so repeated calls reach the target.
    """
    if not _same_subsets(current, target):
        raise ValueError(f"cannot step from {current} toward {target}: other subsets")
    if max_step < 1:
        raise ValueError(f"max_step must be at least 1 point, got {max_step}")
    names = current.subsets
    cur = list(current.values_tuple)
    new = [min(max(target[s], c - max_step), c + max_step) for s, c in zip(names, cur, strict=True)]
    order = range(len(names))
    surplus = sum(new) - WEIGHT_TOTAL
    while surplus > 0:
        i = max(order, key=lambda j: (new[j] - cur[j], -j))
        new[i] -= 1
        surplus -= 1
    while surplus < 0:
        i = max(order, key=lambda j: (cur[j] - new[j], -j))
        new[i] += 1
        surplus += 1
    return Weights(names, new)


def _describe_move(current: Weights, wanted: Weights, got: Weights) -> list[str]:
    notes = []
    for s in current.subsets:
        want, moved = wanted[s] - current[s], got[s] - current[s]
        if want != moved:
            notes.append(f"step clamped {want:+d}->{moved:+d} on {s}")
    return notes


class Guard:
    """Reviews every proposed split before it is written; one instance serves all routes.

    Controls (`pin`, `pause`, `set_shadow`, ...) take a `RouteRef` or its ``key`` and may be set
    before the route is first reviewed. Thread-safe.
    """

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config if config is not None else GuardConfig()
        self._routes: dict[str, _RouteState] = {}
        self._lock = threading.Lock()

    def config_for(self, route: RouteRef | str) -> GuardConfig:
        """The settings that review `route`: its own (`set_route_config`), else the guard's."""
        with self._lock:
            return self._state(route).config or self.config

    def set_route_config(self, route: RouteRef | str, config: GuardConfig | None) -> None:
        """Review `route` with `config` from now on (None: the guard's own again)."""
        with self._lock:
            self._state(route).config = config

    # -- operator controls -------------------------------------------------------------------

    def pin(self, route: RouteRef | str, weights: Weights, until_s: float) -> None:
        """Override the policy with `weights` until `until_s` (s, the clock of ``now_s``).

        Operators who pin expect the split they typed, now: the next review writes it at once,
        without step limit or floors (an operator may mean to drain a subset). When the pin
        expires the policy resumes from the pinned weights, step-limited as usual.
        """
        if not math.isfinite(until_s):
            raise ValueError(f"pin until_s must be a finite time in s, got {until_s}")
        with self._lock:
            state = self._state(route)
            state.pin, state.pin_until_s = weights, float(until_s)

    def unpin(self, route: RouteRef | str) -> None:
        """Drop the pin now; the policy resumes from the current weights, step-limited."""
        with self._lock:
            state = self._state(route)
            state.pin, state.pin_until_s = None, math.inf

    def pause(self, route: RouteRef | str) -> None:
        """Stop writing this route at all (pins included) until `resume`."""
        with self._lock:
            self._state(route).paused = True

    def resume(self, route: RouteRef | str) -> None:
        with self._lock:
            self._state(route).paused = False

    def set_shadow(self, route: RouteRef | str, enabled: bool) -> None:
        """Put one route in shadow (decide and record, never write), or take it out again.

        Taking a route out does not override a ``phase_hint="shadow"`` from the loop (e.g. not
        the leader): shadow from either source wins.
        """
        with self._lock:
            self._state(route).shadow = enabled

    def controls(self, route: RouteRef | str) -> RouteControls:
        with self._lock:
            state = self._state(route)
            return RouteControls(
                paused=state.paused,
                shadow=state.shadow,
                pin=state.pin,
                pin_until_s=state.pin_until_s if state.pin is not None else None,
                last_fresh_s=state.last_fresh_s,
            )

    # -- the review --------------------------------------------------------------------------

    def review(
        self,
        *,
        route: RouteRef,
        current: Weights,
        proposed: Weights | None,
        observation: Observation | None,
        now_s: float,
        phase_hint: Mode = "active",
    ) -> Verdict:
        """Decide what to write for `route` this tick.

        current: the weights read from the actuator; proposed: the policy's split, or None if
        it had none; observation: this tick's data, or None if there was none; now_s: the
        loop's clock (s); phase_hint: the loop's mode for this route — ``"shadow"`` when the
        whole loop must not write (settings, not the leader), else ``"active"``.
        A `Verdict` with ``write=True`` always carries weights different from `current`.
        """
        if phase_hint not in ("active", "shadow"):
            raise ValueError(f"phase_hint must be 'active' or 'shadow', got {phase_hint!r}")
        if observation is not None and observation.route.key != route.key:
            raise ValueError(f"observation of {observation.route.key} given for {route.key}")
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be a finite time in s, got {now_s}")
        with self._lock:
            state = self._state(route)
            if state.first_seen_s is None:
                state.first_seen_s = now_s
            if state.initial is None or not _same_subsets(state.initial, current):
                state.initial = current
            cfg = state.config or self.config
            stale = self._why_stale(current, observation, cfg)
            if stale is None:
                state.last_fresh_s = now_s
            note = ""
            if state.pin is not None and now_s >= state.pin_until_s:
                note = f"pin expired at {state.pin_until_s:.1f} s; "
                state.pin, state.pin_until_s = None, math.inf
            if state.paused:
                return Verdict(current, False, "paused", f"{note}paused by operator: not written")
            verdict = self._decide(state, cfg, current, proposed, observation, stale, now_s)
            if phase_hint == "shadow" or state.shadow:
                would = "would write" if verdict.write else "would not write"
                reason = f"{note}shadow, {would} ({verdict.phase}): {verdict.reason}"
                return Verdict(verdict.weights, False, "shadow", reason)
            return Verdict(verdict.weights, verdict.write, verdict.phase, note + verdict.reason)

    def repair(
        self, *, route: RouteRef | str, now_s: float, phase_hint: Mode = "active"
    ) -> Verdict | None:
        """The pin to write over weights that are not a valid split, or None (no pin, the
        route is paused or in shadow): only an operator's split may replace weights nobody
        can step from. now_s: the loop's clock (s); an expired pin is dropped here too."""
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be a finite time in s, got {now_s}")
        with self._lock:
            state = self._state(route)
            if state.pin is not None and now_s >= state.pin_until_s:
                state.pin, state.pin_until_s = None, math.inf
            if state.pin is None or state.paused or state.shadow or phase_hint == "shadow":
                return None
            reason = (
                f"pinned until {state.pin_until_s:.1f} s: {state.pin} written whole over "
                "weights that are not a valid split"
            )
            return Verdict(state.pin, True, "overridden", reason)

    def _state(self, route: RouteRef | str) -> _RouteState:
        key = route.key if isinstance(route, RouteRef) else route
        return self._routes.setdefault(key, _RouteState())

    @staticmethod
    def _floors(weights: Weights, cfg: GuardConfig) -> dict[str, int]:
        return {s: cfg.floors.get(s, 0) for s in weights.subsets}

    @staticmethod
    def _why_stale(
        current: Weights, observation: Observation | None, cfg: GuardConfig
    ) -> str | None:
        if observation is None:
            return "no observation"
        age_s = observation.staleness_s
        if not age_s <= cfg.stale_after_s:
            return f"data is {age_s:.1f} s old (> stale_after_s {cfg.stale_after_s:.1f})"
        if not any(st.has_data for st in observation.stats):
            return "no subset has data"
        if set(observation.subsets) != set(current.subsets):
            return (
                f"observation has subsets {sorted(observation.subsets)} "
                f"but the route has {sorted(current.subsets)}"
            )
        return None

    def _decide(
        self,
        state: _RouteState,
        cfg: GuardConfig,
        current: Weights,
        proposed: Weights | None,
        observation: Observation | None,
        stale: str | None,
        now_s: float,
    ) -> Verdict:
        if state.pin is not None:
            return self._pinned(state.pin, state.pin_until_s, current)
        if stale is not None:
            return self._holding(state, cfg, current, stale, now_s)
        if proposed is None:
            return Verdict(current, False, "active", "no proposal from the policy: not written")
        if not _same_subsets(proposed, current):
            reason = f"proposal {proposed} does not match the route's subsets; not written"
            return Verdict(current, False, "holding", reason)
        return self._active(cfg, current, proposed, observation)

    def _pinned(self, pin: Weights, until_s: float, current: Weights) -> Verdict:
        if not _same_subsets(pin, current):
            reason = f"pin {pin} does not match the route's subsets; not written"
            return Verdict(current, False, "overridden", reason)
        pinned = _ordered_like(pin, current)
        if pinned == current:
            return Verdict(current, False, "overridden", f"pinned until {until_s:.1f} s: in place")
        reason = f"pinned until {until_s:.1f} s: {current} -> {pinned} at once"
        return Verdict(pinned, True, "overridden", reason)

    def _holding(
        self, state: _RouteState, cfg: GuardConfig, current: Weights, why: str, now_s: float
    ) -> Verdict:
        since_s = state.last_fresh_s if state.last_fresh_s is not None else state.first_seen_s
        held_s = now_s - (since_s if since_s is not None else now_s)
        if held_s < cfg.hold_s:
            reason = f"{why}; holding current weights ({held_s:.1f} of {cfg.hold_s:.1f} s)"
            return Verdict(current, False, "holding", reason)
        baseline = self._baseline(state, cfg, current)
        moved = step_toward(current, baseline, cfg.decay_step)
        if moved == current:
            reason = f"{why}; no fresh data for {held_s:.1f} s; at baseline {baseline}"
            return Verdict(current, False, "holding", reason)
        reason = (
            f"{why}; no fresh data for {held_s:.1f} s: decaying toward baseline {baseline}, "
            f"{current} -> {moved}"
        )
        return Verdict(moved, True, "holding", reason)

    def _baseline(self, state: _RouteState, cfg: GuardConfig, current: Weights) -> Weights:
        names = current.subsets
        base: Weights | None = None
        if cfg.baseline is not None:
            shares = [cfg.baseline.get(s, 0) for s in names]
            if sum(shares) > 0:
                base = Weights(names, largest_remainder(shares))
        if base is None:
            initial = state.initial if state.initial is not None else current
            base = _ordered_like(initial, current)
        return lift_to_floors(base, self._floors(current, cfg))

    def _active(
        self,
        cfg: GuardConfig,
        current: Weights,
        proposed: Weights,
        observation: Observation | None,
    ) -> Verdict:
        floors = self._floors(current, cfg)
        target = _ordered_like(lift_to_floors(proposed, floors), current)
        moved = step_toward(current, target, cfg.max_step)
        notes = [
            f"lifted to floor {proposed[s]}->{target[s]} on {s}"
            for s in current.subsets
            if target[s] != proposed[s]
        ]
        ratio = cfg.relief_ratio
        sick = distressed(observation, ratio) if observation is not None else set()
        if observation is not None and sick and moved != target:
            moved, relieved = relieve(moved, target, sick, healthy(observation, ratio))
            if relieved:
                names = ", ".join(sorted(sick))
                notes.append(f"relief: {relieved} points off {names} (in distress) at once")
        notes += _describe_move(current, target, moved)
        if moved == current:
            return Verdict(current, False, "active", "proposal equals current weights: not written")
        # Judged on the whole proposal, not on this tick's step: a far target is approached
        # even when max_step makes each step smaller than min_change.
        change = target.l1_distance(current)
        below_floor = any(current[s] < f for s, f in floors.items())
        # Weight taken off a subset in distress, none given to another, is written whatever
        # its size: a version overloaded at one point would otherwise keep that point, and its
        # overload, for as long as it lasts. A point moved between two subsets in distress is
        # jitter and stays below min_change.
        sheds_sick = any(target[s] < current[s] for s in sick) and all(
            target[s] <= current[s] for s in sick
        )
        if change < cfg.min_change and not below_floor and not sheds_sick:
            reason = f"change of {change} points < min_change {cfg.min_change}: not written"
            return Verdict(current, False, "active", reason)
        notes.append(f"{current} -> {moved}")
        return Verdict(moved, True, "active", "; ".join(notes))

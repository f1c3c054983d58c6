"""The control loop: observe -> decide -> guard -> act -> verify -> record, once per tick.

Why one module owns the tick: every failure mode of a live mesh (Prometheus down, an API
server timing out, a VirtualService deleted, RBAC revoked, losing the lease) has to end in a
*defined* state for every route — held, retried, failed-and-visible or follower — and the only
place that can guarantee it is the code that sequences the ports. `tick()` never raises: a
controller that dies on a bad tick leaves the mesh with whatever split it had, unwatched.

Per tick: ONE `Observer.observe` call for all managed routes (the Prometheus observer answers
every route from a fixed number of queries), then per route: `Policy.decide` -> `Guard.review`
-> `Actuator.apply` (only when the guard says write *and* this replica leads) -> a check that
earlier writes show up in the observed traffic split -> one `DecisionRecord` in the store.

Writes run last and together: every route is read, decided and guarded first, then the
routes whose verdict is a write are applied concurrently on up to ``max_parallel_writes``
threads (one write per route per tick, so each route's writes stay in order), and finally
each route is verified and recorded in route order, exactly as if its write had run alone.

Errors: a `TemporaryError` from the observer holds every route (the guard sees no observation,
then decays toward the baseline after ``hold_s``); a `TemporaryError` from the actuator is
recorded as ``"error: ..."`` and retried next tick (the guard proposes again); a
`PermanentError` for one route marks that route ``failed`` (visible in the API and metrics) and
the loop keeps managing the others, re-checking failed routes every ``recheck_failed_every``
ticks. A `PermanentError` from a batched observe is narrowed to the culprit routes by observing
each route alone once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler

from controller.guard import Guard, Mode, Verdict
from controller.metrics import ControllerMetrics, outcome_class
from controller.store import DecisionRecord, DecisionStore, encode_observation
from meshcore import (
    Actuator,
    Clock,
    Observation,
    Observer,
    PermanentError,
    Policy,
    RouteRef,
    TemporaryError,
    Weights,
    reward,
)

__all__ = [
    "JOB_ID",
    "AlwaysLeader",
    "ControlLoop",
    "Leadership",
    "RouteStatus",
    "TickResult",
    "VerifyResult",
]

_log = logging.getLogger(__name__)

JOB_ID = "meshpilot-tick"
"""Id of the one apscheduler job that runs `ControlLoop.tick`."""

MIN_VERIFY_REQUESTS = 50.0
"""Fewer requests than this over the verify delay make a traffic split too noisy to judge (a
50/50 split of 50 requests is off by 7 points one time in three): the check is postponed."""

_MAX_PENDING = 1000
"""Unverified writes kept per route; beyond this the oldest are dropped (memory bound)."""


@runtime_checkable
class Leadership(Protocol):
    """Whether this replica may write. Only the leader writes; followers observe and record.

    ``is_leader`` is called once per tick and by ``/readyz``, so it must be cheap (a Lease
    elector answers from its cached state, not from the API server).
    """

    def is_leader(self) -> bool: ...


class AlwaysLeader:
    """A single replica: always the leader (leader election disabled)."""

    def is_leader(self) -> bool:
        return True


@dataclass(frozen=True)
class VerifyResult:
    """Did the observed traffic split follow what was written?

    ok: True (within tolerance), False (it did not), None (inconclusive: no data, too little
    traffic; given up after three verify delays); at_s: loop clock when checked (s); detail:
    human text with the observed shares and the expected range (points).
    """

    ok: bool | None
    at_s: float
    detail: str


@dataclass(frozen=True)
class TickResult:
    """What happened to one route in one tick (also what the store recorded).

    phase: the guard's phase, or ``failed``; outcome: ``written``, ``conflict-retried``,
    ``unchanged``, ``held``, ``shadow``, ``follower``, ``error: ...`` or ``failed: ...``;
    proposed: the policy's split; written: what was written (shadow/follower: would have
    been); wrote: whether the actuator was called; weights: the split configured after the
    tick (None when unknown); reward: reward of the previous tick's action (None if unknown);
    verify: a verification concluded this tick; decision_id: the store's id (None if the store
    failed).
    """

    route: RouteRef
    phase: str
    outcome: str
    reason: str
    proposed: Weights | None = None
    written: Weights | None = None
    wrote: bool = False
    weights: Weights | None = None
    reward: float | None = None
    verify: VerifyResult | None = None
    decision_id: int | None = None


@dataclass(frozen=True)
class RouteStatus:
    """A managed route as the API shows it: where it stands after the last tick.

    phase: ``pending`` before its first tick, else the last phase (``failed`` included);
    weights: configured split last read or written; failed: the permanent error, None when
    managed; last_*: the last decision (loop clock, s); verify: the last concluded verification.
    """

    route: RouteRef
    phase: str = "pending"
    weights: Weights | None = None
    failed: str | None = None
    failed_since_s: float | None = None
    last_outcome: str | None = None
    last_reason: str | None = None
    last_decision_id: int | None = None
    last_tick_s: float | None = None
    verify: VerifyResult | None = None


@dataclass
class _Write:
    at_s: float
    weights: Weights


@dataclass
class _Plan:
    """One route after read -> decide -> guard, waiting for its write (if any) and record."""

    route: RouteRef
    obs: Observation | None
    current: Weights
    proposed: Weights | None
    raw_action: list[float] | None
    verdict: Verdict
    notes: list[str]
    leader: bool

    @property
    def writes(self) -> bool:
        """Whether the actuator must be called (the guard says write, and this replica leads)."""
        return self.verdict.write and self.leader


@dataclass(frozen=True)
class _Applied:
    """What `Actuator.apply` did for one plan: the weights in force, or the exception."""

    written: Weights | None = None
    retried: bool = False
    error: Exception | None = None


@dataclass
class _Runtime:
    """Mutable per-route state of the loop (the guard keeps its own)."""

    status: RouteStatus
    failed_tick: int = 0
    last_obs: Observation | None = None
    last_weights: Weights | None = None
    last_written: Weights | None = None
    pending: list[_Write] = field(default_factory=list)


def _check_positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"ControlLoop: {name} must be a finite number > 0, got {value!r}")
    return float(value)


class ControlLoop:
    """Manages `routes` through the ports; `tick()` once, or `start()` on a schedule.

    observer/actuator/policy: the ports; guard: safety layer and operator controls; store:
    audit log; routes: managed routes; clock: time of decisions, guard and verification (s);
    leader: who may write (default `AlwaysLeader`); metrics: the controller's series (default
    a fresh registry); slo_ms: SLO of the reward (ms); writer_id: this replica's identity in
    the audit log; verify_after_s: how long after a write the observed split must follow it
    (s; one rate window); verify_tolerance: max distance between observed share and written
    weight (points); mode: ``"shadow"`` never writes (decide and record only); tick_s: the
    scheduling interval of `start` (s); capacity_hints: nominal capacity per route and subset
    (rps), filled into observations that carry none; recheck_failed_every: ticks between
    re-checks of a failed route; max_parallel_writes: how many routes are written at once
    (threads; 1 writes one after the other). The actuator must be thread-safe when > 1.
    """

    def __init__(
        self,
        *,
        observer: Observer,
        actuator: Actuator,
        policy: Policy,
        guard: Guard,
        store: DecisionStore,
        routes: Sequence[RouteRef],
        clock: Clock,
        leader: Leadership | None = None,
        metrics: ControllerMetrics | None = None,
        slo_ms: float,
        writer_id: str,
        verify_after_s: float,
        verify_tolerance: float,
        mode: Mode = "active",
        tick_s: float = 5.0,
        capacity_hints: Mapping[RouteRef, Mapping[str, float]] | None = None,
        recheck_failed_every: int = 12,
        max_parallel_writes: int = 8,
    ) -> None:
        if not routes:
            raise ValueError("ControlLoop: at least one route must be managed")
        keys = [r.key for r in routes]
        if len(set(keys)) != len(keys):
            raise ValueError(f"ControlLoop: duplicate routes in {keys}")
        if mode not in ("active", "shadow"):
            raise ValueError(f"ControlLoop: mode must be 'active' or 'shadow', got {mode!r}")
        if not (0 <= verify_tolerance <= 100):
            raise ValueError(
                f"ControlLoop: verify_tolerance must be 0..100 points, got {verify_tolerance}"
            )
        if recheck_failed_every < 1:
            raise ValueError(
                f"ControlLoop: recheck_failed_every must be >= 1 tick, got {recheck_failed_every}"
            )
        if not (isinstance(max_parallel_writes, int) and max_parallel_writes >= 1):
            raise ValueError(
                f"ControlLoop: max_parallel_writes must be >= 1, got {max_parallel_writes!r}"
            )
        self.observer = observer
        self.actuator = actuator
        self.policy = policy
        self.guard = guard
        self.store = store
        self.clock = clock
        self.leader: Leadership = leader if leader is not None else AlwaysLeader()
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        self.routes: tuple[RouteRef, ...] = tuple(routes)
        self.slo_ms = _check_positive("slo_ms", slo_ms)
        self.writer_id = writer_id
        self.verify_after_s = _check_positive("verify_after_s", verify_after_s)
        self.verify_tolerance = float(verify_tolerance)
        self.mode: Mode = mode
        self.tick_s = _check_positive("tick_s", tick_s)
        self.recheck_failed_every = recheck_failed_every
        self.max_parallel_writes = max_parallel_writes
        self._hints = {r: dict(h) for r, h in (capacity_hints or {}).items()}
        self._rt = {r: _Runtime(RouteStatus(r)) for r in self.routes}
        self._by_key = {r.key: r for r in self.routes}
        self._tick_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._tick_no = 0
        self._ready = False
        self._last_tick_mono: float | None = None
        self._started_mono: float | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._write_pool: ThreadPoolExecutor | None = None
        self.metrics.declare_routes(keys)
        conflicts = getattr(actuator, "conflicts", None)
        if isinstance(conflicts, int | float):
            self.metrics.bind_conflicts(lambda: float(getattr(actuator, "conflicts", 0)))

    # -- what the API reads ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a tick observed successfully (the observer answered)."""
        return self._ready

    @property
    def ticks(self) -> int:
        return self._tick_no

    def now(self) -> float:
        """The loop's clock (s): pins, holds and the audit log are on this time."""
        return self.clock.now()

    def is_leader(self) -> bool:
        """Ask `leader`; an elector that fails counts as "not leader" (never write blind)."""
        try:
            return bool(self.leader.is_leader())
        except Exception:
            _log.exception("leader check failed; acting as a follower this tick")
            return False

    def last_tick_age_s(self) -> float | None:
        """Wall seconds since the last tick finished (None before the first), for liveness."""
        if self._last_tick_mono is None:
            return None
        return time.monotonic() - self._last_tick_mono

    def started_age_s(self) -> float | None:
        """Wall seconds since `start` (None when not started)."""
        return None if self._started_mono is None else time.monotonic() - self._started_mono

    def find(self, key: str) -> RouteRef | None:
        """The managed route with this ``namespace/virtual_service/route`` key, if any."""
        return self._by_key.get(key)

    def status(self) -> list[RouteStatus]:
        with self._status_lock:
            return [self._rt[r].status for r in self.routes]

    def route_status(self, route: RouteRef) -> RouteStatus:
        with self._status_lock:
            return self._rt[route].status

    # -- the tick --------------------------------------------------------------------------

    def tick(self) -> list[TickResult]:
        """Run one control step for every managed route; never raises."""
        with self._tick_lock:
            started = time.perf_counter()
            results: list[TickResult] = []
            try:
                results = self._tick()
            except Exception:
                _log.exception("control tick failed unexpectedly; will try again next tick")
            finally:
                self.metrics.ticks.inc()
                self.metrics.tick_duration.observe(time.perf_counter() - started)
                self._last_tick_mono = time.monotonic()
            return results

    def _tick(self) -> list[TickResult]:
        self._tick_no += 1
        now = self.clock.now()
        leader = self.is_leader()
        self.metrics.leader.set(1.0 if leader else 0.0)
        due = [r for r in self.routes if self._due(r)]
        observations, obs_error, broken = self._observe(due)
        if obs_error is None:
            self._ready = True
        staged: list[TickResult | _Plan] = []
        writing: dict[RouteRef, Future[_Applied]] = {}
        for route in due:
            try:
                if route in broken:
                    staged.append(self._fail(route, broken[route], now))
                    continue
                item = self._prepare(route, observations.get(route), obs_error, now, leader)
            except Exception as exc:  # a bug for one route must not stop the others
                _log.exception("route %s: unexpected error in tick", route.key)
                staged.append(self._unexpected(route, exc, now))
                continue
            staged.append(item)
            if isinstance(item, _Plan) and item.writes:  # written while the others are decided
                writing[route] = self._start_write(item)
        applied = {route: future.result() for route, future in writing.items()}
        results = []
        for item in staged:
            if isinstance(item, TickResult):
                results.append(item)
                continue
            try:
                results.append(self._complete(item, applied.get(item.route), now))
            except Exception as exc:
                _log.exception("route %s: unexpected error in tick", item.route.key)
                results.append(self._unexpected(item.route, exc, now))
        return results

    def _due(self, route: RouteRef) -> bool:
        rt = self._rt[route]
        if rt.status.failed is None:
            return True
        return self._tick_no - rt.failed_tick >= self.recheck_failed_every

    def _observe(
        self, routes: list[RouteRef]
    ) -> tuple[dict[RouteRef, Observation], str | None, dict[RouteRef, str]]:
        """(observations, why every route holds or None, routes that failed permanently)."""
        if not routes:
            return {}, None, {}
        try:
            return dict(self.observer.observe(routes)), None, {}
        except TemporaryError as exc:
            self.metrics.query_errors.inc()
            _log.warning("observe failed, holding every route: %s", exc)
            return {}, f"observe failed: {exc}", {}
        except PermanentError as exc:
            _log.warning("observe failed permanently (%s); isolating the route(s)", exc)
            return self._observe_one_by_one(routes)
        except Exception as exc:
            self.metrics.query_errors.inc()
            _log.exception("observer raised an unexpected error, holding every route")
            return {}, f"observe failed: {type(exc).__name__}: {exc}", {}

    def _observe_one_by_one(
        self, routes: list[RouteRef]
    ) -> tuple[dict[RouteRef, Observation], str | None, dict[RouteRef, str]]:
        observations: dict[RouteRef, Observation] = {}
        broken: dict[RouteRef, str] = {}
        for route in routes:
            try:
                observations.update(self.observer.observe([route]))
            except PermanentError as exc:
                broken[route] = str(exc)
            except Exception as exc:  # temporary for this route: it holds
                _log.warning("observe of %s failed: %s", route.key, exc)
        return observations, None, broken

    def _prepare(
        self,
        route: RouteRef,
        obs: Observation | None,
        obs_error: str | None,
        now: float,
        leader: bool,
    ) -> TickResult | _Plan:
        """Read, decide and guard one route: a `_Plan`, or the result when the read failed."""
        rt = self._rt[route]
        try:
            current = self.actuator.current(route)
        except TemporaryError as exc:
            reason = f"cannot read the route's weights: {exc}; nothing written"
            return self._finish(
                route, now, phase="holding", outcome=f"error: {exc}", reason=reason, obs=obs
            )
        except PermanentError as exc:
            return self._fail(route, str(exc), now)
        if rt.status.failed is not None:
            _log.info("route %s recovered from: %s", route.key, rt.status.failed)
        obs = self._with_hints(route, obs)
        notes: list[str] = []
        if obs_error is not None:
            notes.append(obs_error)
        if rt.last_written is not None and current != rt.last_written:
            before, now_reads = _fmt(rt.last_written), _fmt(current)
            notes.append(f"route changed outside meshpilot: wrote {before}, reads {now_reads}")
            rt.pending.clear()
            rt.last_written = None
        proposed, raw_action = self._decide(obs, notes)
        verdict = self.guard.review(
            route=route,
            current=current,
            proposed=proposed,
            observation=obs,
            now_s=now,
            phase_hint=self.mode if leader else "shadow",
        )
        return _Plan(route, obs, current, proposed, raw_action, verdict, notes, leader)

    def _start_write(self, plan: _Plan) -> Future[_Applied]:
        """Call the actuator for `plan` on the write pool (at most `max_parallel_writes` at
        once), or right here when writes go one after the other."""
        if self.max_parallel_writes == 1:
            done: Future[_Applied] = Future()
            done.set_result(self._apply_one(plan))
            return done
        if self._write_pool is None:  # kept across ticks: starting threads costs ms per tick
            self._write_pool = ThreadPoolExecutor(
                max_workers=self.max_parallel_writes, thread_name_prefix="meshpilot-write"
            )
        return self._write_pool.submit(self._apply_one, plan)

    def _apply_one(self, plan: _Plan) -> _Applied:
        """One `Actuator.apply`; never raises (the exception is handed to `_complete`)."""
        before = self._conflicts_seen(plan.route)
        try:
            written = self.actuator.apply(plan.route, plan.verdict.weights)
        except Exception as exc:
            return _Applied(error=exc)
        return _Applied(written=written, retried=self._conflicts_seen(plan.route) != before)

    def _conflicts_seen(self, route: RouteRef) -> int:
        """The actuator's conflict count for `route` (its total when it counts no routes:
        exact for writes one at a time)."""
        per_route = getattr(self.actuator, "conflicts_for", None)
        if callable(per_route):
            return int(per_route(route))
        return int(getattr(self.actuator, "conflicts", 0))

    def _complete(self, plan: _Plan, applied: _Applied | None, now: float) -> TickResult:
        """Verify and record one route after its write (if any)."""
        route, verdict, current, obs = plan.route, plan.verdict, plan.current, plan.obs
        rt = self._rt[route]
        try:
            outcome, written, wrote, weights_after = self._act(route, plan, applied)
        except PermanentError as exc:  # RBAC revoked, route deleted between read and write
            return self._fail(route, str(exc), now)
        verify = self._verify(route, obs, now)
        if wrote and outcome in ("written", "conflict-retried"):
            rt.pending.append(_Write(now, weights_after))
            del rt.pending[:-_MAX_PENDING]
            rt.last_written = weights_after
        reason = "; ".join(
            [*plan.notes, verdict.reason] + ([f"verify: {verify.detail}"] if verify else [])
        )
        return self._finish(
            route,
            now,
            phase=verdict.phase,
            outcome=outcome,
            reason=reason,
            obs=obs,
            current=current,
            proposed=plan.proposed,
            raw_action=plan.raw_action,
            written=written,
            wrote=wrote,
            weights_after=weights_after,
            verify=verify,
        )

    def _with_hints(self, route: RouteRef, obs: Observation | None) -> Observation | None:
        hints = self._hints.get(route)
        if obs is None or obs.capacity_hint_rps or not hints:
            return obs
        if not all(s in hints for s in obs.subsets):
            return obs
        return replace(obs, capacity_hint_rps=tuple(float(hints[s]) for s in obs.subsets))

    def _decide(
        self, obs: Observation | None, notes: list[str]
    ) -> tuple[Weights | None, list[float] | None]:
        if obs is None:
            return None, None
        try:
            proposed = self.policy.decide(obs)
        except Exception as exc:
            _log.exception("policy %s failed on %s", self.policy.name, obs.route.key)
            notes.append(f"policy {self.policy.name} failed: {type(exc).__name__}: {exc}")
            return None, None
        raw = getattr(self.policy, "last_raw_action", None)
        raw_action = [float(x) for x in raw] if raw is not None and len(raw) else None
        return proposed, raw_action

    def _act(
        self, route: RouteRef, plan: _Plan, applied: _Applied | None
    ) -> tuple[str, Weights | None, bool, Weights]:
        """(outcome, written, wrote, weights configured after) for one verdict and its write.

        Raises the `PermanentError` of a failed write (the route fails) and any unexpected
        exception (the route holds); a `TemporaryError` is an ``error: ...`` outcome.
        """
        verdict, current, leader = plan.verdict, plan.current, plan.leader
        if not verdict.write:
            if verdict.phase == "shadow":
                outcome = "follower" if not leader else "shadow"
                return outcome, verdict.weights, False, current
            outcome = "held" if verdict.phase == "holding" else "unchanged"
            return outcome, None, False, current
        if not leader:  # the guard was told "shadow"; never write without the lease anyway
            return "follower", verdict.weights, False, current
        if applied is None:  # cannot happen: every writing plan went through _start_write
            raise RuntimeError(f"route {route.key}: the write was never attempted")
        if applied.error is not None:
            if isinstance(applied.error, TemporaryError):
                return f"error: {applied.error}", verdict.weights, True, current
            raise applied.error
        assert applied.written is not None
        self.metrics.writes.labels(route=route.key).inc()
        outcome = "conflict-retried" if applied.retried else "written"
        return outcome, applied.written, True, applied.written

    # -- verification ----------------------------------------------------------------------

    def _verify(self, route: RouteRef, obs: Observation | None, now: float) -> VerifyResult | None:
        """Check the newest write older than ``verify_after_s`` against the observed split.

        The rate window of `obs` lies within [that write, now], so every share must fall in
        the range spanned by that write and the later ones, widened by the tolerance.
        """
        rt = self._rt[route]
        due = [i for i, w in enumerate(rt.pending) if now - w.at_s >= self.verify_after_s]
        if not due:
            return None
        last = due[-1]
        written_at_s = rt.pending[last].at_s
        in_force = [w.weights for w in rt.pending[last:]]
        problem = _unverifiable(obs, in_force, self.verify_after_s, self.verify_tolerance)
        if problem is not None:
            if now - written_at_s < 3 * self.verify_after_s:
                return None  # try again next tick
            del rt.pending[: last + 1]
            return VerifyResult(
                None, now, f"gave up on the write at {written_at_s:.1f} s: {problem}"
            )
        assert obs is not None
        del rt.pending[: last + 1]
        shares = _shares(obs)
        worst, detail = 0.0, []
        for subset in obs.subsets:
            lo = min(w[subset] for w in in_force)
            hi = max(w[subset] for w in in_force)
            share = shares[subset]
            off = max(lo - share, share - hi, 0.0)
            worst = max(worst, off)
            expect = f"{lo}" if lo == hi else f"{lo}..{hi}"
            detail.append(f"{subset} {share:.1f} (wrote {expect})")
        ok = worst <= self.verify_tolerance
        verdict = "ok" if ok else f"FAILED, off by {worst:.1f} > {self.verify_tolerance:g} points"
        text = f"{verdict}: observed {', '.join(detail)}"
        if not ok:
            self.metrics.verify_failures.labels(route=route.key).inc()
            _log.warning(
                "route %s: traffic does not follow the written weights: %s", route.key, text
            )
        return VerifyResult(ok, now, text)

    # -- recording -------------------------------------------------------------------------

    def _fail(self, route: RouteRef, message: str, now: float) -> TickResult:
        rt = self._rt[route]
        if rt.status.failed is None:
            _log.error(
                "route %s failed permanently: %s (re-checked every %d ticks)",
                route.key,
                message,
                self.recheck_failed_every,
            )
            since = now
        else:
            since = rt.status.failed_since_s if rt.status.failed_since_s is not None else now
        rt.failed_tick = self._tick_no
        rt.pending.clear()
        result = self._finish(
            route,
            now,
            phase="failed",
            outcome=f"failed: {message}",
            reason=f"not managed: {message}",
            obs=None,
            failed=message,
        )
        with self._status_lock:
            rt.status = replace(rt.status, failed_since_s=since)
        return result

    def _unexpected(self, route: RouteRef, exc: Exception, now: float) -> TickResult:
        text = f"error: unexpected {type(exc).__name__}: {exc}"
        try:
            return self._finish(
                route,
                now,
                phase="holding",
                outcome=text,
                reason=f"{text}; nothing written",
                obs=None,
            )
        except Exception:
            _log.exception("route %s: could not record the error", route.key)
            return TickResult(route, "holding", text, text)

    def _finish(
        self,
        route: RouteRef,
        now: float,
        *,
        phase: str,
        outcome: str,
        reason: str,
        obs: Observation | None,
        current: Weights | None = None,
        proposed: Weights | None = None,
        raw_action: list[float] | None = None,
        written: Weights | None = None,
        wrote: bool = False,
        weights_after: Weights | None = None,
        verify: VerifyResult | None = None,
        failed: str | None = None,
    ) -> TickResult:
        """Compute the reward, record the decision, update status and metrics."""
        rt = self._rt[route]
        value = self._reward(rt, obs)
        if obs is not None:
            rt.last_obs = obs
            rt.last_weights = weights_after if weights_after is not None else current
        record = DecisionRecord(
            ts_s=now,
            route=route.key,
            phase=phase,
            reason=reason,
            outcome=outcome,
            observation=encode_observation(obs) if obs is not None else None,
            raw_action=raw_action,
            proposed=proposed.as_dict() if proposed is not None else None,
            written=written.as_dict() if written is not None else None,
            wrote=wrote,
            reward=value,
            policy=self.policy.name,
            writer=self.writer_id,
        )
        decision_id = self._record(record)
        weights = weights_after if weights_after is not None else rt.status.weights
        with self._status_lock:
            rt.status = replace(
                rt.status,
                phase=phase,
                weights=weights,
                failed=failed,
                failed_since_s=None if failed is None else rt.status.failed_since_s,
                last_outcome=outcome,
                last_reason=reason,
                last_decision_id=decision_id,
                last_tick_s=now,
                verify=verify if verify is not None else rt.status.verify,
            )
        self.metrics.set_phase(route.key, phase)
        if weights is not None:
            self.metrics.set_weights(route.key, weights)
        self.metrics.decisions.labels(route=route.key, outcome=outcome_class(outcome)).inc()
        return TickResult(
            route=route,
            phase=phase,
            outcome=outcome,
            reason=reason,
            proposed=proposed,
            written=written,
            wrote=wrote,
            weights=weights,
            reward=record.reward,
            verify=verify,
            decision_id=decision_id,
        )

    def _reward(self, rt: _Runtime, obs: Observation | None) -> float | None:
        """Reward of the previous tick's split, judged by this tick's observation."""
        if obs is None or rt.last_obs is None or rt.last_weights is None:
            return None
        try:
            return reward(rt.last_obs, rt.last_weights, obs, slo_ms=self.slo_ms)
        except Exception:  # subsets changed between ticks, and the like: unknown, not fatal
            return None

    def _record(self, record: DecisionRecord) -> int | None:
        try:
            return self.store.record(record)
        except Exception:
            _log.exception("could not record the decision for %s", record.route)
            return None

    # -- scheduling ------------------------------------------------------------------------

    def start(self) -> None:
        """Tick now and then every ``tick_s`` on a background thread.

        One interval job with ``max_instances=1`` (a slow tick is never overlapped by the
        next), ``coalesce=True`` (ticks missed while one ran collapse into one) and a misfire
        grace of one interval (a tick more than that late is skipped, not run stale).
        """
        if self._scheduler is not None:
            raise RuntimeError("ControlLoop already started")
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(
            self.tick,
            trigger="interval",
            seconds=self.tick_s,
            id=JOB_ID,
            name="meshpilot control tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, math.ceil(self.tick_s)),
            next_run_time=datetime.now(UTC),
        )
        self._started_mono = time.monotonic()
        scheduler.start()
        self._scheduler = scheduler

    @property
    def job(self) -> Job | None:
        """The scheduled tick job while started (for tests and diagnostics)."""
        return None if self._scheduler is None else self._scheduler.get_job(JOB_ID)

    def stop(self, *, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let a running tick finish first (idempotent)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.shutdown(wait=wait)
        pool, self._write_pool = self._write_pool, None
        if pool is not None:
            pool.shutdown(wait=wait)
        self._started_mono = None


def _fmt(weights: Weights) -> str:
    return "{" + ", ".join(f"{s}: {v}" for s, v in weights.items()) + "}"


def _shares(obs: Observation) -> dict[str, float]:
    """Observed traffic share per subset (points, 0..100); a subset without data counts 0."""
    rates = {
        s: (st.rps if st.has_data and st.rps > 0 else 0.0)
        for s, st in zip(obs.subsets, obs.stats, strict=True)
    }
    total = math.fsum(rates.values())
    return (
        {s: 100.0 * r / total for s, r in rates.items()} if total > 0 else dict.fromkeys(rates, 0.0)
    )


def _unverifiable(
    obs: Observation | None, in_force: list[Weights], delay_s: float, tolerance: float
) -> str | None:
    """Why `obs` cannot judge the split (None when it can)."""
    if obs is None:
        return "no observation"
    if not obs.staleness_s <= delay_s:
        return f"data is {obs.staleness_s:.1f} s old"
    if set(obs.subsets) != set(in_force[0].subsets):
        return f"observed subsets {sorted(obs.subsets)} differ from the written ones"
    for subset, st in zip(obs.subsets, obs.stats, strict=True):
        if not st.has_data and max(w[subset] for w in in_force) > tolerance:
            return f"no data for {subset}"
    total = obs.total_rps
    if not (math.isfinite(total) and total * delay_s >= MIN_VERIFY_REQUESTS):
        return f"too little traffic ({total:.2f} rps over {delay_s:.0f} s)"
    return None

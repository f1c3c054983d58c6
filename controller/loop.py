"""The control loop: observe -> decide -> guard -> act -> verify -> record, once per tick.

Why one module owns the tick: every failure mode of a live mesh (Prometheus down, an API
server timing out, a VirtualService deleted, RBAC revoked, losing the lease) has to end in a
*defined* state for every route — held, retried, failed-and-visible or follower — and the only
place that can guarantee it is the code that sequences the ports. `tick()` never raises: a
controller that dies on a bad tick leaves the mesh with whatever split it had, unwatched.

Per tick: ONE `Observer.observe` call for all managed routes (the Prometheus observer answers
every route from a fixed number of queries); every route's current weights read; ONE
`decide_many` call for every route read with an observation (route by route with `decide` when
the policy has no `decide_many` or it raises); then per route `Guard.review` ->
`Actuator.apply` (only when the guard says write *and* this replica leads) -> a check that
earlier writes show up in the observed traffic split -> one `DecisionRecord` in the store.

Writes run last and together: every route is read, decided and guarded first, then the
routes whose verdict is a write are applied concurrently on up to ``max_parallel_writes``
threads (one write per route per tick, so each route's writes stay in order, and they start
in route order), and finally each route is verified and recorded in route order, exactly as
if its write had run alone.

Errors: a `TemporaryError` from the observer holds every route (the guard sees no observation,
then decays toward the baseline after ``hold_s``); a `TemporaryError` from the actuator is
recorded as ``"error: ..."`` and retried next tick (the guard proposes again); a
`PermanentError` for one route marks that route ``failed`` (visible in the API and metrics) and
the loop keeps managing the others, re-checking failed routes every ``recheck_failed_every``
ticks. A `PermanentError` from a batched observe is narrowed to the culprit routes by observing
each route alone once. A route whose weights were set outside meshpilot to an invalid split
(`InvalidWeightsError`) fails too, but an operator's pin is written over them at the next tick:
the only split that needs no current one to step from.

What is not sequencing lives next door: `controller.steps` (what each port call means when it
fails), `controller.decisions` (read, decide in one batch, guard), `controller.completion`
(a route's outcome after its write, verified), `controller.verify` (did the observed split
follow the writes), `controller.recording` (the record step, the per-route state, `TickResult`
and `RouteStatus`), `controller.hooks` (leadership and tick hooks, re-exported here) and
`controller.scheduling` (the apscheduler job of `start`, the write threads).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future

from apscheduler.job import Job

from controller.completion import complete_plan
from controller.decisions import Decision, Read, Unreadable, decide_reads, read_route, review
from controller.guard import Guard, Mode
from controller.hooks import AlwaysLeader, Leadership, TickHook, run_hooks
from controller.metrics import ControllerMetrics
from controller.recording import Entry, RouteBook, RouteStatus, TickResult
from controller.scheduling import TickScheduler, WritePool, recheck_due
from controller.steps import Applied, Plan, apply_write, observe_routes, pin_waits
from controller.store import DecisionRecord, DecisionStore
from meshcore import Actuator, Clock, Observation, Observer, PermanentError, Policy, RouteRef

__all__ = ["AlwaysLeader", "ControlLoop", "Leadership", "TickHook"]

_log = logging.getLogger(__name__)

STOP_WARN_S = 5.0
"""A stop still waiting for the running tick after this long (s) logs a warning."""


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
    (rps), filled into observations that carry none; balancers: the load-balancing policy per
    route (`Observation.balancer`), set on its observations (default: what the observer
    says, least-request for Prometheus); recheck_failed_every: ticks between
    re-checks of a failed route; max_parallel_writes: how many routes are written at once
    (threads; 1 writes one after the other). The actuator must be thread-safe when > 1.
    hooks: run before and after every tick (`TickHook`); with hooks `routes` may be empty.
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
        balancers: Mapping[RouteRef, str] | None = None,
        recheck_failed_every: int = 12,
        max_parallel_writes: int = 8,
        hooks: Sequence[TickHook] = (),
    ) -> None:
        if not routes and not hooks:
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
        self.hooks = tuple(hooks)
        self.leading = False
        """Whether this tick's leadership check said leader (hooks read it in before_tick)."""
        self._hints = {r: dict(h) for r, h in (capacity_hints or {}).items()}
        self._balancers = dict(balancers or {})
        self._book = RouteBook(self.routes)
        self._by_key = {r.key: r for r in self.routes}
        self._tick_lock = threading.Lock()
        self._tick_no = 0
        self._ready = False
        self._observing = False
        self._last_tick_mono: float | None = None
        self._started_mono: float | None = None
        self._scheduler: TickScheduler | None = None
        self._writes = WritePool(max_parallel_writes)
        self.metrics.declare_routes(keys)
        conflicts = getattr(actuator, "conflicts", None)
        if isinstance(conflicts, int | float):
            self.metrics.bind_conflicts(lambda: float(getattr(actuator, "conflicts", 0)))

    # -- what the API reads ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a tick finished: from then on the API is worth serving (reads, and pins
        that the guard applies even while routes hold), whether or not the observer answered.
        Readiness must not drop the pod exactly when Prometheus is down and an operator needs
        it; `observing` says whether the last tick had data."""
        return self._ready

    @property
    def observing(self) -> bool:
        """True when the last tick's observation succeeded (False before the first tick)."""
        return self._observing

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

    def add_hook(self, hook: TickHook) -> None:
        """Run `hook` in every tick from the next one on, after the hooks given before."""
        self.hooks = (*self.hooks, hook)

    def set_routes(self, routes: Sequence[RouteRef]) -> None:
        """Manage exactly `routes` from now on (a route left out is never written again)."""
        self._book.add(routes)
        self.metrics.declare_routes([r.key for r in routes if r not in self._by_key.values()])
        kept = {r.key for r in routes}
        self.metrics.forget_routes([key for key in self._by_key if key not in kept])
        self.routes = tuple(routes)
        self._by_key = {r.key: r for r in self.routes}

    def status(self) -> list[RouteStatus]:
        return self._book.statuses(self.routes)

    def route_status(self, route: RouteRef) -> RouteStatus:
        return self._book.status(route)

    # -- the tick --------------------------------------------------------------------------

    def tick(self) -> list[TickResult]:
        """Run one control step for every managed route; never raises."""
        with self._tick_lock:
            started = time.perf_counter()
            results: list[TickResult] = []
            try:
                results = self._tick()
                self._ready = True
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
        self.leading = leader
        self.metrics.leader.set(1.0 if leader else 0.0)
        run_hooks(self.hooks, self, None)
        due = [r for r in self.routes if self._due(r)]
        observations, obs_error, broken = observe_routes(self.observer, due, self.metrics)
        self._observing = obs_error is None
        self.metrics.observing.set(1.0 if obs_error is None else 0.0)
        staged: list[TickResult | Plan | Read] = []
        for route in due:
            try:
                if route in broken:
                    staged.append(self._fail(route, broken[route], now))
                    continue
                staged.append(self._read(route, observations.get(route), obs_error, now, leader))
            except Exception as exc:  # a bug for one route must not stop the others
                _log.exception("route %s: unexpected error in tick", route.key)
                staged.append(self._unexpected(route, exc, now))
        reads = [item for item in staged if isinstance(item, Read)]
        decisions = iter(decide_reads(self.policy, reads))  # one batch for every read route
        planned = [self._review(item, decisions, now) for item in staged]
        writing: dict[RouteRef, Future[Applied]] = {
            p.route: self._start_write(p) for p in planned if isinstance(p, Plan) and p.writes
        }  # started in route order
        applied = {route: future.result() for route, future in writing.items()}
        results = []
        for item in planned:
            if not isinstance(item, Plan):
                results.append(item)
                continue
            try:
                results.append(self._complete(item, applied.get(item.route), now))
            except Exception as exc:
                _log.exception("route %s: unexpected error in tick", item.route.key)
                results.append(self._unexpected(item.route, exc, now))
        self._note_steering()
        run_hooks(self.hooks, self, leader)
        return results

    def _note_steering(self) -> None:
        """Who steers each route under a supervisor (`agents.supervisor`): status and metric."""
        modes = getattr(self.policy, "modes", None)
        if not callable(modes):
            return
        try:
            current = dict(modes())
        except Exception:  # a broken report must not break the tick
            _log.exception("could not read the supervisor's modes")
            return
        for route in self.routes:
            mode = current.get(route)
            if mode is not None:
                self._book.steered_by(route, str(mode))
                self.metrics.set_fallback(route.key, mode == "fallback")

    def _review(
        self, item: TickResult | Plan | Read, decisions: Iterator[Decision], now: float
    ) -> TickResult | Plan:
        """The guard's `Plan` for a read route and its decision (the next of `decisions`);
        a result or a repair plan as it is."""
        if not isinstance(item, Read):
            return item
        decision = next(decisions)
        try:
            hint: Mode = self.mode if item.leader else "shadow"
            return review(self.guard, item, decision, now_s=now, hint=hint)
        except Exception as exc:  # a bug for one route must not stop the others
            _log.exception("route %s: unexpected error in tick", item.route.key)
            return self._unexpected(item.route, exc, now)

    def _due(self, route: RouteRef) -> bool:
        rt = self._book.runtime(route)
        if rt.status.failed is None:
            return True
        waits = pin_waits(self.guard, route, self.clock.now(), self.mode)
        if rt.status.invalid_weights is not None and waits:
            return True  # an operator's pin repairs it: at the next tick, not the next re-check
        return recheck_due(self._tick_no, rt.failed_tick, self.recheck_failed_every)

    def _read(
        self,
        route: RouteRef,
        obs: Observation | None,
        obs_error: str | None,
        now: float,
        leader: bool,
    ) -> TickResult | Plan | Read:
        """Read one route for its decision (`read_route`): a `Read`, a `Plan` repairing its
        weights with a pin, or the result when the read failed (recorded)."""
        item = read_route(
            self.actuator,
            self.guard,
            route,
            self._book.runtime(route),
            obs,
            obs_error=obs_error,
            now_s=now,
            hint=self.mode if leader else "shadow",
            leader=leader,
            hints=self._hints.get(route),
            slo_ms=self.slo_ms,
            balancer=self._balancers.get(route),
        )
        if not isinstance(item, Unreadable):
            return item
        if item.held is not None:
            return self._finish(route, now, item.held)
        return self._fail(route, item.failed, now, invalid_weights=item.invalid_weights)

    def _start_write(self, plan: Plan) -> Future[Applied]:
        """Call the actuator for `plan` on the write pool (at most `max_parallel_writes` at
        once), or right here when writes go one after the other."""
        write = functools.partial(apply_write, self.actuator, plan.route, plan.verdict.weights)
        return self._writes.submit(write)

    def _complete(self, plan: Plan, applied: Applied | None, now: float) -> TickResult:
        """Verify and record one route after its write (if any): `complete_plan`."""
        try:
            entry = complete_plan(
                plan,
                applied,
                self._book.runtime(plan.route),
                now,
                metrics=self.metrics,
                verify_after_s=self.verify_after_s,
                verify_tolerance=self.verify_tolerance,
            )
        except PermanentError as exc:  # RBAC revoked, route deleted between read and write
            return self._fail(plan.route, str(exc), now)
        return self._finish(plan.route, now, entry)

    # -- recording -------------------------------------------------------------------------

    def _fail(
        self,
        route: RouteRef,
        message: str,
        now: float,
        *,
        invalid_weights: Mapping[str, int] | None = None,
    ) -> TickResult:
        rt = self._book.runtime(route)
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
        entry = Entry(
            "failed",
            f"failed: {message}",
            f"not managed: {message}",
            None,
            failed=message,
            invalid_weights=invalid_weights,
        )
        result = self._finish(route, now, entry)
        self._book.failed_since(route, since)
        return result

    def _unexpected(self, route: RouteRef, exc: Exception, now: float) -> TickResult:
        text = f"error: unexpected {type(exc).__name__}: {exc}"
        try:
            return self._finish(
                route, now, Entry("holding", text, f"{text}; nothing written", None)
            )
        except Exception:
            _log.exception("route %s: could not record the error", route.key)
            return TickResult(route, "holding", text, text)

    def _finish(self, route: RouteRef, now: float, entry: Entry) -> TickResult:
        """Record `entry` for `route`: audit log, status, metrics (`RouteBook.record`)."""
        return self._book.record(
            route,
            now,
            entry,
            store=self._record,
            metrics=self.metrics,
            policy=self.policy.name,
            writer_id=self.writer_id,
            slo_ms=self.slo_ms,
        )

    def _record(self, record: DecisionRecord) -> int | None:
        try:
            return self.store.record(record)
        except Exception:
            _log.exception("could not record the decision for %s", record.route)
            return None

    # -- scheduling ------------------------------------------------------------------------

    def start(self) -> None:
        """Tick now and then every ``tick_s`` on a background thread (`TickScheduler`)."""
        if self._scheduler is not None:
            raise RuntimeError("ControlLoop already started")
        scheduler = TickScheduler(self.tick, interval_s=self.tick_s)
        self._started_mono = time.monotonic()
        scheduler.start()
        self._scheduler = scheduler

    @property
    def job(self) -> Job | None:
        """The scheduled tick job while started (for tests and diagnostics)."""
        return None if self._scheduler is None else self._scheduler.job

    def stop(self, *, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let a running tick finish first (idempotent). A tick
        is never cut short (it may be writing, and leadership is released only after it), but
        one still running after `STOP_WARN_S` is named in a warning: a shutdown that outlives
        the Pod's grace period says where the time went."""
        scheduler, self._scheduler = self._scheduler, None
        warn = threading.Timer(
            STOP_WARN_S,
            _log.warning,
            ("still waiting for the running control tick to finish (%.0f s)", STOP_WARN_S),
        )
        warn.daemon = True
        if wait:
            warn.start()
        try:
            if scheduler is not None:
                scheduler.stop(wait=wait)
            self._writes.shutdown(wait=wait)
        finally:
            warn.cancel()
        self._started_mono = None

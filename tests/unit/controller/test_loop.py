"""The control loop: what each failure mode of the mesh leaves each route in.

Cases: one observe call per tick for every route; observer TemporaryError -> every route holds,
then decays toward the baseline after hold_s, and the loop keeps ticking; actuator
TemporaryError -> "error: ..." and the same write retried next tick; PermanentError on one
route (from the actuator, or from a batched observe of the real simulator) -> that route is
failed, the others are still managed, and the failed one is re-checked and recovers; a follower
never writes, and the store proves who wrote; verification catches a data plane that does not
follow the written weights and passes one that does; every write steps toward the proposal by
at most max_step and is recorded as written (property); shadow mode never reaches the
actuator; reward and raw action are recorded; capacity hints reach the policy; a change made
outside meshpilot is reported; nothing escapes tick(); the scheduler job never overlaps
(max_instances=1).

Parallel writes: the routes that need a write are applied together on up to
``max_parallel_writes`` threads (proved with a barrier, and never more), results and records
stay in route order, and every per-route outcome is what a write alone would give: written,
conflict-retried (counted per route), ``error: ...`` (TemporaryError), failed (PermanentError:
RBAC denied on patch, route deleted) or ``error: unexpected ...``; with 1, no thread is used.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import loop as loop_module
from controller.adapters.nop import ShadowActuator
from controller.clock import FakeClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop, Leadership
from controller.metrics import ControllerMetrics
from controller.recording import TickResult
from controller.scheduling import JOB_ID
from controller.store import DecisionStore
from meshcore import (
    Observation,
    PermanentError,
    Policy,
    RouteRef,
    SubsetStats,
    TemporaryError,
    Weights,
)

A = RouteRef("lirmm-services", "checkout", "primary", "checkout")
B = RouteRef("lirmm-services", "cart", "primary", "cart")
SUBSETS = ("v1", "v2")
TICK_S = 5.0


class FakeMesh:
    """Observer + Actuator over in-memory routes; the data plane follows writes unless told."""

    def __init__(self, routes: Mapping[RouteRef, Weights], *, clock: FakeClock) -> None:
        self.configured = dict(routes)
        self.initial = dict(routes)
        self.clock = clock
        self.follow = True
        self.total_rps = 200.0
        self.observe_calls = 0
        self.observe_errors: list[Exception] = []
        self.apply_errors: dict[RouteRef, list[Exception]] = {}
        self.read_errors: dict[RouteRef, list[Exception]] = {}
        self.missing: set[RouteRef] = set()
        self.applied: list[tuple[RouteRef, Weights]] = []

    def observe(self, routes: Sequence[RouteRef]) -> dict[RouteRef, Observation]:
        self.observe_calls += 1
        if self.observe_errors:
            raise self.observe_errors.pop(0)
        gone = [r.key for r in routes if r in self.missing]
        if gone:
            raise PermanentError(f"routes {gone} do not exist")
        return {r: self._obs(r) for r in routes}

    def _obs(self, route: RouteRef) -> Observation:
        weights = self.configured[route]
        split = weights if self.follow else self.initial[route]
        stats = tuple(
            SubsetStats(self.total_rps * split[s] / 100, 0.001, 40.0, weights[s], 0.0)
            for s in weights.subsets
        )
        return Observation(route, weights.subsets, stats, self.clock.now())

    def current(self, route: RouteRef) -> Weights:
        queue = self.read_errors.get(route)
        if queue:
            raise queue.pop(0)
        if route in self.missing:
            raise PermanentError(f"virtualservice {route.virtual_service} not found")
        return self.configured[route]

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        queue = self.apply_errors.get(route)
        if queue:
            raise queue.pop(0)
        self.applied.append((route, weights))
        self.configured[route] = weights
        return weights


class FixedPolicy:
    """Always proposes `target` (by subset) and exposes a raw action, like the PPO policy."""

    name = "fixed"

    def __init__(self, target: Mapping[str, int]) -> None:
        self.target = dict(target)
        self.last_raw_action: list[float] = []
        self.seen: list[Observation] = []

    def decide(self, obs: Observation) -> Weights:
        self.seen.append(obs)
        self.last_raw_action = [0.5, -0.5]
        return Weights(obs.subsets, [self.target[s] for s in obs.subsets])

    def reset(self) -> None:
        self.seen.clear()


class Switch:
    """A `Leadership` a test can flip."""

    def __init__(self, leading: bool) -> None:
        self.leading = leading

    def is_leader(self) -> bool:
        return self.leading


def make_loop(
    mesh: FakeMesh,
    policy: Policy,
    *,
    routes: Sequence[RouteRef] = (A,),
    guard: GuardConfig | None = None,
    leader: Leadership | None = None,
    **kwargs: object,
) -> ControlLoop:
    options: dict[str, object] = {
        "slo_ms": 250.0,
        "writer_id": "pod-a",
        "verify_after_s": 30.0,
        "verify_tolerance": 10.0,
        "tick_s": TICK_S,
    }
    options.update(kwargs)
    return ControlLoop(
        observer=mesh,
        actuator=mesh,
        policy=policy,
        guard=Guard(guard or GuardConfig(max_step=10)),
        store=DecisionStore(":memory:"),
        routes=routes,
        clock=mesh.clock,
        leader=leader,
        metrics=ControllerMetrics(),
        **options,  # type: ignore[arg-type]
    )


def run(loop: ControlLoop, clock: FakeClock, ticks: int) -> list[list[TickResult]]:
    out = []
    for _ in range(ticks):
        out.append(list(loop.tick()))
        clock.advance(TICK_S)
    return out


def split(*values: int) -> Weights:
    return Weights(SUBSETS[: len(values)] if len(values) <= 2 else ("v1", "v2", "v3"), values)


def test_one_observe_call_covers_every_route() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10), B: split(50, 50)}, clock=clock)
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}), routes=(A, B))
    results = loop.tick()
    assert mesh.observe_calls == 1
    assert [r.route for r in results] == [A, B]
    assert loop.ready


def test_the_loop_is_ready_after_a_tick_without_data_and_says_it_is_not_observing() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    mesh.observe_errors = [TemporaryError("prometheus: connection refused")]
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}))
    assert not loop.ready and not loop.observing
    loop.tick()  # Prometheus down from the start: the route holds
    assert loop.ready and not loop.observing
    loop.tick()
    assert loop.ready and loop.observing


def test_observer_temporary_error_holds_every_route_then_decays_to_baseline() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10), B: split(50, 50)}, clock=clock)
    policy = FixedPolicy({"v1": 10, "v2": 90})
    config = GuardConfig(max_step=10, hold_s=30.0, decay_step=5)
    loop = make_loop(mesh, policy, routes=(A, B), guard=config)
    loop.tick()  # fresh data: A moves 90/10 -> 80/20, B 50/50 -> 40/60
    assert mesh.configured[A] == split(80, 20)
    writes_before = len(mesh.applied)
    mesh.observe_errors = [TemporaryError("prometheus: connection refused")] * 20
    a_results = []
    for _ in range(10):
        clock.advance(TICK_S)
        results = loop.tick()
        assert len(results) == 2  # the loop keeps ticking for every route
        a_results.append(results[0])
    # 5..25 s after the last fresh data: inside hold_s; then 5 points a tick back to 90/10
    outcomes = [r.outcome for r in a_results]
    assert outcomes == ["held"] * 5 + ["written"] * 2 + ["held"] * 3
    assert all(r.phase == "holding" for r in a_results)
    assert all("observe failed: prometheus: connection refused" in r.reason for r in a_results)
    assert [r.written for r in a_results[5:7]] == [split(85, 15), split(90, 10)]
    assert "at baseline" in a_results[-1].reason
    assert mesh.configured[A] == split(90, 10) and mesh.configured[B] == split(50, 50)
    assert len(mesh.applied) > writes_before
    assert loop.metrics.query_errors._value.get() == 10


def test_actuator_temporary_error_is_recorded_and_retried_next_tick() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    mesh.apply_errors[A] = [TemporaryError("409 conflict, retries exhausted")]
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}))
    (first,) = loop.tick()
    assert first.outcome == "error: 409 conflict, retries exhausted"
    assert mesh.configured[A] == split(90, 10)
    clock.advance(TICK_S)
    (second,) = loop.tick()
    assert second.outcome == "written" and second.written == split(80, 20)
    assert mesh.configured[A] == split(80, 20)
    stored = loop.store.get(first.decision_id or -1)
    assert stored is not None and stored.outcome.startswith("error: ")


def test_permanent_error_fails_one_route_and_the_others_stay_managed() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10), B: split(90, 10)}, clock=clock)
    mesh.missing.add(B)
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}), routes=(A, B), recheck_failed_every=3)
    results = run(loop, clock, 2)
    first = {r.route: r for r in results[0]}
    assert first[B].phase == "failed"
    assert first[B].outcome.startswith("failed: ") and "cart" in first[B].outcome
    assert first[A].outcome == "written"
    assert [r.route for r in results[1]] == [A]
    status = loop.route_status(B)
    assert status.phase == "failed" and status.failed is not None
    assert mesh.configured[A] == split(70, 30)  # A kept moving
    mesh.missing.clear()  # the route is back (re-created, RBAC fixed)
    results = run(loop, clock, 2)
    routes_seen = [r.route for tick in results for r in tick]
    assert routes_seen.count(B) == 1  # re-checked after recheck_failed_every ticks
    assert loop.route_status(B).failed is None
    assert loop.route_status(B).phase == "active"


@pytest.mark.parametrize("max_parallel_writes", [1, 8])
def test_permanent_error_while_writing_fails_the_route(max_parallel_writes: int) -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10), B: split(90, 10)}, clock=clock)
    mesh.apply_errors[A] = [PermanentError("virtualservices.networking.istio.io is forbidden")]
    loop = make_loop(
        mesh,
        FixedPolicy({"v1": 50, "v2": 50}),
        routes=(A, B),
        max_parallel_writes=max_parallel_writes,
    )
    results = {r.route: r for r in loop.tick()}
    assert results[A].phase == "failed" and "forbidden" in results[A].outcome
    assert results[A].wrote is False
    assert results[B].outcome == "written"
    assert loop.route_status(A).failed == "virtualservices.networking.istio.io is forbidden"
    assert loop.metrics.writes.labels(route=A.key)._value.get() == 0
    assert loop.metrics.writes.labels(route=B.key)._value.get() == 1
    stored = loop.store.get(results[A].decision_id or -1)
    assert stored is not None and stored.phase == "failed"


def test_permanent_error_in_a_batched_observe_is_narrowed_to_its_route() -> None:
    from envs.simulator.engine import MeshSimulator
    from envs.simulator.mesh import SimulatedMesh
    from envs.simulator.scenario import load_scenario

    sim = MeshSimulator(load_scenario("degraded-canary"), seed=1, route=A)
    mesh = SimulatedMesh({A: sim})
    ghost = RouteRef("lirmm-services", "ghost", "primary", "ghost")
    clock = FakeClock()
    loop = ControlLoop(
        observer=mesh,
        actuator=mesh,
        policy=FixedPolicy({"stable": 80, "canary": 20}),
        guard=Guard(),
        store=DecisionStore(":memory:"),
        routes=(A, ghost),
        clock=clock,
        slo_ms=250.0,
        writer_id="pod-a",
        verify_after_s=30.0,
        verify_tolerance=10.0,
    )
    for _ in range(3):
        mesh.advance()
        clock.advance(5.0)
        results = {r.route: r for r in loop.tick()}
    assert loop.route_status(ghost).phase == "failed"
    assert "not simulated" in (loop.route_status(ghost).failed or "")
    assert results[A].phase == "active"
    assert sim.pending == Weights(("stable", "canary"), (80, 20))


def test_follower_never_writes_and_the_store_shows_who_wrote() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    switch = Switch(leading=False)
    loop = make_loop(mesh, FixedPolicy({"v1": 10, "v2": 90}), leader=switch)
    results = run(loop, clock, 5)
    assert mesh.applied == []
    assert all(r.outcome == "follower" and not r.wrote for t in results for r in t)
    assert loop.store.writers() == {}
    switch.leading = True
    run(loop, clock, 2)
    assert len(mesh.applied) == 2
    assert loop.store.writers() == {"pod-a": 2}


def test_a_leader_check_that_raises_counts_as_follower() -> None:
    class Broken:
        def is_leader(self) -> bool:
            raise RuntimeError("lease API unreachable")

    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    loop = make_loop(mesh, FixedPolicy({"v1": 10, "v2": 90}), leader=Broken())
    (result,) = loop.tick()
    assert result.outcome == "follower" and mesh.applied == []


@pytest.mark.parametrize("follows", [True, False])
def test_verify_detects_a_data_plane_that_does_not_follow(follows: bool) -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    mesh.follow = follows
    loop = make_loop(mesh, FixedPolicy({"v1": 30, "v2": 70}), verify_after_s=30.0)
    verified = [r.verify for t in run(loop, clock, 20) for r in t if r.verify is not None]
    assert verified, "a verification must conclude within 100 s"
    if follows:
        assert all(v.ok for v in verified)
        assert loop.metrics.verify_failures.labels(route=A.key)._value.get() == 0
    else:
        assert any(v.ok is False for v in verified)
        failed = next(v for v in verified if v.ok is False)
        assert "FAILED" in failed.detail and "v2 10.0" in failed.detail
        assert loop.metrics.verify_failures.labels(route=A.key)._value.get() > 0
        assert loop.route_status(A).verify is not None


@settings(max_examples=40, deadline=None)
@given(
    start=st.integers(0, 100),
    targets=st.lists(st.integers(0, 100), min_size=1, max_size=12),
    max_step=st.integers(1, 50),
)
def test_every_write_steps_toward_the_proposal_by_at_most_max_step_and_is_recorded(
    start: int, targets: list[int], max_step: int
) -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(start, 100 - start)}, clock=clock)
    policy = FixedPolicy({"v1": 0, "v2": 100})
    loop = make_loop(mesh, policy, guard=GuardConfig(max_step=max_step))
    previous = mesh.configured[A]
    writes = []
    for target in targets:
        policy.target = {"v1": target, "v2": 100 - target}
        (result,) = loop.tick()
        clock.advance(TICK_S)
        if result.wrote:
            v1 = min(max(target, previous["v1"] - max_step), previous["v1"] + max_step)
            assert result.written == split(v1, 100 - v1)
            assert all(abs(result.written[s] - previous[s]) <= max_step for s in SUBSETS)
            assert mesh.configured[A] == result.written
            previous = result.written
            writes.append(result.written.as_dict())
    records = reversed(loop.store.latest(A, limit=100))
    assert [r.written for r in records if r.wrote] == writes


def test_shadow_mode_never_reaches_the_mesh() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    shadow = ShadowActuator(reader=mesh)
    loop = ControlLoop(
        observer=mesh,
        actuator=shadow,
        policy=FixedPolicy({"v1": 10, "v2": 90}),
        guard=Guard(),
        store=DecisionStore(":memory:"),
        routes=(A,),
        clock=clock,
        slo_ms=250.0,
        writer_id="pod-a",
        verify_after_s=30.0,
        verify_tolerance=10.0,
        mode="shadow",
    )
    (result,) = loop.tick()
    assert result.outcome == "shadow" and result.phase == "shadow"
    assert result.written == split(80, 20)  # what it would have written
    assert mesh.applied == [] and shadow.applies == 0
    assert shadow.apply(A, split(50, 50)) == split(50, 50)  # the adapter records, never writes
    assert shadow.would_write == {A.key: split(50, 50)} and mesh.configured[A] == split(90, 10)


def test_records_reward_raw_action_capacity_hints_and_balancer() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    policy = FixedPolicy({"v1": 80, "v2": 20})
    loop = make_loop(
        mesh, policy, capacity_hints={A: {"v1": 300.0, "v2": 100.0}}, balancers={A: "random"}
    )
    first, second = (t[0] for t in run(loop, clock, 2))
    assert first.reward is None
    assert second.reward is not None and math.isfinite(second.reward)
    assert second.decision_id is not None
    record = loop.store.get(second.decision_id)
    assert record is not None
    assert record.raw_action == [0.5, -0.5]
    assert record.policy == "fixed" and record.writer == "pod-a"
    assert record.observation is not None and record.observation["capacity_hint_rps"] == [300, 100]
    assert policy.seen[0].capacity_hint_rps == (300.0, 100.0)
    assert policy.seen[0].balancer == "random" and record.observation["balancer"] == "random"


def test_a_change_made_outside_meshpilot_is_reported() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    loop = make_loop(mesh, FixedPolicy({"v1": 80, "v2": 20}))
    run(loop, clock, 1)
    mesh.configured[A] = split(60, 40)  # kubectl edit
    (result,) = loop.tick()
    assert "route changed outside meshpilot: wrote {v1: 80, v2: 20}, reads {v1: 60, v2: 40}" in (
        result.reason
    )


def test_nothing_escapes_tick() -> None:
    class Exploding(FixedPolicy):
        def decide(self, obs: Observation) -> Weights:
            raise RuntimeError("NaN in the network")

    class BrokenStore(DecisionStore):
        def record(self, rec: object) -> int:  # type: ignore[override]
            raise TemporaryError("database is locked")

    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    mesh.observe_errors = [ValueError("unexpected answer")]
    loop = make_loop(mesh, Exploding({"v1": 0, "v2": 100}))
    loop.store = BrokenStore(":memory:")
    (first,) = loop.tick()
    assert first.phase == "holding" and first.decision_id is None
    assert "observe failed: ValueError: unexpected answer" in first.reason
    clock.advance(TICK_S)
    (second,) = loop.tick()
    assert "policy fixed failed: RuntimeError: NaN in the network" in second.reason
    assert second.wrote is False and mesh.applied == []


def test_the_loop_schedules_its_tick_every_tick_s_once() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    loop = make_loop(mesh, FixedPolicy({"v1": 90, "v2": 10}), tick_s=3600.0)
    loop.start()
    try:
        job = loop.job
        assert job is not None and job.id == JOB_ID
        assert job.trigger.interval.total_seconds() == 3600.0
        with pytest.raises(RuntimeError, match="already started"):
            loop.start()
    finally:
        loop.stop()
    assert loop.job is None


class StuckPolicy(FixedPolicy):
    """Decides only once `release` is set: a tick stuck on an API that does not answer."""

    def __init__(self, target: Mapping[str, int]) -> None:
        super().__init__(target)
        self.entered = threading.Event()
        self.release = threading.Event()

    def decide(self, obs: Observation) -> Weights:
        self.entered.set()
        self.release.wait(30.0)
        return super().decide(obs)


def test_a_stop_waits_for_a_running_tick_and_names_a_slow_one(caplog, monkeypatch) -> None:
    monkeypatch.setattr(loop_module, "STOP_WARN_S", 0.1)
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    policy = StuckPolicy({"v1": 80, "v2": 20})
    loop = make_loop(mesh, policy, tick_s=3600.0)
    loop.start()
    assert policy.entered.wait(10.0)
    release = threading.Timer(0.5, policy.release.set)
    release.start()
    with caplog.at_level("WARNING", logger="controller.loop"):
        loop.stop()
    # The tick was not cut short: it wrote its split before stop returned.
    assert policy.release.is_set() and mesh.applied
    assert loop.job is None
    assert "still waiting for the running control tick" in caplog.text


def test_rejects_an_unusable_configuration() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    with pytest.raises(ValueError, match="at least one route"):
        make_loop(mesh, FixedPolicy({}), routes=())
    with pytest.raises(ValueError, match="duplicate routes"):
        make_loop(mesh, FixedPolicy({}), routes=(A, A))
    with pytest.raises(ValueError, match="verify_after_s"):
        make_loop(mesh, FixedPolicy({}), verify_after_s=0.0)


# -- parallel writes ------------------------------------------------------------------------------


class ConcurrentMesh(FakeMesh):
    """A FakeMesh whose writes may overlap: counts them, and can hold the first `together`
    writes at a barrier until that many run at once."""

    def __init__(self, routes: Mapping[RouteRef, Weights], *, clock: FakeClock) -> None:
        super().__init__(routes, clock=clock)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0
        self.threads: set[str] = set()
        self.barrier: threading.Barrier | None = None
        self.route_conflicts: dict[str, int] = {}
        self.conflict_on: set[RouteRef] = set()

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        with self.lock:
            self.calls += 1
            first = self.barrier is not None and self.calls <= self.barrier.parties
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.threads.add(threading.current_thread().name)
        try:
            if first and self.barrier is not None:
                self.barrier.wait()  # BrokenBarrierError unless `parties` writes overlap
            with self.lock:
                if route in self.conflict_on:
                    self.route_conflicts[route.key] = self.route_conflicts.get(route.key, 0) + 1
                return super().apply(route, weights)
        finally:
            with self.lock:
                self.in_flight -= 1

    def conflicts_for(self, route: RouteRef) -> int:
        with self.lock:
            return self.route_conflicts.get(route.key, 0)


def many_routes(n: int) -> list[RouteRef]:
    return [RouteRef("lirmm-services", f"svc-{i}", "primary", f"svc-{i}") for i in range(n)]


def test_writes_run_in_parallel_bounded_by_max_parallel_writes() -> None:
    clock = FakeClock()
    routes = many_routes(12)
    mesh = ConcurrentMesh(dict.fromkeys(routes, split(90, 10)), clock=clock)
    mesh.barrier = threading.Barrier(4, timeout=30)
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}), routes=routes, max_parallel_writes=4)
    results = loop.tick()
    assert not mesh.barrier.broken  # four writes were in flight at once
    assert mesh.max_in_flight == 4  # and never more
    assert all(name.startswith("meshpilot-write") for name in mesh.threads)
    assert [r.route for r in results] == routes  # route order, whatever order writes ended in
    assert all(r.outcome == "written" and r.written == split(80, 20) for r in results)
    assert all(mesh.configured[r] == split(80, 20) for r in routes)
    records = sorted(loop.store.latest(limit=100), key=lambda rec: rec.id or 0)
    assert [rec.route for rec in records] == [r.key for r in routes]
    # Next tick: each route's second write follows its first.
    clock.advance(TICK_S)
    mesh.barrier = None
    assert all(r.written == split(70, 30) for r in loop.tick())
    assert [w for r, w in mesh.applied if r == routes[0]] == [split(80, 20), split(70, 30)]


def test_one_parallel_write_at_most_means_no_threads() -> None:
    clock = FakeClock()
    routes = many_routes(3)
    mesh = ConcurrentMesh(dict.fromkeys(routes, split(90, 10)), clock=clock)
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}), routes=routes, max_parallel_writes=1)
    assert all(r.outcome == "written" for r in loop.tick())
    assert mesh.threads == {threading.current_thread().name}
    assert mesh.max_in_flight == 1


def test_each_parallel_write_keeps_its_own_outcome() -> None:
    clock = FakeClock()
    routes = many_routes(6)
    ok, forbidden, temporary, unexpected, deleted, conflicted = routes
    mesh = ConcurrentMesh(dict.fromkeys(routes, split(90, 10)), clock=clock)
    mesh.apply_errors = {
        forbidden: [PermanentError("RBAC denied: patch virtualservices (403: forbidden)")],
        temporary: [TemporaryError("API server answered 503")],
        unexpected: [RuntimeError("bug in the adapter")],
        deleted: [PermanentError("VirtualService lirmm-services/svc-4 not found")],
    }
    mesh.conflict_on = {conflicted}
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}), routes=routes, max_parallel_writes=8)
    results = loop.tick()
    assert [r.route for r in results] == routes
    by = {r.route: r for r in results}
    assert by[ok].outcome == "written" and by[ok].wrote
    assert by[conflicted].outcome == "conflict-retried"  # per route, not another's conflict
    for route, text in ((forbidden, "RBAC denied: patch"), (deleted, "svc-4 not found")):
        assert by[route].phase == "failed" and text in by[route].outcome
        status = loop.route_status(route)
        assert status.phase == "failed" and status.failed is not None and text in status.failed
    assert by[temporary].outcome == "error: API server answered 503"
    assert by[temporary].wrote and by[temporary].weights == split(90, 10)
    assert by[unexpected].outcome == "error: unexpected RuntimeError: bug in the adapter"
    assert by[unexpected].phase == "holding"
    assert all(r.decision_id is not None for r in results)
    writes = {r.key: loop.metrics.writes.labels(route=r.key)._value.get() for r in routes}
    assert writes == {r.key: float(r in (ok, conflicted)) for r in routes}
    # Next tick: the temporary and unexpected failures are retried, failed routes wait.
    clock.advance(TICK_S)
    again = {r.route: r for r in loop.tick()}
    assert set(again) == {ok, temporary, unexpected, conflicted}
    assert again[temporary].outcome == "written" and again[unexpected].outcome == "written"
    assert again[conflicted].outcome == "conflict-retried"  # it conflicts on every write
    assert again[ok].outcome == "written"


def test_rejects_max_parallel_writes_below_one() -> None:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10)}, clock=clock)
    with pytest.raises(ValueError, match="max_parallel_writes"):
        make_loop(mesh, FixedPolicy({}), max_parallel_writes=0)

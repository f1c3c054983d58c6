"""The live loop decides a tick's routes with ONE batched policy call.

Cases: a policy with `decide_many` is called once per tick with every route read this tick, in
route order, and never with a route that is failed (not due), whose read failed, or that has
no observation (paused and pinned routes are decided, as route by route: their proposal is
recorded); whatever happens to the routes (observer outages, read and write errors, routes
deleted and back, pauses, pins, lost leadership), the batched loop records the same decisions,
writes the same weights in the same order and leaves the same metrics as the same loop with a
policy that decides one route at a time (property), and the real supervised planner does too;
a `decide_many` that raises, or does not answer for every route, falls back to deciding route
by route (one route's failing decision is a note on that route only) and still writes; a
policy without `decide_many` decides route by route; a batching policy that keeps its note
only per decision (`last_note` without `last_notes`) is asked route by route, so no note is
lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.planner import PlannerPolicy
from agents.supervisor import SupervisedPolicy
from controller.clock import FakeClock
from controller.loop import ControlLoop
from controller.recording import TickResult
from controller.store import DecisionRecord
from meshcore import Observation, PermanentError, Policy, RouteRef, TemporaryError, Weights
from tests.unit.controller.test_loop import (
    TICK_S,
    FakeMesh,
    Switch,
    make_loop,
    many_routes,
    split,
)

ROUTES = many_routes(4)


class StepPolicy:
    """Proposes a split from the observation and its count of decisions for the route, with a
    note every other decision and a raw action: a decision made twice, skipped or made for the
    wrong route changes what the loop records."""

    name = "step"

    def __init__(self, *, fail_on: Sequence[RouteRef] = ()) -> None:
        self.fail_on = set(fail_on)
        self.counts: dict[RouteRef, int] = {}
        self.decided: list[RouteRef] = []
        self.last_note: str | None = None
        self.last_raw_action: list[float] = []

    def decide(self, obs: Observation) -> Weights:
        if obs.route in self.fail_on:
            raise RuntimeError(f"no split for {obs.route.key}")
        n = self.counts[obs.route] = self.counts.get(obs.route, 0) + 1
        self.decided.append(obs.route)
        v1 = (int(obs.stats[0].rps) + 17 * n) % 101
        self.last_note = f"step {n} of {obs.route.key}" if n % 2 else None
        self.last_raw_action = [float(n), obs.stats[0].rps / 100.0]
        return Weights(obs.subsets, (v1, 100 - v1))

    def reset(self) -> None:
        self.counts.clear()


class BatchStepPolicy(StepPolicy):
    """`StepPolicy` with `decide_many` (the same splits, notes and raw actions per route):
    counts its batches and its single decisions; `broken` makes every batch raise before it
    decides anything, `short` answers for one route fewer than asked."""

    def __init__(
        self, *, fail_on: Sequence[RouteRef] = (), broken: bool = False, short: bool = False
    ) -> None:
        super().__init__(fail_on=fail_on)
        self.broken = broken
        self.short = short
        self.batches: list[list[RouteRef]] = []
        self.singles = 0
        self.last_notes: list[str | None] = []
        self.last_raw_actions: list[list[float]] = []

    def decide(self, obs: Observation) -> Weights:
        self.singles += 1
        return super().decide(obs)

    def decide_many(self, observations: Sequence[Observation]) -> list[Weights]:
        self.batches.append([obs.route for obs in observations])
        if self.broken or any(obs.route in self.fail_on for obs in observations):
            raise RuntimeError("the batch kernel failed")
        out, notes, raws = [], [], []
        for obs in observations:
            out.append(StepPolicy.decide(self, obs))
            notes.append(self.last_note)
            raws.append(self.last_raw_action)
        self.last_notes, self.last_raw_actions = notes, raws
        return out[:-1] if self.short else out


class OneByOne:
    """`inner` without its `decide_many`: the loop must ask it route by route."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name

    def decide(self, obs: Observation) -> Weights:
        return self.inner.decide(obs)

    def reset(self) -> None:
        self.inner.reset()

    @property
    def last_note(self) -> object:
        return getattr(self.inner, "last_note", None)

    @property
    def last_raw_action(self) -> object:
        return getattr(self.inner, "last_raw_action", None)

    def modes(self) -> dict[RouteRef, str]:
        """Who steers each route, when `inner` is a supervisor (else nobody is reported)."""
        modes = getattr(self.inner, "modes", None)
        return dict(modes()) if callable(modes) else {}


@dataclass
class World:
    loop: ControlLoop
    mesh: FakeMesh
    clock: FakeClock
    leader: Switch


def world(policy: Policy, routes: Sequence[RouteRef] = ROUTES, **kwargs: object) -> World:
    clock = FakeClock()
    mesh = FakeMesh({r: split(90 - 20 * i, 10 + 20 * i) for i, r in enumerate(routes)}, clock=clock)
    leader = Switch(True)
    options: dict[str, object] = {"recheck_failed_every": 2, "max_parallel_writes": 1}
    options.update(kwargs)
    loop = make_loop(mesh, policy, routes=routes, leader=leader, **options)  # type: ignore[arg-type]
    return World(loop, mesh, clock, leader)


def tick(w: World) -> list[TickResult]:
    results = w.loop.tick()
    w.clock.advance(TICK_S)
    return results


def recorded(w: World) -> tuple[list[DecisionRecord], list[tuple[RouteRef, Weights]], list[str]]:
    """The audit log, the writes in order and the metrics (without wall times)."""
    metrics = [
        line
        for line in w.loop.metrics.render().decode().splitlines()
        if "_created" not in line and "tick_duration" not in line
    ]
    return w.loop.store.latest(limit=10_000), list(w.mesh.applied), metrics


Event = tuple[str, int]


def happen(w: World, event: Event) -> None:
    kind, i = event
    route = ROUTES[i]
    if kind == "outage":
        w.mesh.observe_errors.append(TemporaryError("prometheus: connection refused"))
    elif kind == "read_error":
        w.mesh.read_errors.setdefault(route, []).append(TemporaryError("API server answered 503"))
    elif kind == "apply_error":
        w.mesh.apply_errors.setdefault(route, []).append(TemporaryError("409, retries exhausted"))
    elif kind == "forbidden":
        w.mesh.apply_errors.setdefault(route, []).append(PermanentError("RBAC denied"))
    elif kind == "missing":
        w.mesh.missing.add(route)
    elif kind == "back":
        w.mesh.missing.discard(route)
    elif kind == "pause":
        w.loop.guard.pause(route)
    elif kind == "resume":
        w.loop.guard.resume(route)
    elif kind == "pin":
        w.loop.guard.pin(route, split(60, 40), until_s=w.clock.now() + 2 * TICK_S)
    elif kind == "leader":
        w.leader.leading = not w.leader.leading


EVENTS = st.tuples(
    st.sampled_from(
        [
            "outage",
            "read_error",
            "apply_error",
            "forbidden",
            "missing",
            "back",
            "pause",
            "resume",
            "pin",
            "leader",
        ]
    ),
    st.integers(0, len(ROUTES) - 1),
)


@settings(max_examples=40, deadline=None)
@given(
    ticks=st.lists(st.lists(EVENTS, max_size=3), min_size=1, max_size=8),
    parallel=st.sampled_from([1, 4]),
)
def test_one_batch_per_tick_records_what_route_by_route_decisions_record(
    ticks: list[list[Event]], parallel: int
) -> None:
    alone, batched = StepPolicy(), BatchStepPolicy()
    worlds = (
        world(alone, max_parallel_writes=parallel),
        world(batched, max_parallel_writes=parallel),
    )
    for events in ticks:
        for w in worlds:
            for event in events:
                happen(w, event)
        asked_before = len(alone.decided)
        results = [tick(w) for w in worlds]
        assert results[0] == results[1]
        decided = alone.decided[asked_before:]
        if decided:
            assert batched.batches[-1] == decided  # every route decided this tick, at once
    assert len(batched.batches) == sum(bool(b) for b in batched.batches)
    assert batched.singles == 0
    assert recorded(worlds[0]) == recorded(worlds[1])


def test_the_batch_holds_every_read_route_and_no_failed_or_unread_one() -> None:
    active, unread, deleted, paused, pinned = routes = many_routes(5)
    policy = BatchStepPolicy()
    w = world(policy, routes)
    w.mesh.missing.add(deleted)
    tick(w)  # `deleted` fails: not due again until its re-check
    w.mesh.read_errors[unread] = [TemporaryError("API server answered 503")]
    w.loop.guard.pause(paused)
    w.loop.guard.pin(pinned, split(60, 40), until_s=w.clock.now() + 600)
    results = {r.route: r for r in tick(w)}
    assert policy.batches == [[active, unread, paused, pinned], [active, paused, pinned]]
    assert policy.singles == 0
    assert deleted not in results and results[unread].phase == "holding"
    assert results[unread].proposed is None and not results[unread].wrote
    # Paused and pinned routes are decided (the proposal is recorded), but not written from it.
    assert results[paused].phase == "paused" and results[paused].proposed is not None
    assert results[pinned].phase == "overridden" and results[pinned].written == split(60, 40)
    w.mesh.observe_errors = [TemporaryError("prometheus: connection refused")]
    tick(w)  # no observation: nothing to decide, no call at all
    assert len(policy.batches) == 2


def test_a_decide_many_that_raises_falls_back_to_one_route_at_a_time() -> None:
    bad = ROUTES[1]
    alone = world(StepPolicy(fail_on=[bad]))
    policy = BatchStepPolicy(fail_on=[bad])
    batched = world(policy)
    for _ in range(3):
        assert tick(batched) == tick(alone)
    assert recorded(batched) == recorded(alone)
    assert len(policy.batches) == 3 and policy.singles == 3 * len(ROUTES)
    (last,) = batched.loop.store.latest(bad, limit=1)
    assert "policy step failed: RuntimeError: no split for" in last.reason and not last.wrote
    others = [batched.loop.store.latest(r, limit=1)[0] for r in ROUTES if r != bad]
    assert all(record.wrote and "policy step failed" not in record.reason for record in others)


def test_a_broken_or_short_batch_still_writes_every_route() -> None:
    for policy in (BatchStepPolicy(broken=True), BatchStepPolicy(short=True)):
        w = world(policy)
        results = tick(w)
        assert len(policy.batches) == 1 and policy.singles == len(ROUTES)
        assert all(r.outcome == "written" and r.proposed is not None for r in results)
        assert [route for route, _ in w.mesh.applied] == list(ROUTES)


def test_a_policy_without_decide_many_decides_route_by_route() -> None:
    policy = StepPolicy()
    w = world(policy)
    results = [r for _ in range(2) for r in tick(w)]
    assert policy.decided == list(ROUTES) * 2
    assert all(r.outcome == "written" for r in results)
    record = w.loop.store.latest(ROUTES[0], limit=2)[1]  # the first decision
    assert "step 1 of" in record.reason and record.raw_action is not None


def test_a_batching_policy_with_notes_only_per_decision_is_asked_route_by_route() -> None:
    class NotesOneByOne(BatchStepPolicy):
        def __getattribute__(self, name: str) -> object:
            if name == "last_notes":
                raise AttributeError(name)
            return super().__getattribute__(name)

    policy = NotesOneByOne()
    w = world(policy)
    tick(w)
    assert policy.batches == [] and policy.singles == len(ROUTES)
    assert all("step 1 of" in r.reason for r in w.loop.store.latest(limit=10))


def test_the_supervised_planner_records_the_same_in_one_batch() -> None:
    hints = {r: {"v1": 150.0, "v2": 120.0} for r in ROUTES}
    alone = world(OneByOne(SupervisedPolicy(PlannerPolicy())), capacity_hints=hints)
    supervised = SupervisedPolicy(PlannerPolicy())
    batched = world(supervised, capacity_hints=hints)
    for w in (alone, batched):
        w.mesh.total_rps = 260.0
    for n in range(8):
        if n == 4:
            for w in (alone, batched):
                happen(w, ("read_error", 2))
        assert tick(batched) == tick(alone)
    assert recorded(batched) == recorded(alone)
    assert len(recorded(batched)[1]) > 0

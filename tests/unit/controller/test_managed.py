"""`ManagedRoutes` (routes and controls from ManagedRoute resources) and the spec parser.

Over the fake mesh of test_loop and a fake source: a route is managed from the tick its
resource appears and released (never written again, no metric series left) when it is gone;
nothing changes while the source is not in sync; spec controls reach the guard when first
seen and when they change (an API control in between stays), each change an operator action
in the audit log;
a pin's ``expiresAt`` (Unix time) lands on the loop's clock; only the leader writes status,
only when it changed, again after a failure, and Events on writes and on entering a phase.
``spec.guard`` settings review their own route only, and an invalid one or a ``spec.policy``
other than the served one makes the resource invalid. API controls (`Operators` with the hook
as mirror) go into the spec of the route's resource
first, once each (the echo of the spec is not applied or audited again), keep a pin's own
``by`` and reason when another control changes, and change nothing when the spec write fails;
a route with no resource is not mirrored. A supervisor's fallback is in the route's status,
the ``meshpilot_route_fallback`` metric and a Warning Event (and its end in a Normal one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from controller.adapters.kube.managed_routes import parse_managed_route
from controller.clock import FakeClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.managed import ManagedRoute, ManagedRoutes, SpecControls, SpecPin
from controller.store import DecisionStore
from meshcore import RouteRef, TemporaryError, Weights
from tests.unit.controller.test_loop import A, B, FakeMesh, FixedPolicy, Switch, split

WALL = 1_700_000_000.0  # the fake wall clock (Unix s) while the loop's clock reads 0


class FakeSource:
    def __init__(self) -> None:
        self.items: list[ManagedRoute] | None = []
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, bool, str]] = []
        self.controls: list[tuple[str, dict[str, Any]]] = []
        self.generation = 1  # what the resource's generation is after a write_controls
        self.fail = False

    def emit_event(self, item: ManagedRoute, warning: bool, reason: str, message: str) -> None:
        self.events.append((item.name, warning, reason))

    def snapshot(self) -> Sequence[ManagedRoute] | None:
        return None if self.items is None else list(self.items)

    def write_controls(self, name: str, controls: Mapping[str, Any]) -> int:
        if self.fail:
            raise TemporaryError("patch managedroutes: API server answered 503")
        self.controls.append((name, dict(controls)))
        self.generation += 1
        return self.generation

    def write_status(self, name: str, status: Mapping[str, Any]) -> bool:
        if self.fail:
            return False
        self.statuses.append((name, dict(status)))
        return True


def mr(route: RouteRef, controls: SpecControls | None = None, generation: int = 1) -> ManagedRoute:
    return ManagedRoute(route.virtual_service, generation, route, controls or SpecControls())


def setup(
    static: Sequence[RouteRef] = (), leading: bool = True
) -> tuple[ControlLoop, FakeMesh, FakeSource, Switch]:
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10), B: split(90, 10)}, clock=clock)
    source, leader, guard = FakeSource(), Switch(leading), Guard(GuardConfig(max_step=10))
    hook = ManagedRoutes(source, guard, static=static, wall=lambda: WALL + clock.now())
    return loop_with(hook, mesh, clock, static, leader), mesh, source, leader


def loop_with(
    hook: ManagedRoutes,
    mesh: FakeMesh,
    clock: FakeClock,
    routes: Sequence[RouteRef],
    leader: Switch | None = None,
) -> ControlLoop:
    """A loop over the fake `mesh` with `hook` as its only hook and the hook's guard."""
    return ControlLoop(
        observer=mesh,
        actuator=mesh,
        policy=FixedPolicy({"v1": 50, "v2": 50}),
        guard=hook.guard,
        store=DecisionStore(":memory:"),
        routes=routes,
        clock=clock,
        leader=leader or Switch(True),
        slo_ms=250.0,
        writer_id="pod-a",
        verify_after_s=30.0,
        verify_tolerance=10.0,
        hooks=[hook],
    )


def test_a_route_is_managed_from_its_first_tick_and_released_when_deleted() -> None:
    loop, mesh, source, _ = setup()
    assert loop.tick() == [] and mesh.applied == []
    source.items = [mr(A)]
    (result,) = loop.tick()
    assert loop.routes == (A,) and result.outcome == "written"
    assert loop.find(A.key) == A
    source.items = None  # not in sync: keep managing
    assert [r.route for r in loop.tick()] == [A]
    source.items = []
    writes = len(mesh.applied)
    assert loop.tick() == [] and loop.tick() == []
    assert loop.routes == () and len(mesh.applied) == writes
    assert loop.find(A.key) is None
    assert A.key not in loop.metrics.render().decode()  # no series of a released route


def test_a_released_route_leaves_no_series_and_a_kept_one_keeps_its_own() -> None:
    loop, _, source, _ = setup(static=(B,))
    source.items = [mr(A)]
    loop.tick()
    text = loop.metrics.render().decode()
    for series in ("meshpilot_route_phase", "meshpilot_route_weight", "meshpilot_decisions_total"):
        assert f"{series}{{" in text and f'route="{A.key}"' in text
    source.items = []
    loop.tick()
    text = loop.metrics.render().decode()
    assert f'route="{A.key}"' not in text
    assert f'meshpilot_route_phase{{phase="active",route="{B.key}"}} 1.0' in text


def test_settings_routes_stay_beside_managed_ones() -> None:
    """A ManagedRoute naming a settings route brings its controls and status, and its
    deletion leaves the route managed; a second resource naming a route is invalid."""
    loop, _, source, _ = setup(static=(A,))
    twice = ManagedRoute("again", 1, B)
    source.items = [mr(B), mr(A, SpecControls(paused=True)), twice]
    assert [(r.route, r.phase) for r in loop.tick()] == [(A, "paused"), (B, "active")]
    assert {n: s["phase"] for n, s in source.statuses} == {
        "checkout": "paused",
        "cart": "active",
        "again": "invalid",
    }
    source.items = []
    assert [r.route for r in loop.tick()] == [A]


def test_spec_controls_reach_the_guard_when_seen_and_when_changed() -> None:
    loop, mesh, source, _ = setup()
    source.items = [mr(A, SpecControls(paused=True))]
    (result,) = loop.tick()
    assert result.phase == "paused" and mesh.applied == []
    loop.guard.resume(A)  # an API control: stays until the spec changes
    (result,) = loop.tick()
    assert result.outcome == "written"
    pin = SpecPin(split(20, 80), WALL + loop.now() + 60, "drain", "alice")
    source.items = [mr(A, SpecControls(pin=pin), 2)]
    (result,) = loop.tick()
    assert result.phase == "overridden" and mesh.configured[A] == split(20, 80)
    controls = loop.guard.controls(A)
    assert controls.pin_until_s == pytest.approx(loop.now() + 60)
    source.items = [mr(A, SpecControls(shadow=True), 3)]  # pin removed, shadow on
    loop.tick()
    assert loop.guard.controls(A).pin is None and loop.guard.controls(A).shadow
    actions = [
        (r.action, r.caller, r.reason, (r.detail or {}).get("source"))
        for r in reversed(loop.store.latest(operators=True))
    ]
    assert [(r.detail or {})["by"] for r in loop.store.latest(operators=True)][2] == "alice"
    assert actions == [
        ("pause", "managedroute:checkout", "", "ManagedRoute"),
        ("pin", "managedroute:checkout", "drain", "ManagedRoute"),
        ("shadow", "managedroute:checkout", "", "ManagedRoute"),
        ("release", "managedroute:checkout", "", "ManagedRoute"),
    ]


def test_only_the_leader_writes_status_and_only_changes() -> None:
    loop, _, source, leader = setup(leading=False)
    source.items = [mr(A, generation=4)]
    loop.tick()
    assert source.statuses == []
    leader.leading = True
    source.fail = True
    loop.tick()
    source.fail = False
    loop.tick()  # written now: the failed write is retried
    ((name, status),) = source.statuses
    assert name == A.virtual_service
    assert status["observedGeneration"] == 4 and status["phase"] == "active"
    assert sum(status["weights"].values()) == 100
    assert status["conditions"][0]["status"] == "True"
    assert status["lastDecision"]["outcome"]
    source.items = [mr(A, SpecControls(paused=True), 5)]
    loop.tick()
    loop.tick()
    assert [s["phase"] for _, s in source.statuses] == ["active", "paused"]


def test_an_invalid_spec_is_not_managed_and_says_why_in_status() -> None:
    loop, _, source, _ = setup()
    source.items = [ManagedRoute("broken", 1, None, error="spec.virtualService is required")]
    assert loop.tick() == []
    ((_, status),) = source.statuses
    assert status["phase"] == "invalid"
    assert status["conditions"][0]["message"] == "spec.virtualService is required"


def obj(spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": "reviews", "namespace": "shop", "generation": 3}
    return {"metadata": meta, "spec": spec}


def test_parse_managed_route() -> None:
    pin = {"weights": {"v1": 30, "v2": 70}, "expiresAt": "2026-01-01T00:00:00Z", "by": "bob"}
    got = parse_managed_route(
        obj({"virtualService": "reviews", "route": "2", "controls": {"paused": True, "pin": pin}})
    )
    assert got.route == RouteRef("shop", "reviews", 2, "reviews.shop.svc.cluster.local")
    assert got.generation == 3 and got.error is None
    assert got.controls.paused and not got.controls.shadow
    assert got.controls.pin == SpecPin(Weights.from_dict(pin["weights"]), 1767225600.0, "", "bob")
    bad = [
        {},
        {"virtualService": "reviews", "route": -1},
        {"virtualService": "r", "controls": {"pin": dict(pin, weights={"v1": 90})}},
        {"virtualService": "r", "controls": {"pin": dict(pin, expiresAt="2026-01-01T00:00:00")}},
        {"virtualService": "r", "controls": {"pin": dict(pin, expiresAt="soon")}},
        {"virtualService": "r", "guard": {"maxstep": 2}},
        {"virtualService": "r", "guard": {"floors": [1, 2]}},
        {"virtualService": "r", "guard": 3},
        {"virtualService": "r", "policy": 7},
    ]
    for spec in bad:
        parsed = parse_managed_route(obj(spec))
        assert parsed.route is None and parsed.error, spec
    guarded = parse_managed_route(
        obj({"virtualService": "r", "policy": "ppo", "guard": {"maxStep": 2, "floors": {"v1": 5}}})
    )
    assert guarded.guard == {"max_step": 2, "floors": {"v1": 5}} and guarded.policy == "ppo"


def test_spec_guard_settings_apply_to_their_route_only() -> None:
    loop, _, source, _ = setup(static=(B,))
    source.items = [ManagedRoute("checkout", 1, A, guard={"max_step": 2})]
    moved = {r.route: loop.route_status(r.route).weights for r in loop.tick()}
    assert moved[A] == split(88, 12) and moved[B] == split(80, 20)
    assert loop.guard.config_for(A).max_step == 2 and loop.guard.config_for(B).max_step == 10
    source.items = [ManagedRoute("checkout", 2, A)]  # the override removed
    loop.tick()
    assert loop.route_status(A).weights == split(78, 22)


def test_an_invalid_spec_guard_or_another_policy_makes_the_resource_invalid() -> None:
    loop, mesh, source, _ = setup()
    loop_hook = loop.hooks[0]
    assert isinstance(loop_hook, ManagedRoutes)
    loop_hook.served_policy = ("fixed", "fixed")
    source.items = [ManagedRoute("checkout", 1, A, guard={"floors": {"v1": 70, "v2": 70}})]
    assert loop.tick() == [] and mesh.applied == []
    assert "spec.guard" in source.statuses[-1][1]["conditions"][0]["message"]
    source.items = [ManagedRoute("checkout", 2, A, policy="canary")]
    assert loop.tick() == []
    message = source.statuses[-1][1]["conditions"][0]["message"]
    assert "spec.policy 'canary' is not served here" in message
    source.items = [ManagedRoute("checkout", 3, A, policy="fixed")]
    assert [r.outcome for r in loop.tick()] == ["written"]


def test_events_on_writes_and_on_entering_a_phase_by_the_leader_only() -> None:
    loop, mesh, source, leader = setup()
    source.items = [mr(A)]
    loop.tick()
    assert source.events == [("checkout", False, "Written"), ("checkout", False, "Active")]
    mesh.observe_errors.append(TemporaryError("prometheus down"))
    loop.tick()
    assert source.events[2:] == [("checkout", True, "Holding")]
    leader.leading = False
    loop.tick()
    assert len(source.events) == 3


class SupervisedFixed(FixedPolicy):
    """A fixed policy that reports, like `agents.supervisor.SupervisedPolicy`, who steers."""

    def __init__(self) -> None:
        super().__init__({"v1": 50, "v2": 50})
        self.mode = "policy"

    def modes(self) -> dict[RouteRef, str]:
        return {A: self.mode}


def test_a_fallback_is_in_status_metrics_and_events() -> None:
    loop, _, source, _ = setup()
    policy = SupervisedFixed()
    loop.policy = policy
    source.items = [mr(A)]
    loop.tick()
    assert loop.route_status(A).steered_by == "policy"
    policy.mode = "fallback"
    loop.tick()
    assert loop.route_status(A).steered_by == "fallback"
    assert source.statuses[-1][1]["steeredBy"] == "fallback"
    assert f'meshpilot_route_fallback{{route="{A.key}"}} 1.0' in loop.metrics.render().decode()
    assert ("checkout", True, "Fallback") in source.events
    policy.mode = "policy"
    loop.tick()
    assert source.events[-1] == ("checkout", False, "PolicyResumed")
    assert f'meshpilot_route_fallback{{route="{A.key}"}} 0.0' in loop.metrics.render().decode()


def _operators(loop: ControlLoop) -> Any:
    from controller.operators import Operators

    (hook,) = loop.hooks
    return Operators(loop.guard, loop.store, now=loop.now, writer_id="pod-a", mirror=hook)


def test_api_controls_go_into_the_spec_once() -> None:
    from controller.access import Caller

    loop, _, source, _ = setup(static=(B,))
    source.items = [mr(A)]
    loop.tick()
    ops = _operators(loop)
    ops.pin(A, split(20, 80), 60.0, caller=Caller("alice"), reason="drain v1")
    name, written = source.controls[-1]
    expires = int(WALL + loop.now() + 60.0)
    assert name == A.virtual_service
    assert written == {
        "paused": False,
        "shadow": False,
        "pin": {
            "weights": {"v1": 20, "v2": 80},
            "expiresAt": _rfc3339(expires),
            "reason": "drain v1",
            "by": "alice",
        },
    }
    ops.pause(A, caller=Caller("bob"), reason="freeze")
    paused = source.controls[-1][1]
    assert paused["paused"] is True and paused["pin"] == written["pin"]  # alice's pin kept
    # the watch echoes what was written: nothing is applied or recorded again
    pin = SpecPin(split(20, 80), float(expires), "drain v1", "alice")
    source.items = [mr(A, SpecControls(paused=True, pin=pin), 3)]
    assert {r.route: r.phase for r in loop.tick()}[A] == "paused"
    actions = [r.action for r in loop.store.latest(A, 50, operators=True)]
    assert actions == ["pause", "pin"]
    ops.pause(B, caller=Caller("bob"), reason="not a ManagedRoute")  # settings route
    assert len(source.controls) == 2


def test_a_watch_behind_an_api_write_does_not_undo_it() -> None:
    """The tick after an API pin may still see the resource as it was (the watch lags): that
    older spec is not applied over the pin; the echo, when it comes, changes nothing."""
    from controller.access import Caller

    loop, _, source, _ = setup()
    source.items = [mr(A)]  # generation 1
    loop.tick()
    _operators(loop).pin(A, split(20, 80), 60.0, caller=Caller("alice"), reason="drain v1")
    (result,) = loop.tick()  # the watch still holds generation 1, without the pin
    assert result.phase == "overridden" and loop.guard.controls(A).pin == split(20, 80)
    expires = float(int(WALL + 60.0))
    pin = SpecPin(split(20, 80), expires, "drain v1", "alice")
    source.items = [mr(A, SpecControls(pin=pin), source.generation)]  # the echo
    loop.tick()
    assert [r.action for r in loop.store.latest(A, 10, operators=True)] == ["pin"]
    # deleted and created again between two ticks: a new resource, generation 1, is applied
    source.items = [ManagedRoute("checkout", 1, A, SpecControls(paused=True), uid="new")]
    (result,) = loop.tick()
    assert result.phase == "paused" and loop.guard.controls(A).pin is None


def test_a_refused_spec_write_changes_nothing() -> None:
    from controller.access import Caller

    loop, _, source, _ = setup()
    source.items = [mr(A)]
    loop.tick()
    source.fail = True
    with pytest.raises(TemporaryError, match="503"):
        _operators(loop).pause(A, caller=Caller("bob"), reason="freeze")
    assert loop.guard.controls(A).paused is False
    assert loop.store.latest(A, 50, operators=True) == []


def _rfc3339(unix_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

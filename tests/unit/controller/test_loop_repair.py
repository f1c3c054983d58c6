"""A pin repairs a route whose weights were set outside meshpilot to an invalid split.

Cases: such a route fails, and its status shows what it holds (not the last split meshpilot
knew, and no weight series in the metrics); a pin set afterwards is written at the very next
tick (not at the next re-check of a failed route), the route recovers and shows the pin;
paused, shadow, a follower or an expired pin write nothing and the route stays failed; a
temporary write error keeps showing what the route holds and is retried next tick. The write
against a real API server (and its resourceVersion test) is in
``tests/integration/test_api_k8s.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller.clock import FakeClock
from controller.guard import GuardConfig
from controller.loop import ControlLoop
from meshcore import InvalidWeightsError, RouteRef, TemporaryError, Weights
from tests.unit.controller.test_loop import TICK_S, A, FakeMesh, FixedPolicy, Switch, make_loop

BROKEN = {"v1": 80, "v2": 30}
PIN = Weights(("v1", "v2"), (60, 40))


class BreakableMesh(FakeMesh):
    """A `FakeMesh` whose routes someone else can set to weights that are not a split."""

    def __init__(self, routes: Mapping[RouteRef, Weights], *, clock: FakeClock) -> None:
        super().__init__(routes, clock=clock)
        self.broken: dict[RouteRef, dict[str, int]] = {}

    def current(self, route: RouteRef) -> Weights:
        if route in self.broken:
            raise InvalidWeightsError(
                f"weights {self.broken[route]} are not a split", self.broken[route]
            )
        return super().current(route)

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        written = super().apply(route, weights)
        self.broken.pop(route, None)
        return written


def broken_loop(**kwargs: object) -> tuple[ControlLoop, BreakableMesh, FakeClock]:
    clock = FakeClock()
    mesh = BreakableMesh({A: Weights(("v1", "v2"), (90, 10))}, clock=clock)
    options: dict[str, object] = {"recheck_failed_every": 12, "guard": GuardConfig(max_step=10)}
    options.update(kwargs)
    loop = make_loop(mesh, FixedPolicy({"v1": 50, "v2": 50}), **options)  # type: ignore[arg-type]
    loop.tick()  # managed: 90/10 -> 80/20
    clock.advance(TICK_S)
    mesh.broken[A] = dict(BROKEN)  # a foreign write: 80 + 30 = 110
    (failed,) = loop.tick()
    assert failed.phase == "failed"
    clock.advance(TICK_S)
    return loop, mesh, clock


def test_a_route_with_invalid_weights_fails_and_shows_what_it_holds() -> None:
    loop, _, _ = broken_loop()
    status = loop.route_status(A)
    assert status.failed is not None and "not a split" in status.failed
    assert status.weights is None  # not the 80/20 meshpilot wrote before
    assert status.invalid_weights == BROKEN
    metrics = loop.metrics.render().decode()
    assert 'meshpilot_route_weight{route="' not in metrics


def test_a_pin_is_written_over_invalid_weights_at_the_next_tick() -> None:
    loop, mesh, clock = broken_loop()
    writes = len(mesh.applied)
    loop.guard.pin(A, PIN, until_s=clock.now() + 600)
    (repaired,) = loop.tick()  # tick 3: a failed route is re-checked only every 12 ticks
    assert repaired.outcome == "written" and repaired.phase == "overridden"
    assert repaired.written == PIN and repaired.weights == PIN
    assert "holds {'v1': 80, 'v2': 30}, not a valid split" in repaired.reason
    assert mesh.applied[writes:] == [(A, PIN)]
    status = loop.route_status(A)
    assert status.failed is None and status.invalid_weights is None and status.weights == PIN
    record = loop.store.get(repaired.decision_id or -1)
    assert record is not None and record.wrote and record.written == PIN.as_dict()
    clock.advance(TICK_S)
    (after,) = loop.tick()  # managed again: the pin is in place
    assert after.phase == "overridden" and after.outcome == "unchanged"


def test_paused_shadow_follower_or_expired_pins_do_not_repair() -> None:
    cases = {
        "paused": lambda loop, now: loop.guard.pause(A),
        "shadow": lambda loop, now: loop.guard.set_shadow(A, True),
        "expired": lambda loop, now: None,
    }
    for name, setup in cases.items():
        loop, mesh, clock = broken_loop()
        writes = len(mesh.applied)
        ttl = 1.0 if name == "expired" else 600.0
        loop.guard.pin(A, PIN, until_s=clock.now() + ttl)
        setup(loop, clock.now())
        clock.advance(TICK_S)
        results = [r for _ in range(3) for r in loop.tick()]
        assert all(r.phase == "failed" and not r.wrote for r in results), name
        assert mesh.applied[writes:] == [], name
        assert loop.route_status(A).invalid_weights == BROKEN, name
    switch = Switch(True)
    loop, mesh, clock = broken_loop(leader=switch)
    switch.leading = False
    loop.guard.pin(A, PIN, until_s=clock.now() + 600)
    writes = len(mesh.applied)
    (follower,) = loop.tick()
    assert follower.phase == "failed" and mesh.applied[writes:] == []


def test_a_temporary_write_error_keeps_the_route_showing_what_it_holds() -> None:
    loop, mesh, clock = broken_loop()
    mesh.apply_errors[A] = [TemporaryError("API server unreachable")]
    loop.guard.pin(A, PIN, until_s=clock.now() + 600)
    (first,) = loop.tick()
    assert first.outcome == "error: API server unreachable" and first.wrote
    assert loop.route_status(A).invalid_weights == BROKEN
    assert loop.route_status(A).weights is None
    clock.advance(TICK_S)
    (second,) = loop.tick()
    assert second.outcome == "written" and mesh.configured[A] == PIN

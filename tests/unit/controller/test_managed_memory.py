"""`MemoryManagedRoutes`: the ManagedRoutes of ``--mesh sim`` and ``lab``, kept in memory.

The store itself: one resource per route, named after its key; a ``spec.controls`` merge
patch (pin in and out, generation up); status merged with None deleting a field; Events kept.
With the `ManagedRoutes` hook and `Operators` over the fake mesh of test_loop: controls
restored from the decision store survive the first tick once adopted (and would be undone
by the empty specs otherwise, which is why `adopt` exists); an API pin lands in the spec
with its caller and is applied and audited once; the hook writes each route's status there.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from controller.access import Caller
from controller.clock import FakeClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.managed import ManagedRoutes, SpecControls, SpecPin
from controller.managed_memory import MemoryManagedRoutes, resource_name
from controller.operators import Operators
from meshcore import ConfigError
from tests.unit.controller.test_loop import A, B, FakeMesh, split
from tests.unit.controller.test_managed import loop_with

WALL = 1_700_000_000.0


def test_one_resource_per_route_and_controls_merged_into_its_spec() -> None:
    store = MemoryManagedRoutes([A, B])
    assert [i.name for i in store.snapshot()] == [resource_name(A), resource_name(B)]
    assert resource_name(A) == A.key.replace("/", ".")
    item = store.item(resource_name(A))
    assert (item.route, item.generation, item.controls) == (A, 1, SpecControls())
    pin = {"weights": {"v1": 20, "v2": 80}, "expiresAt": "2023-11-14T22:13:20Z", "by": "alice"}
    assert store.write_controls(item.name, {"paused": True, "pin": pin}) == 2
    after = store.item(item.name).controls
    assert after == SpecControls(True, False, SpecPin(split(20, 80), WALL, "", "alice"))
    assert store.write_controls(item.name, {"pin": None}) == 3
    assert store.item(item.name).controls == SpecControls(paused=True)
    with pytest.raises(ConfigError, match="twice"):
        MemoryManagedRoutes([A, A])


def test_status_is_merged_and_events_are_kept() -> None:
    store = MemoryManagedRoutes([A])
    name = resource_name(A)
    assert store.write_status(name, {"phase": "active", "steeredBy": "policy"})
    assert store.write_status(name, {"steeredBy": None, "observedGeneration": 2})
    assert store.status(name) == {"phase": "active", "observedGeneration": 2}
    assert not store.write_status("nobody", {"phase": "active"})
    for k in range(1005):
        store.emit_event(store.item(name), False, "Written", f"write {k}")
    assert len(store.events) == 1000 and store.events[-1][3] == "write 1004"


def setup(rate: float = 1.0) -> tuple[ControlLoop, MemoryManagedRoutes, ManagedRoutes, Operators]:
    """Routes A and B in the in-memory store, the hook and `Operators` on a fake mesh; the
    wall clock (Unix s, fractional) runs `rate` times slower than the loop's."""
    clock = FakeClock()
    mesh = FakeMesh({A: split(90, 10), B: split(90, 10)}, clock=clock)
    store = MemoryManagedRoutes([A, B])

    def wall() -> float:
        return WALL + 0.25 + clock.now() / rate

    hook = ManagedRoutes(store, Guard(GuardConfig(max_step=10)), wall=wall, rate=rate)
    loop = loop_with(hook, mesh, clock, [A, B])
    ops = Operators(
        hook.guard, loop.store, now=loop.now, writer_id="pod-a", mirror=hook, rate=rate, wall=wall
    )
    return loop, store, hook, ops


@pytest.mark.parametrize("adopted", [True, False])
def test_controls_restored_at_start_survive_the_first_tick_once_adopted(adopted: bool) -> None:
    loop, store, hook, _ = setup()
    # what `Operators.restore` does with a kept pause and pin, before the first tick
    loop.guard.pause(A)
    loop.guard.pin(B, split(30, 70), 600.0)
    if adopted:
        hook.adopt(loop)
    phases = {r.route: r.phase for r in loop.tick()}
    kept = loop.guard.controls(A).paused and loop.guard.controls(B).pin == split(30, 70)
    assert kept is adopted
    if adopted:
        assert phases == {A: "paused", B: "overridden"}
        assert store.item(resource_name(A)).controls.paused
        pin = store.item(resource_name(B)).controls.pin
        assert pin is not None and pin.weights == split(30, 70)
        assert loop.store.latest(A, 10, operators=True) == []  # adopting is no action


def test_an_api_pin_lands_in_the_spec_and_is_audited_once() -> None:
    loop, store, hook, ops = setup()
    hook.adopt(loop)
    loop.tick()
    ops.pin(A, split(20, 80), 60.0, caller=Caller("alice"), reason="drain v1")
    spec = store.item(resource_name(A)).controls
    assert spec.pin is not None and (spec.pin.by, spec.pin.reason) == ("alice", "drain v1")
    assert {r.route: r.phase for r in loop.tick()}[A] == "overridden"
    assert [r.action for r in loop.store.latest(A, 10, operators=True)] == ["pin"]
    status = store.status(resource_name(A))
    assert status["phase"] == "overridden" and status["weights"] == {"v1": 20, "v2": 80}


def test_pins_cross_between_the_loop_clock_and_wall_time_at_the_clock_rate() -> None:
    """Under ``serve --mesh sim`` the loop's clock runs `sim.speed` times faster than the wall:
    an API pin of 600 loop s expires 60 wall s later in the spec, and a spec pin 30 wall s
    ahead holds for 300 loop s."""
    loop, store, hook, ops = setup(rate=10.0)
    wall = WALL + 0.25
    hook.adopt(loop)
    loop.tick()
    ops.pin(A, split(20, 80), 600.0, caller=Caller("alice"), reason="drain")
    pin = store.item(resource_name(A)).controls.pin
    assert pin is not None and pin.expires_at_s == float(int(wall + 60.0))
    spec = {"pin": {"weights": {"v1": 30, "v2": 70}, "expiresAt": _rfc3339(WALL + 30.0)}}
    store.write_controls(resource_name(A), spec)  # as kubectl patch would
    loop.tick()
    controls = hook.guard.controls(A)
    assert controls.pin == split(30, 70)
    assert controls.pin_until_s == pytest.approx(loop.now() + (WALL + 30.0 - wall) * 10.0)


def test_a_tick_during_an_api_write_does_not_take_it_for_a_foreign_edit() -> None:
    """The in-memory store shows a write at once: a tick on the loop's thread between the
    write and the hook's bookkeeping would apply it again (a second audit record, the pin
    cut to whole seconds). The tick waits for the write to finish instead."""
    loop, store, hook, ops = setup()
    hook.adopt(loop)
    loop.tick()
    write = store.write_controls
    ticks: list[threading.Thread] = []

    def write_then_tick(name: str, controls: Mapping[str, Any]) -> int:
        generation = write(name, controls)
        tick = threading.Thread(target=hook.before_tick, args=(loop,))
        tick.start()
        tick.join(timeout=0.3)  # without the hook's lock, the tick runs to its end here
        ticks.append(tick)
        return generation

    store.write_controls = write_then_tick  # type: ignore[method-assign]
    ops.pin(A, split(20, 80), 60.5, caller=Caller("alice"), reason="drain")
    for tick in ticks:
        tick.join(timeout=10.0)
    assert [r.action for r in loop.store.latest(A, 10, operators=True)] == ["pin"]
    assert loop.guard.controls(A).pin_until_s == pytest.approx(loop.now() + 60.5)


def _rfc3339(unix_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

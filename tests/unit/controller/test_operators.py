"""Operator actions: recorded with who, why, what and when; kept; restored after a restart.

Cases: every action (pin, release, pause, resume, shadow) leaves one audit row with the
caller, the reason, its arguments and the controls before and after, and keeps the route's
controls in the store; a pin released before any tick still leaves both rows; when the store
refuses, nothing changes in the guard and nothing is kept; `restore` puts pauses, shadow and
live pins back into a fresh guard (a pin's remaining time converted through Unix time, so a
simulated clock that starts again at 0 keeps the right expiry), drops expired pins, ignores
unmanaged routes and records one ``restore`` row per route. A version-1 store file is
migrated in place, and the row cap of retention never deletes an operator's action. An
expired pin is released by the leader's `PinExpiry` hook as an ``expire`` action by meshpilot
(followers leave it), and the kept controls drop it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.access import Caller
from controller.guard import Guard
from controller.operators import Operators
from controller.store import _MIGRATIONS, DecisionRecord, DecisionStore
from meshcore import RouteRef, TemporaryError, Weights

A = RouteRef("lirmm-services", "checkout", "primary", "checkout")
B = RouteRef("lirmm-services", "cart", "primary", "cart")
ALICE = Caller("system:serviceaccount:lirmm-services:alice")
PIN = Weights(("v1", "v2"), (100, 0))


class Clocks:
    """The loop's clock (s) and Unix time (s), moved by hand."""

    def __init__(self, loop_s: float = 0.0, wall_s: float = 1_700_000_000.0) -> None:
        self.loop_s, self.wall_s = loop_s, wall_s

    def advance(self, wall_s: float, rate: float = 1.0) -> None:
        self.wall_s += wall_s
        self.loop_s += wall_s * rate


def operators(store: DecisionStore, clocks: Clocks, rate: float = 1.0) -> Operators:
    return Operators(
        Guard(),
        store,
        now=lambda: clocks.loop_s,
        writer_id="pod-a",
        phase_of=lambda route: "active",
        rate=rate,
        wall=lambda: clocks.wall_s,
    )


def test_every_action_is_recorded_with_caller_reason_and_before_after() -> None:
    store = DecisionStore(":memory:")
    clocks = Clocks(loop_s=100.0)
    ops = operators(store, clocks)
    until = ops.pin(A, PIN, 300.0, caller=ALICE, reason="v2 returns 5xx")
    assert until == 400.0
    ops.release(A, caller=ALICE)  # before any tick: it still leaves a record
    ops.pause(A, caller=Caller("token"), reason="incident")
    ops.shadow(A, True, caller=ALICE)
    ops.resume(A, caller=ALICE, reason="over")
    rows = list(reversed(store.latest(A, 10, operators=True)))
    assert [r.action for r in rows] == ["pin", "release", "pause", "shadow", "resume"]
    assert [r.caller for r in rows] == [ALICE.name, ALICE.name, "token", ALICE.name, ALICE.name]
    assert [r.reason for r in rows] == ["v2 returns 5xx", "", "incident", "", "over"]
    assert all(r.outcome == f"operator: {r.action}" and not r.wrote for r in rows)
    assert all(r.ts_s == 100.0 and r.writer == "pod-a" and r.phase == "active" for r in rows)
    pin, release = rows[0], rows[1]
    assert pin.written == {"v1": 100, "v2": 0}
    assert pin.detail is not None and pin.detail["ttl_s"] == 300.0
    assert pin.detail["before"]["pin"] is None
    assert pin.detail["after"]["pin"] == {"v1": 100, "v2": 0}
    assert pin.detail["after"]["pin_until_s"] == 400.0
    assert release.detail is not None and release.detail["before"]["pin"] == {"v1": 100, "v2": 0}
    assert release.detail["after"]["pin"] is None
    assert rows[3].detail is not None and rows[3].detail["enabled"] is True
    assert store.latest(A, 10, operators=False) == []  # not the controller's decisions
    (kept,) = store.saved_controls()
    assert (kept.route, kept.paused, kept.shadow, kept.pin) == (A.key, False, True, None)
    assert kept.caller == ALICE.name


def test_a_refused_store_changes_nothing() -> None:
    class Locked(DecisionStore):
        def record(self, rec: DecisionRecord, **kwargs: object) -> int:
            raise TemporaryError("database is locked")

    store = Locked(":memory:")
    ops = operators(store, Clocks())
    ops.guard.pause(A)
    with pytest.raises(TemporaryError):
        ops.pin(A, PIN, 300.0, caller=ALICE)
    with pytest.raises(TemporaryError):
        ops.resume(A, caller=ALICE)
    controls = ops.guard.controls(A)
    assert controls.paused and controls.pin is None
    assert store.saved_controls() == []


def test_restore_brings_back_pauses_shadow_and_live_pins_but_not_expired_ones(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    clocks = Clocks(loop_s=50.0)
    with DecisionStore(path) as store:
        ops = operators(store, clocks, rate=10.0)  # a simulated clock at 10x
        ops.pin(A, PIN, 600.0, caller=ALICE, reason="rollback")  # 60 wall s
        ops.pause(A, caller=ALICE)
        ops.pin(B, PIN, 100.0, caller=ALICE)  # 10 wall s
        ops.shadow(B, True, caller=ALICE)
        ops.pause(RouteRef("other", "vs", "r", "h"), caller=ALICE)
    restarted = Clocks(loop_s=0.0, wall_s=clocks.wall_s + 20.0)  # 20 wall s later, clock at 0
    with DecisionStore(path) as store:
        ops = operators(store, restarted, rate=10.0)
        assert set(ops.restore([A, B])) == {A, B}
        a, b = ops.guard.controls(A), ops.guard.controls(B)
        assert a.paused and not a.shadow and a.pin == PIN
        assert a.pin_until_s == pytest.approx(400.0)  # 40 wall s left, at 10x
        assert b.shadow and not b.paused and b.pin is None  # its pin expired meanwhile
        restores = store.latest(limit=2, operators=True)
        assert {r.route for r in restores} == {A.key, B.key}
        assert all(r.action == "restore" and r.caller == "meshpilot" for r in restores)
        assert "kept by" in restores[0].reason
        assert len(store.latest(A, 100, operators=True)) == 3  # pin, pause, restore


def test_a_version_1_file_is_migrated_and_keeps_its_decisions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(_MIGRATIONS[1] + "; PRAGMA user_version = 1;")
    conn.execute(
        "INSERT INTO decisions (ts_s, route, phase, reason, outcome, wrote, policy, writer) "
        "VALUES (1.0, ?, 'active', 'old', 'written', 1, 'ppo', 'pod-a')",
        (A.key,),
    )
    conn.commit()
    conn.close()
    with DecisionStore(path) as store:
        (old,) = store.latest(A)
        assert old.reason == "old" and old.caller is None and old.action is None
        assert store.saved_controls() == []
        operators(store, Clocks()).pause(A, caller=ALICE)
        assert store.latest(A, 1)[0].caller == ALICE.name
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_the_row_cap_never_deletes_an_operators_action() -> None:
    store = DecisionStore(":memory:", prune_every=0)
    operators(store, Clocks()).pause(A, caller=ALICE)
    for i in range(10):
        store.record(
            DecisionRecord(ts_s=float(i), route=A.key, phase="active", reason="", outcome="held")
        )
    store.prune(max_rows=3, now_s=10.0)
    rows = store.latest(A, 100)
    assert [r.action for r in rows if r.caller] == ["pause"]
    assert len([r for r in rows if r.caller is None]) <= 3


def test_an_expired_pin_is_released_as_an_audited_action_by_the_leader_only() -> None:
    from controller.operators import RESTORER, PinExpiry

    store = DecisionStore(":memory:")
    clocks = Clocks(loop_s=100.0)
    ops = operators(store, clocks)
    ops.pin(A, PIN, 60.0, caller=ALICE, reason="drain v2")
    ops.pin(B, PIN, 600.0, caller=ALICE, reason="longer")

    class Loop:
        routes = (A, B)
        leading = False

    hook = PinExpiry(ops)
    clocks.advance(61.0)
    hook.before_tick(Loop())  # a follower: its guard drops the pin when it reviews
    assert ops.guard.controls(A).pin == PIN
    Loop.leading = True
    hook.before_tick(Loop())
    assert ops.guard.controls(A).pin is None and ops.guard.controls(B).pin == PIN
    (row,) = store.latest(A, 1, operators=True)
    assert (row.action, row.caller) == ("expire", RESTORER.name)
    assert "expired" in row.reason and row.detail is not None
    assert row.detail["before"]["pin"] == PIN.as_dict() and row.detail["after"]["pin"] is None
    kept = {c.route: c for c in store.saved_controls()}
    assert kept[A.key].pin is None and kept[B.key].pin is not None
    hook.before_tick(Loop())  # nothing more to expire
    assert store.count(A) == 2  # pin, expire

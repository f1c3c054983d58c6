"""Operator controls as audited, persistent actions: pin, release, pause, resume, shadow.

Why a layer over the guard: the guard decides what a control means for a tick; people also
need to know who changed a control, when and why — a pin released before the next tick leaves
no trace in the decisions — and an operator's pause must not vanish with a restart. Each
action here changes the guard, records one row in the audit log (caller, reason, arguments,
the controls before and after) and keeps the route's controls in the store, in one
transaction; when the store refuses, the guard is put back and the action fails (the API
answers 503), so no control acts unrecorded. `restore` brings the kept controls back at start,
except pins that expired meanwhile.

Times: pins expire on the loop's clock (`now`, s), which with ``mesh: sim`` is simulated time
starting again at 0; the store keeps the expiry as Unix time, converted with `rate` (loop
seconds per wall second).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from controller.access import Caller
from controller.guard import Guard, RouteControls
from controller.store import DecisionRecord, DecisionStore, SavedControls
from meshcore import RouteRef, Weights

__all__ = ["MAX_REASON_CHARS", "RESTORER", "ControlsMirror", "Operators", "PinExpiry"]

_log = logging.getLogger(__name__)

MAX_REASON_CHARS = 500
"""Longest reason an operator may give (characters): a sentence or two, not a document."""

RESTORER = Caller("meshpilot")
"""The caller recorded for what meshpilot does to controls by itself: bring them back from
the store at start, drop a pin whose time is up."""


def _controls_dict(c: RouteControls) -> dict[str, Any]:
    pin = c.pin.as_dict() if c.pin is not None else None
    return {"paused": c.paused, "shadow": c.shadow, "pin": pin, "pin_until_s": c.pin_until_s}


class ControlsMirror(Protocol):
    """Where controls also live outside this replica (`controller.managed.ManagedRoutes`):
    called with the route's controls after an action, before anything is recorded; raises
    (`TemporaryError`) when it could not keep them, and the action is then undone."""

    def mirror(
        self, route: RouteRef, controls: RouteControls, caller: str, reason: str, now_s: float
    ) -> None: ...


class Operators:
    """The operator actions on `guard`, recorded in and kept by `store`. Thread-safe.

    now: the loop's clock (s); writer_id: this replica, recorded with each action; phase_of:
    the route's phase for the record (default: not known, ``"-"``); rate: loop seconds per
    wall second (1 on a wall clock, ``sim.speed`` under ``mesh: sim``); wall: Unix time (s);
    mirror: where the controls of an action are also written (the route's ManagedRoute).
    """

    def __init__(
        self,
        guard: Guard,
        store: DecisionStore,
        *,
        now: Callable[[], float],
        writer_id: str,
        phase_of: Callable[[RouteRef], str] | None = None,
        rate: float = 1.0,
        wall: Callable[[], float] = time.time,
        mirror: ControlsMirror | None = None,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be > 0 loop seconds per wall second, got {rate!r}")
        self.guard, self.store = guard, store
        self.now, self.wall = now, wall
        self.writer_id = writer_id
        self.phase_of = phase_of
        self.rate = float(rate)
        self.mirror = mirror
        self._lock = threading.Lock()

    # -- the actions -----------------------------------------------------------------------

    def pin(
        self,
        route: RouteRef,
        weights: Weights,
        ttl_s: float,
        *,
        caller: Caller,
        reason: str | None = None,
        others_zero: bool = False,
    ) -> float:
        """Pin `weights` for `ttl_s` (s, loop clock) from now; returns when it expires (s)."""
        until_s = self.now() + ttl_s
        args = {"weights": weights.as_dict(), "ttl_s": ttl_s, "others_zero": others_zero}
        self._act(
            route,
            "pin",
            lambda: self.guard.pin(route, weights, until_s),
            caller=caller,
            reason=reason,
            args=args,
            written=weights,
        )
        return until_s

    def release(self, route: RouteRef, *, caller: Caller, reason: str | None = None) -> None:
        self._act(route, "release", lambda: self.guard.unpin(route), caller=caller, reason=reason)

    def pause(self, route: RouteRef, *, caller: Caller, reason: str | None = None) -> None:
        self._act(route, "pause", lambda: self.guard.pause(route), caller=caller, reason=reason)

    def resume(self, route: RouteRef, *, caller: Caller, reason: str | None = None) -> None:
        self._act(route, "resume", lambda: self.guard.resume(route), caller=caller, reason=reason)

    def shadow(
        self, route: RouteRef, enabled: bool, *, caller: Caller, reason: str | None = None
    ) -> None:
        self._act(
            route,
            "shadow",
            lambda: self.guard.set_shadow(route, enabled),
            caller=caller,
            reason=reason,
            args={"enabled": enabled},
        )

    def expire_due(self, routes: Sequence[RouteRef]) -> list[RouteRef]:
        """Release every pin of `routes` whose time is up, each an ``expire`` action by
        meshpilot in the audit log (the controls before and after in the detail): the log then
        says when a pin stopped acting, and the kept controls and a ManagedRoute's spec drop
        it. Returns the routes whose pin expired."""
        expired = []
        for route in routes:
            c = self.guard.controls(route)
            if c.pin is None or c.pin_until_s is None or self.now() < c.pin_until_s:
                continue
            release = functools.partial(self.guard.unpin, route)
            reason = f"pin {c.pin.as_dict()} expired (it was to last until {c.pin_until_s:.1f} s)"
            self._act(route, "expire", release, caller=RESTORER, reason=reason)
            expired.append(route)
        return expired

    def restore(self, routes: Sequence[RouteRef]) -> list[RouteRef]:
        """Put the kept controls of `routes` back into the guard (pins that expired
        meanwhile are dropped), one ``restore`` record each; returns the routes restored."""
        managed = {r.key: r for r in routes}
        restored = []
        for saved in self.store.saved_controls():
            route = managed.get(saved.route)
            if route is None:
                continue
            pin = self._live_pin(saved)
            if not (saved.paused or saved.shadow or pin is not None):
                continue
            apply = functools.partial(self._set, route, saved.paused, saved.shadow, pin)
            reason = f"kept by {saved.caller or 'an operator'}; restored at start"
            self._act(route, "restore", apply, caller=RESTORER, reason=reason)
            restored.append(route)
        return restored

    # -- plumbing ----------------------------------------------------------------------------

    def _live_pin(self, saved: SavedControls) -> tuple[Weights, float] | None:
        """(weights, until_s on the loop clock) of a kept pin that has not expired."""
        if saved.pin is None or saved.pin_expires_at is None:
            return None
        left_s = saved.pin_expires_at - self.wall()
        if left_s <= 0:
            return None
        try:
            weights = Weights(tuple(saved.pin), tuple(saved.pin.values()))
        except (TypeError, ValueError):
            _log.warning(
                "route %s: the kept pin %s is not a split; dropped", saved.route, saved.pin
            )
            return None
        return weights, self.now() + left_s * self.rate

    def _act(
        self,
        route: RouteRef,
        action: str,
        change: Callable[[], None],
        *,
        caller: Caller,
        reason: str | None,
        args: dict[str, Any] | None = None,
        written: Weights | None = None,
    ) -> None:
        with self._lock:  # one action at a time: before, after and the kept row agree
            before = self.guard.controls(route)
            change()
            after = self.guard.controls(route)
            now = self.now()
            detail = {
                **(args or {}),
                "before": _controls_dict(before),
                "after": _controls_dict(after),
            }
            record = DecisionRecord(
                ts_s=now,
                route=route.key,
                phase=self.phase_of(route) if self.phase_of is not None else "-",
                reason=reason or "",
                outcome=f"operator: {action}",
                written=written.as_dict() if written is not None else None,
                writer=self.writer_id,
                caller=caller.name,
                action=action,
                detail=detail,
            )
            try:
                self._mirror(route, after, caller, reason or "", now)
            except BaseException:
                self._put_back(route, before)
                raise
            try:
                self.store.record(record, controls=self._kept(route, after, caller))
            except BaseException:
                self._put_back(route, before)
                with contextlib.suppress(Exception):  # best effort: the spec as it was
                    self._mirror(route, before, caller, reason or "", now)
                raise
        _log.info(
            "route %s: %s by %s%s", route.key, action, caller.name, f" ({reason})" if reason else ""
        )

    def _mirror(
        self, route: RouteRef, c: RouteControls, caller: Caller, reason: str, now: float
    ) -> None:
        if self.mirror is not None:
            self.mirror.mirror(route, c, caller.name, reason, now)

    def _kept(self, route: RouteRef, c: RouteControls, caller: Caller) -> SavedControls:
        expires = None
        if c.pin is not None and c.pin_until_s is not None:
            expires = self.wall() + (c.pin_until_s - self.now()) / self.rate
        return SavedControls(
            route=route.key,
            paused=c.paused,
            shadow=c.shadow,
            pin=c.pin.as_dict() if c.pin is not None else None,
            pin_expires_at=expires,
            caller=caller.name,
            updated_at=self.wall(),
        )

    def _put_back(self, route: RouteRef, c: RouteControls) -> None:
        """Undo an action the store could not keep."""
        pin = (c.pin, c.pin_until_s) if c.pin is not None and c.pin_until_s is not None else None
        self._set(route, c.paused, c.shadow, pin)

    def _set(
        self, route: RouteRef, paused: bool, shadow: bool, pin: tuple[Weights, float] | None
    ) -> None:
        """Set every control of `route`: pin is (weights, until_s on the loop clock) or None."""
        self.guard.set_shadow(route, shadow)
        (self.guard.pause if paused else self.guard.resume)(route)
        if pin is not None:
            self.guard.pin(route, *pin)
        else:
            self.guard.unpin(route)


class PinExpiry:
    """Tick hook: before each tick the leader releases the pins whose time is up through
    `operators` (`Operators.expire_due`), so each expiry is an audited action, not only a note
    in the next decision's reason. Followers leave it to the leader (their guard drops the pin
    silently when it reviews)."""

    def __init__(self, operators: Operators) -> None:
        self.operators = operators

    def before_tick(self, loop: Any) -> None:
        if loop.leading:
            self.operators.expire_due(loop.routes)

    def after_tick(self, loop: Any, leader: bool) -> None:
        return None

"""Routes managed because a `ManagedRoute` resource names them, and the controls in its spec.

Why: in a cluster the set of routes and the operators' controls must not live in one
replica's memory. A `ManagedRouteSource` (the Kubernetes adapter,
`controller.adapters.kube.managed_routes`; without a cluster, the in-process store of
`controller.managed_memory`) keeps the resources in memory; `ManagedRoutes` is a
tick hook of the loop: before each tick it makes the loop manage the settings' routes plus
every resource's route (a new one from this tick, a deleted one released: never written
again, its VirtualService left as it is) and applies each resource's spec controls to the
guard when first seen and whenever they change, so every replica and a new leader see the
same controls; after the tick the leader writes each resource's status when it changed, and
Events on writes and on entering a phase (Warning for holding and failed).
Each control a spec changes is an operator action in the audit log (caller
``managedroute:<name>``; detail: ``source: ManagedRoute``, the pin's ``by``, before, after).

The API's controls of such a route go into the same spec (`ManagedRoutes.mirror`, called by
`controller.operators.Operators` before it changes anything): the resource is where controls
live in a cluster, so a pin or a pause made through one replica's API is seen by every
replica, kept by a new leader and shown by ``kubectl get managedroutes -o yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from controller.guard import Guard, RouteControls
from controller.store import DecisionRecord, DecisionStore
from meshcore import RouteRef, Weights
from meshcore.errors import ConfigError

__all__ = ["ManagedRoute", "ManagedRouteSource", "ManagedRoutes", "SpecControls", "SpecPin"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpecPin:
    """``spec.controls.pin``: weights until ``expires_at_s`` (Unix time, s)."""

    weights: Weights
    expires_at_s: float
    reason: str = ""
    by: str = ""


@dataclass(frozen=True)
class SpecControls:
    """``spec.controls`` of a ManagedRoute."""

    paused: bool = False
    shadow: bool = False
    pin: SpecPin | None = None


@dataclass(frozen=True)
class ManagedRoute:
    """One ManagedRoute: `route` is None when the spec is invalid (`error` says why).

    guard: ``spec.guard`` as `GuardConfig` fields (snake_case) over the controller's own;
    policy: ``spec.policy`` (None when absent), which must name the policy being served.
    """

    name: str
    generation: int
    route: RouteRef | None
    controls: SpecControls = field(default_factory=SpecControls)
    error: str | None = None
    uid: str = ""
    guard: Mapping[str, Any] = field(default_factory=dict)
    policy: str | None = None


class ManagedRouteSource(Protocol):
    """The ManagedRoutes of a namespace, kept current in memory (list + watch)."""

    def snapshot(self) -> Sequence[ManagedRoute] | None:
        """Every ManagedRoute now, or None while not in sync (then nothing changes)."""

    def write_status(self, name: str, status: Mapping[str, Any]) -> bool:
        """Merge `status` into the resource's status subresource; False when that failed
        (logged, never raised)."""

    def emit_event(self, item: ManagedRoute, warning: bool, reason: str, message: str) -> None:
        """A Kubernetes Event about `item` (``kubectl describe`` shows it); never raises."""

    def write_controls(self, name: str, controls: Mapping[str, Any]) -> int:
        """Merge `controls` into the resource's ``spec.controls`` (a None field is deleted)
        and return the resource's generation after it; `TemporaryError` (saying why) when the
        API server did not take it."""


class _Loop(Protocol):
    routes: tuple[RouteRef, ...]
    store: DecisionStore
    writer_id: str

    def set_routes(self, routes: Sequence[RouteRef]) -> None: ...
    def now(self) -> float: ...
    def is_leader(self) -> bool: ...
    def route_status(self, route: RouteRef) -> Any: ...


def _rfc3339(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ManagedRoutes:
    """The tick hook that manages the routes of `source` beside the `static` ones (settings).

    guard: where spec controls and ``spec.guard`` settings go; wall: Unix time (s) to place a
    pin's ``expiresAt`` on the loop's clock (default `time.time`); rate: loop-clock seconds
    per wall second (``serve --mesh sim`` runs its clock `sim.speed` times faster);
    served_policy: the names ``spec.policy`` may give (one policy serves every route: a
    ManagedRoute asking for another is invalid, not silently served by this one; empty: any).
    """

    def __init__(
        self,
        source: ManagedRouteSource,
        guard: Guard,
        *,
        static: Sequence[RouteRef] = (),
        wall: Callable[[], float] = time.time,
        served_policy: Sequence[str] = (),
        rate: float = 1.0,
    ) -> None:
        self.source, self.guard, self.static = source, guard, tuple(static)
        self._wall = wall
        self.rate = rate
        self.served_policy = tuple(served_policy)
        self._configs: dict[str, Mapping[str, Any]] = {}  # by route key: spec.guard applied
        self._mirrored: dict[str, tuple[str, int]] = {}  # by route key: uid, generation our
        # last API write made
        self._items: dict[str, ManagedRoute] = {}
        self._applied: dict[str, SpecControls] = {}  # by route key: last spec controls applied
        self._written: dict[str, tuple[Any, ...]] = {}  # by name: what the last status said
        self._seen: dict[str, tuple[str, int | None, str | None]] = {}  # phase, id, steered_by
        # Held by `mirror` (API threads) from its spec write to its bookkeeping and by
        # `before_tick` (the loop) from its snapshot to applying it: an in-memory store shows
        # a write at once, and the loop must not take it for someone else's edit.
        self._lock = threading.RLock()

    def before_tick(self, loop: _Loop) -> None:
        with self._lock:
            self._before_tick(loop)

    def _before_tick(self, loop: _Loop) -> None:
        items = self.source.snapshot()
        if items is None:
            return  # not in sync: keep managing what we manage
        static_keys = {r.key for r in self.static}
        by_name: dict[str, ManagedRoute] = {}
        routes = list(self.static)
        named: set[str] = set()
        for item in items:
            error = self._refusal(item, named)
            if error is not None:
                item = ManagedRoute(item.name, item.generation, None, error=error, uid=item.uid)
            by_name[item.name] = item
            if item.route is None:
                continue
            named.add(item.route.key)
            if item.route.key not in static_keys:  # a settings route stays whatever happens
                routes.append(item.route)
        self._items = by_name  # whole, at once: `mirror` reads it from the API's threads
        for gone in [k for k in self._configs if k not in named]:
            del self._configs[gone]
            self.guard.set_route_config(gone, None)
        for gone in [k for k in self._applied if k not in named]:
            del self._applied[gone]
            self._mirrored.pop(gone, None)
            kept = "stays managed (settings)" if gone in static_keys else "released"
            _log.info("route %s %s: its ManagedRoute was deleted", gone, kept)
        self._written = {n: w for n, w in self._written.items() if n in self._items}
        self._seen = {n: w for n, w in self._seen.items() if n in self._items}
        if [r.key for r in routes] != [r.key for r in loop.routes]:
            loop.set_routes(routes)
        for item in self._items.values():  # after set_routes: the loop knows every route
            if item.route is not None and not self._behind_our_write(item):
                self._apply(loop, item.name, item.route, item.controls)

    def _behind_our_write(self, item: ManagedRoute) -> bool:
        """Whether the watch has not caught up with our own last write to `item` yet (the
        same resource at an older generation): its spec is older than the guard's controls."""
        assert item.route is not None
        ours = self._mirrored.get(item.route.key)
        return ours is not None and ours[0] == item.uid and item.generation < ours[1]

    def _refusal(self, item: ManagedRoute, named: set[str]) -> str | None:
        """Why `item` cannot be managed as it is (None: it can, and its ``spec.guard`` is
        in force for its route from now on)."""
        if item.route is None:
            return None
        if item.route.key in named:
            return f"{item.route.key} is named by another ManagedRoute"
        if item.policy and self.served_policy and item.policy not in self.served_policy:
            return (
                f"spec.policy {item.policy!r} is not served here: one policy serves every route "
                f"({self.served_policy[0]}); leave spec.policy out or name it"
            )
        key = item.route.key
        if self._configs.get(key) != item.guard:
            try:
                config = (
                    dataclasses.replace(self.guard.config, **item.guard) if item.guard else None
                )
            except (ConfigError, TypeError) as err:
                return f"spec.guard: {err}"
            self.guard.set_route_config(key, config)
            self._configs[key] = item.guard
            _log.info("route %s: guard settings from its ManagedRoute: %s", key, dict(item.guard))
        return None

    def after_tick(self, loop: _Loop, leader: bool) -> None:
        if not leader:
            self._seen.clear()  # a new leader reports from where it starts
            return
        for item in self._items.values():
            status = self._status(loop, item)
            summary = (
                status["phase"],
                str(status.get("weights")),
                status["observedGeneration"],
                status.get("steeredBy"),
            )
            if self._written.get(item.name) != summary:
                if not self.source.write_status(item.name, status):
                    return  # API server unreachable or refusing: do not slow the tick further
                self._written[item.name] = summary
            self._event(loop, item)

    def _event(self, loop: _Loop, item: ManagedRoute) -> None:
        """Events on writes, on entering a phase (Warning: holding, failed) and when the
        supervisor hands the route to its fallback (Warning) or back to the policy."""
        if item.route is None:
            return
        st = loop.route_status(item.route)
        seen = self._seen.get(item.name)
        now = (st.phase, st.last_decision_id, st.steered_by)
        self._seen[item.name] = now
        if seen == now or st.last_outcome is None:
            return
        reason = (st.last_reason or "")[:900]
        if st.last_outcome in ("written", "conflict-retried") and st.weights is not None:
            self.source.emit_event(item, False, "Written", f"weights {st.weights}: {reason}")
        if seen is None or seen[0] != st.phase:
            warning = st.phase in ("holding", "failed")
            self.source.emit_event(item, warning, st.phase.capitalize(), reason or st.phase)
        if st.steered_by == "fallback" and (seen is None or seen[2] != "fallback"):
            self.source.emit_event(item, True, "Fallback", reason or "the supervisor's fallback")
        elif st.steered_by == "policy" and seen is not None and seen[2] == "fallback":
            self.source.emit_event(item, False, "PolicyResumed", reason or "the policy steers")

    def adopt(self, loop: _Loop) -> None:
        """Write the guard's controls of every resource's route into its spec, as applied.

        For a store that starts empty with the process (`controller.managed_memory`): the
        controls the decision store restored are the truth then, and the first tick must not
        apply the empty specs over them. A cluster's resources are the truth, never adopted."""
        with self._lock:
            items = self.source.snapshot() or ()
            self._items = {item.name: item for item in items}
            for item in items:
                if item.route is not None:
                    controls = self.guard.controls(item.route)
                    self._mirror(item.route, controls, "meshpilot", "restored at start", loop.now())

    def mirror(
        self, route: RouteRef, controls: RouteControls, caller: str, reason: str, now_s: float
    ) -> None:
        """Write `controls` (the guard's after an API action; `now_s` the loop's clock, on
        which the pin's until is) into the spec of the ManagedRoute naming `route`, if one
        does. A new pin's ``expiresAt`` is its wall time in whole seconds, its ``by`` the
        caller and its ``reason`` the action's; a pin the action left alone keeps its own. The
        written controls count as applied, so the watch's echo is not a second action, and a
        snapshot older than the write (the watch lagging) is not applied over it.
        `TemporaryError` when the API server refuses: nothing changed then."""
        with self._lock:
            self._mirror(route, controls, caller, reason, now_s)

    def _mirror(
        self, route: RouteRef, controls: RouteControls, caller: str, reason: str, now_s: float
    ) -> None:
        item = next(
            (i for i in self._items.values() if i.route is not None and i.route.key == route.key),
            None,
        )
        if item is None:
            return
        pin = None
        if controls.pin is not None and controls.pin_until_s is not None:
            expires = float(int(self._wall() + (controls.pin_until_s - now_s) / self.rate))
            kept = self._applied.get(route.key)
            pin = SpecPin(controls.pin, expires, reason, caller)
            if (
                kept is not None
                and kept.pin is not None
                and kept.pin.weights == controls.pin
                and abs(kept.pin.expires_at_s - expires) <= 1.0
            ):
                pin = kept.pin
        spec = SpecControls(controls.paused, controls.shadow, pin)
        generation = self.source.write_controls(item.name, _spec_dict(spec))
        self._applied[route.key] = spec
        self._mirrored[route.key] = (item.uid, generation)

    def _apply(self, loop: _Loop, name: str, route: RouteRef, spec: SpecControls) -> None:
        """Spec controls onto the guard: all when first seen, then each field that changed."""
        before = self._applied.get(route.key)
        if before == spec:
            return
        was = self.guard.controls(route)
        if before is None or before.paused != spec.paused:
            (self.guard.pause if spec.paused else self.guard.resume)(route)
        if before is None or before.shadow != spec.shadow:
            self.guard.set_shadow(route, spec.shadow)
        if before is None or before.pin != spec.pin:
            pin = spec.pin
            if pin is None:
                self.guard.unpin(route)
            else:
                until = loop.now() + (pin.expires_at_s - self._wall()) * self.rate
                self.guard.pin(route, pin.weights, until)
        self._applied[route.key] = spec
        _log.info("route %s: controls from its ManagedRoute: %s", route.key, spec)
        self._audit(loop, name, route, spec, (was, self.guard.controls(route)))

    def _audit(
        self,
        loop: _Loop,
        name: str,
        route: RouteRef,
        spec: SpecControls,
        change: tuple[RouteControls, RouteControls],
    ) -> None:
        """One operator record per control the spec changed (like the API's actions)."""
        was, now = change
        actions = []
        if was.paused != now.paused:
            actions.append("pause" if now.paused else "resume")
        if was.shadow != now.shadow:
            actions.append("shadow")
        if (was.pin, was.pin_until_s) != (now.pin, now.pin_until_s):
            actions.append("pin" if now.pin is not None else "release")
        pin = spec.pin
        for action in actions:
            by = pin.by if pin is not None and action == "pin" else ""
            record = DecisionRecord(
                ts_s=loop.now(),
                route=route.key,
                phase=loop.route_status(route).phase,
                reason=pin.reason if pin is not None and action == "pin" else "",
                outcome=f"operator: {action}",
                written=now.pin.as_dict() if action == "pin" and now.pin is not None else None,
                writer=loop.writer_id,
                caller=f"managedroute:{name}",
                action=action,
                detail={
                    "source": "ManagedRoute",
                    "name": name,
                    "by": by,  # what the spec says, not checked: RBAC decided who may patch
                    "before": _controls(was),
                    "after": _controls(now),
                },
            )
            try:
                loop.store.record(record)
            except Exception:
                _log.exception(
                    "route %s: could not record the %s from its ManagedRoute", route.key, action
                )

    def _status(self, loop: _Loop, item: ManagedRoute) -> dict[str, Any]:
        status: dict[str, Any] = {"observedGeneration": item.generation}
        if item.route is None or item.error is not None:
            message = item.error or "invalid spec"
            status.update(phase="invalid", conditions=[_condition("False", "Invalid", message)])
            return status
        st = loop.route_status(item.route)
        status["phase"] = st.phase
        status["weights"] = st.weights.as_dict() if st.weights is not None else None
        status["steeredBy"] = st.steered_by
        if st.last_tick_s is not None:
            when = self._wall() - (loop.now() - st.last_tick_s) / self.rate
            status["lastDecision"] = {  # None deletes a field in a merge patch
                "time": _rfc3339(when),
                "reason": (st.last_reason or "")[:1000] or None,
                "outcome": st.last_outcome or None,
            }
        ok = st.failed is None
        status["conditions"] = [
            _condition("True" if ok else "False", "Managed" if ok else "Failed", st.failed or "")
        ]
        return status


def _spec_dict(spec: SpecControls) -> dict[str, Any]:
    """``spec.controls`` as the CRD spells it (a None pin deletes the field)."""
    pin = None
    if spec.pin is not None:
        pin = {
            "weights": spec.pin.weights.as_dict(),
            "expiresAt": _rfc3339(spec.pin.expires_at_s),
            "reason": spec.pin.reason or None,
            "by": spec.pin.by or None,
        }
    return {"paused": spec.paused, "shadow": spec.shadow, "pin": pin}


def _controls(c: RouteControls) -> dict[str, Any]:
    pin = c.pin.as_dict() if c.pin is not None else None
    return {"paused": c.paused, "shadow": c.shadow, "pin": pin, "pin_until_s": c.pin_until_s}


def _condition(status: str, reason: str, message: str) -> dict[str, str]:
    out = {"type": "Ready", "status": status, "reason": reason}
    if message:  # left out when empty: the API server refused an empty one as null
        out["message"] = message[:1000]
    return out | {"lastTransitionTime": _rfc3339(time.time())}

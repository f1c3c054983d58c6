"""ManagedRoutes kept in this process: the `ManagedRouteSource` of ``--mesh sim`` and ``lab``.

Why: without a cluster there is no API server to keep ManagedRoute resources, but the routes
and their controls should still go through the same code as in one (`controller.managed`):
the API's pins and pauses land in a spec, the hook applies specs to the guard and writes a
status per route. `MemoryManagedRoutes` is that store, one resource per route of the settings
(seeded at start, never created or deleted afterwards), readable by tests and tools through
`item` and `status`.

Its specs start without controls. The controls restored from the decision store at start are
the truth of a local run, so `ManagedRoutes.adopt` copies the guard's controls into the specs
before the first tick (otherwise the first tick would apply the empty specs over them).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from controller.managed import ManagedRoute, SpecControls, SpecPin
from meshcore import RouteRef, Weights
from meshcore.errors import ConfigError

__all__ = ["MemoryManagedRoutes", "resource_name"]

_log = logging.getLogger(__name__)


def resource_name(route: RouteRef) -> str:
    """The name of `route`'s resource: its key with dots for slashes (``ns.vs.route``), so
    routes of different namespaces never share one."""
    return route.key.replace("/", ".")


class MemoryManagedRoutes:
    """One in-memory ManagedRoute per route in `routes` (in their order). Thread-safe: the API
    writes controls from its threads while the loop reads snapshots."""

    def __init__(self, routes: Sequence[RouteRef]) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, ManagedRoute] = {}
        self._status: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, bool, str, str]] = []
        """(name, warning, reason, message) of every Event, oldest first (at most 1,000)."""
        for route in routes:
            name = resource_name(route)
            if name in self._items:
                raise ConfigError(f"route {route.key} is listed twice")
            self._items[name] = ManagedRoute(name=name, generation=1, route=route, uid=name)
            self._status[name] = {}

    def snapshot(self) -> Sequence[ManagedRoute]:
        with self._lock:
            return list(self._items.values())

    def item(self, name: str) -> ManagedRoute:
        """The resource called `name` (KeyError if there is none)."""
        with self._lock:
            return self._items[name]

    def status(self, name: str) -> dict[str, Any]:
        """A copy of the status last written for `name` (KeyError if there is none)."""
        with self._lock:
            return dict(self._status[name])

    def write_status(self, name: str, status: Mapping[str, Any]) -> bool:
        with self._lock:
            if name not in self._status:
                return False
            merged = self._status[name] | dict(status)
            self._status[name] = {k: v for k, v in merged.items() if v is not None}
            return True

    def emit_event(self, item: ManagedRoute, warning: bool, reason: str, message: str) -> None:
        level = logging.WARNING if warning else logging.DEBUG
        _log.log(level, "ManagedRoute %s: %s: %s", item.name, reason, message)
        with self._lock:
            self.events.append((item.name, warning, reason, message))
            del self.events[:-1000]

    def write_controls(self, name: str, controls: Mapping[str, Any]) -> int:
        """Merge `controls` (``spec.controls`` as the CRD spells it, a None field deleted)
        into the resource's spec and return its new generation."""
        with self._lock:
            item = self._items[name]
            spec = _merge(item.controls, controls)
            self._items[name] = dataclasses.replace(
                item, controls=spec, generation=item.generation + 1
            )
            return item.generation + 1


def _merge(spec: SpecControls, patch: Mapping[str, Any]) -> SpecControls:
    """`spec` with the fields of a ``spec.controls`` merge patch applied."""
    paused = bool(patch.get("paused", spec.paused) or False)
    shadow = bool(patch.get("shadow", spec.shadow) or False)
    pin = spec.pin
    if "pin" in patch:
        raw = patch["pin"]
        if raw is None:
            pin = None
        else:
            weights = raw["weights"]
            expires = datetime.strptime(raw["expiresAt"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
            pin = SpecPin(
                Weights(tuple(weights), tuple(weights.values())),
                expires,
                raw.get("reason") or "",
                raw.get("by") or "",
            )
    return SpecControls(paused, shadow, pin)

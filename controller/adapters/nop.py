"""`ShadowActuator`: an `Actuator` that reads the real route but never writes it.

Shadow mode lets a new policy run against production telemetry with zero blast radius: the
loop decides, guards and records as usual, and this adapter makes sure nothing it does can
reach the mesh, even if a bug in the loop asked for a write. It keeps what would have been
written, so a test or an operator can compare it with what the mesh actually runs.
"""

from __future__ import annotations

import threading
from typing import Protocol

from meshcore import RouteRef, Weights

__all__ = ["ShadowActuator", "WeightsReader"]


class WeightsReader(Protocol):
    """Anything that can read a route's configured weights (every `Actuator` can)."""

    def current(self, route: RouteRef) -> Weights: ...


class ShadowActuator:
    """`current()` delegates to `reader`; `apply()` records the weights and writes nothing.

    `would_write` maps a route key to the last weights `apply` received; `applies` counts the
    calls. Thread-safe (the API may read while the loop records).
    """

    def __init__(self, *, reader: WeightsReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._would_write: dict[str, Weights] = {}
        self.applies = 0

    def current(self, route: RouteRef) -> Weights:
        return self._reader.current(route)

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        """Record `weights` as what would have been written; return them unchanged."""
        with self._lock:
            self._would_write[route.key] = weights
            self.applies += 1
        return weights

    @property
    def would_write(self) -> dict[str, Weights]:
        with self._lock:
            return dict(self._would_write)

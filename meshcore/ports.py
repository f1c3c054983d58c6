"""The ports every side of meshpilot plugs into (typing.Protocol, structural).

The loop and the env depend only on these; the simulator, Prometheus, Istio, Envoy and no-op
adapters implement them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from meshcore.model import Observation, RouteRef, Weights


@runtime_checkable
class Observer(Protocol):
    """Reads the current telemetry of many routes at once (a fixed number of queries)."""

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]: ...


@runtime_checkable
class Actuator(Protocol):
    """Reads and writes the weights of one managed route."""

    def current(self, route: RouteRef) -> Weights: ...

    def apply(self, route: RouteRef, weights: Weights) -> Weights: ...


@runtime_checkable
class Policy(Protocol):
    """Something that picks weights for an observation; stateful policies keep state per route."""

    name: str

    def decide(self, obs: Observation) -> Weights: ...

    def reset(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Wall or simulated time in seconds; tests use a fake one."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

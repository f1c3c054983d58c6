"""The controller's ports on the running lab, wired once for every command that meets it.

`serve --mesh lab`, `train --mesh lab` and `evaluate --mesh lab` all observe the lab through
its Prometheus with the ``istio`` PromQL profile and write through its Envoy route file, as a
cluster would be observed and written; this module is the one place that says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from controller.adapters.envoy import EnvoyRouteActuator
from controller.adapters.prometheus import PrometheusObserver
from envs.lab.lab import LabState
from meshcore import Actuator, RouteRef, Weights

__all__ = ["LAB_WINDOW_S", "LabPorts", "lab_ports", "weights_or_none"]

LAB_WINDOW_S = 10.0
"""PromQL rate window on the lab (s): Prometheus scrapes Envoy every second there."""


def weights_or_none(actuator: Actuator) -> Callable[[RouteRef], Weights | None]:
    """The actuator's current weights for the observer, None when they cannot be read (the
    caller reports the actuator's errors itself; the observer only lacks the weights)."""

    def read(route: RouteRef) -> Weights | None:
        try:
            return actuator.current(route)
        except Exception:
            return None

    return read


@dataclass(frozen=True)
class LabPorts:
    """Observer and actuator of a running lab, and each route's nominal capacity (rps) from
    the lab file (what `capacity_rps` in the settings gives the policy in a cluster)."""

    observer: PrometheusObserver
    actuator: EnvoyRouteActuator
    capacity_hints: dict[RouteRef, dict[str, float]]


def lab_ports(
    lab: LabState,
    stack: contextlib.ExitStack,
    *,
    window_s: float = LAB_WINDOW_S,
    slo_ms: float | None = None,
) -> LabPorts:
    """Ports on `lab`, closed by `stack`; `slo_ms` defaults to the lab file's (the latency
    bucket Envoy measures the slow ratio at)."""
    actuator = EnvoyRouteActuator(lab.routes_file, lab.admin_url)
    stack.callback(actuator.close)
    observer = PrometheusObserver(
        url=lab.prometheus_url,
        profile="istio",
        window_s=window_s,
        slo_ms=lab.spec.slo_ms if slo_ms is None else slo_ms,
        weights_source=weights_or_none(actuator),
    )
    stack.callback(observer.close)
    hints = {
        svc.route(lab.spec.namespace): {s.name: s.capacity_rps for s in svc.subsets}
        for svc in lab.spec.services
    }
    return LabPorts(observer, actuator, hints)

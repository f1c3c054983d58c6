"""The meshes `meshpilot serve` can run against: what each contributes to the control loop.

``sim``: the embedded simulated mesh of the settings' scenarios, on its own clock; ``k8s``:
Prometheus and Istio VirtualServices through the Kubernetes API; ``lab``: a running lab's
Envoy and Prometheus (`envs.lab`). Each builder registers what it starts on the exit stack,
so `serve` closes them in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.settings import Settings
from meshcore import Actuator, Clock, ConfigError, Observer, RouteRef, Weights

__all__ = ["LAB_TELEMETRY_LAG_S", "MESHES", "Mesh", "k8s_mesh", "lab_mesh", "sim_mesh"]

_log = logging.getLogger("meshpilot.serve")


@dataclass
class Mesh:
    """What a mesh backend contributes to the loop."""

    observer: Observer
    actuator: Actuator
    clock: Clock
    routes: list[RouteRef]
    window_s: float
    """How long after a write the observed split shows it (s): the verify delay."""
    capacity_hints: dict[RouteRef, dict[str, float]] = field(default_factory=dict)
    """Nominal capacity per route and subset (rps) the mesh knows (the lab's file)."""


def sim_mesh(settings: Settings, stack: contextlib.ExitStack) -> Mesh:
    from envs.simulator.realtime import RealtimeSimulatedMesh
    from envs.simulator.scenario import load_scenario

    scenarios = [load_scenario(name) for name in settings.sim.scenarios]
    mesh = RealtimeSimulatedMesh.from_scenarios(
        scenarios=scenarios, speed=settings.sim.speed, seed=settings.sim.seed
    )
    routes = [r.ref() for r in settings.routes] or list(mesh.routes)
    mesh.start()
    stack.callback(mesh.stop)
    return Mesh(mesh, mesh, mesh.clock, routes, mesh.window_s())


def k8s_mesh(settings: Settings, stack: contextlib.ExitStack) -> Mesh:
    from controller.clock import WallClock

    try:
        from controller.adapters.istio.actuator import VirtualServiceActuator
    except ImportError as err:
        raise ConfigError(f"k8s mesh not available: {err}") from err
    from controller.adapters.prometheus import PrometheusObserver

    kube = settings.kube
    _log.info(
        "Kubernetes API: %s",
        "in-cluster service account"
        if kube.kubeconfig is None
        else f"kubeconfig {kube.kubeconfig}, context {kube.context or '(its current context)'}",
    )
    actuator = VirtualServiceActuator(
        kubeconfig=settings.kube.kubeconfig,
        context=settings.kube.context,
        dry_run=settings.kube.dry_run,
        watch_cache=settings.kube.watch_cache,
        # parallel writers, one watch per namespace, and the observer's reads
        max_connections=settings.max_parallel_writes + 4,
    )
    stack.callback(actuator.close)
    routes = [r.ref() for r in settings.routes]
    prom = settings.prometheus
    observer = PrometheusObserver(
        url=prom.url,
        profile=prom.profile,
        window_s=prom.window_s,
        reporter=prom.reporter,
        timeout_s=prom.timeout_s,
        slo_ms=settings.slo_ms,
        recording_rules=prom.recording_rules,
        subsets_by_route={r.ref(): r.subsets for r in settings.routes if r.subsets},
        weights_source=_weights_or_none(actuator),
    )
    stack.callback(observer.close)
    return Mesh(observer, actuator, WallClock(), routes, prom.window_s)


LAB_TELEMETRY_LAG_S = 3.0
"""How long a request takes to reach the lab's rate window (s): Envoy flushes its stats every
second, Prometheus scrapes every second and evaluates the recording rules every second. A
write is verified this long after one full window, when the window holds only the new split."""


def lab_mesh(settings: Settings, stack: contextlib.ExitStack) -> Mesh:
    from controller.clock import WallClock
    from envs.lab.lab import default_state_dir, running_state
    from meshpilot.lab_ports import lab_ports

    state_dir = Path(settings.lab.state_dir) if settings.lab.state_dir else default_state_dir()
    lab = running_state(state_dir)
    if settings.slo_ms != lab.spec.slo_ms:
        raise ConfigError(
            f"slo_ms {settings.slo_ms:g} differs from the lab's ({lab.spec.slo_ms:g} ms, the "
            "latency bucket its Envoy measures the slow ratio at): set slo_ms to match"
        )
    _log.info("lab %s: Envoy %s, Prometheus %s", lab.spec.name, lab.envoy_url, lab.prometheus_url)
    ports = lab_ports(lab, stack, window_s=settings.lab.window_s)
    routes = [r.ref() for r in settings.routes] or lab.spec.routes()
    verify_after_s = settings.lab.window_s + LAB_TELEMETRY_LAG_S
    return Mesh(
        ports.observer, ports.actuator, WallClock(), routes, verify_after_s, ports.capacity_hints
    )


def _weights_or_none(actuator: Actuator) -> Callable[[RouteRef], Weights | None]:
    def read(route: RouteRef) -> Weights | None:
        try:
            return actuator.current(route)
        except Exception:  # the loop reports the actuator's errors; the observer just lacks weights
            return None

    return read


MESHES: dict[str, Callable[[Settings, contextlib.ExitStack], Mesh]] = {
    "sim": sim_mesh,
    "k8s": k8s_mesh,
    "lab": lab_mesh,
}
"""The builder of each ``mesh`` setting."""

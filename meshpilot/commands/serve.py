"""`meshpilot serve`: run the controller — control loop plus HTTP API — until told to stop.

This is the one place that wires settings to parts: observer and actuator (the mesh, built
by `meshpilot.commands.serve_meshes`), policy, guard, store, leader, loop and API. Shutdown
on SIGTERM (Kubernetes) or Ctrl-C is graceful: the loop finishes its tick and stops writing
first, then the API, the mesh and the store close, and the process exits 0. The serving path
imports neither torch nor stable-baselines3 (the PPO policy runs in numpy).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from controller.access import Authenticator
from controller.adapters.nop import ShadowActuator
from controller.guard import Guard
from controller.loop import AlwaysLeader, ControlLoop, Leadership, TickHook
from controller.operators import Operators, PinExpiry
from controller.settings import Settings, default_store_path, load_settings
from controller.store import DecisionStore
from meshcore import Actuator, ConfigError, Policy, RouteRef
from meshpilot.commands.arg_types import port_number, positive_float
from meshpilot.commands.serve_meshes import MESHES

_log = logging.getLogger("meshpilot.serve")

SHUTDOWN_GRACE_S = 10.0
"""Longest wait for the API server to finish in-flight requests on shutdown (s)."""
SLOW_STEP_S = 2.0
"""A shutdown step longer than this (s) is logged as a warning."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="run the controller and its HTTP API (simulated mesh, lab, or Istio on Kubernetes)",
        description=(
            "Run the control loop every --tick-s seconds (observe, decide, guard, write, verify, "
            "record) and serve the API (/routes, /decisions, overrides, /healthz, /readyz, "
            "/metrics, /docs). Settings come from options, MESHPILOT_* environment variables "
            "and an optional YAML file, in that order of priority. SIGTERM or Ctrl-C stops "
            "gracefully."
        ),
    )
    p.add_argument(
        "--mesh",
        choices=("sim", "k8s", "lab"),
        help="sim: embedded simulated mesh; k8s: Prometheus + Istio VirtualServices; lab: the "
        "live mesh of `meshpilot lab up` (Envoy + Prometheus on this machine) "
        "(default: settings, sim)",
    )
    p.add_argument(
        "--config", metavar="FILE", help="YAML settings file (default: $MESHPILOT_CONFIG, none)"
    )
    p.add_argument(
        "--port", type=port_number, help="API port on the API host (default: settings, 8080)"
    )
    p.add_argument(
        "--policy",
        metavar="NAME",
        help="policy: ppo, ppo:PATH, proportional, equal, ... (default: ppo when the shipped "
        "model loads, else proportional)",
    )
    p.add_argument(
        "--no-supervisor",
        action="store_true",
        help="serve the policy without the supervisor that falls back to the planner when "
        "its split does visible harm (default: supervised)",
    )
    p.add_argument(
        "--tick-s", type=positive_float, metavar="S", help="wall seconds between ticks (default: 5)"
    )
    p.add_argument(
        "--speed",
        type=positive_float,
        metavar="X",
        help="--mesh sim: simulated seconds per wall second (default: 1.0)",
    )
    p.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="--mesh sim: a suite scenario name or YAML path, one route each; repeatable "
        "(default: degraded-canary, latency-spike, steady-80)",
    )
    p.add_argument(
        "--lab-state-dir",
        metavar="DIR",
        help="--mesh lab: the --state-dir given to `meshpilot lab up` (default: its default)",
    )
    p.add_argument(
        "--db",
        metavar="PATH",
        help="SQLite decision log (default: decisions.db in the per-user data directory, "
        "$XDG_DATA_HOME/meshpilot or ~/.local/share/meshpilot, created when missing)",
    )
    p.add_argument(
        "--token-file",
        metavar="PATH",
        help="--auth token: file with the bearer token every control (override, pause, "
        "resume, shadow) must carry; created with a random token when missing (default: "
        "meshpilot-api-token)",
    )
    p.add_argument(
        "--auth",
        choices=("token", "kubernetes"),
        help="how a control's bearer is checked: token (the token file) or kubernetes "
        "(TokenReview + SubjectAccessReview: may the caller patch managedroutes.meshpilot.io "
        "in the route's namespace) (default: kubernetes with --mesh k8s, else token)",
    )
    p.add_argument(
        "--shadow", action="store_true", help="decide and record, never write (shadow mode)"
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="log level (default: info)",
    )
    p.set_defaults(run=run)


def settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line options as nested settings (only those given), above env and file."""
    out: dict[str, Any] = {}
    sim: dict[str, Any] = {}
    if args.mesh is not None:
        out["mesh"] = args.mesh
    api: dict[str, Any] = {}
    if args.port is not None:
        api["port"] = args.port
    if args.token_file is not None:
        api["token_file"] = args.token_file
    if args.auth is not None:
        api["auth"] = args.auth
    if api:
        out["api"] = api
    if args.policy is not None:
        out["policy"] = args.policy
    if args.no_supervisor:
        out["supervisor"] = False
    if args.tick_s is not None:
        out["tick_s"] = args.tick_s
    if args.db is not None:
        out["store"] = {"path": args.db}
    if args.shadow:
        out["mode"] = "shadow"
    if args.speed is not None:
        sim["speed"] = args.speed
    if args.scenario:
        sim["scenarios"] = list(args.scenario)
    if sim:
        out["sim"] = sim
    if args.lab_state_dir is not None:
        out["lab"] = {"state_dir": args.lab_state_dir}
    return out


def resolve_policy(requested: str | None, *, supervised: bool = True) -> tuple[Policy, str]:
    """(policy, why this one): ``ppo`` when the shipped model loads, else ``proportional``;
    behind the supervisor (`agents.supervisor`) when `supervised`."""
    from agents.registry import make_policy

    if requested is not None:
        policy, why = make_policy(requested), f"policy {requested} requested"
    else:
        try:
            policy, why = make_policy("ppo"), "default policy ppo: the shipped model loaded"
        except ConfigError as err:
            why = f"default policy proportional: the shipped PPO model did not load ({err})"
            policy = make_policy("proportional")
    if not supervised:
        return policy, why + "; supervisor off"
    from agents.registry import SUPERVISED_PREFIX

    if requested is not None and requested.startswith(SUPERVISED_PREFIX):
        return policy, why  # already behind the supervisor
    from agents.supervisor import SupervisedPolicy

    return SupervisedPolicy(policy), why + "; behind the supervisor (planner fallback)"


def _leader(settings: Settings, stack: contextlib.ExitStack) -> Leadership:
    if not settings.leader.enabled:
        return AlwaysLeader()
    try:
        from controller.adapters.kube.lease import LeaseElector
    except ImportError as err:
        raise ConfigError(f"leader election not available: {err}") from err
    le = settings.leader
    elector = LeaseElector(
        name=le.lease_name,
        namespace=le.lease_namespace,
        identity=le.identity,
        lease_duration_s=le.lease_duration_s,
        kubeconfig=settings.kube.kubeconfig,
        context=settings.kube.context,
    )
    start, stop = getattr(elector, "start", None), getattr(elector, "stop", None)
    if callable(start):
        start()
    if callable(stop):
        stack.callback(_timed, "stopping the leader election", stop)
    leadership: Leadership = elector
    return leadership


def build_loop(settings: Settings, stack: contextlib.ExitStack) -> tuple[ControlLoop, Guard]:
    """Every part of the controller, wired from `settings`; closed by `stack`."""
    policy, why = resolve_policy(settings.policy, supervised=settings.supervisor)
    _log.info("%s", why)
    make_mesh = MESHES[settings.mesh]
    mesh = make_mesh(settings, stack)
    store_path = settings.store.path
    if store_path == default_store_path():
        try:
            Path(store_path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"decision store {store_path}: cannot create its directory "
                f"({err.strerror or err}); name another with --db"
            ) from err
    store = DecisionStore(
        store_path, max_rows=settings.store.max_rows, max_age_s=settings.store.max_age_s
    )
    _log.info("decisions recorded in %s", store_path)
    stack.callback(_timed, "closing the decision store", store.close)
    actuator: Actuator = mesh.actuator
    if settings.mode == "shadow":  # belt and braces: the loop also never asks to write
        actuator = ShadowActuator(reader=mesh.actuator)
    guard = Guard(settings.guard.to_config())
    hooks = _managed_routes(settings, stack, guard, mesh.routes, policy.name)
    loop = ControlLoop(
        observer=mesh.observer,
        actuator=actuator,
        policy=policy,
        guard=guard,
        store=store,
        routes=mesh.routes,
        clock=mesh.clock,
        leader=_leader(settings, stack),
        slo_ms=settings.slo_ms,
        writer_id=settings.leader.identity,
        verify_after_s=settings.verify.delay_s or mesh.window_s,
        verify_tolerance=settings.verify.tolerance_points,
        mode=settings.mode,
        tick_s=settings.tick_s,
        capacity_hints=mesh.capacity_hints
        | {r.ref(): r.capacity_rps for r in settings.routes if r.capacity_rps},
        balancers={r.ref(): r.balancer for r in settings.routes if r.balancer},
        recheck_failed_every=settings.recheck_failed_every,
        max_parallel_writes=settings.max_parallel_writes,
        hooks=hooks,
    )
    return loop, guard


def _managed_routes(
    settings: Settings,
    stack: contextlib.ExitStack,
    guard: Guard,
    static: list[RouteRef],
    policy_name: str,
) -> list[TickHook]:
    """The ManagedRoutes as a tick hook: with ``mesh: k8s`` the watch of a namespace (when
    ``kube.managed_routes``; a ManagedRoute's ``spec.policy`` may name the served policy,
    `policy_name`, e.g. ``ppo+supervisor``, or what it serves, ``ppo``); with ``sim`` or
    ``lab`` an in-memory store of one resource per route of the mesh (`static`)."""
    from controller.managed import ManagedRoutes

    if settings.mesh != "k8s":  # its resources name no policy: nothing to check
        from controller.api.overrides import clock_rate
        from controller.managed_memory import MemoryManagedRoutes

        return [ManagedRoutes(MemoryManagedRoutes(static), guard, rate=clock_rate(settings))]
    if not settings.kube.managed_routes:
        return []
    from controller.adapters.kube.managed_routes import ManagedRouteWatch

    source = ManagedRouteWatch(
        settings.kube.managed_routes_namespace,
        kubeconfig=settings.kube.kubeconfig,
        context=settings.kube.context,
    )
    source.start()
    stack.callback(_timed, "stopping the ManagedRoute watch", source.stop)
    _log.info("managing the ManagedRoutes of %s too", source.namespace)
    served = (policy_name, policy_name.split("+", 1)[0])
    return [ManagedRoutes(source, guard, static=static, served_policy=served)]


def _listen(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP (not 0): asyncio turns Nagle off only on sockets it sees created as TCP,
    # and Nagle with delayed ACKs holds every small API answer ~40 ms.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from err
    return sock


def _timed(step: str, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Run a shutdown step; a warning names it when it took more than `SLOW_STEP_S`, so a
    shutdown that outlives its grace period says where the time went."""
    started = time.monotonic()
    fn(*args, **kwargs)
    took = time.monotonic() - started
    if took > SLOW_STEP_S:
        _log.warning("shutdown: %s took %.1f s", step, took)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while inside; previous handlers restored on exit."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        _log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _authenticator(settings: Settings, stack: contextlib.ExitStack) -> Authenticator:
    """How the API checks the bearer of a control (``api.auth``, `Settings.auth_mode`)."""
    if settings.auth_mode() == "kubernetes":
        from controller.adapters.kube.access import KubernetesAccess

        access = KubernetesAccess(
            kubeconfig=settings.kube.kubeconfig,
            context=settings.kube.context,
            cache_s=settings.api.auth_cache_s,
        )
        stack.callback(access.close)
        _log.info(
            "controls need 'Authorization: Bearer <token>' with a Kubernetes token of a user "
            "allowed to patch managedroutes.meshpilot.io in the route's namespace"
        )
        return access
    from controller.api.auth import StaticTokenAuth, ensure_token_file

    token, created = ensure_token_file(settings.api.token_file)
    _log.info(
        "controls need 'Authorization: Bearer <token>' with the token in %s%s",
        Path(settings.api.token_file).resolve(),
        " (created)" if created else "",
    )
    return StaticTokenAuth(token)


def _operators(settings: Settings, loop: ControlLoop, guard: Guard) -> Operators:
    """The audited controls, with those kept in the store from a previous run restored; a
    route's ManagedRoute (if the loop watches them) keeps the controls made through the API;
    the leader releases expired pins as audited actions."""
    from controller.api.overrides import clock_rate
    from controller.managed import ManagedRoutes
    from controller.managed_memory import MemoryManagedRoutes

    mirror = next((h for h in loop.hooks if isinstance(h, ManagedRoutes)), None)
    operators = Operators(
        guard,
        loop.store,
        now=loop.now,
        writer_id=loop.writer_id,
        phase_of=lambda route: loop.route_status(route).phase,
        rate=clock_rate(settings),
        mirror=mirror,
    )
    loop.add_hook(PinExpiry(operators))
    for route in operators.restore(loop.routes):
        c = guard.controls(route)
        _log.info(
            "route %s: controls restored from %s (paused %s, shadow %s, pin %s)",
            route.key,
            settings.store.path,
            c.paused,
            c.shadow,
            c.pin,
        )
    if mirror is not None and isinstance(mirror.source, MemoryManagedRoutes):
        mirror.adopt(loop)  # the in-memory specs start from what the store restored
    return operators


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from controller.api.app import create_app

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings(args.config, **settings_overrides(args))
    with contextlib.ExitStack() as stack, _stop_on_signals() as stop:
        auth = _authenticator(settings, stack)
        loop, guard = build_loop(settings, stack)
        app = create_app(
            settings=settings,
            loop=loop,
            store=loop.store,
            guard=guard,
            auth=auth,
            operators=_operators(settings, loop, guard),
        )
        sock = _listen(settings.api.host, settings.api.port)
        stack.callback(sock.close)
        server = uvicorn.Server(
            uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off")
        )
        api = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="meshpilot-api", daemon=True
        )
        loop.start()
        # runs first on exit: stop writing before anything closes
        stack.callback(_timed, "stopping the control loop", loop.stop)
        api.start()
        _log.info(
            "meshpilot serving %d routes on http://%s:%d (mesh %s, policy %s, mode %s)",
            len(loop.routes),
            settings.api.host,
            settings.api.port,
            settings.mesh,
            loop.policy.name,
            settings.mode,
        )
        while not stop.wait(0.5):
            if not api.is_alive():
                _log.error("the API server stopped unexpectedly")
                return 1
        _timed("stopping the control loop", loop.stop)
        server.should_exit = True
        _timed("stopping the API", api.join, SHUTDOWN_GRACE_S)
    _log.info("meshpilot stopped")
    return 0

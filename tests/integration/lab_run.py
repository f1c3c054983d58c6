"""Shared pieces of the lab tests: a running lab for a test, and `meshpilot serve --mesh lab`.

The lab is the real one (`envs.lab.lab.lab_up`: backends, Envoy, Prometheus on 127.0.0.1);
every process it started is stopped in `running_lab`'s ``finally``, and the test fails if one
survives. `ServedController` runs the served controller (default settings unless told) as a
real process and reads what it did through its HTTP API.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from envs.lab.lab import LabState, lab_down, lab_up
from envs.lab.load_process import LoadGenerator
from envs.lab.processes import is_alive
from envs.lab.spec import LabSpec, parse_lab
from envs.simulator.scenario import Load
from tests.helpers import free_port, require_binary, tail

REPO = Path(__file__).resolve().parents[2]

RPS = 400.0
"""Load on each twin (half its capacity): every version is needed for a low tail, and without
v2 the others still have headroom (v1 + v3 at 67 %)."""
SHOP = "lirmm-services/shop/default"
"""The controlled twin's route key."""
TWINS = {
    "name": "closed-loop",
    "slo_ms": 250,
    "services": [
        {
            "name": name,
            "load": {"rps": RPS},
            "subsets": [
                {"name": "v1", "replicas": 4, "service_ms": 10},
                {"name": "v2", "replicas": 2, "service_ms": 10},
                {"name": "v3", "replicas": 2, "service_ms": 10},
            ],
        }
        for name in ("shop", "shop-static")
    ],
}
"""Two identical services: ``shop`` is controlled, ``shop-static`` keeps its start split, so a
static run shares the schedule, the faults and the machine with the controlled one."""
SHED_WITHIN_S = 30.0
"""The issue's bound: a version answering 30 % 5xx has weight <= 5 this soon (s)."""
FAULT_S = 45.0
"""How long an injected fault lasts (s)."""


@contextlib.contextmanager
def running_lab(spec: LabSpec | Mapping[str, Any], state_dir: Path) -> Iterator[LabState]:
    """A lab up for the duration of the block; afterwards no process of it may be left."""
    require_binary("prometheus", "MESHPILOT_PROMETHEUS")
    lab_spec = spec if isinstance(spec, LabSpec) else parse_lab(spec, source="test")
    state, _ = lab_up(lab_spec, state_dir)
    records = list(state.processes.values())
    try:
        yield state
    finally:
        lab_down(state_dir)
        left = [r.name for r in records if is_alive(r)]
        assert not left, f"lab processes left running after lab down: {left}"


def start_load(lab: LabState, service: str, seed: int) -> LoadGenerator:
    """Poisson traffic at `RPS` to one service through the lab's Envoy, started."""
    host = lab.spec.service(service).host(lab.spec.namespace)
    gen = LoadGenerator(f"127.0.0.1:{lab.listener_port}", [(host, Load(rps=RPS))], seed=seed)
    gen.start()
    return gen


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHPILOT_")}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.update(extra)
    return out


class ServedController:
    """`meshpilot serve --mesh lab` as a process, read through its API.

    mesh_args: the options that pick the mesh, instead of ``--mesh lab --lab-state-dir
    <state_dir>`` (e.g. ``("--mesh", "k8s")`` with the rest in a ``--config`` file).
    """

    def __init__(
        self,
        state_dir: Path,
        work: Path,
        *,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] = {},
        mesh_args: tuple[str, ...] | None = None,
    ) -> None:
        self.port = free_port()
        self.log = work / "serve.log"
        if mesh_args is None:
            mesh_args = ("--mesh", "lab", "--lab-state-dir", str(state_dir))
        cmd = [
            sys.executable,
            "-m",
            "meshpilot.cli",
            "serve",
            *mesh_args,
            "--port",
            str(self.port),
            "--db",
            str(work / "decisions.db"),
            "--token-file",
            str(work / "token"),
            *args,
        ]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(env or {}), cwd=work
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5.0)

    def route(self, key: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(f"/routes/{key}").json()
        return body

    def wait_for(self, what: str, probe: Callable[[], Any], timeout_s: float) -> Any:
        """Poll `probe` until truthy; fail with `what` and the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited ({self.proc.returncode}): {what}\n{tail(self.log)}")
            with contextlib.suppress(httpx.HTTPError, KeyError, TypeError):
                value = probe()
                if value:
                    return value
            time.sleep(0.5)
        pytest.fail(f"gave up waiting for {what}\n{tail(self.log)}")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

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
from envs.lab.processes import is_alive
from envs.lab.spec import LabSpec, parse_lab
from tests.helpers import free_port, require_binary, tail

REPO = Path(__file__).resolve().parents[2]


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


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.upper().startswith("MESHPILOT_")}
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    out.update(extra)
    return out


class ServedController:
    """`meshpilot serve --mesh lab` as a process, read through its API."""

    def __init__(
        self,
        state_dir: Path,
        work: Path,
        *,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] = {},
    ) -> None:
        self.port = free_port()
        self.log = work / "serve.log"
        cmd = [
            sys.executable,
            "-m",
            "meshpilot.cli",
            "serve",
            "--mesh",
            "lab",
            "--lab-state-dir",
            str(state_dir),
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
                cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(env or {}), cwd=work
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

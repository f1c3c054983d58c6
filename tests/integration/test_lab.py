"""`meshpilot lab up|status|load|fault|down` as a user runs them, on the real lab.

Cases: `up` returns with every part healthy and its processes outliving the command; `load`
sends Poisson traffic through Envoy that reaches every version by its weight; a `fault` with
``error_rate=1`` turns exactly that version's answers into 5xx and `--for` restores it; a
killed Envoy is named by `status` (exit 1); `up` over that crashed run cleans it and starts
fresh; `down` leaves no process of either run (checked by PID and start time); bad input
(unknown service or field, ``replicas``) is one clear error line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from envs.lab.processes import ProcessRecord, is_alive
from tests.helpers import require_binary
from tests.integration.lab_run import REPO, child_env

pytestmark = pytest.mark.timeout(240)

LAB = {
    "name": "cli-lab",
    "slo_ms": 250,
    "services": [
        {
            "name": "catalog",
            "load": {"rps": 100},
            "subsets": [
                {"name": "v1", "replicas": 2, "service_ms": 10},
                {"name": "v2", "replicas": 1, "service_ms": 10},
            ],
            "initial_weights": {"v1": 60, "v2": 40},
        }
    ],
}


def meshpilot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshpilot.cli", *args],
        capture_output=True,
        text=True,
        env=child_env({}),
        cwd=REPO,
        timeout=120,
    )


def records(state_dir: Path) -> list[ProcessRecord]:
    data: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
    return [ProcessRecord.from_json(p) for p in data["processes"].values()]


def test_lab_lifecycle_load_fault_crash_and_down(tmp_path: Path) -> None:
    require_binary("prometheus", "MESHPILOT_PROMETHEUS")
    lab_file = tmp_path / "lab.yaml"
    lab_file.write_text(yaml.safe_dump(LAB))
    state = tmp_path / "state"
    first: list[ProcessRecord] = []
    second: list[ProcessRecord] = []
    try:
        up = meshpilot("lab", "up", "--lab", str(lab_file), "--state-dir", str(state))
        assert up.returncode == 0, up.stderr
        first = records(state)
        assert sorted(r.name for r in first) == ["backends", "envoy", "prometheus"]
        assert all(is_alive(r) for r in first), "lab processes must outlive `lab up`"
        status = meshpilot("lab", "status", "--state-dir", str(state))
        assert status.returncode == 0, status.stdout
        assert json.loads(status.stdout)["running"] is True

        load = meshpilot(
            "lab", "load", "--state-dir", str(state), "--rps", "100", "--duration", "4"
        )
        assert load.returncode == 0, load.stderr
        summary = json.loads(load.stdout)
        print("lab load at 100 rps:", json.dumps(summary, sort_keys=True)[:400])
        per_subset = summary["subsets"]
        assert set(per_subset) == {"v1", "v2"}, per_subset
        total = sum(v["requests"] for v in per_subset.values())
        assert total > 200
        assert 0.45 < per_subset["v1"]["requests"] / total < 0.75  # weight 60, Poisson noise

        fault = meshpilot(
            "lab", "fault", "catalog", "v2", "--set", "error_rate=1", "--for", "4",
            "--state-dir", str(state),
        )  # fmt: skip
        assert fault.returncode == 0, fault.stderr
        after = meshpilot(  # --for waited 4 s, then restored the old error rate
            "lab", "load", "--state-dir", str(state), "--rps", "80", "--duration", "3"
        )
        assert after.returncode == 0, after.stderr
        on = meshpilot(
            "lab", "fault", "catalog", "v2", "--set", "error_rate=1", "--state-dir", str(state)
        )
        assert on.returncode == 0, on.stderr
        faulty = json.loads(
            meshpilot(
                "lab", "load", "--state-dir", str(state), "--rps", "80", "--duration", "3"
            ).stdout
        )["subsets"]
        assert faulty["v2"]["requests"] > 0 and faulty["v2"]["error_fraction"] == 1.0
        assert faulty["v1"]["error_fraction"] <= 0.05
        restored = json.loads(after.stdout)["subsets"]
        assert restored["v2"]["error_fraction"] <= 0.05

        for bad, needle in (
            (("shipping", "v1", "--set", "error_rate=1"), "no service 'shipping'"),
            (("catalog", "v9", "--set", "error_rate=1"), "no version 'v9'"),
            (("catalog", "v1", "--set", "replicas=3"), "capacity_factor instead"),
            (("catalog", "v1", "--set", "error_rate=2"), "error_rate must be within"),
        ):
            out = meshpilot("lab", "fault", *bad, "--state-dir", str(state))
            assert out.returncode == 2 and needle in out.stderr, out.stderr
            assert len(out.stderr.strip().splitlines()) == 1

        envoy = next(r for r in first if r.name == "envoy")
        os.killpg(envoy.pid, signal.SIGKILL)
        down_status = meshpilot("lab", "status", "--state-dir", str(state))
        assert down_status.returncode == 1
        parts = json.loads(down_status.stdout)["components"]
        assert parts["envoy"]["process"] == "down" and parts["prometheus"]["process"] == "running"

        again = meshpilot("lab", "up", "--lab", str(lab_file), "--state-dir", str(state))
        assert again.returncode == 0, again.stderr
        assert "cleaned up a crashed earlier run" in again.stderr
        assert not any(is_alive(r) for r in first), "the crashed run's processes must be gone"
        second = records(state)
        assert all(is_alive(r) for r in second)

        twice = meshpilot("lab", "up", "--lab", str(lab_file), "--state-dir", str(state))
        assert twice.returncode == 2 and "already running" in twice.stderr
    finally:
        down = meshpilot("lab", "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
    left = [r.name for r in first + second if is_alive(r)]
    assert not left, f"left running after lab down: {left}"
    assert meshpilot("lab", "status", "--state-dir", str(state)).returncode == 1


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_sigterm_to_a_command_running_a_lab_takes_the_lab_down(tmp_path: Path) -> None:
    require_binary("prometheus", "MESHPILOT_PROMETHEUS")
    argv = ["evaluate", "--mesh", "lab", "--scenarios", "steady-50", "--lab-duration", "120"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshpilot.cli", *argv, "--policy", "equal"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=child_env({}),
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if "equal seed 0" in line:
                break
        lab = _children(proc.pid)
        assert len(lab) >= 3, f"expected the lab's processes under {proc.pid}, got {lab}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.wait()
    left = [pid for pid in lab if Path(f"/proc/{pid}").exists()]
    assert not left, f"lab processes left after SIGTERM: {left}"

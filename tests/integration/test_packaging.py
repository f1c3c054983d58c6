"""What `pip install .` ships: a wheel that runs on its own, outside the repository.

Cases: the wheel declares its license as an SPDX expression and builds without a setuptools
deprecation warning; it holds the scenario suite and the shipped model as package data, and none of
the tests; in a clean virtual environment with only the wheel and its declared dependencies
(the base install, no extras): `pip list` shows no torch, stable-baselines3 or CUDA package;
`meshpilot simulate steady-80 --policy ppo` runs from a directory that is not the repository,
finds the suite by name and serves the shipped model; `meshpilot serve --mesh sim` on
127.0.0.1 turns ready, records decisions in the per-user data directory (nothing in its
working directory) and stops with exit status 0 on SIGTERM. The venv's size is printed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built verbosely: the build backend's warnings are in ``build.log`` beside it."""
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    (out / "build.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("meshpilot-*.whl")
    return built


def test_the_wheel_declares_an_spdx_license_and_builds_without_deprecations(wheel: Path) -> None:
    """setuptools deprecates a license table or classifiers: an SPDX string is what it wants."""
    log = (wheel.parent / "build.log").read_text()
    assert "deprecat" not in log.lower(), [ln for ln in log.splitlines() if "eprecat" in ln]
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = archive.read(name).decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "Classifier: License ::" not in metadata


def test_the_wheel_ships_the_suite_and_the_model_but_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    suite = {n for n in names if n.startswith("envs/scenarios/") and n.endswith(".yaml")}
    assert {Path(n).stem for n in suite} >= {"steady-80", "degraded-canary", "latency-spike"}
    assert "agents/models/default.npz" in names
    for package in ("meshpilot", "controller", "agents", "envs", "meshcore"):
        assert f"{package}/__init__.py" in names
    assert not [n for n in names if n.startswith("tests/")]


@pytest.fixture(scope="module")
def env_dir(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the wheel and its declared dependencies only (no extras)."""
    env_dir = tmp_path_factory.mktemp("base") / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip = env_dir / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=1200,
    )
    return env_dir


def outside_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell: no repository on the path, no settings of ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("MESHPILOT_")
    }
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def test_the_base_install_has_no_torch_and_its_size_is_printed(
    env_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    names = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert "meshpilot" in names and "numpy" in names
    assert not names & {"torch", "stable-baselines3", "triton"}
    assert not [n for n in names if n.startswith("nvidia-")]
    no_torch = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import torch"], check=False)
    assert no_torch.returncode != 0, "the base install must not pull torch"
    size = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file() and not f.is_symlink())
    with capsys.disabled():
        print(f"\n[packaging] base install venv: {size / 1e6:.0f} MB, {len(names)} packages")


def test_an_installed_wheel_simulates_a_suite_scenario_with_the_shipped_model(
    env_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = outside_env(tmp_path)
    done = subprocess.run(
        [str(env_dir / "bin" / "meshpilot"), "simulate", "steady-80", "--policy", "ppo", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["scenario"] == "steady-80" and result["policy"] == "ppo"
    assert 0.0 <= result["bad_fraction"] <= 1.0
    assert result["requests"] > 0


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return json.loads(response.read())


def test_the_base_install_serves_the_sim_mesh(env_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    token_file = tmp_path / "api-token"
    cmd = [str(env_dir / "bin" / "meshpilot"), "serve", "--mesh", "sim", "--port", str(port)]
    cmd += ["--tick-s", "0.5", "--speed", "10", "--token-file", str(token_file)]
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd, cwd=elsewhere, env=outside_env(tmp_path), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        ready: Any = None
        decisions: Any = []
        while time.monotonic() < deadline and not decisions:
            assert proc.poll() is None, f"serve exited {proc.returncode}:\n{log_path.read_text()}"
            try:
                ready = get_json(port, "/readyz")
                decisions = get_json(port, "/decisions?limit=5") if ready["ready"] else []
            except OSError:  # not listening yet, or 503 until the first tick
                pass
            time.sleep(0.3)
        assert decisions, f"no decision in 180 s:\n{log_path.read_text()}"
        routes = get_json(port, "/routes")
        assert {d["route"] for d in decisions} <= {r["key"] for r in routes}
        assert len(routes) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()
    assert (tmp_path / "data" / "meshpilot" / "decisions.db").is_file()
    assert list(elsewhere.iterdir()) == []

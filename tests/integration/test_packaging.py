"""What `pip install .` ships: a wheel that runs on its own, outside the repository.

Cases: the wheel holds the scenario suite and the shipped model as package data, and none of
the tests; in a clean virtual environment with only the wheel and its declared dependencies,
`meshpilot simulate steady-80 --policy ppo` runs from a directory that is not the repository,
finds the suite by name and serves the shipped model without torch (the base install has none).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)],
        check=True,
        timeout=600,
    )
    (built,) = out.glob("meshpilot-*.whl")
    return built


def test_the_wheel_ships_the_suite_and_the_model_but_no_tests(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    suite = {n for n in names if n.startswith("envs/scenarios/") and n.endswith(".yaml")}
    assert {Path(n).stem for n in suite} >= {"steady-80", "degraded-canary", "latency-spike"}
    assert "agents/models/default.npz" in names
    for package in ("meshpilot", "controller", "agents", "envs", "meshcore"):
        assert f"{package}/__init__.py" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_an_installed_wheel_simulates_a_suite_scenario_with_the_shipped_model(
    wheel: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip = env_dir / "bin" / "pip"
    subprocess.run(
        [str(pip), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=1200,
    )
    no_torch = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import torch"], check=False)
    assert no_torch.returncode != 0, "the base install must not pull torch"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
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

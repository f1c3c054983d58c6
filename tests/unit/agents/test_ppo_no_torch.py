"""Serving a PPO policy never imports torch or stable-baselines3.

Cases (each in a fresh interpreter where importing torch / stable_baselines3 raises):
- agents.policy_file loads an exported file and decides weights, and so does the shipped
  default policy;
- the `meshpilot` CLI parser (which includes `train`) builds and prints help.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from agents.obs_extensions import extension_size
from agents.policy_file import save_npz
from meshcore.features import FeatureSpec

ROOT = Path(__file__).resolve().parents[3]
BLOCK = "import sys\nsys.modules['torch'] = None\nsys.modules['stable_baselines3'] = None\n"


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _random_policy_file(path: Path) -> Path:
    spec = FeatureSpec()
    n_in = spec.obs_size + extension_size(spec)
    rng = np.random.default_rng(0)
    layers = [
        (rng.normal(size=(16, n_in)), rng.normal(size=16)),
        (rng.normal(size=(spec.max_subsets, 16)), rng.normal(size=spec.max_subsets)),
    ]
    return save_npz(
        path,
        spec=spec,
        layers=layers,
        obs_mean=np.zeros(n_in),
        obs_var=np.ones(n_in),
        clip_obs=10.0,
        eps=1e-8,
    )


def test_blocking_really_blocks_torch():
    proc = _run("import torch\n")
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr


def test_policy_loads_and_decides_without_torch(tmp_path):
    path = _random_policy_file(tmp_path / "p.npz")
    proc = _run(
        f"""
        from agents.policy_file import load_ppo_policy
        from meshcore.model import Weights
        from envs.simulator.engine import MeshSimulator
        from envs.simulator.scenario import load_scenario
        policy = load_ppo_policy({str(path)!r})
        sim = MeshSimulator(load_scenario("steady-80"), seed=0)
        for _ in range(3):
            w = policy.decide(sim.observe())
            sim.step(w)
        assert isinstance(w, Weights), w
        assert len(policy.last_raw_action) == 8
        print("OK", dict(w))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK")


def test_cli_parser_with_train_builds_without_torch():
    proc = _run(
        """
        from meshpilot.cli import main
        try:
            main(["train", "--help"])
        except SystemExit as exit:
            assert exit.code == 0
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "--total-steps" in proc.stdout


def test_shipped_policy_decides_without_torch():
    """The shipped default (an ensemble with trend memory) is what `serve` runs: no torch."""
    proc = _run(
        """
        from agents.policy_file import load_ppo_policy
        from meshcore.model import Weights
        from envs.simulator.engine import MeshSimulator
        from envs.simulator.scenario import load_scenario
        policy = load_ppo_policy(None)
        sim = MeshSimulator(load_scenario("diurnal-bursts"), seed=0)
        for _ in range(5):
            w = policy.decide(sim.observe())
            sim.step(w)
        assert isinstance(w, Weights), w
        print("OK", type(policy).__name__, dict(w))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK")

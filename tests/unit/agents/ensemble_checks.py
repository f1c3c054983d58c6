"""The one property every ensemble file must have, checked the same way wherever one is made."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agents.network import EnsemblePolicy
from agents.policy_file import load_numpy_policy
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import load_scenario
from meshcore.features import FeatureSpec, decode


def assert_decides_members_mean(
    ensemble_file: Path, member_files: Sequence[Path], *, scenario: str, seed: int, ticks: int
) -> None:
    """The ensemble in `ensemble_file` writes, tick after tick of a simulated episode, the
    decode of the mean of its members' actions (each member loaded from its own file)."""
    ensemble = load_numpy_policy(ensemble_file)
    assert isinstance(ensemble, EnsemblePolicy)
    singles = [load_numpy_policy(f) for f in member_files]
    spec = FeatureSpec()
    sim = MeshSimulator(load_scenario(scenario), seed=seed)
    for _ in range(ticks):
        obs = sim.observe()
        mean = np.mean([s.observation_action(obs) for s in singles], axis=0)
        weights = ensemble.decide(obs)
        assert weights == decode(mean, spec.mask(len(obs.subsets)), obs.subsets)
        sim.step(weights)

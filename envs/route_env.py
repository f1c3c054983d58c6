"""What `MeshSim-v0` and `MeshLive-v0` share: one route's last observation, kept as the
contract type behind the vector, and actions decoded to weights over its subsets."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from meshcore.features import FeatureSpec, decode
from meshcore.model import Observation, Weights


class RouteEnv(gym.Env[np.ndarray, np.ndarray]):
    """Base of the envs over one route: subclasses set `spec_features` and `_obs`."""

    spec_features: FeatureSpec
    _obs: Observation | None = None

    @property
    def observation(self) -> Observation:
        """The last `Observation` handed to the agent (the contract type behind the vector)."""
        if self._obs is None:
            raise RuntimeError("call reset() first")
        return self._obs

    def weights_for(self, action: np.ndarray) -> Weights:
        """The split `action` decodes to over the subsets of the last observation."""
        obs = self.observation
        spec = self.spec_features
        return decode(
            action, spec.mask(len(obs.subsets)), obs.subsets, temperature=spec.action_temperature
        )

"""The one place where meshpilot's Gymnasium environments are registered."""

from __future__ import annotations

import gymnasium as gym

ENV_IDS = ("meshpilot/MeshSim-v0",)


def register_envs() -> None:
    """Register every meshpilot env (idempotent)."""
    if "meshpilot/MeshSim-v0" not in gym.registry:
        gym.register(
            id="meshpilot/MeshSim-v0",
            entry_point="envs.mesh_env:MeshEnv",
            disable_env_checker=False,
        )

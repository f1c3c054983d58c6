"""The one place where meshpilot's Gymnasium environments are registered."""

from __future__ import annotations

import gymnasium as gym

SIM_ENV_ID = "meshpilot/MeshSim-v0"
"""The simulated mesh (`envs.mesh_env.MeshEnv`)."""
ENV_IDS = (SIM_ENV_ID,)


def register_envs() -> None:
    """Register every meshpilot env (idempotent)."""
    if SIM_ENV_ID not in gym.registry:
        gym.register(
            id=SIM_ENV_ID,
            entry_point="envs.mesh_env:MeshEnv",
            disable_env_checker=False,
        )

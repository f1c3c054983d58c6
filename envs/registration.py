"""The one place where meshpilot's Gymnasium environments are registered."""

from __future__ import annotations

import gymnasium as gym

SIM_ENV_ID = "meshpilot/MeshSim-v0"
"""The simulated mesh (`envs.mesh_env.MeshEnv`)."""
LIVE_ENV_ID = "meshpilot/MeshLive-v0"
"""A live mesh in real time (`envs.live_env.MeshLiveEnv`); `gym.make` needs its ports:
``gym.make(LIVE_ENV_ID, observer=..., actuator=..., route=..., clock=...)``."""
ENV_IDS = (SIM_ENV_ID,)
"""Envs `gym.make` builds from a scenario alone (the parametrized env tests run each)."""
LIVE_ENV_IDS = (LIVE_ENV_ID,)
"""Envs that step a live mesh through ports given as keyword arguments."""


def register_envs() -> None:
    """Register every meshpilot env (idempotent)."""
    if SIM_ENV_ID not in gym.registry:
        gym.register(
            id=SIM_ENV_ID,
            entry_point="envs.mesh_env:MeshEnv",
            disable_env_checker=False,
        )
    if LIVE_ENV_ID not in gym.registry:
        gym.register(
            id=LIVE_ENV_ID,
            entry_point="envs.live_env:MeshLiveEnv",
            nondeterministic=True,  # a live mesh: the same seed never replays the same traffic
            disable_env_checker=False,
        )

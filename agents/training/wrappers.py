"""The training envs: MeshSim-v0 over a scenario pool, wrapped as the policy will be served.

Why a module of its own: the wrappers are where training must agree with serving (the same
observation extension with the same memory, the same action prior before `decode`), and where
the episode log and the teacher's labels for imitation during PPO (`bc_lr`) come from.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.action_prior import apply_action_prior
from agents.obs_extensions import TrendMemory, extension_low, extension_size
from agents.training.config import TrainConfig
from agents.training.teacher import oracle_target
from envs.registration import SIM_ENV_ID
from envs.simulator.scenario import Scenario, load_scenario
from meshcore.features import FeatureSpec

if TYPE_CHECKING:
    from stable_baselines3.common.vec_env import DummyVecEnv


class PriorActionWrapper(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Adds the action prior (see `agents.action_prior.apply_action_prior`) before the env decodes.

    Serving applies the very same function to the network's output, so the exported policy
    writes the weights it was trained to write. It also copies the scenario name of the episode
    into every step's info, for the episode log.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], spec: FeatureSpec):
        super().__init__(env)
        self._spec = spec
        self._obs: np.ndarray | None = None
        self._scenario = ""

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        self._scenario = str(info.get("scenario", ""))
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        full = apply_action_prior(action, self._obs, self._spec).astype(np.float32)
        obs, r, terminated, truncated, info = self.env.step(full)
        self._obs = obs
        info["scenario"] = self._scenario
        return obs, float(r), terminated, truncated, info


def permuted(scenario: Scenario, order: Sequence[int]) -> Scenario:
    """`scenario` with its subsets listed in `order` (same mesh, other observation slots)."""
    subsets = [scenario.subsets[i].model_dump() for i in order]
    return scenario.with_changes(subsets=subsets)


def scenario_pool(config: TrainConfig, rank: int) -> list[Scenario]:
    """The scenarios env `rank` draws from: the set, plus `permute_subsets` reorderings each."""
    base = [load_scenario(p) for p in config.scenario_paths()]
    rng = np.random.default_rng([config.seed, rank])
    pool = list(base)
    for sc in base:
        if len(sc.subsets) < 2:
            continue
        for _ in range(config.permute_subsets):
            pool.append(permuted(sc, [int(i) for i in rng.permutation(len(sc.subsets))]))
    return pool


class ExtendObservation(gym.ObservationWrapper[np.ndarray, np.ndarray, np.ndarray]):
    """Appends `agents.obs_extensions.extend_observation`'s inputs, as serving does (with the
    same `TrendMemory`, cleared at every reset like a policy's)."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], spec: FeatureSpec):
        super().__init__(env)
        self._spec = spec
        self._memory = TrendMemory()
        size = spec.obs_size + extension_size(spec)
        low = extension_low(spec)
        self.observation_space = gym.spaces.Box(low, spec.p99_clip, (size,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._memory.clear()
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        obs = self.env.unwrapped.observation  # type: ignore[attr-defined]
        return self._memory.extend(observation, obs, self._spec)


class OracleLabel(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Puts the teacher's target for the state an action was taken in into that step's info
    (``oracle_target``, ``oracle_mask``), for the imitation steps during PPO (`bc_lr`)."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], config: TrainConfig):
        super().__init__(env)
        self._config = config
        self._obs: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs = obs
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        target, mask = oracle_target(self.env, self._obs, self._config)
        obs, r, terminated, truncated, info = self.env.step(action)
        self._obs = obs
        info["oracle_target"] = target
        info["oracle_mask"] = mask
        return obs, float(r), terminated, truncated, info


def make_env(config: TrainConfig, rank: int = 0) -> gym.Env[np.ndarray, np.ndarray]:
    """One training env: MeshSim-v0 over the scenario pool, the observation extension, the
    action prior, the teacher's labels (when `bc_lr` > 0) and the episode Monitor."""
    from stable_baselines3.common.monitor import Monitor

    scenarios = scenario_pool(config, rank)
    env = gym.make(
        SIM_ENV_ID,
        scenarios=scenarios,
        randomize=config.randomization(),
        spec=config.feature_spec,
        max_steps=config.episode_steps,
        churn_cost=config.churn_cost,
    )
    env = ExtendObservation(env, config.feature_spec)
    env = PriorActionWrapper(env, config.feature_spec)
    if config.bc_lr > 0:
        env = OracleLabel(env, config)
    return Monitor(env, info_keywords=("scenario",))  # logs the unscaled reward


def make_vec_env(config: TrainConfig) -> DummyVecEnv:
    """`n_envs` envs in one process (DummyVecEnv: no subprocesses; an ensemble's members use
    the other cores)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv([functools.partial(make_env, config, rank) for rank in range(config.n_envs)])
    vec.seed(config.seed)
    return vec

"""The training envs: MeshSim-v0 over a scenario pool, or MeshLive-v0 over the routes of a
live mesh, wrapped as the policy will be served.

Why a module of its own: the wrappers are where training must agree with serving (the same
observation extension with the same memory, the same canonical slot order, the same action
prior before `decode`), and where the episode log and the teacher's labels for imitation
during PPO (`bc_lr`) come from. A live mesh comes in as its ports (`LiveMesh`), built by the
command line: training never imports the controller's adapters or the lab.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from agents.action_prior import apply_action_prior
from agents.obs_extensions import TrendMemory, extension_low, extension_size
from agents.slot_order import SortedSlots, sort_slots
from agents.training.config import TrainConfig
from agents.training.teacher import oracle_target
from envs.registration import LIVE_ENV_ID, SIM_ENV_ID
from envs.simulator.scenario import Scenario
from meshcore.features import FeatureSpec
from meshcore.model import Observation, RouteRef, Weights
from meshcore.ports import Actuator, Clock, Observer

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
        self._scenario = str(info.get("scenario", info.get("route", "")))
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        full = apply_action_prior(action, self._obs, self._spec).astype(np.float32)
        obs, r, terminated, truncated, info = self.env.step(full)
        self._obs = obs
        info["scenario"] = self._scenario
        return obs, float(r), terminated, truncated, info


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


class CanonicalSlots(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Hands the policy the extended observation in canonical slot order and the env the
    action back in the route's own order (`agents.slot_order`), as serving does.

    `slot_order` is the order of the last observation (position -> the route's slot), which
    the teacher needs to put its labels in the network's order.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], spec: FeatureSpec):
        super().__init__(env)
        self._spec = spec
        self._slots: SortedSlots | None = None

    @property
    def slot_order(self) -> np.ndarray:
        """Position -> the route's slot, for the last observation (identity before any)."""
        if self._slots is None:
            return np.arange(self._spec.max_subsets)
        return self._slots.orders[0]

    def _sorted(self, obs: np.ndarray) -> np.ndarray:
        self._slots = sort_slots(np.asarray(obs)[None, :], self._spec)
        return self._slots.vectors[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._sorted(obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._slots is None:
            raise RuntimeError("call reset() before step()")
        own = self._slots.original_actions(np.asarray(action, dtype=np.float64)[None, :])[0]
        obs, r, terminated, truncated, info = self.env.step(own.astype(np.float32))
        return self._sorted(obs), float(r), terminated, truncated, info


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


def make_env(
    config: TrainConfig, base: Sequence[Scenario] | None = None
) -> gym.Env[np.ndarray, np.ndarray]:
    """One training env: MeshSim-v0 over the scenario set, the observation extension, the
    canonical slot order, the action prior, the teacher's labels (when `bc_lr` > 0) and the
    episode Monitor.

    `base` is the config's scenario set when the caller has loaded it already (None: load it).
    """
    from stable_baselines3.common.monitor import Monitor

    if base is None:
        base = config.load_scenarios()
    env = gym.make(
        SIM_ENV_ID,
        scenarios=list(base),
        randomize=config.randomization(),
        spec=config.feature_spec,
        max_steps=config.episode_steps,
        churn_cost=config.churn_cost,
    )
    env = ExtendObservation(env, config.feature_spec)
    env = CanonicalSlots(env, config.feature_spec)
    env = PriorActionWrapper(env, config.feature_spec)
    if config.bc_lr > 0:
        env = OracleLabel(env, config)
    return Monitor(env, info_keywords=("scenario",))  # logs the unscaled reward


def make_vec_env(config: TrainConfig, base: Sequence[Scenario] | None = None) -> DummyVecEnv:
    """`n_envs` envs in one process (DummyVecEnv: no subprocesses; an ensemble's members use
    the other cores), over the scenario set `base` (None: the config's, loaded here)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    if base is None:
        base = config.load_scenarios()  # once for all envs, not once per env
    vec = DummyVecEnv([functools.partial(make_env, config, base) for _ in range(config.n_envs)])
    vec.seed(config.seed)
    return vec


@dataclass(frozen=True)
class LiveMesh:
    """The ports of a live mesh to train on, one MeshLive-v0 env per route.

    observer, actuator, clock: the mesh's ports (the command line builds them, e.g. from the
    running lab); routes: the routes to train on; step_s: control interval (s); slo_ms: latency
    bound of a bad request in the reward (ms).
    """

    observer: Observer
    actuator: Actuator
    clock: Clock
    routes: tuple[RouteRef, ...]
    step_s: float = 5.0
    slo_ms: float = 250.0


class _SerializedPorts:
    """Observer and actuator calls of several envs one at a time (the lab's actuator rewrites
    one routes file for every route), while their clocks sleep in parallel."""

    def __init__(self, observer: Observer, actuator: Actuator) -> None:
        self._observer = observer
        self._actuator = actuator
        self._lock = threading.Lock()

    def observe(self, routes: Sequence[RouteRef]) -> dict[RouteRef, Observation]:
        with self._lock:
            return dict(self._observer.observe(routes))

    def current(self, route: RouteRef) -> Weights:
        with self._lock:
            return self._actuator.current(route)

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        with self._lock:
            return self._actuator.apply(route, weights)


def make_live_env(
    config: TrainConfig, live: LiveMesh, rank: int, ports: _SerializedPorts
) -> gym.Env[np.ndarray, np.ndarray]:
    """MeshLive-v0 on route `rank` of `live`, with the observation extension, the canonical
    slot order, the action prior and the episode Monitor (episodes are logged under the
    route's key)."""
    from stable_baselines3.common.monitor import Monitor

    kwargs: dict[str, Any] = {}
    if config.episode_steps is not None:
        kwargs["max_steps"] = config.episode_steps
    env = gym.make(
        LIVE_ENV_ID,
        observer=ports,
        actuator=ports,
        route=live.routes[rank],
        clock=live.clock,
        step_s=live.step_s,
        slo_ms=live.slo_ms,
        spec=config.feature_spec,
        churn_cost=config.churn_cost,
        **kwargs,
    )
    env = ExtendObservation(env, config.feature_spec)
    env = CanonicalSlots(env, config.feature_spec)
    env = PriorActionWrapper(env, config.feature_spec)
    return Monitor(env, info_keywords=("scenario",))


def make_live_vec_env(config: TrainConfig, live: LiveMesh) -> DummyVecEnv:
    """One env per route of `live`, stepped together: their steps run in threads, so every
    route's control interval passes at once instead of one after another."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    class ConcurrentVecEnv(DummyVecEnv):
        """DummyVecEnv whose envs step in parallel threads (they mostly sleep on the clock)."""

        def step_wait(self) -> Any:
            def one(i: int) -> tuple[Any, ...]:
                obs, r, terminated, truncated, info = self.envs[i].step(self.actions[i])
                reset_info: dict[str, Any] | None = None
                if terminated or truncated:
                    info["terminal_observation"] = obs
                    obs, reset_info = self.envs[i].reset()
                return obs, r, terminated, truncated, info, reset_info

            with ThreadPoolExecutor(max_workers=self.num_envs) as pool:
                results = list(pool.map(one, range(self.num_envs)))
            for i, (obs, r, terminated, truncated, info, reset_info) in enumerate(results):
                self.buf_rews[i] = r
                self.buf_dones[i] = terminated or truncated
                info["TimeLimit.truncated"] = truncated and not terminated
                self.buf_infos[i] = info
                if reset_info is not None:
                    self.reset_infos[i] = reset_info
                self._save_obs(i, obs)
            return (
                self._obs_from_buf(),
                np.copy(self.buf_rews),
                np.copy(self.buf_dones),
                deepcopy(self.buf_infos),
            )

    if not live.routes:
        raise ValueError("a live mesh to train on needs at least one route")
    ports = _SerializedPorts(live.observer, live.actuator)
    factories: list[Callable[[], gym.Env[Any, Any]]] = [
        functools.partial(make_live_env, config, live, rank, ports)
        for rank in range(len(live.routes))
    ]
    vec = ConcurrentVecEnv(factories)
    vec.seed(config.seed)
    return vec

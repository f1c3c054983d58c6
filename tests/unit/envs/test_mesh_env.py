"""Every registered meshpilot env, the Gymnasium way (cf. gymnasium tests/envs/test_envs.py).

Cases: check_env passes; same seed => identical trajectories; different seeds differ;
pickling keeps working; spaces come from the FeatureSpec; the episode ends at the scenario
duration; the env steps through the ports (SimulatedMesh) and reports the weights it wrote.
"""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.mesh_env import MeshEnv
from envs.simulator.scenario import load_scenario
from meshcore import FeatureSpec, decode

SHORT = load_scenario("degraded-canary").with_changes(duration_s=200)


def _rollout(env: gym.Env, seed: int, steps: int = 30) -> list[tuple[np.ndarray, float]]:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    out = [(obs, 0.0)]
    for _ in range(steps):
        obs, r, term, trunc, _ = env.step(env.action_space.sample())
        out.append((obs, r))
        if term or trunc:
            obs, _ = env.reset()
    return out


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_check_env_passes(env_id: str) -> None:
    env = gym.make(env_id, scenario=SHORT)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_same_seed_same_trajectory_other_seed_differs(env_id: str) -> None:
    kwargs = {"randomize": True, "max_steps": 25}
    a = _rollout(gym.make(env_id, **kwargs), seed=11)
    b = _rollout(gym.make(env_id, **kwargs), seed=11)
    c = _rollout(gym.make(env_id, **kwargs), seed=12)
    assert all(np.array_equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_env_pickles(env_id: str) -> None:
    env = gym.make(env_id, scenario=SHORT)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    clone = pickle.loads(pickle.dumps(env))
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    o1 = env.step(action)
    o2 = clone.step(action)
    assert np.array_equal(o1[0], o2[0]) and o1[1] == o2[1]


def test_spaces_come_from_the_feature_spec() -> None:
    spec = FeatureSpec(max_subsets=4)
    env = MeshEnv(scenario=SHORT, spec=spec)
    assert env.observation_space == spec.observation_space()
    assert env.action_space == spec.action_space()
    with pytest.raises(ValueError, match="at most 4"):
        MeshEnv(scenario="many-subsets", spec=spec)


def test_episode_lasts_the_scenario_duration_and_writes_valid_weights() -> None:
    env = MeshEnv(scenario=SHORT)
    env.reset(seed=1)
    steps, trunc = 0, False
    while not trunc:
        action = env.action_space.sample()
        subsets = env.observation.subsets
        spec = env.spec_features
        written = decode(
            action, spec.mask(len(subsets)), subsets, temperature=spec.action_temperature
        )
        _, reward, term, trunc, info = env.step(action)
        steps += 1
        assert not term and reward <= 0
        assert info["weights"] == written.as_dict()  # the action, decoded, is what was written
        assert env.sim is not None and env.sim.weights.as_dict() == info["weights"]
    assert steps == SHORT.n_steps == 40


def test_sending_all_traffic_to_the_failing_canary_is_punished() -> None:
    sc = SHORT.with_changes(events=[{"at_s": 0, "subset": "canary", "set": {"error_rate": 0.5}}])
    env = MeshEnv(scenario=sc)
    env.reset(seed=0)
    to_canary = np.array([-1, 1, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    to_stable = -to_canary
    bad = [env.step(to_canary)[1] for _ in range(5)]
    good = [env.step(to_stable)[1] for _ in range(5)]
    assert np.mean(bad[1:]) < -0.3 < np.mean(good[1:])

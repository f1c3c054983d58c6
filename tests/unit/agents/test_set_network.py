"""The set actor (agents.set_network, agents.training.set_policy).

Cases:
- `slot_layout` names every position of the extended vector exactly once, for 1..8 slots;
- `tie_statistics` gives each slot input the mean and variance of that input pooled over all
  slots (a closed form: the statistics of the stacked samples), route inputs untouched;
- the permutation property on random observations: reordering a route's versions (names,
  telemetry, weights and capacity hints together) reorders the action the same way, from a
  fresh memory and after ticks with trend memory, for 2..8 versions, for a random set actor;
  the flat MLP has no such property (the same check fails);
- a policy file holding a set actor round-trips (same actions) and names its architecture;
  a file naming an unknown architecture, or set layers of the wrong shapes, is refused;
- SB3 parity: the torch twin (`SetActorCriticPolicy`) with random weights and a tied
  normalizer gives the numpy actor's actions; its normalizer stays tied while it updates;
- `--init` refuses a file of the other architecture or other encoder widths before any work,
  and a set file initialises a fresh set model so that it exports the same actions.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import envs  # noqa: F401
from agents.network import NumpyPolicy
from agents.obs_extensions import SLOT_INPUTS, extension_size, slot_layout
from agents.policy_file import load_numpy_policy, save_npz
from agents.set_network import set_input_width, tie_statistics
from agents.training.artifacts import export_npz
from agents.training.init_from import check_init, init_from_npz
from agents.training.set_policy import SetActorCriticPolicy, TiedRunningMeanStd
from agents.training.wrappers import ExtendObservation
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec
from meshcore.model import Observation
from tests.unit.agents.test_batch_decisions import random_observation

torch.set_num_threads(1)

SPEC = FeatureSpec()
N_IN = SPEC.obs_size + extension_size(SPEC)


def _random_layers(seed: int, widths: tuple[int, ...] = (16, 12)) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    shapes = [set_input_width(SPEC), *widths]
    layers = [
        (rng.normal(0, 0.5, (b, a)), rng.normal(0, 0.3, b)) for a, b in itertools.pairwise(shapes)
    ]
    layers.append(
        (rng.normal(0, 0.5, (widths[-1], 2 * widths[-1])), rng.normal(0, 0.3, widths[-1]))
    )
    layers.append((rng.normal(0, 0.5, (1, widths[-1])), rng.normal(0, 0.3, 1)))
    return layers


def _random_stats(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tie_statistics(rng.uniform(0, 1, N_IN), rng.uniform(0.05, 2, N_IN), SPEC)


def _set_policy(seed: int) -> NumpyPolicy:
    mean, var = _random_stats(seed + 1)
    return NumpyPolicy(
        spec=SPEC,
        layers=_random_layers(seed),  # type: ignore[arg-type]
        obs_mean=mean,
        obs_var=var,
        clip_obs=10.0,
        eps=1e-8,
        architecture="set",
    )


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_slot_layout_names_every_position_once(k):
    spec = FeatureSpec(max_subsets=k)
    slots, route = slot_layout(spec)
    assert slots.shape == (k, SLOT_INPUTS)
    every = np.concatenate([slots.ravel(), route])
    assert sorted(every.tolist()) == list(range(spec.obs_size + extension_size(spec)))


def test_tied_statistics_are_those_of_the_pooled_slot_samples():
    rng = np.random.default_rng(5)
    samples = rng.normal(rng.uniform(-2, 2, N_IN), rng.uniform(0.1, 3, N_IN), (400, N_IN))
    mean, var = tie_statistics(samples.mean(axis=0), samples.var(axis=0), SPEC)
    slots, route = slot_layout(SPEC)
    for f in range(SLOT_INPUTS):
        pooled = samples[:, slots[:, f]].ravel()
        assert np.allclose(mean[slots[:, f]], pooled.mean())
        assert np.allclose(var[slots[:, f]], pooled.var())
    assert np.allclose(mean[route], samples[:, route].mean(axis=0))
    assert np.allclose(var[route], samples[:, route].var(axis=0))


def _permuted(obs: Observation, order: list[int]) -> Observation:
    caps = tuple(obs.capacity_hint_rps[i] for i in order) if obs.capacity_hint_rps else ()
    return dataclasses.replace(
        obs,
        subsets=tuple(obs.subsets[i] for i in order),
        stats=tuple(obs.stats[i] for i in order),
        capacity_hint_rps=caps,
    )


def _actions_over_ticks(policy: NumpyPolicy, ticks: list[Observation]) -> np.ndarray:
    policy.reset()
    return np.array([policy.observation_action(obs) for obs in ticks])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 8), ticks=st.integers(1, 4))
def test_reordering_the_versions_reorders_the_action(seed, n, ticks):
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(n)]
    route = [random_observation(rng, 0, 5.0 * t, n) for t in range(ticks)]
    policy = _set_policy(seed % 1000)

    plain = _actions_over_ticks(policy, route)
    reordered = _actions_over_ticks(policy, [_permuted(obs, order) for obs in route])

    assert np.allclose(reordered[:, :n], plain[:, order], atol=1e-9)
    assert np.allclose(reordered[:, n:], plain[:, n:], atol=1e-9)


def test_the_flat_mlp_fails_the_same_check():
    rng = np.random.default_rng(0)
    mean, var = _random_stats(2)
    mlp = NumpyPolicy(
        spec=SPEC,
        layers=[
            (rng.normal(0, 0.5, (16, N_IN)), rng.normal(0, 0.3, 16)),
            (rng.normal(0, 0.5, (SPEC.max_subsets, 16)), rng.normal(0, 0.3, SPEC.max_subsets)),
        ],
        obs_mean=mean,
        obs_var=var,
        clip_obs=10.0,
        eps=1e-8,
    )
    route = [random_observation(rng, 0, 0.0, 4) for _ in range(10)]
    order = [2, 0, 3, 1]
    plain = np.array([mlp.observation_action(obs) for obs in route])
    reordered = np.array([mlp.observation_action(_permuted(obs, order)) for obs in route])
    assert not np.allclose(reordered[:, :4], plain[:, order], atol=1e-3)


def test_a_set_actor_file_round_trips_and_names_its_architecture(tmp_path: Path):
    arrays = {
        "spec": SPEC,
        "layers": _random_layers(3),
        "obs_mean": _random_stats(4)[0],
        "obs_var": _random_stats(4)[1],
        "clip_obs": 10.0,
        "eps": 1e-8,
        "architecture": "set",
    }
    loaded = load_numpy_policy(save_npz(tmp_path / "set.npz", **arrays))  # type: ignore[arg-type]
    assert isinstance(loaded, NumpyPolicy) and loaded.architecture == "set"
    x = np.random.default_rng(1).uniform(0, 2, (30, N_IN))
    same = NumpyPolicy(**arrays)  # type: ignore[arg-type]
    assert np.allclose(loaded.predict(x), same.predict(x), atol=1e-5)
    assert loaded.predict(x).shape == (30, SPEC.max_subsets)


def test_unknown_architectures_and_wrong_set_shapes_are_refused(tmp_path: Path):
    mean, var = _random_stats(4)
    common = {"spec": SPEC, "obs_mean": mean, "obs_var": var, "clip_obs": 10.0, "eps": 1e-8}
    bad = save_npz(tmp_path / "bad.npz", layers=_random_layers(3), architecture="graph", **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown network architecture 'graph'"):
        load_numpy_policy(bad)
    layers = _random_layers(3)
    layers[-2] = (np.zeros((12, 12)), np.zeros(12))  # the head must read [h_i, context]
    wrong = save_npz(tmp_path / "wrong.npz", layers=layers, architecture="set", **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="set layer 2 has shape"):
        load_numpy_policy(wrong)
    mlp_as_set = save_npz(
        tmp_path / "mlp.npz",
        layers=[(np.zeros((8, N_IN)), np.zeros(8))],
        architecture="set",
        **common,  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match="a set actor has encoder layers"):
        load_numpy_policy(mlp_as_set)


def _set_model(seed: int) -> tuple[PPO, VecNormalize]:
    def make() -> gym.Env:
        return ExtendObservation(gym.make("meshpilot/MeshSim-v0", scenario="steady-80"), SPEC)

    vecnorm = VecNormalize(DummyVecEnv([make]), norm_obs=True, clip_obs=5.0)
    vecnorm.obs_rms = TiedRunningMeanStd(SPEC.to_dict(), (N_IN,))
    model = PPO(
        SetActorCriticPolicy,
        vecnorm,
        n_steps=16,
        batch_size=16,
        seed=seed,
        device="cpu",
        policy_kwargs={
            "net_arch": {"pi": [16, 16], "vf": [8]},
            "activation_fn": torch.nn.Tanh,
            "feature_spec": SPEC.to_dict(),
        },
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    mean, var = _random_stats(seed)
    vecnorm.obs_rms.mean, vecnorm.obs_rms.var = mean, var
    return model, vecnorm


def test_the_torch_twin_and_the_numpy_actor_agree(tmp_path: Path):
    model, vecnorm = _set_model(seed=2)
    policy = load_numpy_policy(export_npz(model, vecnorm, SPEC, tmp_path / "p.npz"))
    obs = np.random.default_rng(3).uniform(-1, 3, (300, N_IN)).astype(np.float32)

    expected, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    got = policy.predict(obs)

    assert isinstance(policy, NumpyPolicy) and policy.architecture == "set"
    assert np.max(np.abs(got - expected)) < 1e-5
    assert np.std(expected) > 0.1


def test_the_training_normalizer_stays_tied_while_it_learns():
    model, vecnorm = _set_model(seed=4)
    model.learn(total_timesteps=32)
    slots, _ = slot_layout(SPEC)
    rms = vecnorm.obs_rms
    assert np.ptp(rms.mean[slots], axis=0).max() == 0.0
    assert np.ptp(rms.var[slots], axis=0).max() == 0.0
    assert rms.count > 32


def test_init_refuses_a_file_of_the_other_architecture(tmp_path: Path):
    mean, var = _random_stats(5)
    mlp = save_npz(
        tmp_path / "mlp.npz",
        spec=SPEC,
        layers=[(np.zeros((16, N_IN)), np.zeros(16)), (np.zeros((8, 16)), np.zeros(8))],
        obs_mean=mean,
        obs_var=var,
        clip_obs=10.0,
        eps=1e-8,
    )
    with pytest.raises(ConfigError, match="holds a mlp network, this run builds a set one"):
        check_init(mlp, SPEC, (16,), "set")
    model, vecnorm = _set_model(seed=6)
    path = export_npz(model, vecnorm, SPEC, tmp_path / "set.npz")
    with pytest.raises(ConfigError, match="holds a set network, this run builds a mlp one"):
        check_init(path, SPEC, (16, 16), "mlp")
    with pytest.raises(ConfigError, match=r"hidden layers \[16, 16\], this run builds \[32\]"):
        check_init(path, SPEC, (32,), "set")
    check_init(path, SPEC, (16, 16), "set")


def test_a_set_file_initialises_a_fresh_set_model_exactly(tmp_path: Path):
    source, source_norm = _set_model(seed=7)
    path = export_npz(source, source_norm, SPEC, tmp_path / "set.npz")
    fresh, fresh_norm = _set_model(seed=8)
    init_from_npz(fresh, fresh_norm, path, SPEC)
    again = load_numpy_policy(export_npz(fresh, fresh_norm, SPEC, tmp_path / "again.npz"))
    x = np.random.default_rng(9).uniform(0, 2, (50, N_IN))
    assert np.array_equal(again.predict(x), load_numpy_policy(path).predict(x))

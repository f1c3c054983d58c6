"""The numpy serving path of PPO policies (agents.network, agents.policy_file,
agents.obs_extensions, agents.action_prior).

Cases:
- the numpy actor reproduces SB3's deterministic ``predict`` (max abs diff < 1e-5) on many
  observations, random and real, through VecNormalize, for tanh and relu networks;
- `decide` writes the weights the training env would have written (encode -> normalize ->
  MLP -> action prior -> decode) and records the raw action;
- a file whose stored feature-spec hash disagrees with its own spec, or with the caller's, is
  refused with both hashes in the message;
- files are loaded with allow_pickle=False: a pickled array is refused and never unpickled;
- missing, truncated, non-zip files and missing arrays are ConfigErrors;
- the shipped default model loads, is small, and decides valid weights on the whole suite;
- the "utilization-trend" extension is the change of each input since the route's last tick
  (0 without one, where a slot had no data, or after the subsets changed), the training
  wrapper and a serving policy feed the network the same vectors, and reset forgets the past;
- "utilization-trend-ema2-recent" is "utilization-trend-ema2" with each slot's newest-interval
  p99/slo and slow ratio (0 where unknown) between the trend inputs and the averages;
- an ensemble file (`save_ensemble_npz`) loads as an `EnsemblePolicy` whose split is the
  decode of its members' mean action, flattens ensembles it is given, survives reset, and
  refuses one member, members on other feature specs and a member whose arrays are missing;
- the "sqrt" action prior with zero correction writes exactly what the sqrt baseline writes,
  and falls back to the capacity prior without the utilization input;
- the action gain's correction shape maps [-1, 1] onto itself, increasing, with slope `gain`
  at 0, and its inverse undoes it (hypothesis); the gain travels in the file (absent: 1), and
  a gain outside (0, 1] is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import envs  # noqa: F401
from agents.action_prior import (
    apply_action_prior,
    corrected_action,
    hold_prior,
    shape_correction,
    unshape_correction,
)
from agents.network import EnsemblePolicy
from agents.obs_extensions import (
    EMA_ALPHAS,
    TrendMemory,
    extend_observation,
    extension_low,
    extension_size,
)
from agents.policy_file import DEFAULT_MODEL, load_numpy_policy, load_ppo_policy, save_ensemble_npz
from agents.training.artifacts import export_npz
from agents.training.wrappers import ExtendObservation
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import load_scenario, suite_paths
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec, decode, encode
from meshcore.model import Observation, RouteRef, SubsetStats, Weights

torch.set_num_threads(1)


def _tiny_model(
    activation: str, arch: list[int], seed: int, extension: str = "none"
) -> tuple[PPO, VecNormalize]:
    """An untrained PPO whose actor weights and normalizer statistics are made non-trivial."""

    def make() -> gym.Env:
        env = gym.make("meshpilot/MeshSim-v0", scenario="steady-80")
        return ExtendObservation(env, FeatureSpec(), extension) if extension != "none" else env

    venv = DummyVecEnv([make])
    vecnorm = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=5.0)
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[activation]
    model = PPO(
        "MlpPolicy",
        vecnorm,
        n_steps=16,
        batch_size=16,
        seed=seed,
        device="cpu",
        policy_kwargs={"net_arch": {"pi": arch, "vf": [8]}, "activation_fn": act},
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    rng = np.random.default_rng(seed)
    size = FeatureSpec().obs_size + extension_size(FeatureSpec(), extension)
    rms = vecnorm.obs_rms
    assert not isinstance(rms, dict)
    rms.mean = rng.uniform(0.0, 1.0, size)
    rms.var = rng.uniform(0.01, 2.0, size)
    return model, vecnorm


def _observations(n_random: int, seed: int) -> np.ndarray:
    """Random points of the observation box plus encoded observations of real episodes."""
    spec = FeatureSpec()
    rng = np.random.default_rng(seed)
    rand = rng.uniform(0.0, 2.0, (n_random, spec.obs_size)).astype(np.float32)
    real = []
    for path in suite_paths():
        sim = MeshSimulator(load_scenario(path), seed=seed)
        for _ in range(5):
            sim.step(sim.weights)
            real.append(encode(sim.observe(), spec))
    return np.concatenate([rand, np.asarray(real, dtype=np.float32)])


@pytest.mark.parametrize(("activation", "arch"), [("tanh", [64, 64]), ("relu", [32])])
def test_numpy_actor_matches_sb3_deterministic_predict(tmp_path, activation, arch):
    model, vecnorm = _tiny_model(activation, arch, seed=3)
    path = export_npz(model, vecnorm, FeatureSpec(), tmp_path / "p.npz")
    policy = load_numpy_policy(path)
    obs = _observations(500, seed=4)

    expected, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    got = policy.predict(obs)

    assert got.shape == expected.shape == (len(obs), 8)
    assert np.max(np.abs(got - expected)) < 1e-5
    # the test is only meaningful if the outputs vary and some saturate at the bounds
    assert np.std(expected) > 0.1
    assert np.any(np.abs(expected) >= 1.0)


@pytest.mark.parametrize(
    ("prior", "extension", "gain"),
    [
        ("capacity", "none", 1.0),
        ("hold", "utilization", 1.0),
        ("none", "none", 1.0),
        ("sqrt", "utilization", 1.0),
        ("sqrt", "utilization", 0.25),
        ("sqrt", "utilization-trend", 1.0),
    ],
)
def test_decide_writes_the_weights_the_training_env_would(tmp_path, prior, extension, gain):
    model, vecnorm = _tiny_model("tanh", [16, 16], seed=5, extension=extension)
    spec = FeatureSpec()
    path = export_npz(
        model,
        vecnorm,
        spec,
        tmp_path / "p.npz",
        action_prior=prior,
        obs_extension=extension,
        action_gain=gain,
    )
    policy = load_numpy_policy(path)
    assert policy.name == "ppo"
    assert policy.action_gain == gain
    memory = TrendMemory()
    for scenario_path in suite_paths():
        sim = MeshSimulator(load_scenario(scenario_path), seed=1)
        for _ in range(3):
            obs = sim.observe()
            vec = memory.extend(encode(obs, spec), obs, spec, extension)
            sb3_action, _ = model.predict(vecnorm.normalize_obs(vec[None]), deterministic=True)
            full = apply_action_prior(sb3_action[0], vec, spec, prior, gain)
            expected = decode(full, spec.mask(len(obs.subsets)), obs.subsets)
            weights = policy.decide(obs)
            assert weights == expected
            assert len(policy.last_raw_action) == spec.max_subsets
            assert np.allclose(policy.last_raw_action, full, atol=1e-5)
            sim.step(weights)
    policy.reset()
    assert policy.last_raw_action == []


def _rewrite(src: Path, dst: Path, **changes: object) -> Path:
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value  # type: ignore[assignment]
    with dst.open("wb") as fh:
        np.savez(fh, **arrays)
    return dst


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    model, vecnorm = _tiny_model("tanh", [8], seed=6)
    return export_npz(model, vecnorm, FeatureSpec(), tmp_path_factory.mktemp("m") / "p.npz")


def test_file_whose_hash_does_not_match_its_spec_is_refused(exported, tmp_path):
    other = FeatureSpec(max_subsets=8, slo_ms=500.0)
    bad = _rewrite(
        exported, tmp_path / "bad.npz", spec_json=np.asarray(json.dumps(other.to_dict()))
    )
    with pytest.raises(ConfigError) as err:
        load_numpy_policy(bad)
    assert FeatureSpec().hash in str(err.value)
    assert other.hash in str(err.value)


def test_model_for_another_feature_spec_is_refused_naming_both_hashes(exported):
    expected = FeatureSpec(slo_ms=100.0)
    with pytest.raises(ConfigError) as err:
        load_numpy_policy(exported, expected_spec=expected)
    assert expected.hash in str(err.value)
    assert FeatureSpec().hash in str(err.value)
    with pytest.raises(ConfigError):
        load_ppo_policy(str(exported), expected_spec=expected)
    assert load_ppo_policy(str(exported)).spec == FeatureSpec()


def _exported_member(tmp_path: Path, seed: int, extension: str = "utilization") -> Path:
    model, vecnorm = _tiny_model("tanh", [16], seed=seed, extension=extension)
    return export_npz(
        model,
        vecnorm,
        FeatureSpec(),
        tmp_path / f"m{seed}.npz",
        action_prior="sqrt",
        obs_extension=extension,
    )


def test_ensemble_writes_the_split_of_its_members_mean_action(tmp_path):
    paths = [
        _exported_member(tmp_path, 11),
        _exported_member(tmp_path, 12, "utilization-trend"),
    ]
    pair = save_ensemble_npz(tmp_path / "pair.npz", paths)
    triple = save_ensemble_npz(tmp_path / "triple.npz", [pair, _exported_member(tmp_path, 13)])
    ensemble = load_numpy_policy(triple)
    assert isinstance(ensemble, EnsemblePolicy)
    assert ensemble.name == "ppo"
    assert len(ensemble.members) == 3
    assert [m.obs_extension for m in ensemble.members] == [
        "utilization",
        "utilization-trend",
        "utilization",
    ]
    singles = [load_numpy_policy(tmp_path / f"m{s}.npz") for s in (11, 12, 13)]
    spec = FeatureSpec()
    differs = 0
    for rnd in range(2):  # the second round after reset: no trend memory left over
        ensemble.reset()
        for single in singles:
            single.reset()
        sim = MeshSimulator(load_scenario("diurnal-bursts"), seed=rnd)
        for _ in range(12):
            obs = sim.observe()
            actions = [m.observation_action(obs) for m in singles]
            expected = decode(np.mean(actions, axis=0), spec.mask(3), obs.subsets)
            weights = ensemble.decide(obs)
            assert weights == expected
            assert np.allclose(ensemble.last_raw_action, np.mean(actions, axis=0))
            differs += any(weights != decode(a, spec.mask(3), obs.subsets) for a in actions)
            sim.step(weights)
    assert differs > 0  # the mean is not just one member's split


def test_ensemble_refuses_bad_members(tmp_path, exported):
    one = _exported_member(tmp_path, 11)
    with pytest.raises(ConfigError, match="at least two"):
        save_ensemble_npz(tmp_path / "one.npz", [one])
    other_spec = _rewrite(
        one,
        tmp_path / "other.npz",
        spec_json=np.asarray(json.dumps(FeatureSpec(slo_ms=500.0).to_dict())),
        spec_hash=np.asarray(FeatureSpec(slo_ms=500.0).hash),
    )
    with pytest.raises(ConfigError, match="different feature specs"):
        save_ensemble_npz(tmp_path / "mixed.npz", [one, other_spec])
    pair = save_ensemble_npz(tmp_path / "pair.npz", [one, exported])
    broken = _rewrite(pair, tmp_path / "broken.npz", **{"m1.w0": None})
    with pytest.raises(ConfigError, match=r"member 1.*w0"):
        load_numpy_policy(broken)
    too_many = _rewrite(pair, tmp_path / "many.npz", n_members=np.asarray(3))
    with pytest.raises(ConfigError, match="member 2"):
        load_numpy_policy(too_many)
    assert not (tmp_path / "one.npz").exists() and not (tmp_path / "mixed.npz").exists()


class _Boom:
    """Unpickling this writes a marker file: proof that the loader executed pickled code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_pickled_arrays_are_refused_and_never_unpickled(exported, tmp_path):
    marker = tmp_path / "marker"
    evil = np.empty((), dtype=object)
    evil[()] = _Boom(str(marker))
    path = tmp_path / "evil.npz"
    with np.load(exported, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["obs_mean"] = evil
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    assert pickle.dumps(evil)  # the array really holds a pickle
    with pytest.raises(ConfigError, match="not a readable"):
        load_numpy_policy(path)
    assert not marker.exists()


def test_missing_truncated_and_non_zip_files_are_config_errors(exported, tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_numpy_policy(tmp_path / "nope.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(exported.read_bytes()[:200])
    with pytest.raises(ConfigError, match=str(truncated)):
        load_numpy_policy(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a policy" * 10)
    with pytest.raises(ConfigError):
        load_numpy_policy(garbage)


@pytest.mark.parametrize("key", ["spec_hash", "obs_var", "w1", "activation"])
def test_missing_arrays_are_named(exported, tmp_path, key):
    path = _rewrite(exported, tmp_path / "missing.npz", **{key: None})
    with pytest.raises(ConfigError, match=key):
        load_numpy_policy(path)


def test_wrong_shapes_and_non_finite_weights_are_refused(exported, tmp_path):
    with np.load(exported, allow_pickle=False) as data:
        w0 = data["w0"].copy()
    nan = w0.copy()
    nan[0, 0] = np.nan
    with pytest.raises(ConfigError, match="finite"):
        load_numpy_policy(_rewrite(exported, tmp_path / "nan.npz", w0=nan))
    with pytest.raises(ConfigError, match="shape"):
        load_numpy_policy(_rewrite(exported, tmp_path / "shape.npz", w0=w0[:, :-1]))


def test_shipped_default_model_is_small_and_decides_valid_weights():
    if not DEFAULT_MODEL.exists():
        pytest.fail(f"the shipped model {DEFAULT_MODEL} is missing")
    assert DEFAULT_MODEL.stat().st_size < 1_000_000
    policy = load_ppo_policy(None)
    assert policy.spec.hash == "8d261afdbdab1223"  # the FeatureSpec() it was trained on
    for path in suite_paths():
        sim = MeshSimulator(load_scenario(path), seed=0)
        for _ in range(3):
            weights = policy.decide(sim.observe())
            assert isinstance(weights, Weights)
            assert set(weights) == set(sim.subsets)
            sim.step(weights)


def test_utilization_extension_is_what_the_training_env_feeds():
    spec = FeatureSpec()
    env = ExtendObservation(
        gym.make("meshpilot/MeshSim-v0", scenario="steady-80"), spec, "utilization"
    )
    vec, _ = env.reset(seed=0)
    for _ in range(4):
        vec, *_ = env.step(np.zeros(spec.max_subsets, dtype=np.float32))
    obs = env.unwrapped.observation  # type: ignore[attr-defined]
    assert vec.shape == (spec.obs_size + spec.max_subsets + 1,)
    assert np.array_equal(vec, extend_observation(encode(obs, spec), obs, spec, "utilization"))
    caps = obs.capacity_hint_rps
    route_util = obs.total_rps / sum(caps)
    assert 0.7 < route_util < 0.9  # steady-80
    assert vec[-1] == pytest.approx(route_util, rel=1e-5)
    per_slot = vec[spec.obs_size : spec.obs_size + spec.max_subsets]
    expected = [s.rps / c for s, c in zip(obs.stats, caps, strict=True)]
    assert per_slot[: len(caps)] == pytest.approx(expected, rel=1e-5)
    assert not per_slot[len(caps) :].any()


def _two_subsets(
    rps_b: float, err_b: float, p99_b: float, weight_a: int, slow_b: float = 0.2
) -> Observation:
    return Observation(
        RouteRef("ns", "vs", "r", "h"),
        ("a", "b"),
        (
            SubsetStats(60.0, 0.0, 100.0, weight_a, slow_ratio=0.0),
            SubsetStats(rps_b, err_b, p99_b, 100 - weight_a, slow_ratio=slow_b),
        ),
        timestamp_s=5.0,
        capacity_hint_rps=(150.0, 50.0),
    )


def test_trend_is_the_change_since_the_last_tick():
    spec = FeatureSpec()
    k = spec.max_subsets
    memory = TrendMemory()
    first = _two_subsets(20.0, 0.0, 200.0, 60)
    vec0 = memory.extend(encode(first, spec), first, spec, "utilization-trend")
    assert vec0.shape == (spec.obs_size + extension_size(spec, "utilization-trend"),)
    assert not vec0[spec.obs_size + k + 1 :].any()  # no previous tick: no trend
    second = _two_subsets(40.0, 0.1, 500.0, 50, slow_b=0.25)
    vec1 = memory.extend(encode(second, spec), second, spec, "utilization-trend")
    trend = vec1[spec.obs_size + k + 1 :]
    assert vec1[: spec.obs_size + k + 1] == pytest.approx(
        extend_observation(encode(second, spec), second, spec, "utilization")
    )
    assert trend[:2] == pytest.approx([0.0, 0.4])  # per-slot utilization: b 0.4 -> 0.8
    assert trend[k] == pytest.approx(20.0 / 200.0)  # route utilization 0.4 -> 0.5
    weight, error, slow = (trend[k + 1 + j * k : k + 1 + (j + 1) * k] for j in range(3))
    assert weight[:2] == pytest.approx([-0.1, 0.1])
    assert error[:2] == pytest.approx([0.0, 0.1])
    assert slow[:2] == pytest.approx([0.0, 0.05])
    assert not trend[2:k].any()
    assert len(trend) == k + 1 + 3 * k  # p99 is not among them: its noise would double
    dropped = _two_subsets(math.nan, math.nan, math.nan, 50)
    vec2 = memory.extend(encode(dropped, spec), dropped, spec, "utilization-trend")
    trend2 = vec2[spec.obs_size + k + 1 :]
    assert trend2[1] == 0.0 and trend2[k + 1 + 2 * k + 1] == 0.0  # b has no data now
    assert trend2[k + 1] == 0.0  # the weight did not change
    assert extension_low(spec, "utilization-trend") < 0 <= extension_low(spec, "utilization")


def test_ema_averages_each_input_and_holds_it_through_dropped_samples():
    spec = FeatureSpec()
    k = spec.max_subsets
    ext = "utilization-trend-ema"
    memory = TrendMemory()
    trend_size = extension_size(spec, "utilization-trend")
    first = _two_subsets(20.0, 0.0, 200.0, 60, slow_b=0.2)
    vec0 = memory.extend(encode(first, spec), first, spec, ext)
    assert vec0.shape == (spec.obs_size + extension_size(spec, ext),)
    assert vec0[: spec.obs_size + trend_size] == pytest.approx(
        extend_observation(encode(first, spec), first, spec, "utilization-trend")
    )
    ema0 = vec0[spec.obs_size + trend_size :]
    assert len(ema0) == 3 * k + 1
    util, route, p99, slow = ema0[:k], ema0[k], ema0[k + 1 : 2 * k + 1], ema0[2 * k + 1 :]
    assert util[:2] == pytest.approx([60.0 / 150.0, 20.0 / 50.0])  # first tick: the values
    assert route == pytest.approx(80.0 / 200.0)
    assert p99[:2] == pytest.approx([100.0 / 250.0, 200.0 / 250.0])
    assert slow[:2] == pytest.approx([0.0, 0.2])
    assert not util[2:].any() and not p99[2:].any() and not slow[2:].any()
    second = _two_subsets(40.0, 0.0, 700.0, 60, slow_b=0.7)
    ema1 = memory.extend(encode(second, spec), second, spec, ext)[spec.obs_size + trend_size :]
    (alpha,) = EMA_ALPHAS[ext]
    assert ema1[1] == pytest.approx(0.4 + alpha * (0.8 - 0.4))
    assert ema1[k + 1 + 1] == pytest.approx(0.8 + alpha * (2.8 - 0.8))
    assert ema1[2 * k + 1 + 1] == pytest.approx(0.2 + alpha * 0.5)
    assert ema1[0] == pytest.approx(0.4)  # a unchanged: its average stays
    dropped = _two_subsets(math.nan, math.nan, math.nan, 60)
    ema2 = memory.extend(encode(dropped, spec), dropped, spec, ext)[spec.obs_size + trend_size :]
    assert ema2[1] == pytest.approx(ema1[1])  # b has no data now: its averages hold
    assert ema2[2 * k + 2] == pytest.approx(ema1[2 * k + 2])
    memory.clear()
    again = memory.extend(encode(second, spec), second, spec, ext)[spec.obs_size + trend_size :]
    assert again[1] == pytest.approx(0.8)  # cleared: starts from the value again


def test_ema2_appends_a_slow_average_after_the_fast_one():
    spec = FeatureSpec()
    block = 3 * spec.max_subsets + 1
    one, two = TrendMemory(), TrendMemory()
    fast_alpha, slow_alpha = EMA_ALPHAS["utilization-trend-ema2"]
    ticks = [_two_subsets(20.0, 0.0, 200.0, 60), _two_subsets(40.0, 0.0, 700.0, 60, slow_b=0.7)]
    for obs in ticks:
        single = one.extend(encode(obs, spec), obs, spec, "utilization-trend-ema")
        double = two.extend(encode(obs, spec), obs, spec, "utilization-trend-ema2")
    assert double.shape == (spec.obs_size + extension_size(spec, "utilization-trend-ema2"),)
    assert np.array_equal(double[:-block], single)  # the fast average is the same block
    slow = double[-block:]
    assert slow[1] == pytest.approx(0.4 + slow_alpha * (0.8 - 0.4))  # b's utilization
    assert single[-block + 1] == pytest.approx(0.4 + fast_alpha * (0.8 - 0.4))
    assert slow[2 * spec.max_subsets + 2] == pytest.approx(0.2 + slow_alpha * 0.5)  # b's slow


def test_trend_starts_afresh_when_the_subsets_change():
    spec = FeatureSpec()
    memory = TrendMemory()
    first = _two_subsets(20.0, 0.0, 200.0, 60)
    memory.extend(encode(first, spec), first, spec, "utilization-trend")
    renamed = dataclasses.replace(_two_subsets(40.0, 0.1, 500.0, 50), subsets=("a", "c"))
    vec = memory.extend(encode(renamed, spec), renamed, spec, "utilization-trend")
    assert not vec[spec.obs_size + spec.max_subsets + 1 :].any()


def test_recent_extension_inserts_the_newest_interval_before_the_averages():
    spec = FeatureSpec()
    k = spec.max_subsets
    block = 3 * k + 1
    plain, recent = TrendMemory(), TrendMemory()
    ticks = [_two_subsets(20.0, 0.0, 200.0, 60), _two_subsets(40.0, 0.0, 700.0, 60, slow_b=0.7)]
    ticks[1] = dataclasses.replace(
        ticks[1],
        stats=(
            ticks[1].stats[0],
            dataclasses.replace(ticks[1].stats[1], recent_p99_ms=3000.0, recent_slow_ratio=0.9),
        ),
    )
    for obs in ticks:
        without = plain.extend(encode(obs, spec), obs, spec, "utilization-trend-ema2")
        vec = recent.extend(encode(obs, spec), obs, spec, "utilization-trend-ema2-recent")
    ext = "utilization-trend-ema2-recent"
    assert extension_size(spec, ext) == extension_size(spec, "utilization-trend-ema2") + 2 * k
    assert vec.shape == (spec.obs_size + extension_size(spec, ext),)
    head = len(without) - 2 * block
    assert np.array_equal(vec[:head], without[:head])  # encode, utilizations, trends
    assert np.array_equal(vec[-2 * block :], without[-2 * block :])  # both averages
    newest = vec[head : head + 2 * k]
    assert newest[1] == spec.p99_clip  # 3000 ms is 12x the SLO: clipped like the p99 input
    assert newest[k + 1] == pytest.approx(0.9)
    assert not newest[[0, k]].any()  # a: NaN (unknown) reads 0
    assert not newest[2:k].any() and not newest[k + 2 :].any()  # empty slots
    assert extension_low(spec, ext) < 0


@pytest.mark.parametrize(
    "extension",
    [
        "utilization-trend",
        "utilization-trend-ema",
        "utilization-trend-ema2",
        "utilization-trend-ema2-recent",
    ],
)
def test_trend_wrapper_feeds_what_a_serving_policy_sees_and_reset_forgets(extension: str):
    spec = FeatureSpec()
    env = ExtendObservation(
        gym.make("meshpilot/MeshSim-v0", scenario="diurnal-bursts"), spec, extension
    )
    memory = TrendMemory()
    vec, _ = env.reset(seed=0)
    assert env.observation_space.contains(vec)
    moved = 0
    trend_end = spec.obs_size + extension_size(spec, "utilization-trend")
    for _ in range(40):
        obs = env.unwrapped.observation  # type: ignore[attr-defined]
        assert np.array_equal(vec, memory.extend(encode(obs, spec), obs, spec, extension))
        assert env.observation_space.contains(vec)
        moved += bool(np.any(vec[spec.obs_size + spec.max_subsets + 1 : trend_end] != 0))
        vec, *_ = env.step(np.zeros(spec.max_subsets, dtype=np.float32))
    assert moved > 30  # load and latencies change from tick to tick
    vec, _ = env.reset(seed=1)
    assert not vec[spec.obs_size + spec.max_subsets + 1 : trend_end].any()


def test_route_utilization_survives_dropped_samples():
    spec = FeatureSpec()
    route = RouteRef("ns", "vs", "r", "h")
    full = Observation(
        route,
        ("a", "b"),
        (SubsetStats(60.0, 0.0, 10.0, 60), SubsetStats(40.0, 0.0, 10.0, 40)),
        timestamp_s=5.0,
        capacity_hint_rps=(150.0, 50.0),
    )
    dropped = Observation(
        route,
        ("a", "b"),
        (SubsetStats(60.0, 0.0, 10.0, 60), SubsetStats(math.nan, math.nan, math.nan, 40)),
        timestamp_s=5.0,
        capacity_hint_rps=(150.0, 50.0),
    )
    ext_full = extend_observation(encode(full, spec), full, spec, "utilization")[spec.obs_size :]
    ext_drop = extend_observation(encode(dropped, spec), dropped, spec, "utilization")
    ext_drop = ext_drop[spec.obs_size :]
    assert ext_full[:2] == pytest.approx([0.4, 0.8])
    assert ext_full[-1] == pytest.approx(0.5)
    assert ext_drop[:2] == pytest.approx([0.4, 0.0])
    assert ext_drop[-1] == pytest.approx(0.5)  # 60 rps at weight 60 -> 100 rps on the route


def test_before_any_telemetry_the_split_is_capacity_proportional(tmp_path):
    """The network is not consulted on an all-NaN observation (first tick of a route)."""
    model, vecnorm = _tiny_model("tanh", [8], seed=9)
    path = export_npz(model, vecnorm, FeatureSpec(), tmp_path / "p.npz", action_prior="hold")
    policy = load_numpy_policy(path)
    for scenario_path in suite_paths():
        sim = MeshSimulator(load_scenario(scenario_path), seed=0)
        first = sim.observe()
        assert not any(s.has_data for s in first.stats)
        weights = policy.decide(first)
        caps = first.capacity_hint_rps
        expected = [100 * c / sum(caps) for c in caps]
        assert np.allclose([weights[s] for s in first.subsets], expected, atol=1.0)
        sim.step(weights)
        later = sim.observe()
        policy.decide(later)  # with data the network decides again
        vec = encode(later, policy.spec)
        consulted = corrected_action(policy.predict(vec), (hold_prior(vec, policy.spec), True))
        assert policy.last_raw_action == pytest.approx(consulted.tolist())


@pytest.mark.parametrize("scenario", ["steady-90", "many-subsets", "diurnal-bursts"])
def test_sqrt_prior_decodes_to_the_sqrt_baseline(scenario):
    """Zero correction on the "sqrt" prior writes what `SqrtPolicy` writes, step by step."""
    from agents.baselines import SqrtPolicy

    spec = FeatureSpec()
    baseline = SqrtPolicy()
    sim = MeshSimulator(load_scenario(scenario), seed=2)
    for _ in range(30):
        obs = sim.observe()
        vec = extend_observation(encode(obs, spec), obs, spec, "utilization")
        action = apply_action_prior(np.zeros(spec.max_subsets), vec, spec, "sqrt")
        weights = decode(action, spec.mask(len(obs.subsets)), obs.subsets)
        expected = baseline.decide(obs)
        if any(s.has_data for s in obs.stats):
            assert weights == expected
        sim.step(weights)


def test_sqrt_prior_without_utilization_input_falls_back_to_capacity():
    from agents.action_prior import capacity_prior, sqrt_prior

    spec = FeatureSpec()
    sim = MeshSimulator(load_scenario("steady-90"), seed=0)
    sim.step(sim.weights)
    vec = encode(sim.observe(), spec)
    assert np.array_equal(sqrt_prior(vec, spec), capacity_prior(vec, spec))


_UNIT = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
_GAIN = st.floats(min_value=0.01, max_value=1.0, allow_nan=False)


@given(a=_UNIT, b=_UNIT, gain=_GAIN)
def test_correction_shape_is_an_increasing_map_of_the_unit_interval_with_an_inverse(a, b, gain):
    lo, hi = sorted((a, b))
    y_lo, y_hi = shape_correction(np.array([lo, hi]), gain)
    assert -1.0 <= y_lo <= y_hi <= 1.0
    assert abs(float(unshape_correction(np.array([y_lo]), gain)[0]) - lo) < 1e-9
    assert np.allclose(shape_correction(np.array([-1.0, 0.0, 1.0]), gain), [-1.0, 0.0, 1.0])


def test_small_corrections_are_scaled_by_the_gain():
    assert np.allclose(shape_correction(np.array([1e-3]), 0.25), [2.5e-4], rtol=1e-5)
    assert np.allclose(shape_correction(np.array([1e-3, 0.5]), 1.0), [1e-3, 0.5])


def test_action_gain_travels_in_the_file_and_defaults_to_linear(exported, tmp_path):
    assert load_numpy_policy(exported).action_gain == 1.0
    older = _rewrite(exported, tmp_path / "old.npz", action_gain=None)
    assert load_numpy_policy(older).action_gain == 1.0
    gained = _rewrite(exported, tmp_path / "g.npz", action_gain=np.asarray(0.3))
    assert load_numpy_policy(gained).action_gain == 0.3
    for bad in (0.0, 1.5, np.nan):
        path = _rewrite(exported, tmp_path / "bad.npz", action_gain=np.asarray(bad))
        with pytest.raises(ConfigError, match="action gain"):
            load_numpy_policy(path)

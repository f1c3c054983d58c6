"""The numpy serving path of PPO policies (agents.network, agents.policy_file,
agents.obs_extensions, agents.action_prior).

Cases:
- the numpy actor reproduces SB3's deterministic ``predict`` (max abs diff < 1e-5) on many
  observations, random and real, through VecNormalize;
- `decide` writes the weights the training env would have written (encode -> extend ->
  normalize -> MLP -> action prior -> decode) and records the raw action;
- a file whose stored feature-spec hash disagrees with its own spec, or with the caller's, is
  refused with both hashes in the message;
- a file that names another activation, action prior or observation extension, lacks the
  extension's name, or carries an action gain other than 1 is refused;
- the inputs hash: written with every file (the shipped one too), changed by every input it
  covers (extension constants, slot order, prior), a file whose hash differs from this
  meshpilot's is refused even where the names agree, and a file written before the hash
  existed loads on its named entries;
- files are loaded with allow_pickle=False: a pickled array is refused and never unpickled;
- missing, truncated, non-zip files and missing arrays are ConfigErrors;
- the shipped default model loads (an ensemble of two), is small, and decides valid weights on
  the whole suite;
- the observation extension: utilization (surviving dropped samples), the trend block is the
  change of each input since the route's last tick (0 without one, where a slot had no data,
  or after the subsets changed), the newest-interval block, and the fast and slow moving
  averages (held through dropped samples); the training wrapper and a serving policy feed the
  network the same vectors, and reset forgets the past;
- an ensemble file (`save_ensemble_npz`) loads as an `EnsemblePolicy` whose split is the
  decode of its members' mean action, flattens ensembles it is given, survives reset, and
  refuses one member, members on other feature specs and a member whose arrays are missing;
- the "sqrt" action prior with zero correction writes exactly what the sqrt baseline writes,
  and before any telemetry the split is capacity-proportional.
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
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import envs  # noqa: F401
from agents import obs_extensions, policy_file, slot_order
from agents.action_prior import apply_action_prior, corrected_action, sqrt_prior
from agents.network import EnsemblePolicy
from agents.obs_extensions import (
    EMA_ALPHAS,
    TrendMemory,
    extend_observation,
    extension_low,
    extension_size,
)
from agents.policy_file import (
    DEFAULT_MODEL,
    inputs_hash,
    load_numpy_policy,
    load_ppo_policy,
    save_ensemble_npz,
)
from agents.slot_order import sort_slots
from agents.training.artifacts import export_npz
from agents.training.wrappers import CanonicalSlots, ExtendObservation, PriorActionWrapper
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import load_scenario, suite_paths
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec, decode, encode
from meshcore.model import Observation, RouteRef, SubsetStats, Weights

torch.set_num_threads(1)

SPEC = FeatureSpec()
K = SPEC.max_subsets
N_IN = SPEC.obs_size + extension_size(SPEC)
UTIL = slice(SPEC.obs_size, SPEC.obs_size + K + 1)
TREND = slice(UTIL.stop, UTIL.stop + 4 * K + 1)
RECENT = slice(TREND.stop, TREND.stop + 2 * K)
FAST = slice(RECENT.stop, RECENT.stop + 3 * K + 1)
SLOW = slice(FAST.stop, FAST.stop + 3 * K + 1)
"""The blocks of an extended vector (see `agents.obs_extensions`)."""


def _tiny_model(arch: list[int], seed: int) -> tuple[PPO, VecNormalize]:
    """An untrained PPO whose actor weights and normalizer statistics are made non-trivial."""

    def make() -> gym.Env:
        return ExtendObservation(gym.make("meshpilot/MeshSim-v0", scenario="steady-80"), SPEC)

    venv = DummyVecEnv([make])
    vecnorm = VecNormalize(venv, norm_obs=True, norm_reward=True, clip_obs=5.0)
    model = PPO(
        "MlpPolicy",
        vecnorm,
        n_steps=16,
        batch_size=16,
        seed=seed,
        device="cpu",
        policy_kwargs={"net_arch": {"pi": arch, "vf": [8]}, "activation_fn": torch.nn.Tanh},
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    rng = np.random.default_rng(seed)
    rms = vecnorm.obs_rms
    assert not isinstance(rms, dict)
    rms.mean = rng.uniform(0.0, 1.0, N_IN)
    rms.var = rng.uniform(0.01, 2.0, N_IN)
    return model, vecnorm


def test_the_blocks_fill_the_extension():
    assert SLOW.stop == N_IN
    assert extension_low(SPEC) == -SPEC.p99_clip


def _observations(n_random: int, seed: int) -> np.ndarray:
    """Random points of the observation box plus extended observations of real episodes."""
    rng = np.random.default_rng(seed)
    rand = rng.uniform(-1.0, 2.0, (n_random, N_IN)).astype(np.float32)
    real = []
    for path in suite_paths():
        sim = MeshSimulator(load_scenario(path), seed=seed)
        memory = TrendMemory()
        for _ in range(5):
            sim.step(sim.weights)
            obs = sim.observe()
            real.append(memory.extend(encode(obs, SPEC), obs, SPEC))
    return np.concatenate([rand, np.asarray(real, dtype=np.float32)])


@pytest.mark.parametrize("arch", [[64, 64], [32]])
def test_numpy_actor_matches_sb3_deterministic_predict(tmp_path, arch):
    model, vecnorm = _tiny_model(arch, seed=3)
    path = export_npz(model, vecnorm, SPEC, tmp_path / "p.npz")
    policy = load_numpy_policy(path)
    obs = _observations(500, seed=4)

    expected, _ = model.predict(vecnorm.normalize_obs(obs), deterministic=True)
    got = policy.predict(obs)

    assert got.shape == expected.shape == (len(obs), 8)
    assert np.max(np.abs(got - expected)) < 1e-5
    # the test is only meaningful if the outputs vary and some saturate at the bounds
    assert np.std(expected) > 0.1
    assert np.any(np.abs(expected) >= 1.0)


def test_decide_writes_the_weights_the_training_env_would(tmp_path):
    """The served policy and the training env stack (extension, canonical slot order, prior,
    decode) write the same split from the same network, on every suite scenario (two of them
    have versions the canonical order moves)."""
    model, vecnorm = _tiny_model([16, 16], seed=5)
    policy = load_numpy_policy(export_npz(model, vecnorm, SPEC, tmp_path / "p.npz"))
    assert policy.name == "ppo"
    moved = 0
    for scenario_path in suite_paths():
        base = gym.make("meshpilot/MeshSim-v0", scenario=scenario_path.stem)
        canonical = CanonicalSlots(ExtendObservation(base, SPEC), SPEC)
        env = PriorActionWrapper(canonical, SPEC)
        vec, _ = env.reset(seed=1)
        policy.reset()
        for _ in range(4):
            obs = env.unwrapped.observation  # type: ignore[attr-defined]
            weights = policy.decide(obs)
            assert len(policy.last_raw_action) == SPEC.max_subsets
            sb3_action, _ = model.predict(vecnorm.normalize_obs(vec[None]), deterministic=True)
            moved += bool(np.any(canonical.slot_order != np.arange(SPEC.max_subsets)))
            vec, _, _, _, info = env.step(sb3_action[0])
            assert weights.as_dict() == info["weights"]
    assert moved >= 2
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
    model, vecnorm = _tiny_model([8], seed=6)
    return export_npz(model, vecnorm, SPEC, tmp_path_factory.mktemp("m") / "p.npz")


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


def test_a_file_carries_the_hash_of_every_input_and_a_changed_input_is_refused(
    exported, tmp_path, monkeypatch
):
    with np.load(exported, allow_pickle=False) as data:
        assert str(data["inputs_hash"]) == inputs_hash(SPEC)
    # The names in the file stay the same; the moving averages' weights do not.
    monkeypatch.setattr(obs_extensions, "EMA_ALPHAS", (0.3, 0.05))
    changed = inputs_hash(SPEC)
    assert changed != str(np.load(exported, allow_pickle=False)["inputs_hash"])
    with pytest.raises(ConfigError, match="inputs hash mismatch") as err:
        load_numpy_policy(exported)
    assert changed in str(err.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.setattr(obs_extensions, "TREND_FEATURES", (2, 4)),
        lambda m: m.setattr(obs_extensions, "EMA_FEATURES", (6,)),
        lambda m: m.setattr(slot_order, "FIRST_KEYS", (0, 2, 7)),
        lambda m: m.setattr(policy_file, "SLOT_ORDER", "given"),
        lambda m: m.setattr(policy_file, "ACTION_PRIOR", "capacity"),
        lambda m: m.setattr(policy_file, "OBS_EXTENSION", "none"),
    ],
)
def test_the_inputs_hash_changes_with_every_input_it_covers(monkeypatch, change):
    before = inputs_hash(SPEC)
    change(monkeypatch)
    assert inputs_hash(SPEC) != before
    assert inputs_hash(FeatureSpec(slo_ms=100.0)) != inputs_hash(SPEC)


def test_a_file_written_before_the_inputs_hash_loads_on_its_named_entries(exported, tmp_path):
    older = _rewrite(exported, tmp_path / "older.npz", inputs_hash=None)
    assert load_numpy_policy(older).spec == SPEC
    renamed = _rewrite(older, tmp_path / "renamed.npz", obs_extension=np.asarray("none"))
    with pytest.raises(ConfigError, match="obs_extension"):
        load_numpy_policy(renamed)


def test_an_edited_inputs_hash_is_refused(exported, tmp_path):
    edited = _rewrite(exported, tmp_path / "edited.npz", inputs_hash=np.asarray("0" * 16))
    with pytest.raises(ConfigError, match="inputs hash mismatch"):
        load_numpy_policy(edited)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("activation", "relu"),
        ("action_prior", "capacity"),
        ("action_prior", "none"),
        ("obs_extension", "utilization"),
        ("obs_extension", "none"),
        ("slot_order", "given"),
    ],
)
def test_a_file_naming_what_this_version_does_not_serve_is_refused(exported, tmp_path, key, value):
    path = _rewrite(exported, tmp_path / "other.npz", **{key: np.asarray(value)})
    with pytest.raises(ConfigError, match=f"{key} '{value}'.*serves only"):
        load_numpy_policy(path)


def test_action_gain_may_only_be_one(exported, tmp_path):
    assert "action_gain" not in np.load(exported).files
    linear = _rewrite(exported, tmp_path / "g1.npz", action_gain=np.asarray(1.0))
    assert isinstance(load_numpy_policy(linear).spec, FeatureSpec)
    for bad in (0.25, np.nan):
        path = _rewrite(exported, tmp_path / "bad.npz", action_gain=np.asarray(bad))
        with pytest.raises(ConfigError, match="action_gain"):
            load_numpy_policy(path)


def _exported_member(tmp_path: Path, seed: int) -> Path:
    model, vecnorm = _tiny_model([16], seed=seed)
    return export_npz(model, vecnorm, SPEC, tmp_path / f"m{seed}.npz")


def test_ensemble_writes_the_split_of_its_members_mean_action(tmp_path):
    paths = [_exported_member(tmp_path, 11), _exported_member(tmp_path, 12)]
    pair = save_ensemble_npz(tmp_path / "pair.npz", paths)
    triple = save_ensemble_npz(tmp_path / "triple.npz", [pair, _exported_member(tmp_path, 13)])
    ensemble = load_numpy_policy(triple)
    assert isinstance(ensemble, EnsemblePolicy)
    assert ensemble.name == "ppo"
    assert len(ensemble.members) == 3
    singles = [load_numpy_policy(tmp_path / f"m{s}.npz") for s in (11, 12, 13)]
    differs = 0
    for rnd in range(2):  # the second round after reset: no trend memory left over
        ensemble.reset()
        for single in singles:
            single.reset()
        sim = MeshSimulator(load_scenario("diurnal-bursts"), seed=rnd)
        for _ in range(12):
            obs = sim.observe()
            actions = [m.observation_action(obs) for m in singles]
            expected = decode(np.mean(actions, axis=0), SPEC.mask(3), obs.subsets)
            weights = ensemble.decide(obs)
            assert weights == expected
            assert np.allclose(ensemble.last_raw_action, np.mean(actions, axis=0))
            differs += any(weights != decode(a, SPEC.mask(3), obs.subsets) for a in actions)
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
        inputs_hash=np.asarray(inputs_hash(FeatureSpec(slo_ms=500.0))),
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


@pytest.mark.parametrize(
    "key", ["spec_hash", "obs_var", "w1", "activation", "obs_extension", "slot_order"]
)
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
    assert isinstance(policy, EnsemblePolicy) and len(policy.members) == 2
    assert policy.spec.hash == "8d261afdbdab1223"  # the FeatureSpec() it was trained on
    with np.load(DEFAULT_MODEL, allow_pickle=False) as data:
        assert str(data["inputs_hash"]) == inputs_hash(policy.spec)
    for path in suite_paths():
        sim = MeshSimulator(load_scenario(path), seed=0)
        for _ in range(3):
            weights = policy.decide(sim.observe())
            assert isinstance(weights, Weights)
            assert set(weights) == set(sim.subsets)
            sim.step(weights)


def test_utilization_is_observed_rps_over_capacity_hints():
    env = ExtendObservation(gym.make("meshpilot/MeshSim-v0", scenario="steady-80"), SPEC)
    vec, _ = env.reset(seed=0)
    for _ in range(4):
        vec, *_ = env.step(np.zeros(SPEC.max_subsets, dtype=np.float32))
    obs = env.unwrapped.observation  # type: ignore[attr-defined]
    assert vec.shape == (N_IN,)
    assert np.array_equal(vec[: SPEC.obs_size], encode(obs, SPEC))
    caps = obs.capacity_hint_rps
    route_util = obs.total_rps / sum(caps)
    assert 0.7 < route_util < 0.9  # steady-80
    util = vec[UTIL]
    assert util[-1] == pytest.approx(route_util, rel=1e-5)
    expected = [s.rps / c for s, c in zip(obs.stats, caps, strict=True)]
    assert util[: len(caps)] == pytest.approx(expected, rel=1e-5)
    assert not util[len(caps) : K].any()


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


def _extend(memory: TrendMemory, obs: Observation) -> np.ndarray:
    return memory.extend(encode(obs, SPEC), obs, SPEC)


def test_trend_is_the_change_since_the_last_tick():
    memory = TrendMemory()
    first = _two_subsets(20.0, 0.0, 200.0, 60)
    vec0 = _extend(memory, first)
    assert vec0.shape == (N_IN,)
    assert not vec0[TREND].any()  # no previous tick: no trend
    second = _two_subsets(40.0, 0.1, 500.0, 50, slow_b=0.25)
    vec1 = _extend(memory, second)
    trend = vec1[TREND]
    assert vec1[UTIL] == pytest.approx(extend_observation(encode(second, SPEC), second, SPEC)[UTIL])
    assert trend[:2] == pytest.approx([0.0, 0.4])  # per-slot utilization: b 0.4 -> 0.8
    assert trend[K] == pytest.approx(20.0 / 200.0)  # route utilization 0.4 -> 0.5
    weight, error, slow = (trend[K + 1 + j * K : K + 1 + (j + 1) * K] for j in range(3))
    assert weight[:2] == pytest.approx([-0.1, 0.1])
    assert error[:2] == pytest.approx([0.0, 0.1])
    assert slow[:2] == pytest.approx([0.0, 0.05])
    assert not trend[2:K].any()
    assert len(trend) == K + 1 + 3 * K  # weight, error and slow ratio: not the p99
    dropped = _two_subsets(math.nan, math.nan, math.nan, 50)
    trend2 = _extend(memory, dropped)[TREND]
    assert trend2[1] == 0.0 and trend2[K + 1 + 2 * K + 1] == 0.0  # b has no data now
    assert trend2[K + 1] == 0.0  # the weight did not change


def test_moving_averages_follow_each_input_and_hold_through_dropped_samples():
    memory = TrendMemory()
    first = _two_subsets(20.0, 0.0, 200.0, 60, slow_b=0.2)
    vec0 = _extend(memory, first)
    for block in (FAST, SLOW):  # first tick: the values themselves
        ema0 = vec0[block]
        util, route, p99, slow = ema0[:K], ema0[K], ema0[K + 1 : 2 * K + 1], ema0[2 * K + 1 :]
        assert util[:2] == pytest.approx([60.0 / 150.0, 20.0 / 50.0])
        assert route == pytest.approx(80.0 / 200.0)
        assert p99[:2] == pytest.approx([100.0 / 250.0, 200.0 / 250.0])
        assert slow[:2] == pytest.approx([0.0, 0.2])
        assert not util[2:].any() and not p99[2:].any() and not slow[2:].any()
    second = _two_subsets(40.0, 0.0, 700.0, 60, slow_b=0.7)
    vec1 = _extend(memory, second)
    for block, alpha in zip((FAST, SLOW), EMA_ALPHAS, strict=True):
        ema1 = vec1[block]
        assert ema1[1] == pytest.approx(0.4 + alpha * (0.8 - 0.4))  # b's utilization
        assert ema1[K + 1 + 1] == pytest.approx(0.8 + alpha * (2.8 - 0.8))  # b's p99 / slo
        assert ema1[2 * K + 1 + 1] == pytest.approx(0.2 + alpha * 0.5)  # b's slow ratio
        assert ema1[0] == pytest.approx(0.4)  # a unchanged: its average stays
    dropped = _two_subsets(math.nan, math.nan, math.nan, 60)
    vec2 = _extend(memory, dropped)
    for block in (FAST, SLOW):
        assert vec2[block][1] == pytest.approx(vec1[block][1])  # b has no data: averages hold
        assert vec2[block][2 * K + 2] == pytest.approx(vec1[block][2 * K + 2])
    memory.clear()
    again = _extend(memory, second)
    assert again[FAST][1] == pytest.approx(0.8)  # cleared: starts from the value again


def test_trend_starts_afresh_when_the_subsets_change():
    memory = TrendMemory()
    _extend(memory, _two_subsets(20.0, 0.0, 200.0, 60))
    renamed = dataclasses.replace(_two_subsets(40.0, 0.1, 500.0, 50), subsets=("a", "c"))
    assert not _extend(memory, renamed)[TREND].any()


def test_newest_interval_block_is_each_slots_recent_p99_and_slow_ratio():
    obs = _two_subsets(40.0, 0.0, 700.0, 60, slow_b=0.7)
    obs = dataclasses.replace(
        obs,
        stats=(
            obs.stats[0],
            dataclasses.replace(obs.stats[1], recent_p99_ms=3000.0, recent_slow_ratio=0.9),
        ),
    )
    newest = _extend(TrendMemory(), obs)[RECENT]
    assert newest[1] == SPEC.p99_clip  # 3000 ms is 12x the SLO: clipped like the p99 input
    assert newest[K + 1] == pytest.approx(0.9)
    assert not newest[[0, K]].any()  # a: NaN (unknown) reads 0
    assert not newest[2:K].any() and not newest[K + 2 :].any()  # empty slots


def test_training_wrapper_feeds_what_a_serving_policy_sees_and_reset_forgets():
    env = ExtendObservation(gym.make("meshpilot/MeshSim-v0", scenario="diurnal-bursts"), SPEC)
    memory = TrendMemory()
    vec, _ = env.reset(seed=0)
    assert env.observation_space.contains(vec)
    moved = 0
    for _ in range(40):
        obs = env.unwrapped.observation  # type: ignore[attr-defined]
        assert np.array_equal(vec, memory.extend(encode(obs, SPEC), obs, SPEC))
        assert env.observation_space.contains(vec)
        moved += bool(np.any(vec[TREND] != 0))
        vec, *_ = env.step(np.zeros(SPEC.max_subsets, dtype=np.float32))
    assert moved > 30  # load and latencies change from tick to tick
    vec, _ = env.reset(seed=1)
    assert not vec[TREND].any()


def test_route_utilization_survives_dropped_samples():
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
    ext_full = extend_observation(encode(full, SPEC), full, SPEC)[UTIL]
    ext_drop = extend_observation(encode(dropped, SPEC), dropped, SPEC)[UTIL]
    assert ext_full[:2] == pytest.approx([0.4, 0.8])
    assert ext_full[-1] == pytest.approx(0.5)
    assert ext_drop[:2] == pytest.approx([0.4, 0.0])
    assert ext_drop[-1] == pytest.approx(0.5)  # 60 rps at weight 60 -> 100 rps on the route


def test_before_any_telemetry_the_split_is_capacity_proportional(exported):
    """The network is not consulted on an all-NaN observation (first tick of a route)."""
    policy = load_numpy_policy(exported)
    for scenario_path in suite_paths():
        policy.reset()
        memory = TrendMemory()
        sim = MeshSimulator(load_scenario(scenario_path), seed=0)
        first = sim.observe()
        assert not any(s.has_data for s in first.stats)
        weights = policy.decide(first)
        _extend(memory, first)
        caps = first.capacity_hint_rps
        expected = [100 * c / sum(caps) for c in caps]
        assert np.allclose([weights[s] for s in first.subsets], expected, atol=1.0)
        sim.step(weights)
        later = sim.observe()
        policy.decide(later)  # with data the network decides again
        vec = _extend(memory, later)[None, :]
        slots = sort_slots(vec, SPEC)
        canonical = slots.vectors[0]
        consulted = corrected_action(policy.predict(canonical), (sqrt_prior(canonical, SPEC), True))
        served = slots.original_actions(consulted[None, :])[0]
        assert policy.last_raw_action == pytest.approx(served.tolist())


@pytest.mark.parametrize("scenario", ["steady-90", "many-subsets", "diurnal-bursts"])
def test_sqrt_prior_decodes_to_the_sqrt_baseline(scenario):
    """Zero correction on the "sqrt" prior writes what `SqrtPolicy` writes, step by step."""
    from agents.baselines import SqrtPolicy

    baseline = SqrtPolicy()
    sim = MeshSimulator(load_scenario(scenario), seed=2)
    for _ in range(30):
        obs = sim.observe()
        vec = extend_observation(encode(obs, SPEC), obs, SPEC)
        action = apply_action_prior(np.zeros(SPEC.max_subsets), vec, SPEC)
        weights = decode(action, SPEC.mask(len(obs.subsets)), obs.subsets)
        expected = baseline.decide(obs)
        if any(s.has_data for s in obs.stats):
            assert weights == expected
        sim.step(weights)

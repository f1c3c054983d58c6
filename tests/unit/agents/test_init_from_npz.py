"""Fine-tuning from a policy file (`--init`) and training on a live mesh (`--mesh lab`).

Cases:
- a model initialised from an exported file exports again to a file with the same actions
  on random observations, and SB3's own deterministic action after the init is the numpy
  policy's (the inverse of `export_npz` is exact);
- the shipped ensemble file initialises from its first member;
- a file of another feature spec, or of other hidden layers than net_arch, is refused with a
  clear error before any work (nothing written), also through `meshpilot train`;
- `train` with `init` and no steps exports the file's policy unchanged;
- `train` with mesh lab steps one MeshLive-v0 per route of the given ports (in parallel,
  fake clock), without imitation, in short rollouts, and writes a policy.npz that loads;
- mesh lab without ports, and the lab-only options with mesh sim, are refused.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from agents.network import NumpyPolicy
from agents.obs_extensions import extension_size
from agents.policy_file import DEFAULT_MODEL, load_numpy_policy, save_npz
from agents.training.artifacts import export_npz
from agents.training.config import LAB_N_STEPS, TrainConfig
from agents.training.init_from import check_init, init_from_npz
from agents.training.ppo import new_model, train
from agents.training.wrappers import LiveMesh, make_vec_env
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec
from meshcore.model import Observation, RouteRef, SubsetStats, Weights
from meshpilot.cli import main

TINY = {
    "scenarios": ("steady-50",),
    "members": 1,
    "n_envs": 1,
    "n_steps": 16,
    "batch_size": 16,
    "n_epochs": 1,
    "imitation_steps": 0,
    "bc_lr": 0.0,
    "net_arch": (16, 16),
    "progress": False,
    "checkpoint_every": 0,
}


def _config(tmp_path: Path, **changes: object) -> TrainConfig:
    return TrainConfig(**{**TINY, "out_dir": str(tmp_path / "runs"), **changes})  # type: ignore[arg-type]


def _exported(tmp_path: Path, config: TrainConfig, name: str) -> Path:
    """A freshly built (untrained) model of `config` with a perturbed normalizer, exported."""
    model, vecnorm = new_model(config, make_vec_env(config))
    rng = np.random.default_rng(config.seed)
    rms = vecnorm.obs_rms
    assert not isinstance(rms, dict)
    rms.mean = rng.normal(size=rms.mean.shape)
    rms.var = rng.uniform(0.1, 3.0, size=rms.mean.shape)
    return export_npz(model, vecnorm, config.feature_spec, tmp_path / name)


def _observations(policy: NumpyPolicy, n: int = 64) -> np.ndarray:
    size = policy.spec.obs_size + extension_size(policy.spec)
    return np.random.default_rng(0).uniform(-1.0, 3.0, size=(n, size))


def test_init_then_export_gives_the_same_actions(tmp_path: Path) -> None:
    source_config = _config(tmp_path, seed=3)
    source = _exported(tmp_path, source_config, "source.npz")
    config = _config(tmp_path, seed=4)  # another seed: other fresh weights
    model, vecnorm = new_model(config, make_vec_env(config))
    meta = init_from_npz(model, vecnorm, source, config.feature_spec)
    assert meta["init"] == str(source) and meta["init_members"] == 1
    again = export_npz(model, vecnorm, config.feature_spec, tmp_path / "again.npz")
    a, b = load_numpy_policy(source), load_numpy_policy(again)
    assert isinstance(a, NumpyPolicy) and isinstance(b, NumpyPolicy)
    obs = _observations(a)
    assert np.array_equal(a.predict(obs), b.predict(obs))
    sb3_action, _ = model.predict(vecnorm.normalize_obs(obs.astype(np.float32)), deterministic=True)
    np.testing.assert_allclose(sb3_action, a.predict(obs), atol=1e-5)


def test_the_shipped_ensemble_initialises_from_its_first_member(tmp_path: Path) -> None:
    config = _config(tmp_path, net_arch=(128, 128))
    model, vecnorm = new_model(config, make_vec_env(config))
    meta = init_from_npz(model, vecnorm, DEFAULT_MODEL, config.feature_spec)
    assert meta["init_members"] == 2
    again = export_npz(model, vecnorm, config.feature_spec, tmp_path / "again.npz")
    shipped = load_numpy_policy(DEFAULT_MODEL)
    first = shipped.members[0]  # type: ignore[union-attr]
    exported = load_numpy_policy(again)
    assert isinstance(exported, NumpyPolicy)
    obs = _observations(first)
    assert np.array_equal(first.predict(obs), exported.predict(obs))


def test_a_file_of_another_feature_spec_is_refused(tmp_path: Path) -> None:
    other = FeatureSpec(max_subsets=4)
    n_in = other.obs_size + extension_size(other)
    path = save_npz(
        tmp_path / "other.npz",
        spec=other,
        layers=[(np.zeros((16, n_in)), np.zeros(16)), (np.zeros((4, 16)), np.zeros(4))],
        obs_mean=np.zeros(n_in),
        obs_var=np.ones(n_in),
        clip_obs=10.0,
        eps=1e-8,
    )
    with pytest.raises(ConfigError, match="feature-spec hash mismatch"):
        check_init(path, FeatureSpec(), (16,))


def test_a_file_of_other_hidden_layers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"hidden layers \[128, 128\].*--net-arch 128 128"):
        check_init(DEFAULT_MODEL, FeatureSpec(), (16, 16))
    config = _config(tmp_path)
    model, vecnorm = new_model(config, make_vec_env(config))
    with pytest.raises(ConfigError, match="hidden layers"):
        init_from_npz(model, vecnorm, DEFAULT_MODEL, config.feature_spec)


def test_meshpilot_train_refuses_a_mismatched_init_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    argv = ["train", "steady-50", "--members", "1", "--net-arch", "16", "16"]
    code = main([*argv, "--init", str(DEFAULT_MODEL), "--out-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--net-arch 128 128" in err
    assert not out.exists() or not list(out.iterdir())


def test_train_with_init_and_no_steps_exports_the_file_unchanged(tmp_path: Path) -> None:
    source = _exported(tmp_path, _config(tmp_path, seed=5), "source.npz")
    run_dir = train(_config(tmp_path, seed=6, init=str(source), total_steps=0))
    a, b = load_numpy_policy(source), load_numpy_policy(run_dir / "policy.npz")
    assert isinstance(a, NumpyPolicy) and isinstance(b, NumpyPolicy)
    obs = _observations(a)
    assert np.array_equal(a.predict(obs), b.predict(obs))
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["init"] == str(source)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps = 0
        self._lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps += 1
            self.t += seconds


class _Mesh:
    """Two routes of two versions each; v2 gets slow when it takes more than half the traffic."""

    def __init__(self, routes: Sequence[RouteRef]) -> None:
        self.weights = {r: Weights(("v1", "v2"), (50, 50)) for r in routes}
        self.writes = 0

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        out = {}
        for r in routes:
            w = self.weights[r]
            p99 = 400.0 if w["v2"] > 50 else 50.0
            stats = (
                SubsetStats(float(w["v1"]), 0.0, 50.0, w["v1"], slow_ratio=0.0),
                SubsetStats(float(w["v2"]), 0.0, p99, w["v2"], slow_ratio=math.nan),
            )
            out[r] = Observation(r, ("v1", "v2"), stats, 0.0, staleness_s=1.0)
        return out

    def current(self, route: RouteRef) -> Weights:
        return self.weights[route]

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        self.weights[route] = weights
        self.writes += 1
        return weights


def test_mesh_lab_trains_one_live_env_per_route_and_exports(tmp_path: Path) -> None:
    routes = tuple(RouteRef("lab", name, "default", f"{name}.lab") for name in ("a", "b"))
    mesh, clock = _Mesh(routes), _Clock()
    live = LiveMesh(observer=mesh, actuator=mesh, clock=clock, routes=routes, step_s=5.0)
    source = _exported(tmp_path, _config(tmp_path), "source.npz")
    config = _config(tmp_path, mesh="lab", init=str(source), total_steps=20, members=2)
    run_dir = train(config, live=live)
    meta = json.loads((run_dir / "config.json").read_text())
    used = meta["config"]
    assert used["n_envs"] == 2 and used["members"] == 1
    assert used["imitation_steps"] == 0 and used["bc_lr"] == 0 and not used["randomize"]
    assert used["n_steps"] == 10 <= LAB_N_STEPS  # ceil(20 / 2 routes)
    assert meta["live"]["routes"] == ["lab/a/default", "lab/b/default"]
    assert meta["env_steps"] == 20 and mesh.writes == 20 and clock.sleeps == 20
    assert run_dir.name.startswith("lab__")
    assert isinstance(load_numpy_policy(run_dir / "policy.npz"), NumpyPolicy)


def test_mesh_lab_needs_the_mesh_and_lab_options_need_mesh_lab(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="needs the mesh's ports"):
        train(_config(tmp_path, mesh="lab"))
    code = main(["train", "--step-s", "1", "--out-dir", str(tmp_path / "o"), "--no-progress"])
    assert code == 2 and "--step-s: only with --mesh lab" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="mesh must be one of sim, lab"):
        _config(tmp_path, mesh="k8s").validate()
    with pytest.raises(ConfigError, match="pass one"):
        _config(tmp_path, init="a.npz", resume="run").validate()

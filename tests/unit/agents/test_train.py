"""`meshpilot train` end to end on a tiny job (agents.training + meshpilot.commands.train).

Cases:
- the defaults are the shipped model's recipe, field by field, and `meshpilot train --out-dir
  DIR` alone (or the recipe's command line) gives exactly that config, which is the one the
  shipped model's file records;
- a few hundred steps through the CLI's main() write every artifact of the run directory
  (config, model, normalizer, numpy export, episode log, learning curve, checkpoints), named
  <scenario-set>__<exp>__<seed>__<ts>, and the export serves as a `Policy`;
- resuming from a checkpoint continues the step count and the episode log;
- the same seed gives the same trained weights;
- the recipe's phases on a tiny scale: the imitation warm start fits the teacher, and PPO
  with imitation after every rollout (bc_lr) trains and exports;
- the teacher's imitation target, put through the action prior, decodes to the teacher's
  weights (within one point of rounding);
- every TrainConfig field has a documented option, and bad values (retired options included)
  exit with one clear line before any work;
- training leaves nothing in the temp directory (no SB3-<time> folders): in process, and as
  a `meshpilot train` process with TMPDIR set and two spawned members.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.policy_file import load_ppo_policy
from agents.training.artifacts import read_episodes
from agents.training.config import TrainConfig, field_help
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import load_scenario
from meshcore.features import FeatureSpec
from meshcore.model import Weights
from meshpilot.cli import build_parser, main
from meshpilot.commands.train import config_from_args
from tests.unit.agents.tiny_training import TINY_PPO

REPO = Path(__file__).resolve().parents[3]

TINY = [
    "steady-50",
    *TINY_PPO,
    "--checkpoint-every", "128",
    "--exp-name", "tiny",
    "--seed", "7",
    "--no-progress",
]  # fmt: skip


def _train(out: Path, *extra: str) -> Path:
    before = set(out.iterdir()) if out.exists() else set()
    assert main(["train", *TINY, "--out-dir", str(out), *extra]) == 0
    (run_dir,) = set(out.iterdir()) - before
    return run_dir


SHIPPED_RECIPE: dict[str, Any] = {
    "scenarios": (),
    "exp_name": "shipped",
    "seed": 1,
    "total_steps": 49152,
    "n_envs": 8,
    "episode_steps": None,
    "randomize": True,
    "load_scale": (0.7, 1.1),
    "service_scale": (0.95, 1.05),
    "event_shift": (0.5, 1.5),
    "noise_add": (0.0, 0.1),
    "drop_add": (0.0, 0.02),
    "churn_cost": 0.02,
    "learning_rate": 3e-6,
    "anneal_lr": True,
    "n_steps": 1024,
    "batch_size": 1024,
    "n_epochs": 2,
    "gamma": 0.9,
    "gae_lambda": 0.95,
    "clip_range": 0.2,
    "ent_coef": 0.0,
    "vf_coef": 0.5,
    "max_grad_norm": 0.5,
    "net_arch": (128, 128),
    "log_std_init": -3.0,
    "imitation_steps": 500000,
    "imitation_rounds": 6,
    "imitation_epochs": 30,
    "imitation_lr": 1e-3,
    "imitation_bad_weight": 20.0,
    "teacher_drain_s": 10.0,
    "teacher_pull": 0.05,
    "bc_lr": 1e-5,
    "norm_reward": True,
    "clip_obs": 10.0,
    "out_dir": "runs",
    "tensorboard_dir": None,
    "checkpoint_every": 49152,
    "resume": None,
    "progress": True,
    "members": 2,
    "spec": FeatureSpec().to_dict(),
    "init": None,
    "mesh": "sim",
}
"""Every TrainConfig field at the value the shipped model was trained with (docs/benchmarks.md,
"How the shipped policy was trained")."""

RECIPE_COMMAND = """
    --members 2 --seed 1 --imitation-steps 500000 --imitation-rounds 6
    --imitation-epochs 30 --net-arch 128 128 --total-steps 49152 --log-std-init -3
    --learning-rate 3e-6 --n-epochs 2 --n-steps 1024 --batch-size 1024 --bc-lr 1e-5
    --service-scale 0.95 1.05 --checkpoint-every 49152
    --teacher-drain-s 10 --imitation-bad-weight 20 --teacher-pull 0.05 --exp-name shipped
    --out-dir runs
"""
"""The shipped model's command with every option spelled out (each at its default; the
options the shipped model does not use are gone)."""


def _config_from_cli(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_the_defaults_are_the_shipped_recipe_field_by_field():
    config = TrainConfig()
    assert [f.name for f in dataclasses.fields(TrainConfig)] == list(SHIPPED_RECIPE)
    for name, value in SHIPPED_RECIPE.items():
        assert getattr(config, name) == value, name
    config.validate()


def test_train_with_only_an_out_dir_runs_the_shipped_recipe():
    assert _config_from_cli("--out-dir", "elsewhere") == TrainConfig(out_dir="elsewhere")
    assert _config_from_cli(*RECIPE_COMMAND.split()) == TrainConfig()


def test_the_shipped_model_records_the_default_config():
    from agents.policy_file import DEFAULT_MODEL

    with np.load(DEFAULT_MODEL, allow_pickle=False) as data:
        recorded = json.loads(str(data["metadata_json"]))["config"]
    expected = json.loads(json.dumps(dataclasses.asdict(TrainConfig())))  # tuples -> lists
    for name, value in expected.items():
        if name != "out_dir":
            assert recorded[name] == value, name
    assert set(recorded) == set(expected)


def test_train_itself_trains_one_policy_only():
    from agents.training.ppo import train
    from meshcore.errors import ConfigError

    with pytest.raises(ConfigError, match="train_ensemble"):
        train(TrainConfig())


def test_tiny_train_writes_every_artifact(tmp_path, capsys):
    run_dir = _train(tmp_path / "runs", "--total-steps", "256")

    assert run_dir.name.startswith("steady-50__tiny__7__")
    for name in (
        "config.json",
        "model.zip",
        "vecnormalize.pkl",
        "policy.npz",
        "episodes.csv",
        "learning_curve.png",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_000000128", "step_000000256"]
    for ckpt in ckpts:
        assert (run_dir / "checkpoints" / ckpt / "model.zip").is_file()
        assert (run_dir / "checkpoints" / ckpt / "vecnormalize.pkl").is_file()

    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["seed"] == 7
    assert meta["config"]["scenarios"] == ["steady-50"]
    assert meta["config"]["net_arch"] == [16, 16]
    assert meta["env_steps"] == 256
    # 2 envs x 128 steps each, episodes of 40 steps -> 3 finished episodes per env
    episodes = read_episodes(run_dir / "episodes.csv")
    assert len(episodes) == 6
    assert all(e[2] == 40 and e[3] == "steady-50" and e[1] <= 0 for e in episodes)

    policy = load_ppo_policy(str(run_dir / "policy.npz"))
    sim = MeshSimulator(load_scenario("steady-50"), seed=0)
    for _ in range(5):
        weights = policy.decide(sim.observe())
        assert isinstance(weights, Weights)
        sim.step(weights)
    assert str(run_dir) in capsys.readouterr().out


def test_resume_continues_steps_and_episode_log(tmp_path):
    first = _train(tmp_path / "runs", "--total-steps", "256")
    ckpt = first / "checkpoints" / "step_000000128"
    second = _train(tmp_path / "runs", "--total-steps", "384", "--resume", str(ckpt))

    meta = json.loads((second / "config.json").read_text())
    assert meta["resumed_at_steps"] == 128
    assert meta["env_steps"] == 384
    old = read_episodes(ckpt / "episodes.csv")
    new = read_episodes(second / "episodes.csv")
    assert len(old) == 2
    assert new[: len(old)] == old
    assert len(new) == 8  # 2 envs x 384 / 2 steps each, 40-step episodes -> 4 per env
    assert new[-1][0] > old[-1][0]
    assert sorted(p.name for p in (second / "checkpoints").iterdir()) == [
        "step_000000256",
        "step_000000384",
    ]
    assert load_ppo_policy(str(second / "policy.npz")).name == "ppo"


def test_oracle_imitation_warm_start_fits_the_teacher(tmp_path):
    run_dir = _train(
        tmp_path / "runs",
        "--total-steps", "0",
        "--imitation-steps", "480",
        "--imitation-rounds", "2",
        "--imitation-epochs", "5",
        "--load-scale", "0.8", "1.0",
    )  # fmt: skip
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["load_scale"] == [0.8, 1.0]
    assert meta["imitation_env_steps"] == 480
    assert meta["imitation_final_actor_loss"] < meta["imitation_first_actor_loss"]
    assert meta["env_steps"] == 0
    assert load_ppo_policy(str(run_dir / "policy.npz")).name == "ppo"


def test_imitation_then_ppo_with_imitation_after_every_rollout(tmp_path):
    run_dir = _train(
        tmp_path / "runs",
        "--total-steps", "256",
        "--imitation-steps", "480",
        "--imitation-rounds", "2",
        "--imitation-epochs", "5",
        "--imitation-lr", "3e-3",
        "--bc-lr", "1e-4",
    )  # fmt: skip
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["bc_lr"] == 1e-4
    assert meta["imitation_final_actor_loss"] < meta["imitation_first_actor_loss"]
    assert meta["bc_passes"] == 2  # one per rollout of 2 envs x 64 steps
    assert meta["env_steps"] == 256
    assert load_ppo_policy(str(run_dir / "policy.npz")).name == "ppo"


@pytest.mark.parametrize("pull", [0.0, 0.05])
def test_oracle_target_through_the_prior_writes_the_teachers_weights(pull):
    """The label is in the network's (canonical) slot order; stepped, the env writes the
    teacher's split in the route's own order (many-subsets' versions get sorted)."""
    from agents.oracle import drain_aware_weights
    from agents.training.teacher import oracle_target
    from agents.training.wrappers import make_env

    config = TrainConfig(
        scenarios=("steady-90", "many-subsets"), randomize=False, teacher_pull=pull
    )
    env = make_env(config)
    checked = reordered = 0
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        for _ in range(4):
            target, mask = oracle_target(env, obs, config)
            sim = env.unwrapped.sim
            teacher, _ = drain_aware_weights(sim, sim.true_state(), 10.0, pull)
            order = env.get_wrapper_attr("slot_order")
            reordered += bool(np.any(order != np.arange(len(order))))
            obs, *_ = env.step(target)
            if mask.any():
                written = list(sim.weights.values())
                assert max(abs(a - b) for a, b in zip(written, teacher, strict=True)) <= 1
                checked += 1
    assert checked >= 8
    assert reordered >= 1


def test_resume_without_a_checkpoint_is_one_clear_error(tmp_path, capsys):
    code = main(["train", *TINY, "--out-dir", str(tmp_path), "--resume", str(tmp_path / "x")])
    assert code == 2
    assert "model.zip" in capsys.readouterr().err


def test_same_seed_same_weights(tmp_path):
    a = _train(tmp_path / "a", "--total-steps", "128")
    b = _train(tmp_path / "b", "--total-steps", "128")
    with np.load(a / "policy.npz") as fa, np.load(b / "policy.npz") as fb:
        for key in ("w0", "b0", "w2", "obs_mean", "obs_var"):
            assert np.array_equal(fa[key], fb[key]), key


def test_every_config_field_has_a_documented_option():
    helps = field_help()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    train_parser = sub.choices["train"]  # type: ignore[index]
    dests = {a.dest: a for a in train_parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "spec":
            continue
        assert f.name in dests, f.name
        assert len(helps.get(f.name, "")) > 10, f.name
        assert dests[f.name].help == helps[f.name]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gamma", "1.5"], "gamma"),
        (["--n-envs", "0"], "argument --n-envs"),
        (["--members", "0"], "argument --members"),
        (["nonexistent-scenario"], "nonexistent-scenario"),
        (["--members", "1", "nonexistent-scenario"], "nonexistent-scenario"),
        (["--imitation-lr", "0"], "imitation_lr"),
        (["--imitation-bad-weight", "-1"], "imitation_bad_weight"),
        (["--teacher-pull", "-0.1"], "teacher_pull"),
        (["--teacher-drain-s", "0"], "teacher_drain_s"),
        (["--obs-extension", "utilization"], "unrecognized arguments: --obs-extension"),
        (["--action-prior", "capacity"], "unrecognized arguments: --action-prior"),
        (["--activation", "relu"], "unrecognized arguments: --activation"),
        (["--imitation-anneal"], "unrecognized arguments: --imitation-anneal"),
    ],
)
def test_bad_values_exit_with_one_clear_line(tmp_path, capsys, args, message):
    """Argparse refuses some values and the retired options (SystemExit 2), TrainConfig.validate
    and the scenario loader the others (main returns 2): the same one line either way, and
    nothing written (with the default two members too)."""
    try:
        code = main(["train", "--out-dir", str(tmp_path), "--no-progress", *args])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_a_negative_seed_is_refused_before_any_training() -> None:
    from meshcore.errors import ConfigError

    with pytest.raises(ConfigError, match="seed must be >= 0"):
        TrainConfig(seed=-1).validate()


def test_training_leaves_nothing_in_the_temp_directory(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    _train(tmp_path / "runs", "--total-steps", "256")
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("SB3-")]


def test_a_training_process_with_two_members_leaves_its_tmpdir_empty(tmp_path):
    """As a user runs it: TMPDIR names an empty directory and `meshpilot train` runs two
    members in spawned processes (the default recipe's layout); nothing is left there, in
    particular no empty SB3-<time> folder per member."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPILOT_")}
    env["TMPDIR"] = str(scratch)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "meshpilot.cli", "train", *TINY, "--members", "2"]
    cmd += ["--total-steps", "128", "--out-dir", str(tmp_path / "runs")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "runs").glob("*/members/*/policy.npz"))
    assert sorted(p.name for p in scratch.iterdir()) == []

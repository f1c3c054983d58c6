"""`meshpilot train` end to end on a tiny job (agents.training + meshpilot.commands.train).

Cases:
- a few hundred steps through the CLI's main() write every artifact of the run directory
  (config, model, normalizer, numpy export, episode log, learning curve, checkpoints), named
  <scenario-set>__<exp>__<seed>__<ts>, and the export serves as a `Policy`;
- resuming from a checkpoint continues the step count and the episode log;
- the same seed gives the same trained weights;
- the sqrt action prior, the drain-aware teacher, cost-weighted and annealed imitation and
  scenario oversampling train and export (the drain-aware state itself: test_oracle.py);
- the teacher's imitation target (oracle, or hedged with a pull), put through the action
  prior and gain, decodes to the teacher's weights (within one point of rounding);
- every TrainConfig field has a documented option, and bad values exit with one clear line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.policy_file import load_ppo_policy
from agents.training.artifacts import read_episodes
from agents.training.config import TrainConfig, field_help
from envs.simulator.engine import MeshSimulator
from envs.simulator.scenario import load_scenario
from meshcore.model import Weights
from meshpilot.cli import build_parser, main
from tests.unit.agents.tiny_training import TINY_PPO

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


def test_tiny_train_writes_every_artifact(tmp_path, capsys):
    exported = tmp_path / "exported" / "p.npz"
    run_dir = _train(tmp_path / "runs", "--total-steps", "256", "--export-to", str(exported))

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

    assert exported.read_bytes() == (run_dir / "policy.npz").read_bytes()
    policy = load_ppo_policy(str(exported))
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
        "--permute-subsets", "1",
        "--load-scale", "0.8", "1.0",
    )  # fmt: skip
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["load_scale"] == [0.8, 1.0]
    assert meta["imitation_env_steps"] == 480
    assert meta["imitation_final_actor_loss"] < meta["imitation_first_actor_loss"]
    assert meta["env_steps"] == 0
    policy = load_ppo_policy(str(run_dir / "policy.npz"))
    assert policy.action_prior == "capacity"


def test_sqrt_prior_drain_teacher_weighted_annealed_imitation_and_oversampling(tmp_path):
    run_dir = _train(
        tmp_path / "runs",
        "--total-steps", "128",
        "--imitation-steps", "480",
        "--imitation-rounds", "2",
        "--imitation-epochs", "5",
        "--imitation-anneal",
        "--imitation-lr", "3e-3",
        "--teacher-drain-s", "10",
        "--teacher-pull", "0.05",
        "--imitation-bad-weight", "20",
        "--imitation-miss-weight", "10",
        "--imitation-miss-relative",
        "--bc-lr", "1e-4",
        "--obs-extension", "utilization",
        "--action-prior", "sqrt",
        "--action-gain", "0.25",
        "--oversample", "steady-50",
    )  # fmt: skip
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["config"]["action_prior"] == "sqrt"
    assert meta["config"]["action_gain"] == 0.25
    assert meta["config"]["teacher_pull"] == 0.05
    assert meta["config"]["oversample"] == ["steady-50"]
    assert meta["config"]["imitation_miss_weight"] == 10
    assert meta["config"]["imitation_miss_relative"] is True
    assert meta["imitation_final_actor_loss"] < meta["imitation_first_actor_loss"]
    policy = load_ppo_policy(str(run_dir / "policy.npz"))
    assert policy.action_prior == "sqrt"
    assert policy.obs_extension == "utilization"
    assert policy.action_gain == 0.25


def test_oversampled_scenarios_get_extra_pool_entries():
    from agents.training.wrappers import scenario_pool

    config = TrainConfig(scenarios=("steady-50", "steady-90"), oversample=("steady-90",) * 2)
    assert [sc.name for sc in scenario_pool(config, 0)] == ["steady-50", "steady-90"] + [
        "steady-90"
    ] * 2


@pytest.mark.parametrize(
    ("prior", "gain", "pull"), [("capacity", 1.0, 0.0), ("sqrt", 0.25, 0.05), ("sqrt", 0.1, 0.0)]
)
def test_oracle_target_through_the_prior_writes_the_teachers_weights(prior, gain, pull):
    from agents.action_prior import apply_action_prior
    from agents.oracle import hedged_weights
    from agents.training.teacher import oracle_target
    from agents.training.wrappers import make_env
    from meshcore.features import decode

    config = TrainConfig(
        scenarios=("steady-90", "many-subsets"),
        randomize=False,
        obs_extension="utilization",
        action_prior=prior,
        action_gain=gain,
        teacher_pull=pull,
    )
    spec = config.feature_spec
    env = make_env(config)
    checked = 0
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        for _ in range(4):
            target, mask = oracle_target(env, obs, config)
            sim = env.unwrapped.sim
            if mask.any():
                full = apply_action_prior(target, obs, spec, prior, gain)
                written = decode(full, spec.mask(len(sim.subsets)), sim.subsets)
                teacher = hedged_weights(sim.true_state(), pull)
                assert max(abs(a - b) for a, b in zip(written.values(), teacher, strict=True)) <= 1
                checked += 1
            obs, *_ = env.step(target)
    assert checked >= 8


def _latency_spike_env(**overrides: Any) -> tuple[TrainConfig, Any, np.ndarray]:
    """A training env on latency-spike without randomization, reset with seed 0, and its config
    (hedged teacher, pull 0.05, plain utilization inputs, no action prior)."""
    from agents.training.wrappers import make_env

    config = TrainConfig(
        scenarios=("latency-spike",), randomize=False, obs_extension="utilization",
        action_prior="none", teacher_pull=0.05, **overrides,
    )  # fmt: skip
    env = make_env(config)
    obs, _ = env.reset(seed=0)
    return config, env, obs


def test_late_teacher_labels_what_the_served_intervals_can_show():
    from agents.oracle import hedged_weights
    from agents.training.teacher import oracle_target, teacher_state
    from meshcore.features import decode

    sim = MeshSimulator(load_scenario("latency-spike"), seed=0)  # v1 at 0.4 from 600 s to 900 s
    factors = {}
    for t in (0.0, 600.0, 605.0, 900.0, 905.0):
        sim.t_s = t
        factors[t] = [teacher_state(sim, d).subsets[0].capacity_factor for d in (0, 1, 2)]
    assert factors[0.0] == [1.0, 1.0, 1.0]  # nothing before the first interval: its own
    assert factors[600.0] == [0.4, 1.0, 1.0]  # the loss starts now: not in the telemetry yet
    assert factors[605.0] == [0.4, 0.4, 1.0]
    assert factors[900.0] == [1.0, 0.4, 0.4]  # recovered now: the last interval was degraded
    assert factors[905.0] == [1.0, 1.0, 0.4]
    config, env, obs = _latency_spike_env(teacher_delay_steps=1)
    base = env.unwrapped
    base.sim.t_s = 600.0
    target, _ = oracle_target(env, obs, config)
    late = hedged_weights(teacher_state(base.sim, 1), 0.05)
    assert late != hedged_weights(base.sim.true_state(), 0.05)  # the loss moves the oracle
    written = decode(target, config.feature_spec.mask(2), base.sim.subsets)
    assert max(abs(a - b) for a, b in zip(written.values(), late, strict=True)) <= 1


def test_teacher_label_carries_the_cost_of_a_miss_only_when_asked():
    from agents.oracle import hedged_weights, miss_cost
    from agents.training.teacher import MISS_COST_CAP, teacher_label

    config, env, obs = _latency_spike_env(imitation_miss_weight=1000.0)
    sim = env.unwrapped.sim
    sim.t_s = 700.0  # v1 at 40 percent of its capacity: a knife edge
    label = teacher_label(env, obs, config, with_miss_cost=True)
    state = sim.true_state()
    expected = min(miss_cost(state, hedged_weights(state, 0.05)), MISS_COST_CAP)
    assert label.miss_cost == pytest.approx(expected)
    assert label.miss_cost > 1e-3
    assert teacher_label(env, obs, config).miss_cost == 0.0
    sim.t_s = 300.0
    assert teacher_label(env, obs, config, with_miss_cost=True).miss_cost < label.miss_cost / 10


def test_episode_means_average_each_episode_apart():
    from agents.training.imitation import episode_means

    values = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    done = np.array([[0, 0], [1, 0], [0, 1], [0, 0]], dtype=bool)
    assert episode_means(values, done).tolist() == [
        [1.5, 20.0],
        [1.5, 20.0],
        [3.5, 20.0],
        [3.5, 40.0],
    ]


def test_quiet_pairs_skip_the_teachers_moves_the_ticks_after_them_and_episode_ends():
    from agents.training.imitation import QUIET_TICKS, quiet_pairs

    steps = QUIET_TICKS + 12
    full = np.zeros((steps, 2, 3))
    mask = np.zeros((steps, 2, 3), dtype=bool)
    mask[:, :, :2] = True
    done = np.zeros((steps, 2), dtype=bool)
    full[4:, 0, 0] = 0.5  # env 0: the teacher moves between ticks 3 and 4
    full[:, 0, 2] = np.arange(steps)  # an absent slot changes: ignored
    done[10, 1] = True  # env 1: an episode ends at tick 10
    pairs = quiet_pairs(full, mask, done)
    by_env = {i: [(a // 2, b // 2) for a, b in pairs if a % 2 == i] for i in (0, 1)}
    assert all(b == a + 2 for a, b in pairs)  # the same env, one tick later (2 envs)
    assert by_env[0] == [(t, t + 1) for t in range(3 + QUIET_TICKS, steps - 1)]
    first_after_end = 10 + QUIET_TICKS
    assert by_env[1] == [(t, t + 1) for t in range(QUIET_TICKS - 1, 10)] + [
        (t, t + 1) for t in range(first_after_end, steps - 1)
    ]


def test_smooth_imitation_trains_and_counts_its_pairs(tmp_path):
    run = _train(
        tmp_path,
        "--imitation-steps", "960",
        "--imitation-rounds", "2",
        "--imitation-epochs", "3",
        "--total-steps", "128",
        "--imitation-smooth", "1.0",
        "--obs-extension", "utilization-trend-ema2",
        "--action-prior", "sqrt",
    )  # fmt: skip
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["imitation_smooth"] == 1.0
    assert meta["imitation_quiet_pairs"] > 0
    assert meta["imitation_final_actor_loss"] < meta["imitation_first_actor_loss"]


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
        (["nonexistent-scenario"], "nonexistent-scenario"),
        (["steady-50", "--oversample", "steady-90"], "steady-90"),
        (["--action-prior", "sqrt"], "utilization"),
        (["--imitation-lr", "0"], "imitation_lr"),
        (["--imitation-bad-weight", "-1"], "imitation_bad_weight"),
        (["--imitation-miss-weight", "-1"], "imitation_miss_weight"),
        (["--imitation-smooth", "1", "--action-gain", "0.5"], "imitation_smooth needs action_gain"),
        (["--action-gain", "0"], "action_gain"),
        (["--teacher-pull", "-0.1"], "teacher_pull"),
        (["--teacher-delay-steps", "-1"], "argument --teacher-delay-steps"),
        (["--action-gain", "1.5"], "action_gain"),
    ],
)
def test_bad_values_exit_with_one_clear_line(tmp_path, capsys, args, message):
    """Argparse refuses some values (SystemExit 2), TrainConfig.validate the others (main
    returns 2): the same one line either way."""
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

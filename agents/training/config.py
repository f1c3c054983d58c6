"""Train the PPO traffic-split policy offline against the simulator, and export it for serving.

This is the only module of meshpilot that imports torch and stable-baselines3. It trains on
`meshpilot/MeshSim-v0` with domain randomization over a scenario set (each episode draws a
scenario and perturbs load, service times, event times and telemetry), keeps the observation
normalizer (`VecNormalize`) next to the model, and exports the actor to the numpy `.npz`
format that `agents.ppo_policy` serves without torch. torch and stable-baselines3 are imported
inside the functions that need them, so `TrainConfig` (and `meshpilot train --help`) work
without the ``train`` extra.

What we learned training on the suite (2 CPU cores, one torch thread), and why the defaults
and options look the way they do:

* PPO from scratch learns the big reactions (drain a failing canary, shed load from a
  collapsing version) within ~1M steps, but not the 1-2 weight-point precision that decides
  the tail at 80-90 % load, and its deterministic policy drifts between checkpoints.
* The network outputs a *correction* to the capacity-proportional split (`action_prior`);
  starting from zero correction is already the proportional baseline.
* The best policies come from imitating the oracle (`agents.oracle`, which reads the
  simulator's true state) with DAgger (`imitation_steps`), the student seeing only what the
  controller sees, plus utilization inputs (`obs_extension`); PPO then fine-tunes with small
  steps while the oracle labels keep anchoring it (`bc_lr`). Large PPO steps after the warm
  start undo it within ~100k steps (Adam turns noisy advantages into full-size steps).
* A student that sees the load through a 30 s rate window cannot follow the oracle's
  instant reactions: on diurnal-bursts the oracle drains v3 at low load and moves back the
  moment a 1.6x burst starts; a one-step-late oracle already loses to the static square-root
  split there (0.0103 vs 0.0088), and the imitating student overloaded v2 for the whole burst,
  then kept it near saturation while its backlog drained. Together, the square-root split as
  the action prior (`action_prior` 'sqrt'), annealed imitation steps (`imitation_anneal`), samples
  weighted by the step's bad fraction (`imitation_bad_weight`) and a teacher that sheds load
  from subsets still holding a queue (`teacher_drain_s`) halved diurnal-bursts (0.027 ->
  0.012) and met the many-subsets claim, but noisy-telemetry got worse (0.0096 -> 0.017); the
  runs were combinations, not one-at-a-time ablations. Oversampling (`oversample`) helped the
  oversampled scenarios and hurt the others (noisy-telemetry 0.028).
* The oracle is the wrong teacher for a student that is necessarily late: its split is a knife
  edge. A hedged teacher (`teacher_pull`: the oracle's objective plus a pull toward the
  square-root split of the true capacities) is, one interval late, 0.83x the square-root split
  on diurnal-bursts where the late oracle is 1.17x, and costs at most 4 % elsewhere; imitating
  it met 15 of 18 of issue #3's claims (the plain oracle: 12).
* The PPO phase eroded imitation precision because behaviour cloning during PPO (`bc_lr`
  1e-4) stepped ten times larger than the annealed end of the imitation fit; with `bc_lr`
  1e-5 a short fine-tune (49k steps) keeps it, longer ones still drift (200k steps: 13 of 18).
* A cubic correction shape (`action_gain` < 1) made calm outputs more precise (steady-90) but
  large corrections steeper, and noisy telemetry then swung the split (4.9x the oracle).
* Each tick's telemetry window is noisy (p99 noise, dropped samples, arrival bursts), so a
  policy fed only the level and its change reacts to noise: it held a degrading subset's
  weight for 40 s of a capacity ramp, then swung back and forth. Moving averages of the
  utilizations, p99 and slow ratio (`obs_extension` 'utilization-trend-ema2', ~25 s and ~100 s)
  cut noisy-telemetry from 1.33x to 1.15x the oracle and made the policy write less often.
* Per-subset service-time randomization is kept narrow (``--service-scale 0.95 1.05``): the
  capacity hint is what the operator configured, and a policy that cannot trust it at all
  cannot be precise.

A run lives in ``<out_dir>/<scenario-set>__<exp_name>__<seed>__<timestamp>/``::

    config.json          the TrainConfig (plus versions), enough to reproduce the run
    model.zip            final SB3 model             vecnormalize.pkl  its normalizer
    policy.npz           numpy export (what `--policy ppo:PATH` serves)
    episodes.csv         env steps, return, length, scenario of every finished episode
    learning_curve.png   episode return vs env steps
    checkpoints/step_<N>/{model.zip, vecnormalize.pkl, episodes.csv}   resumable snapshots
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import inspect
import itertools
import json
import os
import platform
import random
import shutil
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers meshpilot/MeshSim-v0)
from agents.ppo_policy import (
    ACTION_PRIORS,
    OBS_EXTENSIONS,
    TrendMemory,
    apply_action_prior,
    extension_low,
    extension_size,
    has_any_data,
    save_npz,
    unshape_correction,
)
from envs.mesh_env import Randomization
from envs.simulator.scenario import Scenario, load_scenario, suite_paths
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec
from meshcore.reward import CHURN_COST

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

ENV_ID = "meshpilot/MeshSim-v0"
ACTIVATIONS = ("tanh", "relu")
"""Hidden activations the numpy export can run (SB3 ``activation_fn`` torch.nn.Tanh / ReLU)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; `meshpilot train` maps one option to each field."""

    scenarios: tuple[str, ...] = ()
    """Scenario files or suite names to train on; one is drawn per episode (empty: whole suite)."""
    exp_name: str = "ppo"
    """Experiment name, the second part of the run directory name."""
    seed: int = 1
    """Seed of python, numpy, torch and the envs (env i gets seed + i); same seed, same run."""
    total_steps: int = 1_000_000
    """PPO env steps (control intervals, summed over envs) to train for, counted from 0 even
    when resuming (0: export the imitation warm start as is)."""
    n_envs: int = 8
    """Parallel envs in one process (DummyVecEnv); more envs give more diverse rollouts."""
    episode_steps: int | None = None
    """Cap on episode length in control steps (None: the scenario's duration_s / step_s)."""
    randomize: bool = True
    """Domain randomization of load, service times, event times and telemetry at every reset,
    so the policy reacts to what it observes instead of memorizing the suite."""
    load_scale: tuple[float, float] = (0.7, 1.1)
    """Randomization range (low, high) of the factor on each scenario's mean arrival rate."""
    service_scale: tuple[float, float] = (0.8, 1.25)
    """Randomization range of the factor on each subset's service time (drawn per subset)."""
    event_shift: tuple[float, float] = (0.5, 1.5)
    """Randomization range of the factor on every event time."""
    noise_add: tuple[float, float] = (0.0, 0.1)
    """Randomization range of the relative p99 noise added to the scenario's telemetry noise."""
    drop_add: tuple[float, float] = (0.0, 0.02)
    """Randomization range of the probability added to the scenario's sample-drop probability."""
    permute_subsets: int = 0
    """Add this many random reorderings of each scenario's subsets to each env's pool, so every
    observation slot sees every kind of subset (the suite always lists the biggest first)."""
    churn_cost: float = CHURN_COST
    """Reward lost per 100 weight points moved (see meshcore.reward); higher values give
    calmer policies."""
    learning_rate: float = 3e-4
    """Adam step size (linearly annealed to 0 when anneal_lr)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over total_steps."""
    n_steps: int = 256
    """Rollout length per env between updates (steps); the batch is n_steps * n_envs."""
    batch_size: int = 256
    """Minibatch size of each gradient step (samples)."""
    n_epochs: int = 10
    """Passes over each rollout batch."""
    gamma: float = 0.9
    """Discount per control step; weights act within a few steps, so a short horizon suffices
    (0.9 is a ~10 step = 50 s horizon)."""
    gae_lambda: float = 0.95
    """GAE bias/variance trade-off."""
    clip_range: float = 0.2
    """PPO ratio clipping."""
    ent_coef: float = 0.0
    """Entropy bonus; the Gaussian's log_std already keeps exploring."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient norm clipping."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the actor and of the (separate) critic."""
    activation: str = "tanh"
    """Hidden activation: tanh or relu."""
    log_std_init: float = -1.0
    """Initial log std of the Gaussian policy (action units; Box is [-1, 1])."""
    action_prior: str = "capacity"
    """What the network's output is added to: 'capacity' (a correction to the
    capacity-proportional split), 'hold' (a change of the current weights), 'sqrt' (a
    correction to the square-root split from nominal capacity shares and the observed route
    utilization, the best static baseline on the suite; needs an obs_extension) or
    'none' (the logits themselves)."""
    action_gain: float = 1.0
    """Slope near zero of the network's correction to the prior (0 < gain <= 1): the output a
    becomes gain*a + (1-gain)*a^3, so the full range stays reachable while small corrections
    need gain-times larger outputs, i.e. are less sensitive to network error and telemetry
    noise (1: linear)."""
    imitation_steps: int = 0
    """Warm start: env steps (summed over envs) of DAgger imitation of the oracle before PPO
    (0: off). The oracle reads the simulator's true state, so it only ever runs here, as a
    teacher; the student sees observations only. PPO then improves on it (e.g. draining a
    backlog after a capacity drop, which the oracle's steady-state model ignores)."""
    imitation_rounds: int = 4
    """DAgger rounds: the first rolls out the oracle, the others the student (labelled by the
    oracle), each followed by a fit on everything collected so far."""
    imitation_epochs: int = 20
    """Passes over the collected data per fit."""
    imitation_lr: float = 1e-3
    """Adam step size of the imitation fits."""
    imitation_anneal: bool = False
    """Anneal the imitation step size linearly to 1 percent of imitation_lr within each fit (a
    constant step leaves the actor jittering by a few weight points around the oracle, which
    costs a lot at 90 percent load)."""
    imitation_bad_weight: float = 0.0
    """Cost-weighted imitation: a sample's weight in the imitation fits is 1 + this times the
    bad-request fraction of the step before or after it (the larger), so the rare states where
    the split is going wrong (a load burst, a capacity drop, a backlog) count as much as the
    many calm ones that dominate the data (0: all samples weigh the same)."""
    imitation_miss_weight: float = 0.0
    """Miss-cost-weighted imitation: add this times the teacher's `agents.oracle.miss_cost`
    (how much the modelled bad-request fraction rises per weight point missed, capped at
    MISS_COST_CAP) to a sample's weight in the imitation fits. Why: a miss of one point costs
    nothing at low load and a lot on a knife edge (2.4e-3 of all requests in latency-spike's
    degraded phase, 1.2e-2 on steady-90), so the fit should be most precise where a miss is
    expensive; the bad fraction (`imitation_bad_weight`) only tells where requests are
    already failing (0: off; 1000 adds 2.4 to a sample of latency-spike's degraded phase,
    12.5 to one of steady-90)."""
    imitation_miss_relative: bool = False
    """Divide each sample's miss cost (`imitation_miss_weight`) by the mean bad-request
    fraction of its episode (at least MISS_RELATIVE_FLOOR), i.e. weigh a miss by what it
    adds relative to what the episode loses anyway, which is what a ratio to the oracle per
    scenario measures: a short degraded phase in an otherwise calm episode then counts more
    than a knife edge that lasts the whole episode. Measured with weight 10 on the shipped
    recipe: the same 17 of issue 3's 18 claims, diurnal-bursts better, latency-spike level
    (docs/benchmarks.md), so the shipped recipe does not use it."""
    imitation_smooth: float = 0.0
    """Temporal smoothness in the imitation fits (in the spirit of CAPS, Mysore et al. 2021):
    add this times the mean squared change of the student's action between consecutive ticks
    of an episode where the teacher's action has not changed for six ticks (`QUIET_TICKS`).
    Why: in a steady degraded phase the teacher holds one split while each tick's telemetry
    window fluctuates, and a student that follows the fluctuations costs more bad requests
    on a knife edge (measured in latency-spike's degraded phase: 1.2 points of white
    noise around the oracle's split, 8 percent more; 0.6 points, 2 percent); onsets, where
    the teacher moves, are not penalized (0: off; needs action_gain 1)."""
    teacher_drain_s: float = 0.0
    """Drain-aware teacher (imitation labels, also for bc_lr): before asking the oracle, shrink
    each subset's capacity by the share its current queue would need to drain within this many
    seconds (0: the plain oracle, which ignores queues). Teaches the student to shed load from
    a subset that is still working off a backlog (e.g. after a load burst)."""
    teacher_pull: float = 0.0
    """Hedged teacher (imitation labels, also for bc_lr): the oracle's objective plus this
    times the squared distance (in shares) from the square-root split of the true capacities
    (0: the plain oracle). The plain oracle's split can be a knife edge (it drains a slow
    subset at low load, so a burst finds the fast one without headroom); a pull of ~0.05
    keeps the split near the robust square-root one wherever the model sees little to gain,
    and a student that necessarily reacts one interval late inherits that margin."""
    teacher_delay_steps: int = 0
    """Late teacher (imitation labels, also for bc_lr): ask the oracle about the true state of
    this many control intervals ago, i.e. what the telemetry of the intervals already served
    can show (0: the coming interval's). Why: a label that changes before any observation can
    (a capacity loss, its recovery, a load step) cannot be learned, and the fit spreads it over
    the observations that came before it (see docs/benchmarks.md for what 1 measured)."""
    oversample: tuple[str, ...] = ()
    """Scenario names (file stems, e.g. diurnal-bursts) that get one extra copy, with its own
    reorderings, in every env's pool per mention, so episodes draw them more often."""
    bc_lr: float = 0.0
    """Keep imitating during PPO: after every rollout, one pass of Adam steps of this size
    (annealed linearly to 0) fits the actor to the oracle's labels of the rollout's states
    (0: off). It stops PPO's noisy gradients from washing out the warm start in scenarios
    where the reward says little, while PPO's own updates improve on the teacher."""
    obs_extension: str = "none"
    """Inputs appended to the FeatureSpec vector: 'utilization' (observed rps / nominal
    capacity per subset and for the route), 'utilization-trend' (those plus how they and each
    subset's weight, error ratio and slow ratio changed since the last tick: the windowed
    telemetry's newest interval shows at once), 'utilization-trend-ema' (those plus moving
    averages of the utilizations and of each subset's p99 and slow ratio, ~25 s: steadier
    evidence of a degraded capacity through noisy telemetry), 'utilization-trend-ema2' (a
    second, ~100 s set of those averages too), 'utilization-trend-ema2-recent' (those plus
    each subset's p99 and slow ratio over the newest interval only, which show the queue of
    the last seconds) or 'none'."""
    norm_reward: bool = True
    """Scale rewards by the running return std (VecNormalize); bad fractions are small numbers."""
    scenario_reward_scale: bool = False
    """Also divide each reward by the running return std of its own scenario, so calm scenarios
    (bad fraction ~0.001) weigh as much in the gradient as overloaded ones (~0.3): the goals
    are ratios to baselines per scenario, not absolute differences."""
    clip_obs: float = 10.0
    """Clip of normalized observations (std units)."""
    out_dir: str = "runs"
    """Parent directory of run directories."""
    tensorboard_dir: str | None = None
    """Write TensorBoard logs here (needs the tensorboard package); None: off."""
    checkpoint_every: int = 100_000
    """Save a resumable checkpoint every this many env steps (0: only at the end)."""
    resume: str | None = None
    """Continue from a checkpoint: a run directory or a checkpoints/step_<N> directory (model.zip
    and vecnormalize.pkl inside); hyperparameters of this config apply from then on."""
    reset_log_std: bool = False
    """When resuming, set the policy's log std back to log_std_init (e.g. to fine-tune an
    imitation warm start with less exploration noise than it was created with)."""
    export_to: str | None = None
    """Also copy the exported policy.npz to this path (e.g. agents/models/default.npz)."""
    progress: bool = True
    """Show a tqdm progress bar on stderr."""
    members: int = 1
    """Train this many policies alike, seeds seed, seed+1, ..., in parallel processes (one per
    core), and export one ensemble policy.npz that writes the split of their mean action; each
    member's own run directory is kept under members/ (1: a single policy)."""
    spec: dict[str, float | int] = field(default_factory=lambda: FeatureSpec().to_dict())
    """FeatureSpec fields (the observation/action layout); the default is what the controller
    serves."""

    def validate(self) -> None:
        """Raise ConfigError for values that would fail later, deep inside SB3."""
        checks = [
            (self.total_steps >= 0, "total_steps must be >= 0"),
            (1 <= self.members <= 16, "members must be 1..16"),
            (
                self.members == 1 or self.resume is None,
                "resume continues one run: resume each member's run (members/ of the "
                "ensemble's run directory) with members 1, then combine their policy.npz "
                "files with `meshpilot ensemble`",
            ),
            (self.n_envs >= 1, "n_envs must be at least 1"),
            (self.n_steps >= 2, "n_steps must be at least 2"),
            (self.batch_size >= 2, "batch_size must be at least 2"),
            (self.n_epochs >= 1, "n_epochs must be at least 1"),
            (0 < self.gamma <= 1, "gamma must be in (0, 1]"),
            (0 <= self.gae_lambda <= 1, "gae_lambda must be in [0, 1]"),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.churn_cost >= 0, "churn_cost must be >= 0"),
            (self.checkpoint_every >= 0, "checkpoint_every must be >= 0"),
            (self.permute_subsets >= 0, "permute_subsets must be >= 0"),
            (self.imitation_steps >= 0, "imitation_steps must be >= 0"),
            (self.imitation_rounds >= 1, "imitation_rounds must be >= 1"),
            (self.imitation_epochs >= 1, "imitation_epochs must be >= 1"),
            (self.bc_lr >= 0, "bc_lr must be >= 0"),
            (self.imitation_lr > 0, "imitation_lr must be positive"),
            (self.imitation_bad_weight >= 0, "imitation_bad_weight must be >= 0"),
            (
                0 <= self.imitation_miss_weight < float("inf"),
                "imitation_miss_weight must be a finite number >= 0",
            ),
            (
                0 <= self.imitation_smooth < float("inf"),
                "imitation_smooth must be a finite number >= 0",
            ),
            (
                self.imitation_smooth == 0 or self.action_gain == 1,
                "imitation_smooth needs action_gain 1 (the penalty is on the linear action)",
            ),
            (self.teacher_drain_s >= 0, "teacher_drain_s must be >= 0"),
            (self.teacher_delay_steps >= 0, "teacher_delay_steps must be >= 0"),
            (0 <= self.teacher_pull < float("inf"), "teacher_pull must be a finite number >= 0"),
            (0 < self.action_gain <= 1, "action_gain must be in (0, 1]"),
            (
                self.action_prior != "sqrt" or self.obs_extension != "none",
                "the sqrt action prior needs an obs_extension with utilization inputs (not 'none')",
            ),
            *[
                (
                    len(r) == 2 and 0 <= r[0] <= r[1],
                    f"{name} must be two numbers 0 <= low <= high, got {list(r)}",
                )
                for name, r in (
                    ("load_scale", self.load_scale),
                    ("service_scale", self.service_scale),
                    ("event_shift", self.event_shift),
                    ("noise_add", self.noise_add),
                    ("drop_add", self.drop_add),
                )
            ],
            (self.load_scale[0] > 0 and self.service_scale[0] > 0, "scales must be positive"),
            (all(w > 0 for w in self.net_arch), "net_arch widths must be positive"),
            (self.activation in ACTIVATIONS, f"activation must be one of {sorted(ACTIVATIONS)}"),
            (self.action_prior in ACTION_PRIORS, f"action_prior must be one of {ACTION_PRIORS}"),
            (
                self.obs_extension in OBS_EXTENSIONS,
                f"obs_extension must be one of {OBS_EXTENSIONS}",
            ),
            (
                self.episode_steps is None or self.episode_steps >= 1,
                "episode_steps must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train config: {message}")
        try:
            FeatureSpec.from_dict(dict(self.spec))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train config: invalid feature spec ({err})") from err

    def randomization(self) -> Randomization | bool:
        """The env's `Randomization` from the range fields (False when randomize is off)."""
        if not self.randomize:
            return False
        return Randomization(
            load_scale=self.load_scale,
            service_scale=self.service_scale,
            event_shift=self.event_shift,
            noise_add=self.noise_add,
            drop_add=self.drop_add,
        )

    @property
    def feature_spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(dict(self.spec))

    def scenario_paths(self) -> list[str]:
        return list(self.scenarios) if self.scenarios else [str(p) for p in suite_paths()]

    @property
    def scenario_set(self) -> str:
        """Short name of the scenario set for the run directory."""
        if not self.scenarios:
            return "suite"
        names = [Path(s).stem for s in self.scenarios]
        return names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_help() -> dict[str, str]:
    """The docstring under each TrainConfig field (CleanRL style), for `meshpilot train --help`.

    Read from the source with `ast`, so the help text has one home: the dataclass.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(TrainConfig)))
    body = tree.body[0].body if isinstance(tree.body[0], ast.ClassDef) else []
    helps: dict[str, str] = {}
    for stmt, nxt in itertools.pairwise(body):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            helps[stmt.target.id] = " ".join(nxt.value.value.split())
    return helps


def seed_everything(seed: int) -> None:
    """The one place that seeds python, numpy and torch (envs are seeded through the VecEnv)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


class PriorActionWrapper(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Adds the action prior (see `agents.ppo_policy.apply_action_prior`) before the env decodes.

    Serving applies the very same function to the network's output, so the exported policy
    writes the weights it was trained to write. It also copies the scenario name of the episode
    into every step's info, for the episode log.
    """

    def __init__(
        self,
        env: gym.Env[np.ndarray, np.ndarray],
        spec: FeatureSpec,
        prior: str,
        gain: float = 1.0,
    ):
        super().__init__(env)
        self._spec = spec
        self._prior = prior
        self._gain = gain
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
        full = apply_action_prior(action, self._obs, self._spec, self._prior, self._gain)
        full = full.astype(np.float32)
        obs, r, terminated, truncated, info = self.env.step(full)
        self._obs = obs
        info["scenario"] = self._scenario
        return obs, float(r), terminated, truncated, info


class ScenarioRewardScale(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Divides rewards by a running std of the discounted return of the episode's scenario.

    VecNormalize's reward scaling uses one std for all scenarios, so scenarios whose bad
    fraction is 100x smaller contribute 100x smaller advantages and are effectively ignored.
    Statistics live in the wrapper (one per env) and restart when training resumes.
    """

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], gamma: float, eps: float = 1e-8):
        super().__init__(env)
        self._gamma = gamma
        self._eps = eps
        self._stats: dict[str, tuple[float, float, float]] = {}
        self._scenario = ""
        self._ret = 0.0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._scenario = str(info.get("scenario", ""))
        self._ret = 0.0
        return obs, info

    def _update(self, x: float) -> float:
        """Welford update of (count, mean, M2) of discounted returns; returns the std."""
        count, mean, m2 = self._stats.get(self._scenario, (0.0, 0.0, 0.0))
        count += 1.0
        delta = x - mean
        mean += delta / count
        m2 += delta * (x - mean)
        self._stats[self._scenario] = (count, mean, m2)
        return float(np.sqrt(m2 / count)) if count > 1 else 1.0

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, r, terminated, truncated, info = self.env.step(action)
        self._ret = self._ret * self._gamma + float(r)
        std = self._update(self._ret)
        if terminated or truncated:
            self._ret = 0.0
        return obs, float(r) / (std + self._eps), terminated, truncated, info


def permuted(scenario: Scenario, order: Sequence[int]) -> Scenario:
    """`scenario` with its subsets listed in `order` (same mesh, other observation slots)."""
    subsets = [scenario.subsets[i].model_dump() for i in order]
    return scenario.with_changes(subsets=subsets)


def scenario_pool(config: TrainConfig, rank: int) -> list[Scenario]:
    """The scenarios env `rank` draws from: the set, plus `permute_subsets` reorderings each."""
    base = [load_scenario(p) for p in config.scenario_paths()]
    names = [sc.name for sc in base]
    for name in config.oversample:
        if name not in names:
            raise ConfigError(f"--oversample {name}: not in the scenario set ({', '.join(names)})")
        base.append(base[names.index(name)])
    rng = np.random.default_rng([config.seed, rank])
    pool = list(base)
    for sc in base:
        if len(sc.subsets) < 2:
            continue
        for _ in range(config.permute_subsets):
            pool.append(permuted(sc, [int(i) for i in rng.permutation(len(sc.subsets))]))
    return pool


class ExtendObservation(gym.ObservationWrapper[np.ndarray, np.ndarray, np.ndarray]):
    """Appends `agents.ppo_policy.extend_observation`'s inputs, as serving does (with the
    same `TrendMemory`, cleared at every reset like a policy's)."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], spec: FeatureSpec, extension: str):
        super().__init__(env)
        self._spec = spec
        self._extension = extension
        self._memory = TrendMemory()
        size = spec.obs_size + extension_size(spec, extension)
        low = extension_low(spec, extension)
        self.observation_space = gym.spaces.Box(low, spec.p99_clip, (size,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self._memory.clear()
        return super().reset(seed=seed, options=options)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        obs = self.env.unwrapped.observation  # type: ignore[attr-defined]
        return self._memory.extend(observation, obs, self._spec, self._extension)


class OracleLabel(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Puts the oracle's target for the state an action was taken in into that step's info
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
    """One training env: MeshSim-v0 over the scenario pool, action prior, episode Monitor."""
    from stable_baselines3.common.monitor import Monitor

    scenarios = scenario_pool(config, rank)
    env = gym.make(
        ENV_ID,
        scenarios=scenarios,
        randomize=config.randomization(),
        spec=config.feature_spec,
        max_steps=config.episode_steps,
        churn_cost=config.churn_cost,
    )
    if config.obs_extension != "none":
        env = ExtendObservation(env, config.feature_spec, config.obs_extension)
    env = PriorActionWrapper(env, config.feature_spec, config.action_prior, config.action_gain)
    if config.bc_lr > 0:
        env = OracleLabel(env, config)
    env = Monitor(env, info_keywords=("scenario",))  # logs the unscaled reward
    if config.scenario_reward_scale:
        env = ScenarioRewardScale(env, config.gamma)
    return env


def make_vec_env(config: TrainConfig) -> DummyVecEnv:
    """`n_envs` envs in one process; FACTS.md: subprocess envs were slower on 2 cores."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    vec = DummyVecEnv(
        [lambda rank=rank: make_env(config, rank) for rank in range(config.n_envs)]  # type: ignore[misc]
    )
    vec.seed(config.seed)
    return vec


Episode = tuple[int, float, int, str]
"""One finished training episode: env steps so far, return, length (steps), scenario name."""


def _run_callback(
    *,
    run_dir: Path,
    total_steps: int,
    checkpoint_every: int,
    episodes: list[Episode],
    progress: bool,
    bc_lr: float = 0.0,
    batch_size: int = 256,
) -> Any:
    """Progress bar, episode log and periodic resumable checkpoints in one SB3 callback.

    (Built by a function so that importing this module does not import stable-baselines3.)
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class RunCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self._bar: Any = None
            self._next_ckpt = 0
            self._targets: list[np.ndarray] = []
            self._masks: list[np.ndarray] = []
            self._bc_optimizer: Any = None
            self.bc_passes = 0

        def _imitate_rollout(self) -> None:
            """One pass of Adam steps fitting the actor's mean to the rollout's oracle labels."""
            model: Any = self.model
            buffer = model.rollout_buffer
            if bc_lr <= 0 or len(self._targets) != buffer.buffer_size:
                return
            policy: Any = model.policy
            actor = [
                *policy.mlp_extractor.policy_net.parameters(),
                *policy.action_net.parameters(),
            ]
            if self._bc_optimizer is None:
                self._bc_optimizer = torch.optim.Adam(actor, lr=bc_lr)
            lr = bc_lr * max(0.0, 1.0 - model.num_timesteps / max(total_steps, 1))
            for group in self._bc_optimizer.param_groups:
                group["lr"] = lr
            obs = torch.as_tensor(buffer.observations.reshape(-1, buffer.observations.shape[-1]))
            y = torch.as_tensor(np.stack(self._targets).reshape(obs.shape[0], -1))
            m = torch.as_tensor(np.stack(self._masks).reshape(obs.shape[0], -1))
            y, m = y.float(), m.float()
            perm = torch.randperm(obs.shape[0])
            for start in range(0, obs.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                latent_pi = policy.mlp_extractor.forward_actor(policy.extract_features(obs[idx]))
                mean = policy.action_net(latent_pi)
                loss = ((mean - y[idx]) ** 2 * m[idx]).sum() / m[idx].sum().clamp(min=1.0)
                self._bc_optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(actor, 0.5)
                self._bc_optimizer.step()
            self.bc_passes += 1

        def _on_rollout_start(self) -> None:
            self._targets.clear()
            self._masks.clear()

        def _on_rollout_end(self) -> None:
            self._imitate_rollout()

        def _on_training_start(self) -> None:
            start = self.model.num_timesteps
            if checkpoint_every:
                self._next_ckpt = (start // checkpoint_every + 1) * checkpoint_every
            if progress:
                self._bar = tqdm(
                    total=total_steps, initial=start, unit="step", desc="train", smoothing=0.05
                )

        def _on_step(self) -> bool:
            infos = self.locals.get("infos", [])
            if bc_lr > 0 and infos and "oracle_target" in infos[0]:
                self._targets.append(np.stack([i["oracle_target"] for i in infos]))
                self._masks.append(np.stack([i["oracle_mask"] for i in infos]))
            for info in infos:
                ep = info.get("episode")
                if ep is not None:
                    episodes.append(
                        (self.num_timesteps, float(ep["r"]), int(ep["l"]), str(info["scenario"]))
                    )
            if self._bar is not None:
                self._bar.n = min(self.num_timesteps, total_steps)
                if episodes and self.n_calls % 50 == 0:
                    recent = float(np.mean([e[1] for e in episodes[-50:]]))
                    self._bar.set_postfix(ep_return=f"{recent:.2f}", refresh=False)
                self._bar.update(0)
            if checkpoint_every and self.num_timesteps >= self._next_ckpt:
                save_checkpoint(self.model, run_dir, episodes)
                self._next_ckpt += checkpoint_every
            return True

        def _on_training_end(self) -> None:
            if self._bar is not None:
                self._bar.n = min(self.num_timesteps, total_steps)
                self._bar.close()

    return RunCallback()


def _write_episodes(path: Path, episodes: Sequence[Episode]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["env_steps", "return", "length", "scenario"])
        writer.writerows(episodes)


def read_episodes(path: Path) -> list[Episode]:
    """The episode log written next to a model ([] when absent)."""
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        (int(r["env_steps"]), float(r["return"]), int(r["length"]), r["scenario"]) for r in rows
    ]


def save_checkpoint(model: BaseAlgorithm, run_dir: Path, episodes: Sequence[Episode]) -> Path:
    """Write ``checkpoints/step_<N>/`` with model, normalizer and episode log; returns it."""
    ckpt = run_dir / "checkpoints" / f"step_{model.num_timesteps:09d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    model.save(ckpt / "model.zip")
    vecnorm = model.get_vec_normalize_env()
    if vecnorm is not None:
        vecnorm.save(str(ckpt / "vecnormalize.pkl"))
    _write_episodes(ckpt / "episodes.csv", episodes)
    return ckpt


def _resume_files(resume: str) -> tuple[Path, Path, Path]:
    base = Path(resume)
    if base.is_file() and base.suffix == ".zip":
        base = base.parent
    model, vecnorm = base / "model.zip", base / "vecnormalize.pkl"
    if not model.is_file() or not vecnorm.is_file():
        raise ConfigError(
            f"--resume {resume}: expected model.zip and vecnormalize.pkl in {base} "
            "(a run directory or one of its checkpoints/step_<N> directories)"
        )
    return model, vecnorm, base / "episodes.csv"


def _learning_rate(config: TrainConfig) -> Any:
    if not config.anneal_lr:
        return config.learning_rate
    lr = config.learning_rate
    return lambda progress_remaining: lr * max(progress_remaining, 0.02)


def actor_layers(model: PPO) -> list[tuple[np.ndarray, np.ndarray]]:
    """The actor's Linear layers (policy_net, then action_net) as numpy (out, in) / (out,)."""
    import torch

    policy = model.policy
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    for module in [*policy.mlp_extractor.policy_net, policy.action_net]:
        if isinstance(module, torch.nn.Linear):
            weight = module.weight.detach().cpu().numpy().copy()
            bias = module.bias.detach().cpu().numpy().copy()
            layers.append((weight, bias))
    return layers


def _activation_name(model: PPO) -> str:
    import torch

    names = {torch.nn.Tanh: "tanh", torch.nn.ReLU: "relu"}
    fn = model.policy.activation_fn
    if fn not in names:
        raise ConfigError(f"cannot export activation {fn}; use tanh or relu")
    return names[fn]


def export_npz(
    model: PPO,
    vecnormalize: VecNormalize,
    spec: FeatureSpec,
    path: str | Path,
    *,
    action_prior: str = "none",
    obs_extension: str = "none",
    action_gain: float = 1.0,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export the actor and the observation normalizer of `model` for `agents.ppo_policy`."""
    if model.policy.squash_output:
        raise ConfigError("cannot export a policy with squash_output (gSDE); use a Gaussian")
    if not vecnormalize.norm_obs:
        raise ConfigError("export needs VecNormalize(norm_obs=True)")
    rms = vecnormalize.obs_rms
    if isinstance(rms, dict):
        raise ConfigError("export needs a Box observation space, not a Dict one")
    return save_npz(
        path,
        spec=spec,
        layers=actor_layers(model),
        activation=_activation_name(model),
        obs_mean=np.asarray(rms.mean),
        obs_var=np.asarray(rms.var),
        clip_obs=float(vecnormalize.clip_obs),
        eps=float(vecnormalize.epsilon),
        action_prior=action_prior,
        obs_extension=obs_extension,
        action_gain=action_gain,
        metadata=metadata,
    )


def plot_learning_curve(
    episodes: Sequence[Episode] | Mapping[str, Sequence[Episode]], path: Path
) -> Path:
    """Episode return vs env steps as a PNG: points plus a rolling mean for one run, one
    rolling mean per member (keyed by label) for an ensemble."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = dict(episodes) if isinstance(episodes, Mapping) else {"": list(episodes)}
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, eps) in enumerate(curves.items()):
        if not eps:
            continue
        steps = np.array([e[0] for e in eps], dtype=np.float64)
        rets = np.array([e[1] for e in eps], dtype=np.float64)
        # parallel envs end episodes at the same step: one mean per step, then a rolling mean
        at, where = np.unique(steps, return_inverse=True)
        per_step = np.bincount(where, weights=rets) / np.bincount(where)
        window = max(1, min(20, len(at) // 5))
        smooth = np.convolve(per_step, np.ones(window) / window, mode="valid")
        if label:
            ax.plot(at[window - 1 :], smooth, color=f"C{i}", label=f"{label} (mean of {window})")
        else:
            ax.scatter(steps, rets, s=4, alpha=0.3, label="episode")
            ax.plot(at[window - 1 :], smooth, color="C1", label=f"mean of {window}")
    if any(curves.values()):
        ax.legend(loc="lower right")
    ax.set_xlabel("env steps")
    ax.set_ylabel("episode return (-bad fraction - churn, summed)")
    ax.set_title("meshpilot PPO learning curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def new_run_dir(config: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{config.scenario_set}__{config.exp_name}__{config.seed}__{stamp}"
    base = Path(config.out_dir) / name
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


def teacher_state(sim: Any, delay_steps: int) -> Any:
    """The true state the teacher labels with: the coming interval's (`delay_steps` 0) or the
    one `delay_steps` intervals back, at its middle (the episode's first interval before that)."""
    step_s = sim.scenario.step_s
    return sim.true_state(max(sim.t_s - delay_steps * step_s, 0.0) + step_s / 2)


MISS_COST_CAP = 0.02
"""Cap on the miss cost that weighs an imitation sample (bad-request fraction per weight
point): beyond it a subset is saturated and the state is lost whatever one point does."""


MISS_RELATIVE_FLOOR = 0.001
"""Least episode bad-request fraction `imitation_miss_relative` divides by (steady-50's)."""


def episode_means(values: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Each (step, env) entry of `values` replaced by the mean over its episode's steps in
    this array (`done[t, i]`: step t ended env i's episode; the array's ends cut episodes)."""
    steps, n_envs = values.shape
    episode = np.vstack([np.zeros((1, n_envs), dtype=np.int64), np.cumsum(done[:-1], axis=0)])
    ids = (episode + np.arange(n_envs) * steps).ravel()  # one id per (env, episode)
    sums = np.bincount(ids, weights=np.asarray(values, dtype=np.float64).ravel())
    counts = np.bincount(ids)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return means[ids].reshape(steps, n_envs)


class TeacherLabel(NamedTuple):
    """What the teacher says about one observation: the network output `oracle_target`
    returns, the mask of present slots, the action prior the target undoes and the cost of a
    one-point miss there (`agents.oracle.miss_cost`, capped; 0 unless asked for)."""

    target: np.ndarray
    mask: np.ndarray
    prior: np.ndarray
    miss_cost: float


def teacher_label(
    env: gym.Env[np.ndarray, np.ndarray],
    obs_vec: np.ndarray,
    config: TrainConfig,
    *,
    with_miss_cost: bool = False,
) -> TeacherLabel:
    """The teacher's `TeacherLabel` for the observation `obs_vec` of training env `env`."""
    from agents.oracle import drain_aware_weights, hedged_weights, miss_cost
    from meshcore.features import encode_weights
    from meshcore.model import Weights

    base = env.unwrapped
    sim = base.sim  # type: ignore[attr-defined]
    spec = config.feature_spec
    state = teacher_state(sim, config.teacher_delay_steps)
    if config.teacher_drain_s > 0:
        best, state = drain_aware_weights(sim, state, config.teacher_drain_s, config.teacher_pull)
    else:
        best = hedged_weights(state, config.teacher_pull)
    weights = Weights(sim.subsets, best)
    full = encode_weights(weights, spec).astype(np.float64)
    prior = apply_action_prior(np.zeros(spec.max_subsets), obs_vec, spec, config.action_prior)
    mask = spec.mask(len(sim.subsets))
    if not has_any_data(obs_vec, spec):  # the network is not consulted there
        mask = np.zeros_like(mask)
    miss = min(miss_cost(state, best), MISS_COST_CAP) if with_miss_cost else 0.0
    return TeacherLabel(unshape_correction(full - prior, config.action_gain), mask, prior, miss)


def oracle_target(
    env: gym.Env[np.ndarray, np.ndarray], obs_vec: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(network output that makes the env write the oracle's weights, mask of present slots).

    `env` is a training env (its base is a MeshEnv); the target undoes the action prior, so
    ``apply_action_prior(target) == encode_weights(oracle weights)`` up to clipping.
    """
    label = teacher_label(env, obs_vec, config)
    return label.target, label.mask


QUIET_TICKS = 6
"""`imitation_smooth` penalizes a student's move only where the teacher has not moved for this
many ticks (the suite's 30 s telemetry window at 5 s ticks): right after the teacher moves, a
student that sees the change through the window has to catch up."""


def _quiet_pairs(full: np.ndarray, mask: np.ndarray, done: np.ndarray) -> np.ndarray:
    """(pairs, 2) indices, into the round's samples flattened time-major, of consecutive ticks
    (t, t + 1) of one env's episode where the teacher's full action `full` (steps, envs, slots)
    did not change from t - QUIET_TICKS + 1 to t + 1 on the present slots `mask`."""
    steps, n_envs = full.shape[:2]
    out: list[tuple[int, int]] = []
    for i in range(n_envs):
        quiet = 0
        for t in range(steps - 1):
            present = mask[t, i] | mask[t + 1, i]
            same = not done[t, i] and bool(
                np.all(np.abs(full[t + 1, i] - full[t, i])[present] < 1e-6)
            )
            quiet = quiet + 1 if same else 0
            if quiet >= QUIET_TICKS and present.any():
                out.append((t * n_envs + i, (t + 1) * n_envs + i))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _actor_mean(policy: Any, x: Any) -> Any:
    latent_pi, _ = policy.mlp_extractor(policy.extract_features(x))
    return policy.action_net(latent_pi)


def imitate_oracle(model: PPO, vecnorm: VecNormalize, config: TrainConfig) -> dict[str, Any]:
    """DAgger warm start of actor and critic from the oracle; returns statistics for config.json.

    Round 0 drives the envs with the oracle's weights, later rounds with the student's
    deterministic action; every visited state is labelled with the oracle's target. After each
    round the actor's mean is fitted by masked MSE to the targets, and the critic to the
    discounted (normalized) returns of the visited states, so PPO starts from a sensible
    policy *and* sensible advantages.
    """
    import torch

    venv = vecnorm.venv
    n_envs = venv.num_envs
    n_in = vecnorm.observation_space.shape[0]  # type: ignore[index]
    per_round = max(1, config.imitation_steps // (config.imitation_rounds * n_envs))
    spec = config.feature_spec
    raw_obs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    returns: list[np.ndarray] = []
    sample_weights: list[np.ndarray] = []
    priors: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    smooth = config.imitation_smooth > 0
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.imitation_lr)
    losses: list[float] = []
    gamma = config.gamma
    vecnorm.reset()
    for rnd in range(config.imitation_rounds):
        obs_r = np.zeros((per_round, n_envs, n_in), dtype=np.float32)
        tgt_r = np.zeros((per_round, n_envs, spec.max_subsets))
        mask_r = np.zeros((per_round, n_envs, spec.max_subsets), dtype=bool)
        rew_r = np.zeros((per_round, n_envs))
        done_r = np.zeros((per_round, n_envs), dtype=bool)
        bad_r = np.zeros((per_round, n_envs))
        prior_r = np.zeros((per_round, n_envs, spec.max_subsets))
        miss_r = np.zeros((per_round, n_envs))
        for t in range(per_round):
            original = np.asarray(vecnorm.get_original_obs())
            for i, env in enumerate(venv.envs):  # type: ignore[attr-defined]
                tgt_r[t, i], mask_r[t, i], prior_r[t, i], miss_r[t, i] = teacher_label(
                    env, original[i], config, with_miss_cost=config.imitation_miss_weight > 0
                )
            obs_r[t] = original
            if rnd == 0:
                actions = tgt_r[t].astype(np.float32)
            else:
                actions, _ = model.predict(vecnorm.normalize_obs(original), deterministic=True)
            _, rew_r[t], done_r[t], infos = vecnorm.step(actions)
            bad_r[t] = [i.get("bad", 0) / max(i.get("requests", 0), 1) for i in infos]
        ret = np.zeros((per_round, n_envs))
        running = np.zeros(n_envs)
        for t in range(per_round - 1, -1, -1):
            running = rew_r[t] + gamma * running * (1.0 - done_r[t])
            ret[t] = running
        keep = max(1, per_round - int(5 / max(1e-6, 1 - gamma)))  # drop unfinished tails
        if smooth:
            offset = sum(len(o) for o in raw_obs)
            pairs.append(_quiet_pairs(tgt_r[:keep] + prior_r[:keep], mask_r[:keep], done_r[:keep]))
            pairs[-1] += offset
            priors.append(prior_r[:keep].reshape(-1, spec.max_subsets))
        raw_obs.append(obs_r[:keep].reshape(-1, n_in))
        targets.append(tgt_r[:keep].reshape(-1, spec.max_subsets))
        masks.append(mask_r[:keep].reshape(-1, spec.max_subsets))
        returns.append(ret[:keep].reshape(-1))
        before = np.vstack([np.zeros((1, n_envs)), bad_r[:-1]])  # the step the obs shows
        before[1:][done_r[:-1]] = 0.0  # a new episode's first observation shows nothing
        if config.imitation_miss_relative:
            miss_r /= np.maximum(episode_means(bad_r, done_r), MISS_RELATIVE_FLOOR)
        weight = (
            1.0
            + config.imitation_bad_weight * np.maximum(before, bad_r)
            + config.imitation_miss_weight * miss_r
        )
        sample_weights.append(weight[:keep].reshape(-1))
        x = torch.as_tensor(vecnorm.normalize_obs(np.concatenate(raw_obs)), dtype=torch.float32)
        y = torch.as_tensor(np.concatenate(targets), dtype=torch.float32)
        m = torch.as_tensor(np.concatenate(masks), dtype=torch.float32)
        g = torch.as_tensor(np.concatenate(returns), dtype=torch.float32)
        sw = torch.as_tensor(np.concatenate(sample_weights), dtype=torch.float32)[:, None]
        if smooth:
            pr = torch.as_tensor(np.concatenate(priors), dtype=torch.float32)
            pair_index = torch.as_tensor(np.concatenate(pairs), dtype=torch.long)
        n = x.shape[0]
        gen = torch.Generator().manual_seed(config.seed + rnd)
        n_batches = config.imitation_epochs * -(-n // config.batch_size)
        step = 0
        for _ in range(config.imitation_epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch_size):
                if config.imitation_anneal:
                    for group in optimizer.param_groups:
                        group["lr"] = config.imitation_lr * (1.0 - 0.99 * step / n_batches)
                step += 1
                idx = perm[start : start + config.batch_size]
                features = policy.extract_features(x[idx])
                latent_pi, latent_vf = policy.mlp_extractor(features)
                mean = policy.action_net(latent_pi)
                value = policy.value_net(latent_vf).squeeze(-1)
                mw = m[idx] * sw[idx]
                actor_loss = ((mean - y[idx]) ** 2 * mw).sum() / mw.sum().clamp(min=1.0)
                critic_loss = ((value - g[idx]) ** 2).mean()
                loss = actor_loss + config.vf_coef * critic_loss
                if smooth and len(pair_index) > 0:
                    pick = pair_index[
                        torch.randint(len(pair_index), (config.batch_size,), generator=gen)
                    ]
                    now, nxt = pick[:, 0], pick[:, 1]
                    both = m[now] * m[nxt]
                    moved = (_actor_mean(policy, x[now]) + pr[now]) - (
                        _actor_mean(policy, x[nxt]) + pr[nxt]
                    )
                    smooth_loss = (moved**2 * both).sum() / both.sum().clamp(min=1.0)
                    loss = loss + config.imitation_smooth * smooth_loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
            losses.append(float(actor_loss.detach()))
    return {
        "imitation_samples": int(sum(len(o) for o in raw_obs)),
        "imitation_env_steps": int(per_round * n_envs * config.imitation_rounds),
        "imitation_first_actor_loss": losses[0] if losses else None,
        "imitation_final_actor_loss": losses[-1] if losses else None,
        "imitation_quiet_pairs": int(sum(len(p) for p in pairs)),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def train(config: TrainConfig) -> Path:
    """Train (or resume) one run and write every artifact; returns the run directory.

    With ``members`` > 1, trains an ensemble (`agents.ensemble.train_ensemble`).
    """
    config.validate()
    if config.members > 1:
        from agents.ensemble import train_ensemble

        return train_ensemble(config)
    names = [load_scenario(p).name for p in config.scenario_paths()]  # fail fast, naming it
    unknown = sorted(set(config.oversample) - set(names))
    if unknown:
        raise ConfigError(
            f"--oversample {' '.join(unknown)}: not in the scenario set ({', '.join(names)})"
        )
    if config.tensorboard_dir is not None:
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                "--tensorboard-dir needs the tensorboard package (pip install tensorboard)"
            ) from err
    try:
        import stable_baselines3
        import torch
        from stable_baselines3 import PPO
        from stable_baselines3.common.vec_env import VecNormalize
    except ImportError as err:
        raise ConfigError(
            f"training needs torch and stable-baselines3 (pip install 'meshpilot[train]'): {err}"
        ) from err

    torch.set_num_threads(1)  # FACTS.md: two threads never helped on 2 cores
    seed_everything(config.seed)
    run_dir = new_run_dir(config)
    meta: dict[str, Any] = {
        "config": config.to_json(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "stable_baselines3": stable_baselines3.__version__,
            "numpy": np.__version__,
        },
        "feature_spec_hash": config.feature_spec.hash,
    }
    write_json(run_dir / "config.json", meta)

    venv = make_vec_env(config)
    episodes: list[Episode] = []
    hyper: dict[str, Any] = {
        "learning_rate": _learning_rate(config),
        "batch_size": config.batch_size,
        "n_epochs": config.n_epochs,
        "gamma": config.gamma,
        "gae_lambda": config.gae_lambda,
        "clip_range": config.clip_range,
        "ent_coef": config.ent_coef,
        "vf_coef": config.vf_coef,
        "max_grad_norm": config.max_grad_norm,
    }
    if config.resume is not None:
        model_path, vecnorm_path, episodes_path = _resume_files(config.resume)
        vecnorm = VecNormalize.load(str(vecnorm_path), venv)
        vecnorm.training = True
        vecnorm.norm_reward = config.norm_reward
        model = PPO.load(
            model_path,
            env=vecnorm,
            device="cpu",
            tensorboard_log=config.tensorboard_dir,
            custom_objects={**hyper, "n_steps": config.n_steps},
        )
        episodes.extend(read_episodes(episodes_path))
        if config.reset_log_std:
            with torch.no_grad():
                model.policy.log_std.fill_(config.log_std_init)
        meta["resumed_from"] = str(config.resume)
        meta["resumed_at_steps"] = int(model.num_timesteps)
        reset = False
    else:
        vecnorm = VecNormalize(
            venv,
            norm_obs=True,
            norm_reward=config.norm_reward,
            clip_obs=config.clip_obs,
            gamma=config.gamma,
        )
        activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[config.activation]
        model = PPO(
            "MlpPolicy",
            vecnorm,
            n_steps=config.n_steps,
            policy_kwargs={
                "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
                "activation_fn": activation,
                "log_std_init": config.log_std_init,
            },
            tensorboard_log=config.tensorboard_dir,
            seed=config.seed,
            device="cpu",
            verbose=0,
            **hyper,
        )
        reset = True
        if config.imitation_steps > 0:
            started = time.perf_counter()
            meta.update(imitate_oracle(model, vecnorm, config))
            meta["imitation_seconds"] = round(time.perf_counter() - started, 1)
            save_checkpoint(model, run_dir, episodes)  # step 0: the warm start alone
    remaining = config.total_steps - (0 if reset else model.num_timesteps)
    callback = _run_callback(
        run_dir=run_dir,
        total_steps=config.total_steps,
        checkpoint_every=config.checkpoint_every,
        episodes=episodes,
        progress=config.progress,
        bc_lr=config.bc_lr,
        batch_size=config.batch_size,
    )
    started = time.perf_counter()
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            callback=callback,
            reset_num_timesteps=reset,
            tb_log_name=run_dir.name,
        )
    meta["train_seconds"] = round(time.perf_counter() - started, 1)
    meta["bc_passes"] = int(callback.bc_passes)
    meta["env_steps"] = int(model.num_timesteps)

    model.save(run_dir / "model.zip")
    vecnorm.save(str(run_dir / "vecnormalize.pkl"))
    _write_episodes(run_dir / "episodes.csv", episodes)
    save_checkpoint(model, run_dir, episodes)
    policy_path = export_npz(
        model,
        vecnorm,
        config.feature_spec,
        run_dir / "policy.npz",
        action_prior=config.action_prior,
        obs_extension=config.obs_extension,
        action_gain=config.action_gain,
        metadata=meta,
    )
    plot_learning_curve(episodes, run_dir / "learning_curve.png")
    write_json(run_dir / "config.json", meta)
    if config.export_to is not None:
        Path(config.export_to).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(policy_path, config.export_to)
    venv.close()
    return run_dir

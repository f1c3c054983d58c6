"""`TrainConfig`: everything that defines a training run, one `meshpilot train` option per field.

Why a module of its own: the command line builds its parser from this dataclass (the
docstring under each field is the option's help, `field_help`), so it must import without
torch and stable-baselines3 (an install without the ``train`` extra builds the parser too);
every other training module takes a `TrainConfig`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.action_prior import ACTION_PRIORS
from agents.obs_extensions import OBS_EXTENSIONS
from envs.mesh_env import Randomization
from envs.simulator.scenario import suite_paths
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec
from meshcore.reward import CHURN_COST

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
            (self.seed >= 0, "seed must be >= 0"),
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

"""`TrainConfig`: everything that defines a training run, one `meshpilot train` option per field.

Why a module of its own: the command line builds its parser from this dataclass (the
docstring under each field is the option's help, `field_help`; the defaults are the options'
defaults), so it must import without torch and stable-baselines3 (an install without the
``train`` extra builds the parser too); every other training module takes a `TrainConfig`.
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

from envs.mesh_env import Randomization
from envs.simulator.scenario import Scenario, load_scenario, suite_paths
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec
from meshcore.reward import CHURN_COST

MESHES = ("sim", "lab")
"""What `TrainConfig.mesh` can name."""

LAB_N_STEPS = 32
"""Longest rollout per env on a live mesh (steps): 32 control intervals of 5 s are under three
minutes of wall time between PPO updates."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; `meshpilot train` maps one option to each field.

    The defaults are the recipe of the shipped model (`agents/models/default.npz`), so
    ``meshpilot train --out-dir DIR`` retrains it. What the policy sees and writes is fixed:
    `agents.obs_extensions` appends its inputs to the FeatureSpec vector, and the network's
    output is a correction to the square-root split (`agents.action_prior`).
    """

    scenarios: tuple[str, ...] = ()
    """Scenario files or suite names to train on; one is drawn per episode (empty: whole suite)."""
    exp_name: str = "shipped"
    """Experiment name, the second part of the run directory name."""
    seed: int = 1
    """Seed of python, numpy, torch and the envs (env i gets seed + i); same seed, same run."""
    total_steps: int = 49_152
    """PPO env steps (control intervals, summed over envs) to train for, counted from 0 even
    when resuming (0: export the imitation warm start as is)."""
    n_envs: int = 8
    """Parallel envs in one process (DummyVecEnv); more envs give more diverse rollouts."""
    episode_steps: int | None = None
    """Cap on episode length in control steps (None: the scenario's duration_s / step_s)."""
    randomize: bool = True
    """Domain randomization of load, service times, event times and telemetry at every reset,
    so the policy reacts to what it observes instead of memorizing the scenarios."""
    load_scale: tuple[float, float] = (0.7, 1.1)
    """Randomization range (low, high) of the factor on each scenario's mean arrival rate."""
    service_scale: tuple[float, float] = (0.95, 1.05)
    """Randomization range of the factor on each subset's service time (drawn per subset); the
    capacity hint stays what the scenario configures, so a wide range makes it unreliable."""
    event_shift: tuple[float, float] = (0.5, 1.5)
    """Randomization range of the factor on every event time."""
    noise_add: tuple[float, float] = (0.0, 0.1)
    """Randomization range of the relative p99 noise added to the scenario's telemetry noise."""
    drop_add: tuple[float, float] = (0.0, 0.02)
    """Randomization range of the probability added to the scenario's sample-drop probability."""
    churn_cost: float = CHURN_COST
    """Reward lost per 100 weight points moved (see meshcore.reward); higher values give
    calmer policies."""
    learning_rate: float = 3e-6
    """Adam step size of PPO (linearly annealed when anneal_lr); small, so PPO fine-tunes the
    imitation warm start instead of undoing it."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly toward 0 over total_steps."""
    n_steps: int = 1024
    """Rollout length per env between updates (steps); the batch is n_steps * n_envs."""
    batch_size: int = 1024
    """Minibatch size of each gradient step (samples), in PPO and in the imitation fits."""
    n_epochs: int = 2
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
    """Value loss weight (in PPO and in the imitation fits)."""
    max_grad_norm: float = 0.5
    """Gradient norm clipping."""
    net_arch: tuple[int, ...] = (128, 128)
    """Hidden layer widths (tanh) of the actor and of the (separate) critic."""
    log_std_init: float = -3.0
    """Initial log std of the Gaussian policy (action units; Box is [-1, 1])."""
    imitation_steps: int = 500_000
    """Warm start: env steps (summed over envs) of DAgger imitation of the teacher before PPO
    (0: off). The teacher reads the simulator's true state, so it only ever runs here; the
    student sees observations only."""
    imitation_rounds: int = 6
    """DAgger rounds: the first rolls out the teacher, the others the student (labelled by the
    teacher), each followed by a fit on everything collected so far."""
    imitation_epochs: int = 30
    """Passes over the collected data per fit."""
    imitation_lr: float = 1e-3
    """Adam step size at the start of each imitation fit, annealed linearly to 1 percent of it
    within the fit."""
    imitation_bad_weight: float = 20.0
    """A sample's weight in the imitation fits is 1 + this times the bad-request fraction of
    the step before or after it (the larger), so the states where the split is going wrong
    count more than the many calm ones (0: all samples weigh the same)."""
    teacher_drain_s: float = 10.0
    """The teacher (imitation labels, also for bc_lr) shrinks each subset's capacity by the
    share its current queue would need to drain within this many seconds before solving for
    the split (`agents.oracle.drain_aware_weights`), so it sheds load from a subset that is
    still working off a backlog."""
    teacher_pull: float = 0.05
    """The teacher's objective is the oracle's plus this times the squared distance (in
    shares) from the square-root split of the true capacities (`agents.oracle.hedged_weights`;
    0: the oracle's alone): the split stays near the robust square-root one wherever the model
    sees little to gain."""
    bc_lr: float = 1e-5
    """Keep imitating during PPO: after every rollout, one pass of Adam steps of this size
    (annealed linearly to 0) fits the actor to the teacher's labels of the rollout's states
    (0: off), so PPO's noisy gradients do not wash out the warm start."""
    norm_reward: bool = True
    """Scale rewards by the running return std (VecNormalize); bad fractions are small numbers."""
    clip_obs: float = 10.0
    """Clip of normalized observations (std units)."""
    out_dir: str = "runs"
    """Parent directory of run directories (created if missing; its own parent must exist)."""
    tensorboard_dir: str | None = None
    """Write TensorBoard logs here (needs the tensorboard package); None: off."""
    checkpoint_every: int = 49_152
    """Save a resumable checkpoint every this many env steps (0: only at the end)."""
    resume: str | None = None
    """Continue from a checkpoint: a run directory or a checkpoints/step_<N> directory (model.zip
    and vecnormalize.pkl inside); hyperparameters of this config apply from then on."""
    progress: bool = True
    """Show a tqdm progress bar on stderr."""
    members: int = 2
    """Train this many policies alike, seeds seed, seed+1, ..., in parallel processes (one per
    core), and export one ensemble policy.npz that writes the split of their mean action; each
    member's own run directory is kept under members/ (1: a single policy)."""
    spec: dict[str, float | int] = field(default_factory=lambda: FeatureSpec().to_dict())
    """FeatureSpec fields (the observation/action layout); the default is what the controller
    serves."""
    init: str | None = None
    """Start from this exported policy file (policy.npz, e.g. agents/models/default.npz): its
    actor and observation normalizer replace the fresh network's, and no imitation warm start
    runs (the critic starts fresh). A file of another feature spec or other hidden layers than
    net_arch is refused; an ensemble file starts from its first member."""
    mesh: str = "sim"
    """What to train on: 'sim' (MeshSim-v0 over the scenario set) or 'lab' (MeshLive-v0, one
    env per route of the running local lab, in real time). With 'lab': one member, n_envs =
    the lab's routes, no imitation (warm start or during PPO), no randomization or subset
    permutations, and rollouts of at most 32 steps per env (LAB_N_STEPS; fewer when
    total_steps is smaller), under 3 minutes of wall time at the default 5 s step; use it with
    --init."""

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
            (self.imitation_steps >= 0, "imitation_steps must be >= 0"),
            (self.imitation_rounds >= 1, "imitation_rounds must be >= 1"),
            (self.imitation_epochs >= 1, "imitation_epochs must be >= 1"),
            (self.bc_lr >= 0, "bc_lr must be >= 0"),
            (self.imitation_lr > 0, "imitation_lr must be positive"),
            (self.imitation_bad_weight >= 0, "imitation_bad_weight must be >= 0"),
            (
                0 < self.teacher_drain_s < float("inf"),
                "teacher_drain_s must be a finite number > 0",
            ),
            (0 <= self.teacher_pull < float("inf"), "teacher_pull must be a finite number >= 0"),
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
            (
                self.episode_steps is None or self.episode_steps >= 1,
                "episode_steps must be >= 1",
            ),
            (self.mesh in MESHES, f"mesh must be one of {', '.join(MESHES)}, got {self.mesh!r}"),
            (
                self.init is None or self.resume is None,
                "init starts a new run from a policy file, resume continues a run: pass one",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"train config: {message}")
        try:
            FeatureSpec.from_dict(dict(self.spec))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train config: invalid feature spec ({err})") from err

    def for_live_mesh(self, n_routes: int) -> TrainConfig:
        """The config a run on a live mesh with `n_routes` routes actually uses (see `mesh`):
        the simulator-only phases off, one env per route, short rollouts."""
        n_envs = max(1, n_routes)
        n_steps = max(2, min(self.n_steps, LAB_N_STEPS, -(-self.total_steps // n_envs)))
        rollout = n_steps * n_envs
        batch = max(2, min(self.batch_size, rollout))
        return dataclasses.replace(
            self,
            members=1,
            n_envs=n_envs,
            imitation_steps=0,
            bc_lr=0.0,
            randomize=False,
            n_steps=n_steps,
            batch_size=batch if rollout % batch == 0 else rollout,
        )

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

    def load_scenarios(self) -> list[Scenario]:
        """The scenario set, loaded and checked; a bad file raises ScenarioError naming it."""
        paths = self.scenarios or tuple(str(p) for p in suite_paths())
        return [load_scenario(p) for p in paths]

    @property
    def scenario_set(self) -> str:
        """Short name of the scenario set for the run directory."""
        if self.mesh != "sim":
            return self.mesh
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

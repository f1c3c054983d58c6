"""What a training run writes: its run directory, checkpoints, episode log, learning curve
and the numpy export of the actor.

Why a module of its own: these files are the run's interface to everything else (resuming,
`meshpilot ensemble`, `--policy ppo:PATH`), and `export_npz` is the one place a torch model
becomes the `.npz` that `agents.policy_file` reads.

A run lives in ``<out_dir>/<scenario-set>__<exp_name>__<seed>__<timestamp>/``::

    config.json          the TrainConfig (plus versions), enough to reproduce the run
    model.zip            final SB3 model             vecnormalize.pkl  its normalizer
    policy.npz           numpy export (what `--policy ppo:PATH` serves)
    episodes.csv         env steps, return, length, scenario of every finished episode
    learning_curve.png   episode return vs env steps
    checkpoints/step_<N>/{model.zip, vecnormalize.pkl, episodes.csv}   resumable snapshots
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.network import ACTIVATION
from agents.policy_file import save_npz
from agents.training.config import TrainConfig
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.vec_env import VecNormalize

Episode = tuple[int, float, int, str]
"""One finished training episode: env steps so far, return, length (steps), scenario name."""


def write_episodes(path: Path, episodes: Sequence[Episode]) -> None:
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
    write_episodes(ckpt / "episodes.csv", episodes)
    return ckpt


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


def export_npz(
    model: PPO,
    vecnormalize: VecNormalize,
    spec: FeatureSpec,
    path: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Export the actor and the observation normalizer of `model` for `agents.policy_file`.

    `model` must be what `agents.network.NumpyPolicy` computes: a Gaussian MLP actor with tanh
    hidden layers on the extended observation of `agents.obs_extensions`.
    """
    import torch

    if model.policy.activation_fn is not torch.nn.Tanh:
        raise ConfigError(
            f"cannot export activation {model.policy.activation_fn}; the numpy policy runs "
            f"{ACTIVATION}"
        )
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
        obs_mean=np.asarray(rms.mean),
        obs_var=np.asarray(rms.var),
        clip_obs=float(vecnormalize.clip_obs),
        eps=float(vecnormalize.epsilon),
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


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

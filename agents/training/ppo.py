"""`train`: one PPO run from a `TrainConfig` to its run directory.

Why a module of its own: it puts the pieces of one run together: seeding, the vectorized
training envs (simulated, or a live mesh's ports handed in by the caller), the warm start
(imitation, or a policy file with ``init``), `model.learn` with the run callback, and the
artifacts; and it is the only place that resumes a run from a checkpoint. Several runs
(``members`` > 1) are `agents.training.ensemble`.
"""

from __future__ import annotations

import os
import platform
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agents.policy_file import inputs_hash
from agents.training.artifacts import (
    Episode,
    export_npz,
    new_run_dir,
    plot_learning_curve,
    read_episodes,
    save_checkpoint,
    write_episodes,
    write_json,
)
from agents.training.callbacks import run_callback
from agents.training.config import TrainConfig
from agents.training.imitation import imitate_oracle
from agents.training.init_from import check_init, init_from_npz
from agents.training.wrappers import LiveMesh, make_live_vec_env, make_vec_env
from meshcore.errors import ConfigError

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv, VecNormalize


def seed_everything(seed: int) -> None:
    """The one place that seeds python, numpy and torch (envs are seeded through the VecEnv)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


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


def check_scenarios(config: TrainConfig) -> None:
    """Load every scenario of the set once, so a bad one fails before any work, naming it."""
    config.load_scenarios()


def _learning_rate(config: TrainConfig) -> Any:
    if not config.anneal_lr:
        return config.learning_rate
    lr = config.learning_rate
    return lambda progress_remaining: lr * max(progress_remaining, 0.02)


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    """The PPO arguments a resumed run takes from the config as well."""
    return {
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


def new_model(config: TrainConfig, venv: VecEnv) -> tuple[PPO, VecNormalize]:
    """A fresh PPO model on `venv` behind a new observation/reward normalizer, as `config`
    builds it (what `export_npz` exports and `init_from_npz` loads into)."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    vecnorm = VecNormalize(
        venv,
        norm_obs=True,
        norm_reward=config.norm_reward,
        clip_obs=config.clip_obs,
        gamma=config.gamma,
    )
    model = PPO(
        "MlpPolicy",
        vecnorm,
        n_steps=config.n_steps,
        policy_kwargs={
            "net_arch": {"pi": list(config.net_arch), "vf": list(config.net_arch)},
            "activation_fn": torch.nn.Tanh,  # agents.network.ACTIVATION
            "log_std_init": config.log_std_init,
        },
        tensorboard_log=config.tensorboard_dir,
        seed=config.seed,
        device="cpu",
        verbose=0,
        **_hyperparameters(config),
    )
    return model, vecnorm


def train(config: TrainConfig, *, live: LiveMesh | None = None) -> Path:
    """Train (or resume) one run and write every artifact; returns the run directory.

    One run only: ``members`` > 1 is `agents.training.ensemble.train_ensemble`. With
    ``mesh`` "lab", `live` carries the running lab's ports and the run uses
    `TrainConfig.for_live_mesh` of `config` (recorded as the run's config).
    """
    config.validate()
    if config.mesh == "sim":
        if live is not None:
            raise ConfigError("train: a live mesh was given but the config says mesh sim")
    elif live is None:
        raise ConfigError(
            f"train: mesh {config.mesh} needs the mesh's ports; `meshpilot train --mesh "
            f"{config.mesh}` builds them from the running {config.mesh}"
        )
    else:
        config = config.for_live_mesh(len(live.routes))
    if config.members != 1:
        raise ConfigError(
            f"train trains one policy; members {config.members} is "
            "agents.training.ensemble.train_ensemble"
        )
    scenarios = config.load_scenarios() if live is None else None  # fails before any work
    if config.init is not None:
        check_init(config.init, config.feature_spec, config.net_arch)
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
        from stable_baselines3.common.logger import Logger
        from stable_baselines3.common.vec_env import VecNormalize
    except ImportError as err:
        raise ConfigError(
            f"training needs torch and stable-baselines3 (pip install 'meshpilot[train]'): {err}"
        ) from err

    torch.set_num_threads(1)  # one core per run: ensemble members run in parallel processes
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
        "inputs_hash": inputs_hash(config.feature_spec),
    }
    if live is not None:
        meta["live"] = {
            "routes": [r.key for r in live.routes],
            "step_s": live.step_s,
            "slo_ms": live.slo_ms,
        }
    write_json(run_dir / "config.json", meta)

    venv = make_vec_env(config, scenarios) if live is None else make_live_vec_env(config, live)
    episodes: list[Episode] = []
    hyper = _hyperparameters(config)
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
        meta["resumed_from"] = str(config.resume)
        meta["resumed_at_steps"] = int(model.num_timesteps)
        reset = False
    else:
        model, vecnorm = new_model(config, venv)
        reset = True
        if config.init is not None:
            meta.update(init_from_npz(model, vecnorm, config.init, config.feature_spec))
        elif config.imitation_steps > 0:
            started = time.perf_counter()
            meta.update(imitate_oracle(model, vecnorm, config))
            meta["imitation_seconds"] = round(time.perf_counter() - started, 1)
            save_checkpoint(model, run_dir, episodes)  # step 0: the warm start alone
    if config.tensorboard_dir is None:
        # SB3's default logger makes an empty SB3-<time> folder in the temp directory per run.
        model.set_logger(Logger(folder=None, output_formats=[]))
    remaining = config.total_steps - (0 if reset else model.num_timesteps)
    callback = run_callback(
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
    write_episodes(run_dir / "episodes.csv", episodes)
    save_checkpoint(model, run_dir, episodes)
    export_npz(
        model,
        vecnorm,
        config.feature_spec,
        run_dir / "policy.npz",
        metadata=meta,
    )
    plot_learning_curve(episodes, run_dir / "learning_curve.png")
    write_json(run_dir / "config.json", meta)
    venv.close()
    return run_dir

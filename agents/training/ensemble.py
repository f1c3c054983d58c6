"""`meshpilot train --members N`: train N policies alike in parallel processes, export one
ensemble policy file.

Why processes: a run trains with one torch thread, so N members on N cores take the wall time
of one. Each member is an ordinary run (``members/<run>/``, resumable, with its own
policy.npz); the ensemble's run directory holds config.json (the config, each member's run
directory and timings), policy.npz (`agents.policy_file.save_ensemble_npz`, served as an
`EnsemblePolicy`) and a learning-curve PNG with one line per member.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from agents.policy_file import save_ensemble_npz
from agents.training.artifacts import new_run_dir, plot_learning_curve, read_episodes, write_json
from agents.training.config import TrainConfig
from agents.training.ppo import check_scenarios, train


def member_configs(config: TrainConfig, members_dir: Path) -> list[TrainConfig]:
    """Member j: the same config with seed + j, its own run under `members_dir`, no bar."""
    return [
        dataclasses.replace(
            config,
            members=1,
            seed=config.seed + j,
            exp_name=f"{config.exp_name}-m{j}",
            out_dir=str(members_dir),
            progress=False,
        )
        for j in range(config.members)
    ]


def _train_member(config: TrainConfig) -> tuple[str, float]:
    started = time.perf_counter()
    run_dir = train(config)
    return str(run_dir), round(time.perf_counter() - started, 1)


def train_ensemble(config: TrainConfig) -> Path:
    """Train ``config.members`` members (one per core at a time) and write the ensemble run
    directory; returns it."""
    config.validate()
    check_scenarios(config)
    run_dir = new_run_dir(config)
    configs = member_configs(config, run_dir / "members")
    n_workers = max(1, min(len(configs), os.cpu_count() or 1))
    meta: dict[str, Any] = {"config": config.to_json(), "workers": n_workers}
    write_json(run_dir / "config.json", meta)
    started = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")  # no forked torch/numba state in members
    with ctx.Pool(n_workers) as pool:
        pending = pool.imap(_train_member, configs)
        results: list[tuple[str, float]] = []
        if config.progress:
            from tqdm import tqdm

            pending = tqdm(pending, total=len(configs), desc="members", unit="run")
        results.extend(pending)
    meta["members"] = [{"run_dir": d, "seconds": sec} for d, sec in results]
    meta["seconds"] = round(time.perf_counter() - started, 1)
    member_dirs = [Path(d) for d, _ in results]
    save_ensemble_npz(
        run_dir / "policy.npz",
        [d / "policy.npz" for d in member_dirs],
        metadata={"config": config.to_json()},
    )
    curves = {
        f"seed {c.seed}": read_episodes(d / "episodes.csv")
        for c, d in zip(configs, member_dirs, strict=True)
    }
    plot_learning_curve(curves, run_dir / "learning_curve.png")
    write_json(run_dir / "config.json", meta)
    return run_dir

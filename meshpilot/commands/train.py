"""`meshpilot train`: train the PPO policy against the simulator, one option per TrainConfig field.

Options, defaults and help text all come from `agents.training.config.TrainConfig` (the
docstring under each field), so the command line cannot drift from the config; its defaults
are the shipped model's recipe, so ``meshpilot train --out-dir DIR`` retrains it. The training
code imports torch and stable-baselines3 only when training starts, so building this parser
stays cheap and works in an install without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from agents.training.config import TrainConfig, field_help
from agents.training.ensemble import train_ensemble
from agents.training.ppo import train
from meshpilot.commands.arg_types import non_negative_int, output_dir, positive_int

_POSITIONAL = "scenarios"
_SKIP = frozenset({"spec"})
"""Fields without an option: the FeatureSpec must match what the controller serves."""
_AT_LEAST_ONE = frozenset(
    (
        "n_envs",
        "episode_steps",
        "n_steps",
        "batch_size",
        "n_epochs",
        "members",
        "imitation_rounds",
        "imitation_epochs",
    )
)
"""Integer fields that count something that must happen at least once; every other integer
field (seeds, optional steps such as total_steps 0 for imitation only) must be >= 0."""
_OUTPUT_DIRS = frozenset(("out_dir", "tensorboard_dir"))
"""Directories the run writes into: created if missing, but never their parents."""


def _base_type(hint: Any) -> tuple[Any, Any, int | str | None]:
    """Type hint -> (argparse type, element type, nargs): `int | None` -> (int, None, None),
    `tuple[int, ...]` -> (tuple, int, "+"), `tuple[float, float]` -> (tuple, float, 2)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(members[0])
    if origin is tuple:
        items = typing.get_args(hint)
        nargs: int | str = "+" if len(items) == 2 and items[1] is Ellipsis else len(items)
        return tuple, items[0], nargs
    return origin or hint, None, None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train",
        help="train the PPO policy against the simulator and export it for serving",
        description=(
            "Train a PPO policy (stable-baselines3, CPU, one torch thread) on the simulated "
            "mesh (meshpilot/MeshSim-v0) with domain randomization over a scenario set: "
            "DAgger imitation of the teacher, then PPO fine-tuning; then export its actor and "
            "observation normalizer to policy.npz for numpy-only serving (--policy ppo:PATH). "
            "The defaults are the shipped model's recipe: with no other option than "
            "--out-dir this retrains agents/models/default.npz. A run writes "
            "OUT_DIR/<scenario-set>__<exp>__<seed>__<timestamp>/ with config.json, model.zip, "
            "vecnormalize.pkl, policy.npz, episodes.csv, learning_curve.png and "
            "checkpoints/step_<N>/ (resumable with --resume and --members 1). With --members "
            "N > 1, that directory holds N such runs under members/ (seeds S, S+1, ...) "
            "trained in parallel processes, plus config.json, learning_curve.png and an "
            "ensemble policy.npz. Needs the 'train' extra (torch, stable-baselines3)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    helps = field_help()
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        help_text = helps.get(f.name, "")
        default = getattr(defaults, f.name)
        kind, element, nargs = _base_type(hints[f.name])
        if f.name == _POSITIONAL:
            p.add_argument("scenarios", nargs="*", default=[], metavar="SCENARIO", help=help_text)
        elif kind is bool:
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        elif kind is tuple:
            p.add_argument(
                "--" + f.name.replace("_", "-"),
                type=element,
                nargs=nargs,
                default=list(default),
                metavar=("LOW", "HIGH") if nargs == 2 else "N",
                help=help_text,
            )
        else:
            if kind is int:
                kind = positive_int if f.name in _AT_LEAST_ONE else non_negative_int
            elif f.name in _OUTPUT_DIRS:
                kind = output_dir
            p.add_argument(
                "--" + f.name.replace("_", "-"), type=kind, default=default, help=help_text
            )
    p.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """argparse namespace -> TrainConfig (lists become tuples)."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in _SKIP:
            continue
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    run_dir: Path = train_ensemble(config) if config.members > 1 else train(config)
    print(f"run directory  {run_dir}")
    print(f"policy         {run_dir / 'policy.npz'}")
    return 0

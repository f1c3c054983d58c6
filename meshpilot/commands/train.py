"""`meshpilot train`: train the PPO policy against the simulator or fine-tune it on the local
lab, one option per TrainConfig field.

Options, defaults and help text all come from `agents.training.config.TrainConfig` (the
docstring under each field), so the command line cannot drift from the config; its defaults
are the shipped model's recipe, so ``meshpilot train --out-dir DIR`` retrains it. The training
code imports torch and stable-baselines3 only when training starts, so building this parser
stays cheap and works in an install without the ``train`` extra.

With ``--mesh lab`` this module is where the live mesh is wired, as `meshpilot serve --mesh
lab` wires it: the running lab's Prometheus observer, Envoy route actuator and the wall clock
go to training as an `agents.training.wrappers.LiveMesh` (training never imports the
controller's adapters or the lab). Two options exist for that alone: ``--lab-state-dir`` and
``--step-s``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from agents.training.config import MESHES, TrainConfig, field_help
from agents.training.ensemble import train_ensemble
from agents.training.ppo import train
from agents.training.wrappers import LiveMesh
from meshcore.errors import ConfigError
from meshpilot.commands.arg_types import (
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
)

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
_CHOICES: dict[str, tuple[str, ...]] = {"mesh": MESHES}
"""Text fields that take one of a few values."""
_METAVARS = {"init": "POLICY.npz"}
"""Option values better named than by the field."""
LAB_STEP_S = 5.0
"""Default control interval on the lab (s): the controller's tick."""
LAB_WINDOW_S = 10.0
"""PromQL rate window on the lab (s), as `meshpilot serve --mesh lab` reads it by default."""


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
        help="train the PPO policy against the simulator (or fine-tune it on the lab) and "
        "export it for serving",
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
            "ensemble policy.npz. With --mesh lab --init POLICY.npz it fine-tunes that policy "
            "on the running local lab instead (meshpilot/MeshLive-v0, one env per route, in "
            "real time: each step waits --step-s seconds). Needs the 'train' extra (torch, "
            "stable-baselines3)."
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
                "--" + f.name.replace("_", "-"),
                type=kind,
                default=default,
                choices=_CHOICES.get(f.name),
                metavar=_METAVARS.get(f.name),
                help=help_text,
            )
    p.add_argument(
        "--lab-state-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="With --mesh lab: where `meshpilot lab up` recorded the running lab (when not "
        "given: lab up's default, $XDG_STATE_HOME/meshpilot/lab or "
        "~/.local/state/meshpilot/lab).",
    )
    p.add_argument(
        "--step-s",
        type=positive_float,
        default=argparse.SUPPRESS,
        metavar="S",
        help=f"With --mesh lab: the control interval, the real seconds each training step "
        f"waits between writing a split and reading its effect (when not given: "
        f"{LAB_STEP_S:g}); the "
        f"lab's Prometheus averages over {LAB_WINDOW_S:g} s, so a shorter step scores a split "
        "partly on the splits before it.",
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


def _lab_live_mesh(args: argparse.Namespace, stack: contextlib.ExitStack) -> LiveMesh:
    """The running lab's ports, wired as `meshpilot serve --mesh lab` wires them."""
    from controller.clock import WallClock
    from envs.lab.lab import default_state_dir, running_state
    from meshpilot.lab_ports import lab_ports

    given = getattr(args, "lab_state_dir", None)
    state_dir = Path(given) if given else default_state_dir()
    lab = running_state(state_dir)
    ports = lab_ports(lab, stack, window_s=LAB_WINDOW_S)
    observer, actuator = ports.observer, ports.actuator
    return LiveMesh(
        observer=observer,
        actuator=actuator,
        clock=WallClock(),
        routes=tuple(lab.spec.routes()),
        step_s=getattr(args, "step_s", LAB_STEP_S),
        slo_ms=lab.spec.slo_ms,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    run_dir: Path
    if config.mesh == "lab":
        with contextlib.ExitStack() as stack:
            run_dir = train(config, live=_lab_live_mesh(args, stack))
    else:
        lab_only = [
            "--" + name.replace("_", "-") for name in ("lab_state_dir", "step_s") if name in args
        ]
        if lab_only:
            raise ConfigError(f"{', '.join(lab_only)}: only with --mesh lab")
        run_dir = train_ensemble(config) if config.members > 1 else train(config)
    print(f"run directory  {run_dir}")
    print(f"policy         {run_dir / 'policy.npz'}")
    return 0

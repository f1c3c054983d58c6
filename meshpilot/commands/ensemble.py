"""`meshpilot ensemble`: combine trained policy files into one ensemble policy file."""

from __future__ import annotations

import argparse
import json

from agents.network import EnsemblePolicy
from agents.policy_file import inputs_hash, load_numpy_policy, save_ensemble_npz
from meshpilot.commands.arg_types import output_file


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "ensemble",
        help="combine trained policy files into one ensemble (--policy ppo:FILE serves it)",
        description=(
            "Combine policy.npz files (from `meshpilot train`, single networks or ensembles) "
            "trained on the same feature spec into one file that writes the split of the "
            "networks' mean action. `meshpilot train --members N` does this for N seeds in one "
            "command; this command combines runs trained separately or resumed one by one. "
            "Every input is checked as `--policy ppo:FILE` would check it; prints a JSON "
            "summary."
        ),
    )
    p.add_argument("policies", nargs="+", metavar="POLICY_NPZ", help="policy files (>= 2)")
    p.add_argument(
        "--out",
        required=True,
        type=output_file,
        metavar="FILE",
        help="where to write the ensemble (its directory must exist)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = save_ensemble_npz(args.out, args.policies)
    policy = load_numpy_policy(out)
    members = len(policy.members) if isinstance(policy, EnsemblePolicy) else 1
    summary = {
        "out": str(out),
        "members": members,
        "feature_spec": policy.spec.hash,
        "inputs_hash": inputs_hash(policy.spec),
    }
    print(json.dumps(summary))
    return 0

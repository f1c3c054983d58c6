"""`meshpilot` entry point: wires subcommands; every expected failure exits with one clear line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from meshcore.errors import MeshpilotError

SUBCOMMANDS = (
    "simulate",
    "train",
    "ensemble",
    "evaluate",
    "serve",
    "prometheus-rules",
    "scenarios",
    "lab",
)


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line on stderr and exit status 2.

    argparse prints the whole usage block before the error; a script or an operator reading
    a log wants the error alone, and `--help` is where the usage lives. Subparsers inherit
    the class (argparse creates them with ``type(parent)``).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="meshpilot",
        description="AI traffic controller for Istio: learned, guarded route weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = name.replace("-", "_")
        importlib.import_module(f"meshpilot.commands.{module}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except MeshpilotError as err:
        print(f"meshpilot {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

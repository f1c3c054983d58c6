"""`meshpilot` entry point: wires subcommands; every expected failure exits with one clear line."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so `finally` blocks run: a lab a command brought up is
    # taken down again (`serve` installs its own graceful handler while it runs).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main_thread else None
    try:
        return int(args.run(args))
    except MeshpilotError as err:
        print(f"meshpilot {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # Ctrl-C or SIGTERM
    except BrokenPipeError:
        # the reader went away (`meshpilot simulate ... | head`): stop quietly, as a shell
        # tool killed by SIGPIPE would; stdout goes to /dev/null so the exit flush cannot
        # raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

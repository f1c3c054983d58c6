"""argparse value types shared by the subcommands and the bench scripts.

Each returns the parsed value or raises `argparse.ArgumentTypeError`, which the command line
turns into one line on stderr and exit status 2 (never a traceback): a seed of -1 or a seed
count of 0 is a usage error, caught before any work starts. Output paths are checked the
same way: a typo in a path must fail at once, not create folders somewhere after the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "non_negative_int",
    "output_dir",
    "output_file",
    "port_number",
    "positive_float",
    "positive_int",
]


def _int_at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (a count: seeds, steps, environments)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a seed, a first seed, a number of optional steps)."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """A finite number > 0 (a duration in s, a speed factor)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0..65535 (0: the system picks a free one)."""
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0..65535), got {value}")
    return value


def output_file(text: str) -> str:
    """A file to write: its folder must already exist (none is created for it)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file")
    _check_parent(path)
    return text


def output_dir(text: str) -> str:
    """A directory to write into: created when missing, but only itself (its parent must exist)."""
    if not text:
        raise argparse.ArgumentTypeError("empty path")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    if not path.exists():
        _check_parent(path)
    return text


def _check_parent(path: Path) -> None:
    if path.parent.exists() and not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is not a directory")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"directory {path.parent} does not exist")

"""Reading the YAML files users write (scenarios, labs): one way to find, read and judge them,
so every kind of file fails the same way — one line naming the file and the first bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from meshcore.errors import ConfigError, yaml_error_text


def resolve(path: str | Path, home: Path) -> Path:
    """`path` as given, or ``home/<path>.yaml`` when `path` is a bare name that is not a file."""
    p = Path(path)
    if not p.exists() and not p.suffix and (home / f"{p}.yaml").exists():
        return home / f"{p}.yaml"
    return p


def read_yaml(path: Path, what: str, error: type[ConfigError]) -> Any:
    """The parsed YAML of `path`; `error` (one line naming the file) when it cannot be read or
    parsed. `what` names the kind of file in the message ("scenario file", "lab file")."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise error(f"{path}: cannot read {what} ({err.strerror or err})") from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{path}: {yaml_error_text(err)}") from err


def validation_text(err: ValidationError, source: str) -> str:
    """The first problem of `err` as ``SOURCE: field 'a.b': message``, with how many more."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
    return f"{source}: field '{loc}': {msg}{more}"

"""Scenarios as files: the plain data and the YAML text that `load_scenario` reads back equal.

Written the way the hand-written suite is: fields at their defaults left out, whole floats as
integers (600, not 600.0), and one line per subset, event and burst, so a generated file reads
like a written one and round-trips exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from envs.simulator.generator.catalog import GeneratorError
from envs.simulator.scenario import Scenario


def _plain(value: Any) -> Any:
    """JSON-mode data with whole floats as ints, so a file says 600, not 600.0."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def scenario_data(scenario: Scenario) -> dict[str, Any]:
    """The scenario as plain YAML-able data, fields at their defaults left out."""
    data: dict[str, Any] = _plain(scenario.model_dump(mode="json", exclude_defaults=True))
    return data


class _Flow(dict[str, Any]):
    """A mapping written on one line, like the suite's subsets and events."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, True)
)


def scenario_yaml(scenario: Scenario, *, comment: str | None = None) -> str:
    """The text of a scenario file: optional ``# comment`` lines, then the YAML, one line per
    subset, event and burst."""
    data = scenario_data(scenario)
    for key in ("subsets", "events"):
        if key in data:
            data[key] = [_Flow(item) for item in data[key]]
    if "bursts" in data["load"]:
        data["load"]["bursts"] = [_Flow(item) for item in data["load"]["bursts"]]
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=1000)
    if comment:
        text = "".join(f"# {line}\n" for line in comment.splitlines()) + text
    return text


def write_scenario(scenario: Scenario, path: str | Path, *, comment: str | None = None) -> Path:
    """Write `scenario` as a YAML file that `load_scenario` reads back equal; returns the path."""
    p = Path(path)
    try:
        p.write_text(scenario_yaml(scenario, comment=comment), encoding="utf-8")
    except OSError as err:
        raise GeneratorError(f"{p}: cannot write scenario file ({err.strerror or err})") from err
    return p

"""Scenario files: strict validation, one clear error per bad file, no traceback at the CLI.

Cases: the whole public suite loads; unknown keys, negative rates, unknown subset names in
events, initial weights not summing to 100, unsettable event fields, duplicate subsets,
non-YAML text, a list instead of a mapping and a missing file each give one `ScenarioError`
naming the file and the field; `meshpilot simulate` prints one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from envs.simulator.scenario import ScenarioError, load_scenario, suite_paths
from meshpilot.cli import main

GOOD = {
    "name": "ok",
    "duration_s": 60,
    "load": {"rps": 10},
    "subsets": [
        {"name": "v1", "replicas": 1, "service_ms": 10},
        {"name": "v2", "replicas": 1, "service_ms": 10},
    ],
}


def test_public_suite_loads_and_covers_the_required_kinds() -> None:
    names = {load_scenario(p).name for p in suite_paths()}
    assert len(names) >= 7
    assert {
        "steady-50",
        "steady-80",
        "steady-90",
        "degraded-canary",
        "latency-spike",
        "diurnal-bursts",
        "capacity-drift",
        "many-subsets",
        "noisy-telemetry",
    } <= names
    spread = load_scenario("many-subsets")
    caps = [s.capacity_rps for s in spread.subsets]
    assert 5 <= len(caps) <= 8 and max(caps) / min(caps) >= 5


def _write(tmp_path: Path, data: object) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


BAD_CASES = [
    ("unknown key", dict(GOOD, wieght=3), r"field 'wieght': unknown key"),
    ("negative rate", dict(GOOD, load={"rps": -5}), r"field 'load.rps'"),
    (
        "unknown subset in event",
        dict(GOOD, events=[{"at_s": 1, "subset": "v9", "set": {"error_rate": 0.1}}]),
        r"'v9'",
    ),
    ("weights not 100", dict(GOOD, initial_weights={"v1": 50, "v2": 40}), r"sum to 100, got 90"),
    (
        "unsettable field",
        dict(GOOD, events=[{"at_s": 1, "subset": "v1", "set": {"colour": 1}}]),
        r"'colour'",
    ),
    ("duplicate subsets", dict(GOOD, subsets=[GOOD["subsets"][0], GOOD["subsets"][0]]), r"unique"),  # type: ignore[index]
    (
        "bad distribution",
        dict(
            GOOD, subsets=[{"name": "v1", "replicas": 1, "service_ms": 1, "service_dist": "pareto"}]
        ),
        r"service_dist",
    ),
    ("missing field", {k: v for k, v in GOOD.items() if k != "load"}, r"field 'load'"),
    ("warmup not a step multiple", dict(GOOD, warmup_s=7), r"multiple of step_s"),
    ("negative warmup", dict(GOOD, warmup_s=-5), r"field 'warmup_s'"),
    ("warmup longer than the run", dict(GOOD, warmup_s=65), r"must not exceed duration_s"),
    ("not yaml", "name: [unclosed", r"not valid YAML"),
    ("not a mapping", "- a\n- b\n", r"must be a mapping"),
]


@pytest.mark.parametrize(("kind", "data", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_scenarios_give_one_clear_error(
    tmp_path: Path, kind: str, data: object, message: str
) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ScenarioError, match=message) as info:
        load_scenario(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read scenario file"):
        load_scenario(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("kind", "data", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_cli_reports_bad_scenarios_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, data: object, message: str
) -> None:
    path = _write(tmp_path, data)
    assert main(["simulate", str(path), "--policy", "equal"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("meshpilot simulate: error:")


def test_defaults_fill_optional_keys() -> None:
    from envs.simulator.scenario import parse_scenario

    sc = parse_scenario(GOOD)
    assert sc.step_s == 5 and sc.slo_ms == 250 and sc.balancer == "least_request"
    assert sc.telemetry.window_s == 30 and sc.start_weights() == {"v1": 50, "v2": 50}

"""`meshpilot scenarios sample|show`: generated files that load, and a readable description.

Cases: `sample` creates its directory and writes one loadable file per seed, one line each,
the same bytes on a second run, and a JSON summary with `--json`; `show` prints versions,
load, SLO, telemetry and events in time order for a generated file and a suite name, a PNG with
`--plot`, and one JSON object with `--json`; an unknown family, a negative or too large seed,
seeds running past 2^63-1, a zero count and a missing file are one line on stderr and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.simulator.generator import FAMILIES, MAX_SEED, sample_scenario
from envs.simulator.scenario import load_scenario
from meshpilot.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _exit_code(argv: list[str]) -> int:
    """main's status, whether argparse exits or the command returns."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


def test_sample_writes_one_loadable_file_per_seed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new"  # created: its parent exists
    assert main(["scenarios", "sample", "--seed", "10", "--count", "4", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = sorted(out.glob("*.yaml"))
    assert len(lines) == len(files) == 4
    for seed, line in zip(range(10, 14), lines, strict=True):
        expected = sample_scenario(seed)
        path = out / f"{expected.name}.yaml"
        assert line.startswith(f"{path}  versions ")
        assert load_scenario(path) == expected
        assert path.read_text().startswith(f"# family {expected.name.split('-', 1)[1][:-3]}")


def test_sample_is_reproducible_byte_for_byte(tmp_path: Path) -> None:
    for d in ("a", "b"):
        argv = ["scenarios", "sample", "--seed", "3", "--count", "3", "--out", str(tmp_path / d)]
        assert main([*argv, "--family", "mixed"]) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    second = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert first == second and set(first) == {f"gen-mixed-{s}.yaml" for s in (3, 4, 5)}


def test_sample_json_is_one_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["scenarios", "sample", "--seed", "2000000", "--count", "2", "--out", str(tmp_path)]
    assert main([*argv, "--family", "flapping", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["first_seed"] == 2_000_000 and summary["count"] == 2
    assert summary["family"] == "flapping"
    assert [f["seed"] for f in summary["files"]] == [2_000_000, 2_000_001]
    for f in summary["files"]:
        assert f["family"] == "flapping" and f["events"] >= 2
        assert 0.3 <= f["utilization"] <= 1.0
        assert load_scenario(f["path"]).name == f["name"]


def test_show_prints_the_table_and_draws_a_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["scenarios", "sample", "--seed", "1", "--family", "mixed", "--out", str(tmp_path)])
    capsys.readouterr()
    path = tmp_path / "gen-mixed-1.yaml"
    png = tmp_path / "plot.png"
    assert main(["scenarios", "show", str(path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    scenario = load_scenario(path)
    for word in ("scenario   gen-mixed-1", "capacity_rps", "utilization", "slo", "telemetry"):
        assert word in out
    assert "run 5 s before t = 0 (unscored)" in out  # generated meshes warm up one step
    for sub in scenario.subsets:
        assert f"\n  {sub.name} " in out
    event_lines = out.split("events     in time order\n")[1].splitlines()[1:-1]
    assert out.splitlines()[-1] == f"plot       {png}"
    assert len(event_lines) == len(scenario.events) >= 2
    assert [float(line.split()[0]) for line in event_lines] == [e.at_s for e in scenario.events]
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_show_json_is_one_object_for_a_suite_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "canary.png"
    assert main(["scenarios", "show", "degraded-canary", "--json", "--plot", str(png)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "degraded-canary" and info["plot"] == str(png)
    assert [v["name"] for v in info["versions"]] == ["stable", "canary"]
    assert [v["initial_weight"] for v in info["versions"]] == [90, 10]
    assert info["warmup_s"] == 0.0
    assert info["capacity_rps"] == pytest.approx(300.0)
    assert info["load"]["utilization"] == pytest.approx(190 / 300)
    assert info["events"] == [
        {
            "at_s": 600.0,
            "subset": "canary",
            "set": {"error_rate": 0.1},
            "ramp_s": 300.0,
            "duration_s": None,
            "reverts_at_s": None,
        }
    ]
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_show_reports_the_lowest_effective_capacity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "show", "latency-spike", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["min_capacity_rps"] == pytest.approx(150 * 0.4 + 150)
    assert 600 <= info["min_capacity_at_s"] <= 900
    assert info["load"]["peak_utilization"] == pytest.approx(180 / 210)


BAD = [
    (["sample", "--out", "X", "--family", "quake"], "argument --family: invalid choice"),
    (["sample", "--out", "X", "--seed", "-1"], "argument --seed: must be within 0..2^63-1"),
    (["sample", "--out", "X", "--seed", str(MAX_SEED + 1)], "argument --seed"),
    (["sample", "--out", "X", "--count", "0"], "argument --count"),
    (["sample", "--out", "X", "--seed", str(MAX_SEED), "--count", "2"], "seeds"),
    (["show", "no-such-scenario.yaml"], "no-such-scenario.yaml"),
    (["show"], "the following arguments are required"),
]


@pytest.mark.parametrize(("argv", "says"), BAD, ids=lambda a: " ".join(a))
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(tmp_path / "out") if a == "X" else a for a in argv]
    assert _exit_code(["scenarios", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("meshpilot scenarios"), err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_family_lists_the_families(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["scenarios", "sample", "--out", "x", "--family", "quake"]) == 2
    err = capsys.readouterr().err
    assert all(family in err for family in FAMILIES)

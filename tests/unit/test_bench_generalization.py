"""`bench/generalization.py` with `--count 0`: the public suite alone.

Cases: without `--suite-seeds` there is nothing to run and the command says so; with it, the
report has the suite's nine scenarios, each scored against the best rule run (`sqrt` alone
here, so 1.0), and an empty generated part (the keys stay, so readers of the JSON need no
special case). Without a classic rule among the policies there is no ratio to print, and the
report still keeps every bad fraction (a candidate is often run alone, to be compared with
rules measured once). The report counts, per policy, the scenarios worse than the per-scenario
limit and gives each family against the oracle too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.generalization import WORST_LIMIT, main


def test_count_0_without_the_suite_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--count", "0"])
    assert stop.value.code == 2
    assert "--count 0 runs the public suite alone" in capsys.readouterr().err


def test_count_0_runs_the_suite_alone(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    argv = ["--count", "0", "--suite-seeds", "1", "--policies", "sqrt", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["generated"] == {} and report["generated_summary"] is None
    assert len(report["suite"]) == 9
    assert all(set(row) == {"sqrt"} for row in report["suite"].values())
    assert report["suite_summary"]["sqrt"]["geomean_vs_best_rule"] == pytest.approx(1.0)


def test_a_run_without_a_classic_rule_keeps_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "suite.json"
    argv = ["--count", "0", "--suite-seeds", "1", "--policies", "planner", "--out", str(out)]
    assert main(argv) == 0
    assert "no classic rule among the policies" in capsys.readouterr().out
    report = json.loads(out.read_text(encoding="utf-8"))
    assert len(report["suite"]) == 9
    assert all(0.0 <= row["planner"]["bad_fraction"] <= 1.0 for row in report["suite"].values())
    assert report["suite_summary"] == {}


def test_the_report_counts_scenarios_above_the_limit_and_families_against_the_oracle(
    tmp_path: Path,
) -> None:
    out = tmp_path / "suite.json"
    policies = "oracle,proportional,sqrt"
    argv = ["--count", "0", "--suite-seeds", "1", "--policies", policies, "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    floor = 1e-4
    for policy in policies.split(","):
        ratios = [
            (row[policy]["bad_fraction"] + floor)
            / (min(row[r]["bad_fraction"] for r in ("proportional", "sqrt")) + floor)
            for row in report["suite"].values()
        ]
        summary = report["suite_summary"][policy]
        assert summary["count_above_worst_limit"] == sum(r > WORST_LIMIT for r in ratios)
        against_oracle = summary["families_vs_oracle"]["suite"]
        assert against_oracle == pytest.approx(1.0) if policy == "oracle" else against_oracle > 0

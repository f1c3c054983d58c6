"""`meshpilot simulate ... --trace FILE.csv --plot FILE.png`: what a policy did, step by step.

Cases:
- the CSV has the documented columns (per version: w_, proposed_, rps_, p99_ms_, err_,
  then est_health_ and est_error_) and one row per control step, at the end of each step;
- the planner's estimates are in the trace for the planner and for a policy behind the
  supervisor (a version that loses half its capacity reads below nominal health after it),
  and empty for a policy that keeps no planner;
- its values add up to the JSON summary of the same run: requests, bad fraction, 5xx
  fraction and churn; rps times the step is the step's requests; a raw run gives no reasons;
- ``--plot`` writes a PNG (alone or with ``--trace``);
- ``--as-served`` on a route started far from the policy's split: the guard's reasons
  ("step clamped ...", the writes) are in the CSV, each step within max_step, and the JSON
  says ``as_served``;
- a trace path that cannot be written is one error line and exit status 2.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from envs.simulator.scenario import load_scenario
from meshpilot.cli import main

VERSIONS = ("v1", "v2", "v3")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _scenario(tmp_path: Path, **changes: object) -> Path:
    """steady-80 for 120 s (24 steps of 5 s), with top-level `changes`, as a file."""
    data = json.loads(load_scenario("steady-80").model_dump_json())
    data.update(duration_s=120, **changes)
    path = tmp_path / "short.yaml"
    path.write_text(json.dumps(data) + "\n")  # JSON is YAML
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["simulate", *argv, "--json"]) == 0
    summary: dict[str, object] = json.loads(capsys.readouterr().out)
    return summary


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_trace_has_the_columns_and_one_row_per_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    _run(capsys, str(_scenario(tmp_path)), "--policy", "ewma", "--trace", str(trace))
    header, rows = _rows(trace)
    per_version = [f"{k}_{v}" for k in ("w", "proposed", "rps", "p99_ms", "err") for v in VERSIONS]
    tail = ["requests", "bad_fraction", "wrote", "intervened", "reason"]
    estimates = [f"{k}_{v}" for k in ("est_health", "est_error") for v in VERSIONS]
    assert header == ["t_s", *per_version, *tail, *estimates]
    assert len(rows) == 24
    assert [float(r["t_s"]) for r in rows] == [5.0 * (i + 1) for i in range(24)]


def test_trace_values_add_up_to_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.csv"
    scenario = _scenario(tmp_path)
    summary = _run(capsys, str(scenario), "--policy", "ewma", "--seed", "3", "--trace", str(trace))
    _, rows = _rows(trace)
    requests = [int(r["requests"]) for r in rows]
    assert sum(requests) == summary["requests"]
    for row, n in zip(rows, requests, strict=True):
        assert sum(float(row[f"rps_{v}"]) * 5.0 for v in VERSIONS) == pytest.approx(n)
        assert sum(int(row[f"w_{v}"]) for v in VERSIONS) == 100
        assert row["w_v1"] == row["proposed_v1"]  # raw: the proposal is what is in force
        assert row["reason"] == "" and row["intervened"] == "0"
        for v in VERSIONS:
            p99 = float(row[f"p99_ms_{v}"]) if row[f"p99_ms_{v}"] else None
            assert p99 is None or p99 > 0
    bad = sum(float(r["bad_fraction"]) * n for r, n in zip(rows, requests, strict=True))
    assert bad / sum(requests) == pytest.approx(summary["bad_fraction"])
    errors = sum(
        float(r[f"err_{v}"] or 0) * float(r[f"rps_{v}"]) * 5.0 for r in rows for v in VERSIONS
    )
    assert errors / sum(requests) == pytest.approx(summary["error_rate"])
    prev = load_scenario(str(scenario)).start_weights()
    moved = 0.0
    for r in rows:
        now = {v: int(r[f"w_{v}"]) for v in VERSIONS}
        moved += sum(abs(now[v] - prev[v]) for v in VERSIONS) / 2
        prev = now
    assert moved / len(rows) == pytest.approx(summary["churn"])
    assert summary["as_served"] is False


@pytest.mark.parametrize(("policy", "served"), [("planner", False), ("ewma", True)])
def test_the_planners_estimates_are_in_the_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, served: bool
) -> None:
    events = [{"at_s": 40, "subset": "v1", "set": {"capacity_factor": 0.5}}]
    scenario = str(_scenario(tmp_path, events=events))
    trace, plain = tmp_path / "trace.csv", tmp_path / "plain.csv"
    _run(capsys, scenario, "--policy", policy, *(["--as-served"] if served else []),
         "--trace", str(trace))  # fmt: skip
    _, rows = _rows(trace)
    health = [float(r["est_health_v1"]) for r in rows]
    assert all(0.0 < h <= 1.5 for h in health)
    assert all(0.0 <= float(r[f"est_error_{v}"]) <= 1.0 for r in rows for v in VERSIONS)
    assert health[5] > 0.8 and min(health[9:]) < 0.8  # steps end at 5 s, 10 s, ...: fault at 40 s
    _run(capsys, scenario, "--policy", "ewma", "--trace", str(plain))
    _, raw_rows = _rows(plain)
    cells = [r[f"{k}_{v}"] for r in raw_rows for k in ("est_health", "est_error") for v in VERSIONS]
    assert set(cells) == {""}


def test_plot_is_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario = str(_scenario(tmp_path))
    alone = tmp_path / "alone.png"
    _run(capsys, scenario, "--policy", "sqrt", "--plot", str(alone))
    both, trace = tmp_path / "both.png", tmp_path / "both.csv"
    argv = [scenario, "--policy", "ewma", "--as-served", "--plot", str(both)]
    _run(capsys, *argv, "--trace", str(trace))
    for png in (alone, both):
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert png.stat().st_size > 10_000
    assert trace.exists()


def test_as_served_reasons_are_in_the_trace_where_the_guard_limits_a_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Far from the capacity split that `proportional` asks for (~58/23/19) at 30 % load, so no
    # version is in distress (that weight would move at once: the next test).
    scenario = _scenario(
        tmp_path, initial_weights={"v1": 20, "v2": 60, "v3": 20}, load={"rps": 100}
    )
    raw_csv, served_csv = tmp_path / "raw.csv", tmp_path / "served.csv"
    _run(capsys, str(scenario), "--policy", "proportional", "--trace", str(raw_csv))
    summary = _run(
        capsys, str(scenario), "--policy", "proportional", "--as-served", "--trace", str(served_csv)
    )
    assert summary["as_served"] is True and summary["policy"] == "proportional"
    _, raw = _rows(raw_csv)
    _, served = _rows(served_csv)
    assert all(r["reason"] == "" for r in raw)
    assert served[0]["reason"].startswith("no subset has data; holding")  # nothing seen yet
    clamped = [r for r in served if "step clamped" in r["reason"]]
    assert clamped, [r["reason"] for r in served]
    for r in clamped:
        assert r["wrote"] == "1" and r["intervened"] == "1"
        assert int(r["w_v2"]) != int(r["proposed_v2"])
    prev = {"v1": 20, "v2": 60, "v3": 20}
    for r in served:
        now = {v: int(r[f"w_{v}"]) for v in VERSIONS}
        assert max(abs(now[v] - prev[v]) for v in VERSIONS) <= 10
        prev = now
    assert int(raw[0]["w_v2"]) == int(raw[0]["proposed_v2"]) < 40  # raw jumps at once


def test_as_served_weight_leaves_an_overloaded_version_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # v3 (a fifth of the capacity) starts with 80 % of a 80 % load: in distress from the start.
    scenario = _scenario(tmp_path, initial_weights={"v1": 10, "v2": 10, "v3": 80})
    served_csv = tmp_path / "served.csv"
    _run(
        capsys, str(scenario), "--policy", "proportional", "--as-served", "--trace", str(served_csv)
    )
    _, served = _rows(served_csv)
    relieved = [i for i, r in enumerate(served) if "relief:" in r["reason"]]
    assert relieved, [r["reason"] for r in served]
    first = served[relieved[0]]
    assert first["wrote"] == "1" and 80 - int(first["w_v3"]) > 10  # more than max_step at once


def test_an_unwritable_trace_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory\n")
    scenario = str(_scenario(tmp_path))
    with pytest.raises(SystemExit) as stop:  # refused when parsed, before the episode
        main(["simulate", scenario, "--trace", str(blocker / "trace.csv")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"meshpilot simulate: error: argument --trace: {blocker} is not a ")

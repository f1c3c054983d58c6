"""`meshpilot evaluate` and its engine (agents.evaluate), on short episodes.

Cases:
- the JSON report has every contract key (and the extensions) for 2 policies x 2 scenarios x
  2 seeds; means sit inside their 95 % intervals; the oracle's ratio to itself is 1 and other
  ratios follow the per-seed bad fractions; same seed => same requests for every policy;
- the table names every scenario and policy; plots are written as PNG files;
- results do not depend on policy order or on the number of worker processes;
- scenarios resolve from suite names, files and directories, with a duration override;
  duplicates are refused;
- the CLI exits 2 with one clear line for an unknown scenario, a malformed scenario file, an
  unknown policy, and a duration shorter than a control step;
- every registered policy name builds a policy of that name; ``ppo:PATH`` with a missing file
  or no path is a ConfigError naming it;
- ``--as-served``: every entry keeps the name given and says ``as_served`` (false for the
  oracle, a raw yardstick, and for every entry of a raw run); the table says how they ran;
  as-served results with 2 worker processes equal those with 1, and a jittery policy (ewma) churns
  less as served than raw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.evaluate import (
    METRICS,
    format_table,
    resolve_scenarios,
    run_evaluation,
    summarize,
)
from agents.registry import make_policy, policy_names
from envs.simulator.scenario import ScenarioError, suite_paths
from meshcore.errors import ConfigError
from meshpilot.cli import main
from meshpilot.served import served_setup

SHORT = "30"


def _run_cli(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    tmp_path.mkdir(exist_ok=True)  # --out never creates the directory of its file
    out = tmp_path / "report.json"
    code = main(
        [
            "evaluate",
            "--scenarios",
            "steady-80",
            "latency-spike",
            "--policy",
            "proportional",
            "oracle",
            "--seeds",
            "2",
            "--duration-s",
            SHORT,
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_report_has_every_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _run_cli(tmp_path)
    assert code == 0
    assert list(report) == ["steady-80", "latency-spike"]
    for entries in report.values():
        assert list(entries) == ["proportional", "oracle"]
        for entry in entries.values():
            for metric in METRICS:
                assert isinstance(entry[metric], float)
                lo, hi = entry[f"{metric}_ci95"]
                assert lo <= entry[metric] <= hi
                assert len(entry["per_seed"][metric]) == 2
            assert entry["n_seeds"] == 2
            assert entry["seeds"] == [0, 1]
            assert entry["duration_s"] == float(SHORT)
            assert entry["requests"] > 0
        assert entries["oracle"]["oracle_ratio"] == pytest.approx(1.0)
        prop, orc = entries["proportional"], entries["oracle"]
        if orc["bad_fraction"] > 0:
            ratio = sum(prop["per_seed"]["bad_fraction"]) / sum(orc["per_seed"]["bad_fraction"])
            assert prop["oracle_ratio"] == pytest.approx(ratio)
        assert prop["requests"] == orc["requests"]  # same seeds, same arrivals
    table = capsys.readouterr().out
    for name in ("steady-80", "latency-spike", "proportional", "oracle"):
        assert name in table


def test_first_seed_picks_other_traces(tmp_path: Path) -> None:
    code, report = _run_cli(tmp_path, "--first-seed", "100")
    assert code == 0
    _, default = _run_cli(tmp_path / "default")
    held_out = report["latency-spike"]["proportional"]
    assert held_out["seeds"] == [100, 101]
    assert (
        held_out["per_seed"]["bad_fraction"]
        != (default["latency-spike"]["proportional"]["per_seed"]["bad_fraction"])
    )
    assert held_out["requests"] == report["latency-spike"]["oracle"]["requests"]


def test_plots_are_written(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    code, _ = _run_cli(tmp_path, "--plots", str(plots))
    assert code == 0
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["bad_fraction.png", "weights_latency-spike.png", "weights_steady-80.png"]
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 5000


def test_results_do_not_depend_on_order_or_workers() -> None:
    scenarios = resolve_scenarios(["steady-80"], duration_s=20.0)
    a = summarize(run_evaluation(scenarios, ["sqrt", "greedy"], [0, 1]), scenarios, ["sqrt"])
    b = summarize(
        run_evaluation(scenarios, ["greedy", "sqrt"], [0, 1], workers=2), scenarios, ["sqrt"]
    )
    assert a == b


def test_resolve_scenarios_from_names_files_and_directories(tmp_path: Path) -> None:
    src = suite_paths()[0]
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x.yaml").write_text(src.read_text().replace(src.stem, "x-copy", 1))
    got = resolve_scenarios(["steady-50", str(suite_paths()[1]), str(tmp_path / "dir")])
    assert [s.name for s in got] == ["steady-50", suite_paths()[1].stem, "x-copy"]
    short = resolve_scenarios(["steady-50"], duration_s=15.0)
    assert short[0].duration_s == 15.0
    with pytest.raises(ScenarioError, match="unique"):
        resolve_scenarios(["steady-50", "steady-50"])
    with pytest.raises(ScenarioError, match=r"no \*\.yaml"):
        resolve_scenarios([str(tmp_path)])


def test_table_marks_missing_values() -> None:
    scenarios = resolve_scenarios(["steady-50"], duration_s=10.0)
    report = summarize(run_evaluation(scenarios, ["equal"], [3]), scenarios, ["equal"])
    entry = report["steady-50"]["equal"]
    assert entry["bad_fraction_ci95"] == [None, None]  # one seed: no interval
    assert entry["oracle_ratio"] is None  # oracle not evaluated
    assert " - " in format_table(report)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--scenarios", "steady-8", "--policy", "equal"], "steady-8"),
        (["--scenarios", "steady-80", "--policy", "bogus"], "bogus"),
        (["--scenarios", "steady-80", "--policy", "equal", "--duration-s", "1"], "duration"),
    ],
    ids=["unknown-scenario", "unknown-policy", "too-short"],
)
def test_cli_errors_exit_2_with_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("meshpilot evaluate: error:") and needle in err[0]


def test_cli_refuses_a_negative_first_seed(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--quiet", "--policy", "equal", "--first-seed", "-1"])
    assert exit_info.value.code == 2
    assert "--first-seed: must be at least 0, got -1" in capsys.readouterr().err


def test_cli_malformed_scenario_names_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nduration_s: 10\nload: {rps: 10}\nsubsets: []\nwieght: 3\n")
    assert main(["evaluate", "--quiet", "--scenarios", str(bad), "--policy", "equal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_registry_builds_every_named_policy() -> None:
    names = [n for n in policy_names() if not n.startswith("ppo") and ":" not in n]
    expected = {"equal", "proportional", "sqrt", "greedy", "canary", "ewma", "oracle"}
    assert expected | {"oracle-late", "oracle-hindsight"} <= set(names)
    for name in names:
        assert make_policy(name).name == name


@pytest.mark.parametrize("name", ["ppo:/nonexistent/model.npz", "ppo:"])
def test_registry_ppo_path_errors_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match=r"ppo|model"):
        make_policy(name)


def test_as_served_report_keeps_names_and_says_how_each_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, raw = _run_cli(tmp_path / "raw")
    assert code == 0
    code, served = _run_cli(tmp_path / "served", "--as-served")
    assert code == 0
    assert "as served:" in capsys.readouterr().out
    for scenario, entries in served.items():
        assert list(entries) == ["proportional", "oracle"]
        assert entries["proportional"]["as_served"] is True
        assert entries["oracle"]["as_served"] is False
        assert entries["oracle"]["per_seed"] == raw[scenario]["oracle"]["per_seed"]
        assert all(e["as_served"] is False for e in raw[scenario].values())
        assert set(entries["proportional"]) == set(raw[scenario]["proportional"])


def test_as_served_results_do_not_depend_on_workers() -> None:
    scenarios = resolve_scenarios(["latency-spike"], duration_s=60.0)
    policies = ["ewma", "supervised:equal", "oracle"]
    one = run_evaluation(scenarios, policies, [0, 1], setup=served_setup)
    two = run_evaluation(scenarios, policies, [0, 1], setup=served_setup, workers=2)
    assert [r.as_served for r in one] == [True, True, True, True, False, False]
    served = summarize(one, scenarios, policies)
    assert served == summarize(two, scenarios, policies)
    raw = summarize(run_evaluation(scenarios, ["ewma"], [0, 1]), scenarios, ["ewma"])
    assert served["latency-spike"]["ewma"]["churn"] < raw["latency-spike"]["ewma"]["churn"]

"""`meshpilot prometheus-rules`: rules for the settings, in step with what the observer reads.

The rules themselves are loaded and evaluated by a real Prometheus in
tests/integration/test_prometheus_observer.py; here: the command's output and errors.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from controller.adapters.promql import PROFILES, RECORDED_METRIC
from meshpilot.cli import main

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "manifests" / "prometheus" / "meshpilot-rules.yaml"


def rules_of(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["prometheus-rules", *argv]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def selected_labels(query: str) -> dict[str, str]:
    """The exact-match (=) label matchers of a selector."""
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', query))


def test_rules_record_both_stat_families_labelled_with_the_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = rules_of(capsys, "--window-s", "10", "--slo-ms", "500", "--interval-s", "5")
    (group,) = document["groups"]
    assert group["interval"] == "5s"
    assert [r["record"] for r in group["rules"]] == [RECORDED_METRIC, RECORDED_METRIC]
    stats = set(
        re.findall(r'"meshpilot_stat", "(\w+)"', " ".join(r["expr"] for r in group["rules"]))
    )
    recent = {"recent_rps", "recent_p99_ms", "recent_slow_ratio"}
    assert stats == {"rps", "errors_rps", "last_sample_s", "p99_ms", "slow_ratio", *recent}
    for rule in group["rules"]:
        assert "[10s]" in rule["expr"] and "[30s]" not in rule["expr"]
        assert "destination_service=~" not in rule["expr"]  # every service, not a host list
        assert rule["labels"]["meshpilot_window"] == "10s"
        assert rule["labels"]["meshpilot_slo_ms"] == "500"
    # The observer's one query selects exactly the labels these rules write.
    query = PROFILES["istio"].recorded_query(["a.ns.svc.cluster.local"], window_s=10, slo_ms=500)
    wanted = {k: v for k, v in selected_labels(query).items() if k.startswith("meshpilot_")}
    assert wanted == group["rules"][0]["labels"]


def test_settings_file_sets_the_defaults_and_options_override_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("prometheus: {window_s: 15, reporter: source}\nslo_ms: 100\n")
    labels = rules_of(capsys, "--config", str(config))["groups"][0]["rules"][0]["labels"]
    assert labels["meshpilot_window"] == "15s"
    assert labels["meshpilot_reporter"] == "source"
    assert labels["meshpilot_slo_ms"] == "100"
    labels = rules_of(capsys, "--config", str(config), "--window-s", "20")["groups"][0]
    assert labels["rules"][0]["labels"]["meshpilot_window"] == "20s"


def test_the_shipped_rule_file_is_the_commands_default_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [k for k in __import__("os").environ if k.startswith("MESHPILOT_")]:
        monkeypatch.delenv(name)
    assert yaml.safe_load(SHIPPED.read_text()) == rules_of(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--slo-ms", "-1"], "slo_ms"),
        (["--reporter", "bogus"], "reporter must be one of"),
        (["--interval-s", "0"], "positive number of seconds"),
        (["--profile", "nope"], "unknown PromQL profile"),
    ],
)
def test_bad_options_are_one_clear_line_and_write_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rules.yaml"
    assert main(["prometheus-rules", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()

"""The alert rules and the Grafana dashboard watch metrics the controller really exports.

Cases:

* manifests/prometheus/meshpilot-alerts.yaml passes ``promtool check rules`` (syntax, PromQL,
  annotation templates), every alert has a severity, a summary and a description;
* ``promtool test rules`` on synthetic series named as the controller exports them: a healthy
  two-replica controller fires nothing, and each alert fires on the failure it names (no
  scrape, a stuck loop, Prometheus unreachable, slow ticks, no leader, two leaders, a failed or
  holding route, a route in the supervisor's fallback, read/write errors, verification
  mismatches, concurrent writers) with the labels an operator needs, and not before its
  ``for``; every alert of the file has such a case;
* the dashboard in manifests/base/grafana-dashboard.yaml is valid JSON with a stable uid, a
  Prometheus datasource variable every panel uses, only valid PromQL (checked by promtool),
  and it shows every metric family of the controller;
* every ``meshpilot_*`` series the alerts, their tests and the dashboard query is one that
  `controller.metrics.ControllerMetrics` exports (derived from its registry, so a renamed
  metric fails here).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "manifests" / "prometheus" / "meshpilot-alerts.yaml"
DASHBOARD_CM = ROOT / "manifests" / "base" / "grafana-dashboard.yaml"
METRIC = re.compile(r"\bmeshpilot_[a-zA-Z0-9_]+\b")

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "unknown": ("",),
}


def exported_families() -> dict[str, str]:
    """{family name: type} of everything `ControllerMetrics` registers."""
    from controller.metrics import ControllerMetrics

    return {f.name: f.type for f in ControllerMetrics().registry.collect()}


def exported_series() -> set[str]:
    """Every series name the controller's /metrics can show (a labelled family has no sample
    before its first use, so names come from the family types)."""
    return {name + s for name, kind in exported_families().items() for s in SUFFIXES[kind]}


def test_exported_series_names_match_the_exposition() -> None:
    from controller.metrics import ControllerMetrics

    text = ControllerMetrics().render().decode()
    shown = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert shown - {""} <= exported_series()
    assert {"meshpilot_ticks_total", "meshpilot_tick_duration_seconds_bucket"} <= shown


# -- alert rules ---------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [r for group in doc["groups"] for r in group["rules"] if "alert" in r]


def promtool(promtool_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_bin, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_alert_rules_pass_promtool_check(promtool_bin: str) -> None:
    result = promtool(promtool_bin, "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = alert_rules()
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alert_rules_query_only_exported_series() -> None:
    exported = exported_series()
    for rule in alert_rules():
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)


T = {"namespace": "lirmm-services", "pod": "ai-controller-a", "instance": "ai-controller-a:8080"}
T_B = {"namespace": "lirmm-services", "pod": "ai-controller-b", "instance": "ai-controller-b:8080"}
ROUTE = "lirmm-services/reviews/primary"


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def healthy(target: dict[str, str], leader: int, minutes: int = 60) -> list[dict[str, str]]:
    """One replica ticking every 5 s with data, one route active and written now and then."""
    n = minutes
    return [
        series("meshpilot_ticks_total", f"0+12x{n}", **target),
        series("meshpilot_query_errors_total", f"0x{n}", **target),
        series("meshpilot_tick_duration_seconds_bucket", f"0+12x{n}", le="0.1", **target),
        series("meshpilot_tick_duration_seconds_bucket", f"0+12x{n}", le="+Inf", **target),
        series("meshpilot_leader", f"{leader}x{n}", **target),
        series("meshpilot_route_phase", f"1x{n}", route=ROUTE, phase="active", **target),
        series("meshpilot_route_phase", f"0x{n}", route=ROUTE, phase="failed", **target),
        series("meshpilot_route_phase", f"0x{n}", route=ROUTE, phase="holding", **target),
        series("meshpilot_decisions_total", f"0+1x{n}", route=ROUTE, outcome="written", **target),
        series("meshpilot_decisions_total", f"0x{n}", route=ROUTE, outcome="error", **target),
        series("meshpilot_verify_failures_total", f"0x{n}", route=ROUTE, **target),
        series("meshpilot_conflicts_total", f"0x{n}", **target),
    ]


def replace(base: list[dict[str, str]], *new: dict[str, str]) -> list[dict[str, str]]:
    """`base` with the series of the same name and labels as one of `new` replaced."""
    keys = {s["series"] for s in new}
    return [s for s in base if s["series"] not in keys] + list(new)


def fired(alert: str, at: str, *labels: dict[str, str], severity: str) -> dict[str, Any]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {**lbl, "severity": severity}} for lbl in labels],
    }


def silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def alert_cases() -> list[dict[str, Any]]:
    """promtool unit tests: (input series, expectations), one test group per situation."""
    two = healthy(T, 1) + healthy(T_B, 0)
    ns = {"namespace": T["namespace"]}
    route = {"route": ROUTE}
    names = [r["alert"] for r in alert_rules()]
    return [
        # A healthy leader and follower: nothing fires at any time.
        {"input_series": two, "alert_rule_test": [silent(a, "45m") for a in names]},
        # No controller scraped at all.
        {
            "input_series": [{"series": 'up{job="other"}', "values": "1x20"}],
            "alert_rule_test": [
                silent("MeshpilotDown", "4m"),
                fired("MeshpilotDown", "10m", {}, severity="critical"),
            ],
        },
        # Prometheus unreachable: every tick's observation fails.
        {
            "input_series": replace(
                healthy(T, 1, 30), series("meshpilot_query_errors_total", "0+12x30", **T)
            ),
            "alert_rule_test": [fired("MeshpilotNoSuccessfulTick", "20m", T, severity="critical")],
        },
        # The loop is stuck after 5 minutes: the tick counter stops.
        {
            "input_series": replace(
                healthy(T, 1, 35), series("meshpilot_ticks_total", "0+12x5 60x30", **T)
            ),
            "alert_rule_test": [
                silent("MeshpilotNoSuccessfulTick", "10m"),
                fired("MeshpilotNoSuccessfulTick", "30m", T, severity="critical"),
            ],
        },
        # Every tick takes 2.5..5 s.
        {
            "input_series": [
                series("meshpilot_tick_duration_seconds_bucket", "0x40", le="2.5", **T),
                series("meshpilot_tick_duration_seconds_bucket", "0+12x40", le="5", **T),
                series("meshpilot_tick_duration_seconds_bucket", "0+12x40", le="+Inf", **T),
            ],
            "alert_rule_test": [
                silent("MeshpilotTickSlow", "12m"),
                fired("MeshpilotTickSlow", "35m", T, severity="warning"),
            ],
        },
        # Both replicas followers; then both leaders.
        {
            "input_series": healthy(T, 0, 10) + healthy(T_B, 0, 10),
            "alert_rule_test": [fired("MeshpilotLeaderMissing", "5m", ns, severity="critical")],
        },
        {
            "input_series": healthy(T, 1, 10) + healthy(T_B, 1, 10),
            "alert_rule_test": [fired("MeshpilotSplitBrain", "5m", ns, severity="critical")],
        },
        # The route failed on both replicas (one alert per route), then holding.
        {
            "input_series": replace(
                two,
                series("meshpilot_route_phase", "1x60", route=ROUTE, phase="failed", **T),
                series("meshpilot_route_phase", "1x60", route=ROUTE, phase="failed", **T_B),
            ),
            "alert_rule_test": [
                silent("MeshpilotRouteFailed", "3m"),
                fired("MeshpilotRouteFailed", "8m", route, severity="critical"),
            ],
        },
        {
            "input_series": replace(
                two, series("meshpilot_route_phase", "1x60", route=ROUTE, phase="holding", **T)
            ),
            "alert_rule_test": [
                silent("MeshpilotRouteHolding", "10m"),
                fired("MeshpilotRouteHolding", "20m", route, severity="warning"),
            ],
        },
        # The supervisor's fallback serves a route for an hour.
        {
            "input_series": replace(
                two, series("meshpilot_route_fallback", "1x60", route=ROUTE, **T)
            ),
            "alert_rule_test": [
                silent("MeshpilotRouteInFallback", "20m"),
                fired("MeshpilotRouteInFallback", "40m", route, severity="warning"),
            ],
        },
        # One read/write error a minute, one verification mismatch a minute.
        {
            "input_series": replace(
                two,
                series("meshpilot_decisions_total", "0+1x60", route=ROUTE, outcome="error", **T),
                series("meshpilot_verify_failures_total", "0+1x60", route=ROUTE, **T),
            ),
            "alert_rule_test": [
                fired("MeshpilotWriteErrors", "15m", route, severity="warning"),
                fired("MeshpilotVerificationMismatch", "10m", route, severity="warning"),
            ],
        },
        # Another writer: five conflicts a minute.
        {
            "input_series": replace(two, series("meshpilot_conflicts_total", "0+5x60", **T)),
            "alert_rule_test": [
                silent("MeshpilotWriteConflicts", "10m"),
                fired("MeshpilotWriteConflicts", "40m", ns, severity="info"),
            ],
        },
    ]


def test_each_alert_fires_on_its_failure_and_not_on_a_healthy_controller(
    promtool_bin: str, tmp_path: Path
) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:  # promtool compares annotations too: check them elsewhere
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(rules))
    cases = alert_cases()
    tests = [{"interval": "1m", **copy.deepcopy(case)} for case in cases]
    (tmp_path / "alerts.test.yaml").write_text(
        yaml.safe_dump({"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": tests})
    )
    result = promtool(promtool_bin, "test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    firing = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert firing == {r["alert"] for r in alert_rules()}, "an alert without a firing case"
    used = {
        s["series"].split("{")[0]
        for case in cases
        for s in case["input_series"]
        if s["series"].startswith("meshpilot_")
    }
    assert used <= exported_series(), used - exported_series()


# -- Grafana dashboard ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    cm = yaml.safe_load(DASHBOARD_CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    parsed: dict[str, Any] = json.loads(cm["data"]["meshpilot-controller.json"])
    return parsed


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if "expr" in t]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "meshpilot-controller"
    assert dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_dashboard_queries_only_exported_series_and_shows_every_family(
    dashboard: dict[str, Any],
) -> None:
    exported = exported_series()
    used: set[str] = set()
    for expr in queries(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"a query without a meshpilot metric: {expr}"
        assert names <= exported, (expr, names - exported)
        used |= names
    shown = {
        family
        for family, kind in exported_families().items()
        if any(family + s in used for s in SUFFIXES[kind])
    }
    assert shown == set(exported_families()), set(exported_families()) - shown


def test_dashboard_queries_are_valid_promql(
    dashboard: dict[str, Any], promtool_bin: str, tmp_path: Path
) -> None:
    """Grafana's variables replaced as Grafana would, each query checked by promtool."""
    rules = [
        {
            "record": f"dashboard:query_{n}",
            "expr": expr.replace("$__rate_interval", "1m").replace("$route", ".*"),
        }
        for n, expr in enumerate(queries(dashboard))
        if not expr.startswith("label_values(")  # a Grafana function, not PromQL
    ]
    file = tmp_path / "dashboard-queries.yaml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool(promtool_bin, "check", "rules", str(file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout

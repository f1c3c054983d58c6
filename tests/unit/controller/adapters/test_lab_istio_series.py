"""The lab's recording rules write exactly the series the ``istio`` profile queries.

``envs.lab.prometheus`` may not import the controller, so it spells Istio's names itself; here
(where both may be imported) the names are compared, and ``promtool test rules`` runs the
profile's own traffic query over Envoy-shaped input turned into Istio series by the rules:
per-version request and 5xx rates come out as Envoy counted them, and the series are fresh.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from controller.adapters.promql import (
    PROFILES,
    STAT_ERRORS_RPS,
    STAT_LABEL,
    STAT_LAST_SAMPLE_S,
    STAT_RECENT_RPS,
    STAT_RPS,
)
from envs.lab import prometheus as lab_prometheus

ISTIO = PROFILES["istio"]


def test_rules_use_the_istio_profiles_metric_and_label_names() -> None:
    lab = lab_prometheus
    written = (
        lab.ISTIO_REQUESTS_METRIC,
        lab.ISTIO_DURATION_BUCKET_METRIC,
        lab.SERVICE_LABEL,
        lab.VERSION_LABEL,
        lab.CODE_LABEL,
        lab.REPORTER_LABEL,
        lab.REPORTER,
    )
    read = (
        ISTIO.requests_metric,
        ISTIO.duration_bucket_metric,
        ISTIO.service_label,
        ISTIO.version_label,
        ISTIO.code_label,
        ISTIO.reporter_label,
        ISTIO.default_reporter,
    )
    assert written == read
    records = [r["record"] for r in lab_prometheus.recording_rules()["groups"][0]["rules"]]
    assert records == [ISTIO.requests_metric, ISTIO.duration_bucket_metric]


HOST = "r.ns.svc.cluster.local"


def _series(version: str, code: str, per_s: int) -> str:
    cluster = f"outbound|9080|{version}|{HOST}"
    return (
        f'      - series: \'envoy_cluster_upstream_rq{{cluster_name="{cluster}", '
        f"response_code=\"{code}\"}}'\n        values: '0+{per_s}x40'\n"
        f'      - series: \'envoy_cluster_upstream_rq{{cluster_name="{cluster}", '
        f"response_code_class=\"{code[0]}xx\"}}'\n        values: '0+{per_s}x40'\n"
    )


def _expected(version: str, stat: str, value: float) -> str:
    labels = (
        f'{{destination_service="{HOST}", destination_version="{version}", {STAT_LABEL}="{stat}"}}'
    )
    return f"          - labels: '{labels}'\n            value: {value}\n"


def test_the_profiles_traffic_query_reads_envoys_rates_through_the_rules(
    promtool_bin: str, tmp_path: Path
) -> None:
    traffic, _ = ISTIO.queries([HOST], window_s=5, slo_ms=250)
    test = (
        "rule_files: [rules.yml]\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n"
        "    input_series:\n"
        + _series("v1", "200", 10)
        + _series("v2", "200", 8)
        + _series("v2", "503", 2)
        + "    promql_expr_test:\n"
        + f"      - expr: {json.dumps(traffic)}\n        eval_time: 30s\n        exp_samples:\n"
        + _expected("v1", STAT_RPS, 10)
        + _expected("v2", STAT_RPS, 10)
        + _expected("v1", STAT_ERRORS_RPS, 0)
        + _expected("v2", STAT_ERRORS_RPS, 2)
        + _expected("v1", STAT_LAST_SAMPLE_S, 30)  # recorded at the evaluation: fresh
        + _expected("v2", STAT_LAST_SAMPLE_S, 30)
        + _expected("v1", STAT_RECENT_RPS, 10)  # steady: the newest interval's rate is the same
        + _expected("v2", STAT_RECENT_RPS, 10)
    )
    (tmp_path / "rules.yml").write_text(json.dumps(lab_prometheus.recording_rules()))
    (tmp_path / "test.yml").write_text(test)
    out = subprocess.run(
        [promtool_bin, "test", "rules", "test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr + "\n" + test

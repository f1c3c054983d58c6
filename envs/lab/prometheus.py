"""Prometheus for the lab: scrape Envoy and rebuild Istio's series with recording rules.

Why: the controller's PromQL (the ``istio`` profile of ``controller.adapters.promql``) is
written for the series Istio's sidecars export. The lab runs a bare Envoy, whose cluster stats
carry the same information under other names; recording rules evaluated every second turn them
into ``istio_requests_total`` and ``istio_request_duration_milliseconds_bucket`` with the
labels that profile reads, so the very queries used against a real mesh run unchanged here.

The names are literal Istio names: ``envs`` may not import the controller. A unit test in
``tests/unit/controller/adapters`` checks they equal the profile's.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "CLUSTER_LABEL",
    "ISTIO_DURATION_BUCKET_METRIC",
    "ISTIO_REQUESTS_METRIC",
    "REPORTER",
    "prometheus_command",
    "prometheus_config",
    "recording_rules",
    "wait_for_sample",
]

ISTIO_REQUESTS_METRIC = "istio_requests_total"
ISTIO_DURATION_BUCKET_METRIC = "istio_request_duration_milliseconds_bucket"
SERVICE_LABEL = "destination_service"
VERSION_LABEL = "destination_version"
CODE_LABEL = "response_code"
REPORTER_LABEL = "reporter"
REPORTER = "destination"
"""The ``reporter`` the rules write: the istio profile's default."""

CLUSTER_LABEL = "cluster_name"
"""Label Istio's stats tags put the Envoy cluster name in (see `envs.lab.envoy`)."""

ENVOY_REQUESTS_METRIC = "envoy_cluster_upstream_rq"
ENVOY_DURATION_BUCKET_METRIC = "envoy_cluster_upstream_rq_time_bucket"
ENVOY_JOB = "envoy"

_OUTBOUND = r"outbound\|[0-9]+\|[^|]+\|.+"
_VERSION_RE = r"outbound\|[0-9]+\|([^|]+)\|.+"
_SERVICE_RE = r"outbound\|[0-9]+\|[^|]+\|(.+)"


def _duration(seconds: float) -> str:
    if not seconds > 0:
        raise ValueError(f"an interval must be > 0 s, got {seconds}")
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _quoted(text: str) -> str:
    return json.dumps(text)  # a PromQL string literal: same escapes as JSON for this text


def _istio_shaped(selector: str, keep: str) -> str:
    """`selector` with ``destination_version`` / ``destination_service`` taken from the
    cluster name, summed by them and `keep` (instance and cluster name dropped)."""
    with_version = (
        f"label_replace({selector}, {_quoted(VERSION_LABEL)}, "
        f'"$1", {_quoted(CLUSTER_LABEL)}, {_quoted(_VERSION_RE)})'
    )
    with_service = (
        f"label_replace({with_version}, {_quoted(SERVICE_LABEL)}, "
        f'"$1", {_quoted(CLUSTER_LABEL)}, {_quoted(_SERVICE_RE)})'
    )
    return f"sum by ({SERVICE_LABEL}, {VERSION_LABEL}, {keep}) ({with_service})"


def recording_rules(
    *,
    interval_s: float = 1.0,
    requests_metric: str = ISTIO_REQUESTS_METRIC,
    duration_bucket_metric: str = ISTIO_DURATION_BUCKET_METRIC,
    reporter: str = REPORTER,
) -> dict[str, Any]:
    """A rule-file document (dump as JSON or YAML) evaluated every `interval_s` (s).

    It records `requests_metric` (by service, version and response code) from Envoy's
    per-code request counter and `duration_bucket_metric` (by service, version and ``le``,
    in ms) from its request-time histogram, both over ``outbound|...`` clusters only, with
    ``reporter=`` `reporter`. Only the ``response_code`` series of the counter are read: the
    same metric also has ``response_code_class`` series, and counting both doubles the rate.
    """
    cluster = f"{CLUSTER_LABEL}=~{_quoted(_OUTBOUND)}"
    requests = f'{ENVOY_REQUESTS_METRIC}{{{cluster}, {CODE_LABEL}!=""}}'
    buckets = f"{ENVOY_DURATION_BUCKET_METRIC}{{{cluster}}}"
    labels = {REPORTER_LABEL: reporter}
    return {
        "groups": [
            {
                "name": "meshpilot-lab-istio-series",
                "interval": _duration(interval_s),
                "rules": [
                    {
                        "record": requests_metric,
                        "expr": _istio_shaped(requests, CODE_LABEL),
                        "labels": dict(labels),
                    },
                    {
                        "record": duration_bucket_metric,
                        "expr": _istio_shaped(buckets, "le"),
                        "labels": dict(labels),
                    },
                ],
            }
        ]
    }


def _host_port(address: str) -> str:
    """``host:port`` from ``http://host:port[/...]`` or ``host:port``."""
    parsed = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
    if not parsed.hostname or parsed.port is None:
        raise ValueError(f"Envoy admin address must be host:port or a URL, got {address!r}")
    return f"{parsed.hostname}:{parsed.port}"


def prometheus_config(
    envoy_admin: str, *, scrape_s: float = 1.0, rules_path: Path
) -> dict[str, Any]:
    """Prometheus's config (dump as JSON: it is YAML too): scrape Envoy's admin
    ``/stats/prometheus`` every `scrape_s` (s), evaluate `rules_path` at the same interval.

    envoy_admin: ``127.0.0.1:PORT`` or ``http://127.0.0.1:PORT``.
    """
    interval = _duration(scrape_s)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules_path)],
        "scrape_configs": [
            {
                "job_name": ENVOY_JOB,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "metrics_path": "/stats/prometheus",
                "static_configs": [{"targets": [_host_port(envoy_admin)]}],
            }
        ],
    }


def prometheus_command(binary: str, config_path: Path, data_dir: Path, port: int) -> list[str]:
    """The command line of the lab's Prometheus: 127.0.0.1 only, lifecycle API on (reload and
    quit over HTTP), one hour of retention."""
    return [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address=127.0.0.1:{int(port)}",
        "--web.enable-lifecycle",
        "--storage.tsdb.retention.time=1h",
    ]


def _query(url: str, promql: str, timeout_s: float) -> list[dict[str, Any]]:
    full = f"{url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(full, timeout=timeout_s) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"query {promql!r} failed: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for_sample(url: str, query: str, timeout_s: float) -> list[dict[str, Any]]:
    """Poll Prometheus at `url` until `query` returns a series; returns the result.

    ``/-/ready`` answers seconds before the first scrape lands, so waiting for data is the
    only reliable start signal. TimeoutError naming the last error after `timeout_s` (s).
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = _query(url, query, min(2.0, max(timeout_s, 0.1)))
            if result:
                return result
        except (OSError, RuntimeError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"no sample for {query!r} at {url} within {timeout_s} s (last error: {last_error})"
            )
        time.sleep(0.2)

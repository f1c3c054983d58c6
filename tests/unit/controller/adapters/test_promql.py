"""PromQL profiles: the query templates the live observer sends.

Covers: a fixed query count whatever the number of hosts; grouping by service and version;
one anchored, escaped host regex per selector; order-independent text; reporter and rate-window
parameters and their validation; the ``or 0 *`` fallback for 5xx; the SLO bucket matcher; the
newest-interval (``irate``) latency stats next to the windowed (``rate``) ones; the recorded
stats read in two queries that split them by family;
Istio host name expansion; and that Prometheus's ``promtool`` parses the queries (it comes with
Debian's prometheus package, installed by ``make test``; missing, the test fails).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from controller.adapters.promql import (
    PROFILES,
    QUERIES_PER_TICK,
    STAT_ERRORS_RPS,
    STAT_LABEL,
    STAT_LAST_SAMPLE_S,
    STAT_P99_MS,
    STAT_RECENT_P99_MS,
    STAT_RECENT_RPS,
    STAT_RECENT_SLOW_RATIO,
    STAT_RPS,
    STAT_SLOW_RATIO,
    PromQLProfile,
    destination_service,
    get_profile,
    le_regex,
    promql_duration,
    promql_string,
)
from meshcore.errors import ConfigError
from meshcore.telemetry_format import ISTIO_BUCKETS_MS, le_label

ISTIO = PROFILES["istio"]
REVIEWS = "reviews.lirmm-services.svc.cluster.local"
RATINGS = "ratings.lirmm-services.svc.cluster.local"
SELECTOR = re.compile(r"(istio_[a-z_]+)\{([^}]*)\}")


def _selectors(query: str) -> list[tuple[str, str]]:
    return SELECTOR.findall(query)


def _service_regex(matchers: str) -> str:
    """The destination_service regex of one selector, PromQL string unescaped."""
    m = re.search(r'destination_service=~"((?:[^"\\]|\\.)*)"', matchers)
    assert m, matchers
    return m.group(1).encode().decode("unicode_escape")


def test_fixed_query_count_whatever_the_number_of_hosts() -> None:
    one = ISTIO.queries([REVIEWS])
    fifty = ISTIO.queries([f"svc{i}.ns.svc.cluster.local" for i in range(50)])
    assert len(one) == len(fifty) == QUERIES_PER_TICK <= 3


def test_every_selector_filters_reporter_and_all_hosts_with_one_regex() -> None:
    traffic, latency = ISTIO.queries([REVIEWS, RATINGS])
    selectors = _selectors(traffic) + _selectors(latency)
    assert {metric for metric, _ in selectors} == {
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
    }
    for _, matchers in selectors:
        assert 'reporter="destination"' in matchers
        pattern = re.compile(_service_regex(matchers))
        # Prometheus anchors regexes: fullmatch is what it does.
        assert pattern.fullmatch(REVIEWS) and pattern.fullmatch(RATINGS)
        assert not pattern.fullmatch("reviewsXlirmm-services.svc.cluster.local")
        assert not pattern.fullmatch("details.lirmm-services.svc.cluster.local")


def test_results_are_grouped_by_service_and_version() -> None:
    traffic, latency = ISTIO.queries([REVIEWS])
    groupings = re.findall(r"(?:sum|max) by \(([^)]*)\)", traffic + latency)
    assert groupings, "no aggregation found"
    for group in groupings:
        labels = {x.strip() for x in group.split(",")}
        assert {"destination_service", "destination_version"} <= labels
        assert labels <= {"destination_service", "destination_version", "le"}
    assert "destination_service, destination_version, le" in latency  # for histogram_quantile


def test_each_stat_is_tagged_once() -> None:
    traffic, latency = ISTIO.queries([REVIEWS])
    for stat in (STAT_RPS, STAT_ERRORS_RPS, STAT_LAST_SAMPLE_S, STAT_RECENT_RPS):
        assert traffic.count(f'"{STAT_LABEL}", "{stat}"') == 1
    for stat in (STAT_P99_MS, STAT_SLOW_RATIO):
        assert latency.count(f'"{STAT_LABEL}", "{stat}"') == 1
    assert "histogram_quantile(0.99," in latency


def test_5xx_rate_falls_back_to_zero_times_total() -> None:
    traffic, _ = ISTIO.queries([REVIEWS])
    assert 'response_code=~"5.."' in traffic
    assert " or 0 * sum by (destination_service, destination_version) (rate(" in traffic


def test_text_does_not_depend_on_host_order_or_duplicates() -> None:
    assert ISTIO.queries([REVIEWS, RATINGS]) == ISTIO.queries([RATINGS, REVIEWS, RATINGS])


def test_reporter_and_window_are_parameters() -> None:
    traffic, latency = ISTIO.queries([REVIEWS], reporter="source", window_s=7.5)
    assert 'reporter="source"' in traffic and 'reporter="destination"' not in traffic
    assert "[7500ms]" in traffic and "[7500ms]" in latency
    assert "[30s]" in ISTIO.queries([REVIEWS])[0]
    assert "[5s]" in ISTIO.queries([REVIEWS], window_s=5)[1]


def test_default_reporter_is_destination() -> None:
    assert ISTIO.default_reporter == "destination"
    assert ISTIO.check_reporter(None) == "destination"


def test_unknown_reporter_and_profile_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="reporter"):
        ISTIO.queries([REVIEWS], reporter="gateway")
    with pytest.raises(ConfigError, match="istio"):
        get_profile("linkerd")
    assert get_profile("istio") is ISTIO


def test_profile_without_reporter_label_has_no_reporter_matcher() -> None:
    bare = PromQLProfile(
        name="bare",
        requests_metric="istio_requests_total",
        duration_bucket_metric="istio_request_duration_milliseconds_bucket",
        reporter_label=None,
    )
    traffic, _ = bare.queries([REVIEWS])
    assert "reporter" not in traffic
    with pytest.raises(ConfigError):
        bare.queries([REVIEWS], reporter="source")


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_window_must_be_positive_and_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        ISTIO.queries([REVIEWS], window_s=bad)


def test_queries_need_hosts() -> None:
    with pytest.raises(ValueError):
        ISTIO.queries([])


def test_duration_text() -> None:
    assert promql_duration(30) == "30s"
    assert promql_duration(30.0) == "30s"
    assert promql_duration(0.25) == "250ms"


def test_slow_ratio_matches_the_slo_bucket_in_both_spellings() -> None:
    _, latency = ISTIO.queries([REVIEWS], slo_ms=250)
    m = re.search(r'le=~"((?:[^"\\]|\\.)*)"', latency)
    assert m
    pattern = re.compile(m.group(1).encode().decode("unicode_escape"))
    assert pattern.fullmatch("250") and pattern.fullmatch("250.0")
    assert not pattern.fullmatch("2500") and not pattern.fullmatch("25")
    assert 'le="+Inf"' in latency
    assert re.fullmatch(le_regex(0.5), "0.5") and not re.fullmatch(le_regex(0.5), "005")


def test_recent_latency_stats_are_the_windowed_ones_with_irate() -> None:
    _, latency = ISTIO.queries([REVIEWS], window_s=30, slo_ms=250)
    parts = dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r'label_replace\((.*?), "meshpilot_stat", "(\w+)", "", ""\)', latency)
    )
    assert set(parts) == {STAT_P99_MS, STAT_SLOW_RATIO, STAT_RECENT_P99_MS, STAT_RECENT_SLOW_RATIO}
    for windowed, recent in (
        (STAT_P99_MS, STAT_RECENT_P99_MS),
        (STAT_SLOW_RATIO, STAT_RECENT_SLOW_RATIO),
    ):
        assert "irate(" not in parts[windowed] and "(rate(" in parts[windowed]
        assert "(rate(" not in parts[recent]
        assert parts[recent] == parts[windowed].replace("(rate(", "(irate(")
        assert "[30s]" in parts[recent]  # the last two samples within the window


def test_the_recent_rate_is_the_windowed_one_with_irate() -> None:
    traffic, _ = ISTIO.queries([REVIEWS], window_s=30)
    parts = dict(
        (m.group(2), m.group(1))
        for m in re.finditer(r'label_replace\((.*?), "meshpilot_stat", "(\w+)", "", ""\)', traffic)
    )
    assert parts[STAT_RECENT_RPS] == parts[STAT_RPS].replace("(rate(", "(irate(")
    assert "(irate(" in parts[STAT_RECENT_RPS] and "[30s]" in parts[STAT_RECENT_RPS]


def test_recorded_queries_split_every_recorded_stat_by_family() -> None:
    traffic_q, latency_q = ISTIO.recorded_queries([REVIEWS], window_s=30, slo_ms=250)
    picked = [
        set(re.search(r'meshpilot_stat=~"([^"]*)"', q).group(1).split("|"))  # type: ignore[union-attr]
        for q in (traffic_q, latency_q)
    ]
    assert picked[0] == {STAT_RPS, STAT_ERRORS_RPS, STAT_LAST_SAMPLE_S, STAT_RECENT_RPS}
    assert picked[1] == {STAT_P99_MS, STAT_SLOW_RATIO, STAT_RECENT_P99_MS, STAT_RECENT_SLOW_RATIO}
    rules = ISTIO.recording_rules(window_s=30, slo_ms=250)["groups"][0]["rules"]
    recorded = set(re.findall(r'"meshpilot_stat", "(\w+)"', " ".join(r["expr"] for r in rules)))
    assert picked[0] | picked[1] == recorded and not picked[0] & picked[1]
    everything = ISTIO.recorded_query([REVIEWS], window_s=30, slo_ms=250)
    assert "meshpilot_stat=~" not in everything
    traffic_matcher = ', meshpilot_stat=~"rps|errors_rps|last_sample_s|recent_rps"'
    assert traffic_q.replace(traffic_matcher, "") == everything
    assert ISTIO.recorded_queries(iter([REVIEWS]), window_s=30, slo_ms=250) == (
        traffic_q,
        latency_q,
    )  # a one-shot iterator of hosts serves both queries


def test_le_labels_print_like_envoy() -> None:
    assert [le_label(b) for b in (0.5, 1, 250.0, 3600000)] == ["0.5", "1", "250", "3600000"]


def test_istio_buckets_are_envoys_defaults() -> None:
    assert ISTIO_BUCKETS_MS[:8] == (0.5, 1, 5, 10, 25, 50, 100, 250)
    assert ISTIO_BUCKETS_MS[-1] == 3600000
    assert list(ISTIO_BUCKETS_MS) == sorted(set(ISTIO_BUCKETS_MS))
    assert len(ISTIO_BUCKETS_MS) == 19


def test_promql_string_escapes_quotes_and_backslashes() -> None:
    assert promql_string('a"b\\.c') == '"a\\"b\\\\.c"'


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", REVIEWS),
        ("reviews.lirmm-services", REVIEWS),
        (REVIEWS, REVIEWS),
        ("api.example.com", "api.example.com"),
    ],
)
def test_destination_service_expands_short_hosts_like_istio(host: str, expected: str) -> None:
    assert destination_service(host, "lirmm-services") == expected


def test_prometheus_parses_the_queries(tmp_path: Path, promtool_bin: str) -> None:
    traffic, latency = ISTIO.queries([REVIEWS, RATINGS], reporter="source", window_s=7.5)
    rules = {
        "groups": [
            {
                "name": "meshpilot",
                "rules": [
                    {"record": "meshpilot:traffic", "expr": traffic},
                    {"record": "meshpilot:latency", "expr": latency},
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    done = subprocess.run(
        [promtool_bin, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 rules found" in done.stdout

"""`PrometheusObserver` against a real Prometheus scraping `IstioSeriesExporter`.

Known traffic is published for two services: reviews v1/v2 at 70/30 rps (v2: 5 % 5xx, 10 % of
requests in the (250, 500] ms bucket), reviews v3 declared but never called; ratings v1 at
40 rps, ratings v2 called only during the first second (its rate is 0 when observed, so
Prometheus answers NaN for its p99). Cases:

* observed rps within 10 % of the truth, error ratio and slow ratio within a few points, p99
  inside the bucket the truth puts it in, 0 (not NaN) 5xx ratio for a subset that never failed;
  the newest-interval p99 and slow ratio the same on steady traffic, and, when details v1
  turns slow, the newest interval's (1.0) while the 15 s window still mixes in the fast past;
* a subset without series -> NaN stats; a subset whose quantile Prometheus answers NaN -> NaN;
* subset order and weights from `subsets_by_route` / `weights_source`;
* the same number of queries for 1 route and for 50 routes;
* with the profile's recording rules loaded: the same stats from two cheap queries, and rules
  generated for other settings never read (NaN, one warning); recorded series from rules that
  predate the newest-interval stats read NaN there, with one warning (a stub server);
* Prometheus killed -> `TemporaryError`, restarted -> observations again; unreachable URL,
  HTTP 503, a timeout and malformed answers (a real stub HTTP server) -> `TemporaryError`;
* exporter output shape and validation; constructor validation.

The Prometheus tests fail (with the fix) when the ``prometheus`` binary is missing: ``make test``
installs it.
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from controller.adapters.prometheus import QUERIES_PER_TICK, PrometheusObserver
from controller.adapters.promql import PROFILES, RECORDED_METRIC
from envs.simulator.exporter import IstioSeriesExporter
from meshcore import ConfigError, Observer, RouteRef, TemporaryError, Weights
from meshcore.telemetry_format import ISTIO_BUCKETS_MS
from tests.helpers import free_port

from .prometheus_lab import PrometheusLab

pytestmark = pytest.mark.integration

WINDOW_S = 5
NS = "lirmm-services"
REVIEWS = f"reviews.{NS}.svc.cluster.local"
RATINGS = f"ratings.{NS}.svc.cluster.local"
DETAILS = f"details.{NS}.svc.cluster.local"
REVIEWS_ROUTE = RouteRef(NS, "reviews", "primary", REVIEWS)
DETAILS_ROUTE = RouteRef(NS, "details", 0, DETAILS)
RATINGS_ROUTE = RouteRef(NS, "ratings", 0, "ratings")  # short host, as written in a VS
N_BUCKETS = len(ISTIO_BUCKETS_MS) + 1


def bucket_index(upper_ms: float) -> int:
    return ISTIO_BUCKETS_MS.index(upper_ms)


@dataclass
class Flow:
    """Deterministic traffic of one subset: exact counts at any elapsed time."""

    service: str
    version: str
    rps: int
    bucket_ms: float  # upper bound of the bucket normal requests land in
    error_frac: float = 0.0
    slow_frac: float = 0.0
    slow_bucket_ms: float = 500
    stop_after_s: float = math.inf
    sent: int = 0
    errors: int = 0
    slow: int = 0

    def step(self, exporter: IstioSeriesExporter, elapsed_s: float) -> None:
        due = math.floor(self.rps * min(elapsed_s, self.stop_after_s))
        n = due - self.sent
        if n <= 0:
            return
        errors = math.floor(due * self.error_frac) - self.errors
        slow = math.floor(due * self.slow_frac) - self.slow
        counts = [0] * N_BUCKETS
        counts[bucket_index(self.bucket_ms)] += n - slow
        counts[bucket_index(self.slow_bucket_ms)] += slow
        exporter.record(
            service=self.service,
            version=self.version,
            requests=n,
            errors_5xx=errors,
            latency_bucket_counts=counts,
            sum_ms=(n - slow) * self.bucket_ms * 0.8 + slow * self.slow_bucket_ms * 0.8,
        )
        self.sent, self.errors, self.slow = due, self.errors + errors, self.slow + slow


@dataclass
class SwitchFlow:
    """`rps` requests per second of one subset, all in `fast_bucket_ms` until `switch`, all in
    `slow_bucket_ms` from then on."""

    service: str
    version: str
    rps: int
    fast_bucket_ms: float
    slow_bucket_ms: float
    switched_at_s: float = math.inf
    sent: int = 0

    def switch(self, elapsed_s: float) -> None:
        self.switched_at_s = elapsed_s

    def step(self, exporter: IstioSeriesExporter, elapsed_s: float) -> None:
        due = math.floor(self.rps * elapsed_s)
        n = due - self.sent
        if n <= 0:
            return
        bucket_ms = self.slow_bucket_ms if elapsed_s >= self.switched_at_s else self.fast_bucket_ms
        counts = [0] * N_BUCKETS
        counts[bucket_index(bucket_ms)] = n
        exporter.record(
            service=self.service,
            version=self.version,
            requests=n,
            errors_5xx=0,
            latency_bucket_counts=counts,
            sum_ms=n * bucket_ms * 0.8,
        )
        self.sent = due


class Feeder(threading.Thread):
    """Records every flow's due traffic every 50 ms until stopped."""

    def __init__(self, exporter: IstioSeriesExporter, flows: list[Flow | SwitchFlow]) -> None:
        super().__init__(daemon=True)
        self.exporter, self.flows = exporter, flows
        self.stopped = threading.Event()
        self.started_s = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            for flow in self.flows:
                flow.step(self.exporter, self.elapsed_s())

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_s


@dataclass
class Lab:
    prometheus: PrometheusLab
    exporter: IstioSeriesExporter
    feeder: Feeder
    details: SwitchFlow

    @property
    def url(self) -> str:
        return self.prometheus.url

    def wait_full_window(self) -> None:
        """Until scrapes cover the whole rate window (1 s apart), so rates are exact.

        With fewer, Prometheus extrapolates only half an interval past the first sample and
        under-reads the rate (by ~30 % with 4 of 5 samples).
        """
        self.prometheus.wait_for_sample(
            f'count_over_time(up{{job="{self.prometheus.job}"}}[{WINDOW_S}s]) >= {WINDOW_S}'
        )
        self.prometheus.wait_for_sample(
            f'rate(istio_requests_total{{destination_service="{REVIEWS}"}}[{WINDOW_S}s]) > 0'
        )


@pytest.fixture(scope="module")
def lab(prometheus_bin: str) -> Iterator[Lab]:
    exporter = IstioSeriesExporter()
    port = exporter.start()
    details = SwitchFlow(DETAILS, "v1", 50, fast_bucket_ms=10, slow_bucket_ms=500)
    feeder = Feeder(
        exporter,
        [
            Flow(REVIEWS, "v1", 70, bucket_ms=100),
            Flow(REVIEWS, "v2", 30, bucket_ms=50, error_frac=0.05, slow_frac=0.10),
            Flow(RATINGS, "v1", 40, bucket_ms=10),
            Flow(RATINGS, "v2", 20, bucket_ms=10, stop_after_s=1.0),
            details,
        ],
    )
    feeder.start()
    rules = PROFILES["istio"].recording_rules(window_s=WINDOW_S, slo_ms=250)
    prometheus = PrometheusLab([f"127.0.0.1:{port}"], binary=prometheus_bin, rules=[rules])
    try:
        prometheus.start()
        env = Lab(prometheus, exporter, feeder, details)
        env.wait_full_window()
        full_s = time.time()  # the rules' own windows are full from their next evaluation on
        prometheus.wait_for_sample(
            f'timestamp({RECORDED_METRIC}{{meshpilot_stat="rps"}}) > {full_s + 0.1:.3f}'
        )
        yield env
    finally:
        feeder.stopped.set()
        feeder.join(timeout=5)
        prometheus.close()
        exporter.stop()


def make_observer(url: str, **kwargs: object) -> PrometheusObserver:
    options: dict[str, object] = {
        "window_s": WINDOW_S,
        "subsets_by_route": {REVIEWS_ROUTE: ("v1", "v2", "v3")},
    }
    options.update(kwargs)
    return PrometheusObserver(url=url, **options)  # type: ignore[arg-type]


def assert_close(actual: float, expected: float, rel: float) -> None:
    assert math.isfinite(actual), actual
    assert abs(actual - expected) <= rel * expected, f"{actual} not within {rel:.0%} of {expected}"


# --- against a real Prometheus -------------------------------------------------------------


def test_observer_satisfies_the_port(lab: Lab) -> None:
    assert isinstance(make_observer(lab.url), Observer)


def test_rps_per_subset_matches_the_published_traffic(lab: Lab) -> None:
    obs = make_observer(lab.url).observe([REVIEWS_ROUTE, RATINGS_ROUTE])
    reviews, ratings = obs[REVIEWS_ROUTE], obs[RATINGS_ROUTE]
    assert_close(reviews.stat("v1").rps, 70, 0.10)
    assert_close(reviews.stat("v2").rps, 30, 0.10)
    assert_close(reviews.total_rps, 100, 0.10)
    assert_close(ratings.stat("v1").rps, 40, 0.10)
    share_v1 = reviews.stat("v1").rps / reviews.total_rps
    assert abs(share_v1 - 0.70) <= 0.03
    assert reviews.window_s == WINDOW_S  # the rates' window, for counting its requests
    # Steady traffic: the newest scrape interval (~1 s) has the same rate, less precisely.
    assert_close(reviews.stat("v1").recent_rps, 70, 0.30)
    assert_close(ratings.stat("v1").recent_rps, 40, 0.30)


def test_error_ratio_is_5xx_over_all_and_zero_without_any_5xx(lab: Lab) -> None:
    reviews = make_observer(lab.url).observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
    assert abs(reviews.stat("v2").error_ratio - 0.05) <= 0.02
    # v1 never answered a 5xx: no 503 series exists, the `or 0 *` fallback makes it 0.
    assert reviews.stat("v1").error_ratio == 0.0


def test_p99_lies_in_the_bucket_of_the_true_p99_and_slow_ratio_matches(lab: Lab) -> None:
    obs = make_observer(lab.url, slo_ms=250).observe([REVIEWS_ROUTE, RATINGS_ROUTE])
    v1, v2 = obs[REVIEWS_ROUTE].stat("v1"), obs[REVIEWS_ROUTE].stat("v2")
    assert 50 < v1.p99_ms <= 100  # every v1 request is in (50, 100]
    assert 250 < v2.p99_ms <= 500  # 10 % of v2 is in (250, 500], so its p99 is there too
    assert 5 < obs[RATINGS_ROUTE].stat("v1").p99_ms <= 10
    assert v1.slow_ratio == 0.0
    assert abs(v2.slow_ratio - 0.10) <= 0.03
    # Steady traffic: the newest scrape interval (~1 s: 30 v2 requests, ~3 slow) says the same.
    assert 50 < v1.recent_p99_ms <= 100 and 250 < v2.recent_p99_ms <= 500
    assert v1.recent_slow_ratio == 0.0
    assert abs(v2.recent_slow_ratio - 0.10) <= 0.06


def test_recent_stats_show_the_newest_interval_the_window_still_mixes(lab: Lab) -> None:
    observer = make_observer(lab.url, window_s=15, subsets_by_route={DETAILS_ROUTE: ("v1",)})
    time.sleep(max(0.0, 17.0 - lab.feeder.elapsed_s()))  # 15 s of fast requests in the window
    before = observer.observe([DETAILS_ROUTE])[DETAILS_ROUTE].stat("v1")
    assert before.slow_ratio == 0.0 and before.recent_slow_ratio == 0.0
    lab.details.switch(lab.feeder.elapsed_s())  # every request from now on takes (250, 500] ms
    deadline = time.monotonic() + 15.0
    while True:  # until Prometheus has scraped twice since the switch
        now = observer.observe([DETAILS_ROUTE])[DETAILS_ROUTE].stat("v1")
        if now.recent_slow_ratio >= 0.99 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert now.recent_slow_ratio >= 0.99 and 250 < now.recent_p99_ms <= 500
    assert now.slow_ratio < 0.6  # the 15 s window still holds the fast seconds before it


def test_slow_ratio_is_nan_when_the_slo_is_not_a_bucket_bound(lab: Lab) -> None:
    reviews = make_observer(lab.url, slo_ms=300).observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
    assert math.isnan(reviews.stat("v2").slow_ratio)
    assert math.isfinite(reviews.stat("v2").p99_ms)


def test_a_declared_subset_without_series_reads_nan(lab: Lab) -> None:
    reviews = make_observer(lab.url).observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
    v3 = reviews.stat("v3")
    assert not v3.has_data
    assert all(math.isnan(x) for x in (v3.rps, v3.error_ratio, v3.p99_ms, v3.slow_ratio))
    assert math.isnan(v3.recent_p99_ms) and math.isnan(v3.recent_slow_ratio)
    assert math.isnan(v3.recent_rps)
    assert reviews.stat("v1").has_data


def test_a_query_prometheus_answers_with_nan_reads_nan(lab: Lab) -> None:
    _, latency = PROFILES["istio"].queries([RATINGS], window_s=WINDOW_S)
    raw = {
        r["metric"]["meshpilot_stat"]: r["value"][1]
        for r in lab.prometheus.query(latency)
        if r["metric"].get("destination_version") == "v2"
    }
    assert raw.get("p99_ms") == "NaN", raw  # a real NaN from histogram_quantile, not absence
    v2 = make_observer(lab.url).observe([RATINGS_ROUTE])[RATINGS_ROUTE].stat("v2")
    assert v2.rps == 0.0 and v2.has_data  # the series exists, its rate is 0
    assert math.isnan(v2.p99_ms) and math.isnan(v2.error_ratio) and math.isnan(v2.slow_ratio)
    assert math.isnan(v2.recent_p99_ms) and math.isnan(v2.recent_slow_ratio)


def test_subsets_and_weights_come_from_the_route_config(lab: Lab) -> None:
    current = {REVIEWS_ROUTE: Weights(("v2", "v1"), (40, 60))}
    observer = make_observer(
        lab.url, subsets_by_route={}, weights_source=lambda route: current.get(route)
    )
    obs = observer.observe([REVIEWS_ROUTE, RATINGS_ROUTE])
    assert obs[REVIEWS_ROUTE].subsets == ("v2", "v1")  # the actuator's order
    assert obs[REVIEWS_ROUTE].weights == current[REVIEWS_ROUTE]
    assert obs[RATINGS_ROUTE].subsets == ("v1", "v2")  # unknown route: versions seen, sorted
    assert [s.weight for s in obs[RATINGS_ROUTE].stats] == [0, 0]
    declared = make_observer(lab.url).observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
    assert declared.subsets == ("v1", "v2", "v3")


def test_recording_rules_give_the_live_stats_in_two_cheap_queries(lab: Lab) -> None:
    live = make_observer(lab.url).observe([REVIEWS_ROUTE, RATINGS_ROUTE])
    recorded_observer = make_observer(lab.url, recording_rules=True)
    recorded = recorded_observer.observe([REVIEWS_ROUTE, RATINGS_ROUTE])
    assert recorded_observer.queries_issued == QUERIES_PER_TICK  # traffic, latency
    for route in (REVIEWS_ROUTE, RATINGS_ROUTE):
        assert recorded[route].subsets == live[route].subsets
        for subset in live[route].subsets:
            got, want = recorded[route].stat(subset), live[route].stat(subset)
            assert got.has_data == want.has_data, (route.key, subset)
            if not want.has_data:
                continue
            if want.rps > 0:  # both read the same published traffic, rules <= 1 s older
                assert_close(got.rps, want.rps, 0.10)
                assert abs(got.error_ratio - want.error_ratio) <= 0.02
                assert abs(got.slow_ratio - want.slow_ratio) <= 0.03
                assert abs(got.recent_slow_ratio - want.recent_slow_ratio) <= 0.08
    v2 = recorded[REVIEWS_ROUTE].stat("v2")
    assert 250 < v2.p99_ms <= 500 and 50 < recorded[REVIEWS_ROUTE].stat("v1").p99_ms <= 100
    assert 250 < v2.recent_p99_ms <= 500
    assert math.isnan(recorded[REVIEWS_ROUTE].stat("v3").rps)  # declared, no series
    # The rule runs every scrape interval: its data is at most a few intervals old.
    assert 0 <= recorded[REVIEWS_ROUTE].staleness_s <= 3 * lab.prometheus.scrape_interval_s


def test_recorded_series_of_other_settings_are_never_read(
    lab: Lab, caplog: pytest.LogCaptureFixture
) -> None:
    other_slo = make_observer(lab.url, recording_rules=True, slo_ms=500)  # rules say 250
    with caplog.at_level("WARNING"):
        reviews = other_slo.observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
        other_slo.observe([REVIEWS_ROUTE])
    assert not any(st.has_data for st in reviews.stats)
    assert reviews.staleness_s == math.inf
    warnings = [r for r in caplog.records if "meshpilot prometheus-rules" in r.getMessage()]
    assert len(warnings) == 1  # once, not every tick
    assert "'meshpilot_slo_ms': '500'" in warnings[0].getMessage()


def test_query_count_is_the_same_for_1_and_50_routes(lab: Lab) -> None:
    observer = make_observer(lab.url)
    observer.observe([REVIEWS_ROUTE])
    one = observer.queries_issued
    others = [RouteRef(NS, f"svc{i}", 0, f"svc{i}.{NS}.svc.cluster.local") for i in range(48)]
    fifty = [REVIEWS_ROUTE, RATINGS_ROUTE, *others]
    obs = observer.observe(fifty)
    assert one == QUERIES_PER_TICK
    assert observer.queries_issued - one == QUERIES_PER_TICK
    assert set(obs) == set(fifty)
    assert_close(obs[REVIEWS_ROUTE].stat("v1").rps, 70, 0.10)
    assert obs[others[0]].subsets == () and math.isnan(obs[others[0]].total_rps)
    assert observer.observe([]) == {} and observer.queries_issued - one == QUERIES_PER_TICK


def test_staleness_is_finite_with_data_and_infinite_without(lab: Lab) -> None:
    ghost = RouteRef(NS, "ghost", 0, "ghost")
    observer = make_observer(lab.url, subsets_by_route={ghost: ("v1",)})
    obs = observer.observe([REVIEWS_ROUTE, ghost])
    assert 0.0 <= obs[REVIEWS_ROUTE].staleness_s < math.inf
    assert obs[ghost].staleness_s == math.inf


def test_prometheus_outage_is_temporary_and_recovers(lab: Lab) -> None:
    observer = make_observer(lab.url)
    lab.prometheus.kill()
    try:
        with pytest.raises(TemporaryError) as err:
            observer.observe([REVIEWS_ROUTE])
        assert isinstance(err.value.__cause__, requests.ConnectionError)
        assert "query=" not in str(err.value)  # the message stays short
    finally:
        lab.prometheus.restart()
        lab.wait_full_window()
    reviews = observer.observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
    assert reviews.stat("v1").has_data and reviews.stat("v1").rps > 0


# --- failures without Prometheus -----------------------------------------------------------


def test_unreachable_url_is_a_temporary_error() -> None:
    observer = PrometheusObserver(url=f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    with pytest.raises(TemporaryError) as err:
        observer.observe([REVIEWS_ROUTE])
    assert isinstance(err.value.__cause__, requests.RequestException)
    assert observer.queries_issued == QUERIES_PER_TICK  # sent at once, one error for the tick


@dataclass
class StubAnswer:
    status: int = 200
    body: bytes = b""
    delay_s: float = 0.0


@pytest.fixture
def stub() -> Iterator[tuple[str, StubAnswer]]:
    """A real HTTP server on loopback answering every request with `StubAnswer`."""
    answer = StubAnswer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(answer.delay_s)
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", answer
    finally:
        server.shutdown()
        server.server_close()


def _vector(result: object) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (503, b'{"status":"error","errorType":"unavailable","error":"overloaded"}'),
        (200, b"<html>not json</html>"),
        (200, b'{"status":"success"}'),
        (200, _vector({"not": "a list"})),
        (200, _vector([{"metric": {"meshpilot_stat": "rps"}, "value": "bogus"}])),
        (200, _vector([{"metric": {}, "value": [1.0, "1"]}])),
    ],
    ids=["http-503", "not-json", "no-data", "not-a-vector", "bad-value", "no-stat-label"],
)
def test_errors_and_malformed_answers_are_temporary(
    stub: tuple[str, StubAnswer], status: int, body: bytes
) -> None:
    url, answer = stub
    answer.status, answer.body = status, body
    with pytest.raises(TemporaryError) as err:
        PrometheusObserver(url=url).observe([REVIEWS_ROUTE])
    if status == 503:
        assert "503" in str(err.value)
    if body.startswith(b"<html>"):
        assert isinstance(err.value.__cause__, ValueError)  # raised from the JSON error


def test_a_timeout_is_a_temporary_error(stub: tuple[str, StubAnswer]) -> None:
    url, answer = stub
    answer.delay_s, answer.body = 2.0, _vector([])
    with pytest.raises(TemporaryError) as err:
        PrometheusObserver(url=url, timeout_s=0.2).observe([REVIEWS_ROUTE])
    assert isinstance(err.value.__cause__, requests.Timeout)


def test_an_empty_answer_is_nan_not_an_error(stub: tuple[str, StubAnswer]) -> None:
    url, answer = stub
    answer.body = _vector([])
    obs = make_observer(url).observe([REVIEWS_ROUTE])[REVIEWS_ROUTE]
    assert obs.subsets == ("v1", "v2", "v3")
    assert not any(s.has_data for s in obs.stats) and obs.staleness_s == math.inf


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "127.0.0.1:9090"},
        {"url": "http://127.0.0.1:9090", "reporter": "gateway"},
        {"url": "http://127.0.0.1:9090", "profile": "linkerd"},
        {"url": "http://127.0.0.1:9090", "window_s": 0},
        {"url": "http://127.0.0.1:9090", "timeout_s": 0},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PrometheusObserver(**kwargs)  # type: ignore[arg-type]


# --- the exporter ---------------------------------------------------------------------------


def test_exporter_serves_istio_shaped_series() -> None:
    exporter = IstioSeriesExporter()
    port = exporter.start()
    try:
        counts = [0] * N_BUCKETS
        counts[bucket_index(250)] = 4
        exporter.record(
            service=REVIEWS, version="v1", requests=4, errors_5xx=0,
            latency_bucket_counts=counts, sum_ms=800.0,
        )  # fmt: skip
        text = _scrape(port)
        assert 'response_code="200"' in text and 'response_code="503"' not in text
        exporter.record(
            service=REVIEWS, version="v1", requests=4, errors_5xx=1,
            latency_bucket_counts=counts, sum_ms=800.0,
        )  # fmt: skip
        text = _scrape(port)
    finally:
        exporter.stop()
    labels = f'destination_service="{REVIEWS}",destination_version="v1"'
    dest = 'reporter="destination"'
    for line in (
        f'istio_requests_total{{{labels},{dest},response_code="200"}} 7.0',
        f'istio_requests_total{{{labels},{dest},response_code="503"}} 1.0',
        f'istio_request_duration_milliseconds_bucket{{{labels},le="100",{dest}}} 0.0',
        f'istio_request_duration_milliseconds_bucket{{{labels},le="250",{dest}}} 8.0',
        f'istio_request_duration_milliseconds_bucket{{{labels},le="+Inf",{dest}}} 8.0',
        f"istio_request_duration_milliseconds_count{{{labels},{dest}}} 8.0",
        f"istio_request_duration_milliseconds_sum{{{labels},{dest}}} 1600.0",
    ):
        assert line in text.splitlines(), line


def test_two_exporters_in_one_process_do_not_share_series() -> None:
    a, b = IstioSeriesExporter(), IstioSeriesExporter(reporter="source")
    ports = a.start(), b.start()
    try:
        counts = [0] * N_BUCKETS
        counts[0] = 1
        a.record(service=REVIEWS, version="v1", requests=1, errors_5xx=0,
                 latency_bucket_counts=counts, sum_ms=0.1)  # fmt: skip
        text_a, text_b = _scrape(ports[0]), _scrape(ports[1])
    finally:
        a.stop()
        b.stop()
    assert REVIEWS in text_a and REVIEWS not in text_b


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests": 3, "errors_5xx": 4},
        {"requests": 3, "errors_5xx": 0, "latency_bucket_counts": [3]},
        {"requests": 3, "errors_5xx": 0, "latency_bucket_counts": [1] + [0] * (N_BUCKETS - 1)},
        {"requests": 3, "errors_5xx": 0, "sum_ms": -1.0},
        {"requests": 3, "errors_5xx": 0, "version": ""},
    ],
)
def test_exporter_rejects_inconsistent_counts(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "service": REVIEWS,
        "version": "v1",
        "latency_bucket_counts": [3] + [0] * (N_BUCKETS - 1),
        "sum_ms": 1.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError):
        IstioSeriesExporter().record(**args)  # type: ignore[arg-type]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


@pytest.mark.parametrize(
    "recorded",
    [
        (),  # rules from before any newest-interval stat
        (("recent_p99_ms", "90"), ("recent_slow_ratio", "0")),  # from before recent_rps
    ],
)
def test_rules_without_the_newest_interval_stats_warn_once(
    stub: tuple[str, StubAnswer],
    caplog: pytest.LogCaptureFixture,
    recorded: tuple[tuple[str, str], ...],
) -> None:
    url, answer = stub
    labels = {"destination_service": REVIEWS, "destination_version": "v1"}
    answer.body = _vector(
        [
            {"metric": dict(labels, meshpilot_stat=stat), "value": [100.0, value]}
            for stat, value in (
                ("rps", "70"), ("last_sample_s", "99"), ("p99_ms", "80"), *recorded
            )
        ]
    )  # fmt: skip
    observer = make_observer(url, recording_rules=True)
    with caplog.at_level("WARNING"):
        v1 = observer.observe([REVIEWS_ROUTE])[REVIEWS_ROUTE].stat("v1")
        observer.observe([REVIEWS_ROUTE])
    assert v1.rps == 70.0 and v1.p99_ms == 80.0
    assert math.isnan(v1.recent_rps)
    assert math.isnan(v1.recent_p99_ms) == (not recorded)
    warnings = [r.getMessage() for r in caplog.records if "newest-interval" in r.getMessage()]
    assert len(warnings) == 1 and "meshpilot prometheus-rules" in warnings[0]
    assert "recent_rps" in warnings[0] and ("recent_p99_ms" in warnings[0]) == (not recorded)

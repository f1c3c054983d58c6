"""PromQL for every metrics source meshpilot reads, kept in one place (one profile per source).

Why one module: the observer must issue a *fixed* number of queries per tick for all managed
routes together, whatever their count, and the lab (Envoy + recording rules, or the simulator's
exporter) must be able to produce series the very same queries understand. Both sides read the
metric and label names from here.

Per tick the observer sends exactly `QUERIES_PER_TICK` (= 2) instant queries, each covering every
managed host through one regex on the service label and grouped
``by (destination_service, destination_version)``:

* **traffic** (from the request counter): request rate (rps), 5xx rate (rps) and the timestamp
  of the newest raw sample (s, for staleness). 5xx series only exist after the first 5xx, so the
  5xx part is ``<5xx rate> or 0 * <total rate>``;
* **latency** (from the duration histogram): p99 via ``histogram_quantile(0.99, ...)`` (ms) and
  the slow ratio ``1 - rate(bucket{le=SLO}) / rate(bucket{le="+Inf"})`` (0..1), and the same
  two with ``irate`` instead of ``rate``: over the newest scrape interval only (the last two
  samples in the window), which shows a backlog building or draining now, where the window's
  average still mixes in the previous 25 s.

The parts of one query are joined with ``or`` after ``label_replace`` tags each part with a
distinct `STAT_LABEL` value, so their label sets never collide and nothing is dropped. The
latency parts cannot be merged with the traffic parts without repeating the host regex anyway,
and keeping one query per metric family means a broken histogram never hides the request rates.

At scale the histogram part dominates a tick (``rate`` over every bucket series of every
managed host), so the same tagged expressions also exist as Prometheus recording rules
(`PromQLProfile.recording_rules`, printed by ``meshpilot prometheus-rules``): Prometheus
evaluates them on its own schedule into `RECORDED_METRIC` and the observer then reads every
stat of every route with two cheap queries, traffic and latency
(`PromQLProfile.recorded_queries`).

The slow ratio needs the SLO to be a bucket bound (``le`` is matched exactly, as ``250`` or
``250.0``); otherwise that part returns no series and the observer reports NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshcore.errors import ConfigError
from meshcore.telemetry_format import ISTIO_BUCKETS_MS, le_label

STAT_LABEL = "meshpilot_stat"
"""Label added by ``label_replace`` to tell the parts of one query apart."""

STAT_RPS = "rps"
"""Requests per second over the rate window."""
STAT_ERRORS_RPS = "errors_rps"
"""5xx responses per second over the rate window (0 when the subset never answered a 5xx)."""
STAT_LAST_SAMPLE_S = "last_sample_s"
"""Unix time (s) of the newest raw counter sample of the subset."""
STAT_P99_MS = "p99_ms"
"""99th percentile request duration (ms), interpolated inside its histogram bucket."""
STAT_SLOW_RATIO = "slow_ratio"
"""Fraction (0..1) of requests slower than the SLO bucket bound."""
STAT_RECENT_RPS = "recent_rps"
"""`STAT_RPS` over the newest scrape interval only (``irate``)."""
STAT_RECENT_P99_MS = "recent_p99_ms"
"""`STAT_P99_MS` over the newest scrape interval only (``irate``)."""
STAT_RECENT_SLOW_RATIO = "recent_slow_ratio"
"""`STAT_SLOW_RATIO` over the newest scrape interval only (``irate``)."""

QUERIES_PER_TICK = 2
"""Queries issued per observation tick for all routes together (traffic + latency), live or
read from the recording rules (`PromQLProfile.recording_rules`)."""

TRAFFIC_STATS = (STAT_RPS, STAT_ERRORS_RPS, STAT_LAST_SAMPLE_S, STAT_RECENT_RPS)
"""The stats of the traffic query (from the request counter)."""
LATENCY_STATS = (STAT_P99_MS, STAT_SLOW_RATIO, STAT_RECENT_P99_MS, STAT_RECENT_SLOW_RATIO)
"""The stats of the latency query (from the duration histogram)."""

RECORDED_METRIC = "meshpilot:subset_stats"
"""Series the recording rules write: one per (service, version, `STAT_LABEL`), labelled with
the settings they were generated for (see `PromQLProfile.rule_labels`)."""

P99 = 0.99


@dataclass(frozen=True)
class PromQLProfile:
    """Metric and label names of one metrics source, plus what may vary per installation.

    name: profile key in `PROFILES`; requests_metric: counter of requests, one series per
    response code; duration_bucket_metric: ``_bucket`` series of the request-duration histogram
    with ``le`` in ms; service_label / version_label: labels naming the destination host (FQDN)
    and the subset (the pod's ``version`` label, which must equal the DestinationRule subset
    name); code_label: HTTP status label; error_code_regex: which codes count as errors;
    reporter_label: the label telling which proxy reported (None if the source has no such
    label); reporters: accepted reporter values, the first being the default; bucket_bounds_ms:
    the default histogram bounds (ms), used to warn when the SLO is not one of them.
    """

    name: str
    requests_metric: str
    duration_bucket_metric: str
    service_label: str = "destination_service"
    version_label: str = "destination_version"
    code_label: str = "response_code"
    error_code_regex: str = "5.."
    reporter_label: str | None = "reporter"
    reporters: tuple[str, ...] = ("destination", "source")
    bucket_bounds_ms: tuple[float, ...] = field(default=ISTIO_BUCKETS_MS)

    @property
    def default_reporter(self) -> str | None:
        return self.reporters[0] if self.reporter_label and self.reporters else None

    def queries(
        self,
        hosts: Iterable[str],
        *,
        window_s: float = 30.0,
        reporter: str | None = None,
        slo_ms: float = 250.0,
    ) -> tuple[str, str]:
        """The (traffic, latency) instant queries covering every host in `hosts`.

        window_s: rate window (s), formatted as a PromQL duration; reporter: which proxy's
        report to read (None = the profile's default); slo_ms: the latency bound (ms) of the
        slow-ratio part. Hosts are deduplicated and sorted so the text does not depend on the
        order routes were given in.
        """
        return self._stat_exprs(
            self._matchers(_host_list(hosts), reporter), window_s=window_s, slo_ms=slo_ms
        )

    def recorded_query(
        self,
        hosts: Iterable[str],
        *,
        window_s: float = 30.0,
        reporter: str | None = None,
        slo_ms: float = 250.0,
        stats: Iterable[str] | None = None,
    ) -> str:
        """An instant query reading what `recording_rules` recorded, for every host: every
        stat, or only `stats` (names such as `STAT_RPS`).

        It selects `RECORDED_METRIC` by the rule labels of this window, reporter and SLO, so
        rules generated for other settings are never read by mistake (they give no series).
        """
        labels = self.rule_labels(window_s=window_s, reporter=reporter, slo_ms=slo_ms)
        matchers = [self._host_matcher(_host_list(hosts))]
        if stats is not None:
            chosen = "|".join(re2_escape(stat) for stat in stats)
            matchers.append(f"{STAT_LABEL}=~{promql_string(chosen)}")
        matchers += [f"{k}={promql_string(v)}" for k, v in labels.items()]
        # Keep only the labels the observer reads: half the answer to encode and parse.
        by = f"{self.service_label}, {self.version_label}, {STAT_LABEL}"
        return f"max by ({by}) ({RECORDED_METRIC}{{{', '.join(matchers)}}})"

    def recorded_queries(
        self,
        hosts: Iterable[str],
        *,
        window_s: float = 30.0,
        reporter: str | None = None,
        slo_ms: float = 250.0,
    ) -> tuple[str, str]:
        """`recorded_query` split into the traffic and the latency stats, as the observer
        sends them: Prometheus answers the two at once, on two cores (measured for 100 hosts
        x 4 subsets: 28 ms for both against 40 ms for the one query of 2,800 series)."""
        host_list = _host_list(hosts)  # `hosts` may be a one-shot iterator
        return (
            self.recorded_query(
                host_list, window_s=window_s, reporter=reporter, slo_ms=slo_ms, stats=TRAFFIC_STATS
            ),
            self.recorded_query(
                host_list, window_s=window_s, reporter=reporter, slo_ms=slo_ms, stats=LATENCY_STATS
            ),
        )

    def rule_labels(
        self, *, window_s: float = 30.0, reporter: str | None = None, slo_ms: float = 250.0
    ) -> dict[str, str]:
        """Labels the recording rules put on `RECORDED_METRIC`: the settings they stand for."""
        chosen = self.check_reporter(reporter)
        return {
            "meshpilot_profile": self.name,
            "meshpilot_window": promql_duration(window_s),
            "meshpilot_reporter": chosen or "",
            "meshpilot_slo_ms": le_label(slo_ms),
        }

    def recording_rules(
        self,
        *,
        window_s: float = 30.0,
        reporter: str | None = None,
        slo_ms: float = 250.0,
        interval_s: float | None = None,
    ) -> dict[str, Any]:
        """A Prometheus rule file (as a dict, dump it as YAML) recording every stat of every
        (service, version) in the mesh as `RECORDED_METRIC`, tagged like the live queries.

        Why: the live latency query evaluates ``rate`` over every histogram bucket series of
        every managed host (about 8,000 series for 100 hosts x 4 subsets) inside the tick;
        with these rules Prometheus does that work on its own schedule and the tick reads the
        finished values with two cheap queries (`recorded_queries`). The price is up to one rule
        `interval_s` (s; None = Prometheus's global evaluation interval) of extra lag, which
        shows in the observed staleness.
        """
        window = promql_duration(window_s)  # validates before anything is built
        matchers = self._reporter_matchers(reporter)
        labels = self.rule_labels(window_s=window_s, reporter=reporter, slo_ms=slo_ms)
        group: dict[str, Any] = {
            "name": f"meshpilot-{self.name}-{window}",
            "rules": [
                {"record": RECORDED_METRIC, "expr": expr, "labels": dict(labels)}
                for expr in self._stat_exprs(matchers, window_s=window_s, slo_ms=slo_ms)
            ],
        }
        if interval_s is not None:
            group["interval"] = promql_duration(interval_s)
        return {"groups": [group]}

    def _stat_exprs(
        self, matchers: tuple[str, ...], *, window_s: float, slo_ms: float
    ) -> tuple[str, str]:
        """The tagged (traffic, latency) expressions over the series `matchers` select."""
        window = promql_duration(window_s)
        if not (math.isfinite(slo_ms) and slo_ms > 0):
            raise ValueError(f"slo_ms must be a positive number of ms, got {slo_ms}")
        by = f"{self.service_label}, {self.version_label}"

        def sel(metric: str, *extra: str) -> str:
            return f"{metric}{{{', '.join((*matchers, *extra))}}}"

        def rate_sum(metric: str, *extra: str, by_labels: str = by, fn: str = "rate") -> str:
            return f"sum by ({by_labels}) ({fn}({sel(metric, *extra)}[{window}]))"

        total = rate_sum(self.requests_metric)
        errors = rate_sum(
            self.requests_metric, f"{self.code_label}=~{promql_string(self.error_code_regex)}"
        )
        newest = f"max by ({by}) (timestamp({sel(self.requests_metric)}))"
        traffic = " or ".join(
            (
                _tag(total, STAT_RPS),
                _tag(f"({errors} or 0 * {total})", STAT_ERRORS_RPS),
                _tag(newest, STAT_LAST_SAMPLE_S),
                _tag(rate_sum(self.requests_metric, fn="irate"), STAT_RECENT_RPS),
            )
        )

        def latency_parts(fn: str) -> tuple[str, str]:
            buckets = rate_sum(self.duration_bucket_metric, by_labels=f"{by}, le", fn=fn)
            le_slo = f"le=~{promql_string(le_regex(slo_ms))}"
            at_slo = rate_sum(self.duration_bucket_metric, le_slo, fn=fn)
            all_requests = rate_sum(self.duration_bucket_metric, 'le="+Inf"', fn=fn)
            p99 = f"histogram_quantile({P99}, {buckets})"
            return p99, f"(1 - ({at_slo} / {all_requests}))"

        p99, slow = latency_parts("rate")
        recent_p99, recent_slow = latency_parts("irate")
        latency = " or ".join(
            (
                _tag(p99, STAT_P99_MS),
                _tag(slow, STAT_SLOW_RATIO),
                _tag(recent_p99, STAT_RECENT_P99_MS),
                _tag(recent_slow, STAT_RECENT_SLOW_RATIO),
            )
        )
        return traffic, latency

    def check_reporter(self, reporter: str | None) -> str | None:
        """The reporter to filter on (None = no reporter matcher); ConfigError if unknown."""
        if self.reporter_label is None:
            if reporter is not None:
                raise ConfigError(f"profile {self.name!r} has no reporter label; got {reporter!r}")
            return None
        chosen = self.default_reporter if reporter is None else reporter
        if chosen not in self.reporters:
            raise ConfigError(
                f"profile {self.name!r}: reporter must be one of {list(self.reporters)}, "
                f"got {reporter!r}"
            )
        return chosen

    def _matchers(self, hosts: list[str], reporter: str | None) -> tuple[str, ...]:
        return (*self._reporter_matchers(reporter), self._host_matcher(hosts))

    def _reporter_matchers(self, reporter: str | None) -> tuple[str, ...]:
        chosen = self.check_reporter(reporter)
        if chosen is None or self.reporter_label is None:
            return ()
        return (f"{self.reporter_label}={promql_string(chosen)}",)

    def _host_matcher(self, hosts: list[str]) -> str:
        hosts_re = "|".join(re2_escape(h) for h in hosts)
        return f"{self.service_label}=~{promql_string(hosts_re)}"


PROFILES: dict[str, PromQLProfile] = {
    "istio": PromQLProfile(
        name="istio",
        requests_metric="istio_requests_total",
        duration_bucket_metric="istio_request_duration_milliseconds_bucket",
    ),
}
"""Known metrics sources by name. ``istio``: Istio's standard metrics as the sidecars report
them; the default reporter ``destination`` is what Flagger's Istio observer and Istio's own
dashboards use (every meshed destination reports it, whatever the caller); ``source`` also
counts 5xx the client proxy generated itself (connect failures, overflow) but needs meshed
callers."""


def get_profile(profile: str | PromQLProfile) -> PromQLProfile:
    """A profile by name (ConfigError naming the known ones) or the profile itself."""
    if isinstance(profile, PromQLProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ConfigError(
            f"unknown PromQL profile {profile!r}; known: {sorted(PROFILES)}"
        ) from None


def destination_service(host: str, namespace: str, *, cluster_domain: str = "cluster.local") -> str:
    """The ``destination_service`` value Istio reports for a VirtualService destination host.

    Istio resolves short names relative to the VirtualService's namespace and reports the FQDN,
    so ``reviews`` in ``lirmm-services`` becomes ``reviews.lirmm-services.svc.cluster.local``
    and ``reviews.lirmm-services`` gets the ``svc.<cluster_domain>`` suffix; anything with two
    or more dots is taken as already qualified.
    """
    dots = host.count(".")
    if dots == 0:
        return f"{host}.{namespace}.svc.{cluster_domain}"
    if dots == 1:
        return f"{host}.svc.{cluster_domain}"
    return host


def promql_duration(seconds: float) -> str:
    """A positive duration (s) as PromQL text: ``30s``, or ``1500ms`` for fractional seconds."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"a PromQL duration must be a positive number of seconds, got {seconds}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"duration {seconds} s is below PromQL's 1 ms resolution")
    return f"{millis}ms"


def le_regex(bound_ms: float) -> str:
    """RE2 matching the ``le`` of `bound_ms` both as Istio prints it (``250``) and as
    Prometheus 3 normalises it or Python clients print it (``250.0``)."""
    text = le_label(bound_ms)
    escaped = re2_escape(text)
    if "." in text or "e" in text:
        return escaped
    return escaped + r"(\.0)?"


_RE2_META = frozenset("\\.+*?()|[]{}^$")


def re2_escape(text: str) -> str:
    """Escape RE2 metacharacters so `text` matches literally (Prometheus anchors the regex)."""
    return "".join("\\" + c if c in _RE2_META else c for c in text)


def promql_string(text: str) -> str:
    """`text` as a double-quoted PromQL string literal (backslashes and quotes escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _host_list(hosts: Iterable[str]) -> list[str]:
    """Distinct hosts, sorted so a query's text does not depend on the order routes came in."""
    host_list = sorted(set(hosts))
    if not host_list or not all(host_list):
        raise ValueError("queries need at least one non-empty host")
    return host_list


def _tag(expr: str, stat: str) -> str:
    """Add ``STAT_LABEL=stat`` to every series of `expr` (label_replace from the empty label)."""
    return f'label_replace({expr}, "{STAT_LABEL}", "{stat}", "", "")'

"""The live `Observer`: per-subset rps, 5xx ratio, p99 and slow ratio of every managed route,
read from Prometheus with a fixed number of queries per tick.

Why this shape: a controller managing fifty routes must not send fifty (or 150) queries every
few seconds, so all routes are covered by the `QUERIES_PER_TICK` queries of one
`PromQLProfile`, grouped by (service, version) and split per route here. "No data" is a value,
not an error: a subset without series gets NaN stats and the guard decides what to do; only a
failed or unreadable request is an error (`TemporaryError`, so the loop holds and retries).

This is the only module that imports ``prometheus_api_client``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import requests
import urllib3
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from urllib3.util.retry import Retry

from controller.adapters.promql import (
    QUERIES_PER_TICK,
    RECORDED_METRIC,
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
)
from meshcore.errors import ConfigError, TemporaryError
from meshcore.model import Observation, RouteRef, SubsetStats, Weights
from meshcore.ports import Clock

__all__ = ["QUERIES_PER_TICK", "PrometheusObserver"]

_log = logging.getLogger(__name__)

_Table = dict[tuple[str, str], dict[str, float]]
"""(service, version) -> stat name -> value, as parsed from the query results."""


class _WallClock:
    """The real `Clock`: Unix time in seconds."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class PrometheusObserver:
    """Reads Istio-shaped metrics from Prometheus and returns one `Observation` per route.

    url: Prometheus base URL (``http://host:9090``); profile: a `PROFILES` key or a
    `PromQLProfile`; window_s: rate window (s) — about one window must pass before a weight
    change shows fully; reporter: which proxy's report to read (None = the profile's default,
    ``destination`` for Istio); timeout_s: per-query HTTP timeout (s), kept below the tick so
    a slow Prometheus makes the loop hold instead of falling behind; slo_ms: latency bound (ms)
    of `SubsetStats.slow_ratio`, which needs it to be a histogram bucket bound;
    subsets_by_route: the subsets of each route in route order (unknown routes fall back to
    the subsets of `weights_source`, then to the versions Prometheus reports, sorted);
    weights_source: the actuator's current weights of a route, or None when unknown (weights
    then read 0); clock: time source of `Observation.timestamp_s`; recording_rules: read the
    stats the profile's recording rules wrote (`PromQLProfile.recording_rules`, same window,
    reporter and SLO) with two cheap queries per tick instead of computing them in the tick.

    Staleness is measured on Prometheus's own clock (query evaluation time minus the newest
    raw sample of the route's subsets), so clock skew between the controller and Prometheus
    does not show up as stale data; a route whose subsets have no sample reads ``inf``.

    The queries of a tick are sent at once (one thread each) and the tick fails with the
    first error in query order. `queries_issued` counts every query sent (failed ones
    included), so tests and the bench can prove the number per tick is fixed.
    """

    def __init__(
        self,
        *,
        url: str,
        profile: str | PromQLProfile = "istio",
        window_s: float = 30.0,
        reporter: str | None = None,
        timeout_s: float = 2.0,
        slo_ms: float = 250.0,
        subsets_by_route: Mapping[RouteRef, Sequence[str]] | None = None,
        weights_source: Callable[[RouteRef], Weights | None] | None = None,
        clock: Clock | None = None,
        recording_rules: bool = False,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"Prometheus url must start with http:// or https://, got {url!r}")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s}")
        self._profile = get_profile(profile)
        self._reporter = self._profile.check_reporter(reporter)
        self._window_s = float(window_s)
        self._slo_ms = float(slo_ms)
        try:  # validate window and SLO now, not at the first tick
            self._profile.queries(["validate.example"], window_s=window_s, slo_ms=slo_ms)
        except ValueError as exc:
            raise ConfigError(f"PrometheusObserver: {exc}") from exc
        if self._slo_ms not in self._profile.bucket_bounds_ms:
            _log.warning(
                "slo_ms=%s is not a default %s bucket bound; slow_ratio will be NaN unless the "
                "mesh exports that bucket",
                slo_ms,
                self._profile.name,
            )
        self._recording_rules = bool(recording_rules)
        self._warned_no_recorded = False
        self._recent_checked = False
        self._url = url.rstrip("/")
        self._subsets_by_route = {r: tuple(s) for r, s in (subsets_by_route or {}).items()}
        self._weights_source = weights_source
        self._clock: Clock = clock if clock is not None else _WallClock()
        # No retries or backoff sleeps inside a tick (the loop retries next tick); read=False
        # lets requests report a read timeout as a Timeout instead of a wrapped retry error.
        self._client = PrometheusConnect(
            url=self._url,
            retry=Retry(total=0, read=False, raise_on_status=False),
            # Annotated int upstream but handed to requests as is: float seconds work, and
            # truncating would turn a sub-second timeout into none at all.
            timeout=timeout_s,  # type: ignore[arg-type]
        )
        self.queries_issued = 0
        self._count_lock = threading.Lock()
        # The queries of a tick run at once: Prometheus evaluates them on its own cores, so the
        # tick waits for the slowest one (the histogram), not for their sum.
        self._pool = ThreadPoolExecutor(
            max_workers=QUERIES_PER_TICK, thread_name_prefix="meshpilot-promql"
        )

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        """Release the query threads and the HTTP connection pool."""
        self._pool.shutdown(wait=True)
        self._client.close()

    def service_of(self, route: RouteRef) -> str:
        """The ``destination_service`` value the route's host is reported under."""
        return destination_service(route.host, route.namespace)

    def observe(self, routes: Sequence[RouteRef]) -> dict[RouteRef, Observation]:
        """One `Observation` per distinct route, from `QUERIES_PER_TICK` queries in total.

        Raises `TemporaryError` (chained to the library error) when Prometheus cannot be
        reached, times out, answers an HTTP error or something that is not a query result.
        Routes that share a host get the same stats (Istio reports per host, not per route).
        """
        unique = list(dict.fromkeys(routes))
        if not unique:
            return {}
        services = {route: self.service_of(route) for route in unique}
        window_s, reporter, slo_ms = self._window_s, self._reporter, self._slo_ms
        if self._recording_rules:
            queries: Sequence[str] = self._profile.recorded_queries(
                services.values(), window_s=window_s, reporter=reporter, slo_ms=slo_ms
            )
        else:
            queries = self._profile.queries(
                services.values(), window_s=window_s, reporter=reporter, slo_ms=slo_ms
            )
        futures = [self._pool.submit(self._query, query) for query in queries]
        wait(futures)
        table: _Table = {}
        eval_s = -math.inf
        for future in futures:  # the first failure, in query order, is the tick's error
            eval_s = max(eval_s, self._parse(future.result(), table))
        if self._recording_rules and not table and not self._warned_no_recorded:
            self._warned_no_recorded = True
            _log.warning(
                "no %s series for %s: is there no traffic yet, or are the recording rules "
                "missing? Load the output of `meshpilot prometheus-rules` (same window_s, "
                "reporter and slo_ms) into Prometheus; until then every route holds",
                RECORDED_METRIC,
                self._profile.rule_labels(window_s=window_s, reporter=reporter, slo_ms=slo_ms),
            )
        if self._recording_rules and not self._recent_checked and _has_p99(table):
            self._recent_checked = True  # once: the rules loaded do not change tick to tick
            self._warn_if_rules_lack_recent(table)
        now = self._clock.now()
        return {
            route: self._observation(route, services[route], table, eval_s, now) for route in unique
        }

    def _warn_if_rules_lack_recent(self, table: _Table) -> None:
        """One warning when the recorded stats have p99s but some newest-interval stat in no
        row: rules generated before it existed, so the policy would read it as unknown."""
        rows = list(table.values())
        recent = (STAT_RECENT_RPS, STAT_RECENT_P99_MS, STAT_RECENT_SLOW_RATIO)
        missing = [stat for stat in recent if not any(stat in row for row in rows)]
        if not missing:
            return
        _log.warning(
            "the recorded %s series have p99s but not these newest-interval stats: %s; the "
            "recording rules predate them. Load the output of `meshpilot prometheus-rules` "
            "again; until then the policy reads those inputs as unknown",
            RECORDED_METRIC,
            ", ".join(missing),
        )

    def _query(self, query: str) -> Any:
        with self._count_lock:
            self.queries_issued += 1
        try:
            return self._client.custom_query(query)
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            PrometheusApiClientException,
        ) as exc:
            raise TemporaryError(f"Prometheus query to {self._url} failed: {_brief(exc)}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise TemporaryError(
                f"Prometheus at {self._url} sent a malformed answer: {_brief(exc)}"
            ) from exc

    def _parse(self, result: Any, table: _Table) -> float:
        """Merge an instant-vector result into `table`; returns its evaluation time (s)."""
        service_label = self._profile.service_label
        version_label = self._profile.version_label
        if not isinstance(result, list):
            raise TemporaryError(
                f"Prometheus at {self._url} sent {type(result).__name__}, not an instant vector"
            )
        eval_s = -math.inf
        for item in result:
            try:
                labels = item["metric"]
                ts_text, value_text = item["value"]
                ts, value = float(ts_text), float(value_text)
                stat = labels[STAT_LABEL]
            except (KeyError, TypeError, ValueError) as exc:
                raise TemporaryError(
                    f"Prometheus at {self._url} sent a malformed sample {item!r}"
                ) from exc
            eval_s = max(eval_s, ts)
            service, version = labels.get(service_label), labels.get(version_label)
            if not service or not version:
                continue  # a series without a subset cannot be attributed to one
            table.setdefault((service, version), {})[stat] = value
        return eval_s

    def _observation(
        self, route: RouteRef, service: str, table: _Table, eval_s: float, now: float
    ) -> Observation:
        weights = self._weights_source(route) if self._weights_source is not None else None
        if route in self._subsets_by_route:
            subsets = self._subsets_by_route[route]
        elif weights is not None:
            subsets = weights.subsets
        else:
            subsets = tuple(sorted(v for (s, v) in table if s == service))
        stats: list[SubsetStats] = []
        newest = -math.inf
        for subset in subsets:
            row = table.get((service, subset), {})
            rps = row.get(STAT_RPS, math.nan)
            errors_rps = row.get(STAT_ERRORS_RPS, math.nan)
            error_ratio = min(errors_rps / rps, 1.0) if rps > 0 and errors_rps >= 0 else math.nan
            stats.append(
                SubsetStats(
                    rps=rps,
                    error_ratio=error_ratio,
                    p99_ms=row.get(STAT_P99_MS, math.nan),
                    weight=weights.get(subset, 0) if weights is not None else 0,
                    slow_ratio=_ratio(row.get(STAT_SLOW_RATIO, math.nan)),
                    recent_p99_ms=row.get(STAT_RECENT_P99_MS, math.nan),
                    recent_slow_ratio=_ratio(row.get(STAT_RECENT_SLOW_RATIO, math.nan)),
                    recent_rps=row.get(STAT_RECENT_RPS, math.nan),
                )
            )
            newest = max(newest, row.get(STAT_LAST_SAMPLE_S, -math.inf))
        if math.isfinite(newest) and math.isfinite(eval_s):
            staleness_s = max(eval_s - newest, 0.0)
        else:
            staleness_s = math.inf
        return Observation(
            route=route,
            subsets=tuple(subsets),
            stats=tuple(stats),
            timestamp_s=now,
            staleness_s=staleness_s,
            window_s=self._window_s,
        )


def _brief(exc: BaseException, limit: int = 200) -> str:
    """Error text without the URL-encoded query requests puts in it (the cause keeps it all)."""
    text = f"{type(exc).__name__}: {exc}"
    if "?query=" in text:
        head, _, tail = text.partition("?query=")
        reason = tail.rpartition(" (Caused by ")[2]
        text = f"{head} ({reason}" if reason != tail else head
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _has_p99(table: _Table) -> bool:
    """True when some subset of the answer has a windowed p99 (the latency stats arrived)."""
    return any(STAT_P99_MS in row for row in table.values())


def _ratio(value: float) -> float:
    """Clamp a ratio to 0..1 (float noise of ``1 - a/b``), keeping NaN."""
    return value if math.isnan(value) else min(max(value, 0.0), 1.0)

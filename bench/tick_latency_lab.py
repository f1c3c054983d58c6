"""The lab `tick_latency.py` measures in: real servers on 127.0.0.1, and the timers wired in.

Why a module of its own: standing the lab up (a kube-apiserver with one VirtualService and one
DestinationRule per route and the controller's least-privilege client; a Prometheus scraping
Istio-shaped series that a feeder process publishes, with meshpilot's recording rules; or a
synthetic observer when there is no ``prometheus`` binary) is a separate job from measuring
ticks in it, and about as much code. `tick_latency.py` keeps the loop, the policy, the
measurement, the report and the command line.

`Timer` and `Span` are the instruments: `prometheus_observers` wires a `Span` around each
observer's PromQL requests (``observer.promql_timer``), the bench wraps the rest.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests" / "integration"):  # as tick_latency.py puts them
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from kube_lab import KubeLab, destination_rule, virtual_service  # noqa: E402

from controller.adapters.istio.actuator import VirtualServiceActuator  # noqa: E402
from controller.adapters.kube.client import kube_api_client  # noqa: E402
from controller.clock import WallClock  # noqa: E402
from meshcore import Observation, RouteRef, SubsetStats, Weights  # noqa: E402

NS = "lirmm-services"
GROUP, VERSION = "networking.istio.io", "v1"
WINDOW_S = 30.0
"""Rate window (s): the default of ``meshpilot serve``."""
SCRAPE_S = 5.0
"""Scrape and rule evaluation interval (s): one control tick (``tick_s`` default 5 s)."""


class Timer:
    """Accumulates seconds spent in wrapped calls since the last `take` (thread-safe)."""

    def __init__(self) -> None:
        self.total_s = 0.0
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.total_s += time.perf_counter() - started

        return timed

    def take(self) -> float:
        with self._lock:
            value, self.total_s = self.total_s, 0.0
        return value


class Span:
    """Wall time from the first wrapped call starting to the last one ending, since `take`
    (the calls may overlap on several threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._first = math.inf
        self._last = -math.inf

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            with self._lock:
                self._first = min(self._first, started)
            try:
                return fn(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                with self._lock:
                    self._last = max(self._last, ended)

        return timed

    def take(self) -> float:
        with self._lock:
            value = max(0.0, self._last - self._first) if self._last >= self._first else 0.0
            self._first, self._last = math.inf, -math.inf
        return value


class SyntheticObserver:
    """Fresh, plausible stats for every route without Prometheus (the fallback); weights
    from `weights_source`, as the Prometheus observer gets them."""

    def __init__(
        self,
        subsets: Sequence[str],
        clock: WallClock,
        weights_source: Callable[[RouteRef], Weights | None],
    ) -> None:
        self.subsets, self.clock, self.weights_source = tuple(subsets), clock, weights_source
        self.queries_issued = 0

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        now = self.clock.now()
        out = {}
        for r in routes:
            w = self.weights_source(r)
            stats = tuple(
                SubsetStats(25.0, 0.001, 40.0, w[s] if w is not None else 0) for s in self.subsets
            )
            out[r] = Observation(r, self.subsets, stats, now, 0.0)
        return out


def subset_names(n: int) -> list[str]:
    return [f"v{i + 1}" for i in range(n)]


def host(i: int) -> str:
    return f"svc-{i:03d}.{NS}.svc.cluster.local"


def setup_kube(lab: KubeLab, n_routes: int, subsets: list[str], max_connections: int) -> Any:
    """Namespace, Role + binding for the controller user, n DRs and VSs; the controller client
    (built as ``meshpilot serve`` builds it, with a pool of `max_connections`)."""
    from kubernetes import client

    admin = lab.api_client("admin")
    core: Any = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": NS}})
    lab.grant_controller_role(NS, binding="meshpilot-bench")
    custom: Any = client.CustomObjectsApi(admin)
    even = [100 // len(subsets)] * len(subsets)
    even[0] += 100 - sum(even)
    for i in range(n_routes):
        name = f"svc-{i:03d}"
        dr = destination_rule(name, NS, host(i), subsets)
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "destinationrules", dr)
        vs = virtual_service(name, NS, name, list(zip(subsets, even, strict=True)))
        custom.create_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", vs)
    api = kube_api_client(str(lab.kubeconfig("controller")), max_connections=max_connections)
    probe = VirtualServiceActuator(api_client=api)
    deadline = time.monotonic() + 10
    while True:  # RBAC bindings reach the authorizer's cache after a moment
        try:
            probe.current(RouteRef(NS, "svc-000", "primary", host(0)))
            return api
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def feed_exporter(hosts: list[str], subsets: list[str], ports: Any, stop: Any) -> None:
    """Child process: an `IstioSeriesExporter` fed 100 rps per service, split evenly, every
    second, until `stop` is set; its port goes to `ports`."""
    from envs.simulator.exporter import IstioSeriesExporter
    from meshcore.telemetry_format import ISTIO_BUCKETS_MS

    exporter = IstioSeriesExporter()
    ports.put(exporter.start())
    bucket = ISTIO_BUCKETS_MS.index(50)
    n = 100 // len(subsets)
    counts = [0] * (len(ISTIO_BUCKETS_MS) + 1)
    counts[bucket] = n
    try:
        while not stop.is_set():
            for h in hosts:
                for s in subsets:
                    exporter.record(
                        service=h,
                        version=s,
                        requests=n,
                        errors_5xx=0,
                        latency_bucket_counts=counts,
                        sum_ms=40.0 * n,
                    )
            stop.wait(1.0)
    finally:
        exporter.stop()


@contextlib.contextmanager
def prometheus_observers(
    routes: list[RouteRef], subsets: list[str], weights_source: Callable[[RouteRef], Any]
) -> Iterator[tuple[dict[str, Any], str]]:
    """({name: observer}, description): with a real Prometheus (+ exporter, + meshpilot's
    recording rules) the observer as configured by default ("live queries") and with
    ``recording_rules: true`` ("recording rules"); without one, a synthetic observer."""
    try:
        from prometheus_lab import PrometheusLab, prometheus_binary

        from controller.adapters.prometheus import PrometheusObserver
        from controller.adapters.promql import PROFILES, RECORDED_METRIC
    except ImportError as err:
        synthetic = SyntheticObserver(subsets, WallClock(), weights_source)
        yield {"synthetic": synthetic}, f"synthetic observer ({err})"
        return
    if prometheus_binary() is None:
        synthetic = SyntheticObserver(subsets, WallClock(), weights_source)
        yield {"synthetic": synthetic}, "synthetic observer (no prometheus binary)"
        return
    # The data plane is separate processes in a mesh: the exporter and its feeder run in their
    # own process so that rendering ~10k series every scrape does not hold this one's GIL.
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    ports: Any = ctx.Queue()
    hosts = [r.host for r in routes]
    feeder = ctx.Process(
        target=feed_exporter, args=(hosts, list(subsets), ports, stop), daemon=True
    )
    feeder.start()
    port = ports.get(timeout=60)
    rules = PROFILES["istio"].recording_rules(window_s=WINDOW_S, slo_ms=250)
    prom = PrometheusLab([f"127.0.0.1:{port}"], scrape_interval_s=SCRAPE_S, rules=[rules])
    observers: dict[str, Any] = {}
    try:
        prom.start()
        for name, recorded in (("live queries", False), ("recording rules", True)):
            observer = PrometheusObserver(
                url=prom.url,
                window_s=WINDOW_S,
                timeout_s=5.0,
                subsets_by_route={r: tuple(subsets) for r in routes},
                weights_source=weights_source,
                recording_rules=recorded,
            )
            timer = Span()  # wall time of the PromQL requests (sent at once), parsing included
            observer.promql_timer = timer  # type: ignore[attr-defined]
            observer._query = timer.wrap(observer._query)  # type: ignore[method-assign]
            observers[name] = observer
        expected = len(routes) * len(subsets)
        prom.wait_for_sample(
            f"count(rate(istio_requests_total[{int(WINDOW_S)}s]) > 0) >= {expected}",
            timeout_s=60,
        )
        prom.wait_for_sample(
            f'count({RECORDED_METRIC}{{meshpilot_stat="p99_ms"}} > 0) >= {expected}', timeout_s=60
        )
        yield (
            observers,
            (
                f"real Prometheus ({prom.url}, scrape and rule interval {SCRAPE_S:g} s, rate "
                f"window {WINDOW_S:g} s) + IstioSeriesExporter in its own process, "
                "PrometheusObserver"
            ),
        )
    finally:
        for observer in observers.values():
            observer.close()
        stop.set()
        prom.stop()
        prom.close()
        feeder.join(timeout=10)
        if feeder.is_alive():
            feeder.kill()

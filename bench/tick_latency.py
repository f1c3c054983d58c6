"""Control-tick latency at scale: 100 routes x 4 subsets against real servers (printed only).

What runs, all on 127.0.0.1:

* a real kube-apiserver v1.20.2 + etcd (``tests/integration/kube_lab.py``) with Istio's CRDs,
  one VirtualService (one weighted http route, 4 subsets) and one DestinationRule per route,
  reached as the least-privilege controller user bound to ``manifests/base/role.yaml``;
* when the ``prometheus`` binary is installed: a real Prometheus scraping an
  `IstioSeriesExporter` that publishes Istio-shaped series for every (service, subset), read
  by `PrometheusObserver` wired as ``meshpilot serve --mesh k8s`` wires it (its
  ``weights_source`` is the actuator); otherwise a synthetic in-process observer, and the
  report says so;
* the real `ControlLoop` (guard, SQLite audit log in memory) with a policy that asks for a new
  split every tick, so every route is written every tick (the worst case for the actuator).

Per tick it reports the wall time of `ControlLoop.tick()` and its parts — observe (one call for
all routes), decide (policy, all routes), act (the actuator's reads and writes) — as median
and p90 over the measured ticks, plus PromQL queries and Kubernetes requests per tick. Observe
includes the observer's per-route weight reads through the actuator (shown separately).

    python bench/tick_latency.py [--routes 100] [--subsets 4] [--ticks 15] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kube_lab import CONTROLLER_USER, KubeLab, kube_binaries, kube_cache_dir  # noqa: E402

from controller.adapters.istio import VirtualServiceActuator  # noqa: E402
from controller.clock import WallClock  # noqa: E402
from controller.core import Observation, RouteRef, SubsetStats, Weights  # noqa: E402
from controller.guard import Guard, GuardConfig  # noqa: E402
from controller.loop import ControlLoop  # noqa: E402
from controller.store import DecisionStore  # noqa: E402

NS = "lirmm-services"
GROUP, VERSION = "networking.istio.io", "v1"
WINDOW_S = 5.0


class Timer:
    """Accumulates seconds spent in wrapped calls since the last `take`."""

    def __init__(self) -> None:
        self.total_s = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total_s += time.perf_counter() - started

        return timed

    def take(self) -> float:
        value, self.total_s = self.total_s, 0.0
        return value


class TimedActuator:
    def __init__(self, inner: VirtualServiceActuator, timer: Timer) -> None:
        self.inner = inner
        self.current = timer.wrap(inner.current)
        self.apply = timer.wrap(inner.apply)

    @property
    def conflicts(self) -> int:
        return self.inner.conflicts


class TimedObserver:
    def __init__(self, inner: Any, timer: Timer) -> None:
        self.observe = timer.wrap(inner.observe)


class RandomWalkPolicy:
    """A new random split every tick (seeded): the guard writes every route every tick."""

    name = "random-walk"

    def __init__(self, timer: Timer, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.decide = timer.wrap(self._decide)

    def _decide(self, obs: Observation) -> Weights:
        shares = [self.rng.random() + 0.05 for _ in obs.subsets]
        total = sum(shares)
        values = [int(100 * s / total) for s in shares]
        values[0] += 100 - sum(values)
        return Weights(obs.subsets, values)

    def reset(self) -> None:
        pass


class SyntheticObserver:
    """Fresh, plausible stats for every route without Prometheus (the fallback)."""

    def __init__(self, subsets: Sequence[str], clock: WallClock) -> None:
        self.subsets, self.clock = tuple(subsets), clock
        self.queries_issued = 0

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        stats = tuple(SubsetStats(25.0, 0.001, 40.0, 25) for _ in self.subsets)
        now = self.clock.now()
        return {r: Observation(r, self.subsets, stats, now, 0.0) for r in routes}


def subset_names(n: int) -> list[str]:
    return [f"v{i + 1}" for i in range(n)]


def host(i: int) -> str:
    return f"svc-{i:03d}.{NS}.svc.cluster.local"


def setup_kube(lab: KubeLab, n_routes: int, subsets: list[str]) -> Any:
    """Namespace, Role + binding for the controller user, n DRs and VSs; the controller client."""
    from kubernetes import client

    admin = lab.api_client("admin")
    core: Any = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": NS}})
    rbac: Any = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        NS, yaml.safe_load((ROOT / "manifests" / "base" / "role.yaml").read_text())
    )
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": "meshpilot-bench"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "meshpilot",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}
            ],
        },
    )
    custom: Any = client.CustomObjectsApi(admin)
    even = [100 // len(subsets)] * len(subsets)
    even[0] += 100 - sum(even)
    for i in range(n_routes):
        name = f"svc-{i:03d}"
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "destinationrules",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DestinationRule",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "host": host(i),
                    "subsets": [{"name": s, "labels": {"version": s}} for s in subsets],
                },
            },
        )
        custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "virtualservices",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "VirtualService",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "hosts": [name],
                    "http": [
                        {
                            "name": "primary",
                            "route": [
                                {"destination": {"host": name, "subset": s}, "weight": w}
                                for s, w in zip(subsets, even, strict=True)
                            ],
                        }
                    ],
                },
            },
        )
    api = lab.api_client("controller")
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


@contextlib.contextmanager
def prometheus_observer(
    routes: list[RouteRef], subsets: list[str], weights_source: Callable[[RouteRef], Any]
) -> Iterator[tuple[Any, str]]:
    """(observer, description): real Prometheus + exporter when possible, else synthetic."""
    try:
        from prometheus_lab import PrometheusLab, prometheus_binary

        from controller.adapters.istio_exporter import ISTIO_BUCKETS_MS, IstioSeriesExporter
        from controller.adapters.prometheus import PrometheusObserver
    except ImportError as err:
        yield SyntheticObserver(subsets, WallClock()), f"synthetic observer ({err})"
        return
    if prometheus_binary() is None:
        yield SyntheticObserver(subsets, WallClock()), "synthetic observer (no prometheus binary)"
        return
    exporter = IstioSeriesExporter()
    port = exporter.start()
    stop = threading.Event()
    bucket = ISTIO_BUCKETS_MS.index(50)

    def traffic() -> None:  # 100 rps per service, split evenly, every second
        while not stop.is_set():
            for r in routes:
                for s in subsets:
                    n = 100 // len(subsets)
                    counts = [0] * (len(ISTIO_BUCKETS_MS) + 1)
                    counts[bucket] = n
                    exporter.record(
                        service=r.host,
                        version=s,
                        requests=n,
                        errors_5xx=0,
                        latency_bucket_counts=counts,
                        sum_ms=40.0 * n,
                    )
            stop.wait(1.0)

    feeder = threading.Thread(target=traffic, daemon=True)
    feeder.start()
    prom = PrometheusLab([f"127.0.0.1:{port}"], scrape_interval_s=1.0)
    try:
        prom.start()
        observer = PrometheusObserver(
            url=prom.url,
            window_s=WINDOW_S,
            timeout_s=5.0,
            subsets_by_route={r: tuple(subsets) for r in routes},
            weights_source=weights_source,
        )
        prom.wait_for_sample(
            f"count(rate(istio_requests_total[{int(WINDOW_S)}s]) > 0) >= "
            f"{len(routes) * len(subsets)}",
            timeout_s=60,
        )
        yield observer, f"real Prometheus ({prom.url}) + IstioSeriesExporter, PrometheusObserver"
        observer.close()
    finally:
        stop.set()
        prom.stop()
        prom.close()
        exporter.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run(n_routes: int, n_subsets: int, ticks: int, warmup: int, tick_s: float) -> dict[str, Any]:
    binaries = kube_binaries()
    if binaries is None:
        raise SystemExit(
            f"kube-apiserver/etcd not built in {kube_cache_dir() / 'bin'}: "
            "run .ci/build-kube-apiserver.sh first"
        )
    subsets = subset_names(n_subsets)
    routes = [RouteRef(NS, f"svc-{i:03d}", "primary", host(i)) for i in range(n_routes)]
    with KubeLab(binaries) as lab:
        lab.install_istio_crds()
        setup_s = time.perf_counter()
        api = setup_kube(lab, n_routes, subsets)
        setup_s = time.perf_counter() - setup_s
        act_timer, obs_timer, decide_timer, source_timer = Timer(), Timer(), Timer(), Timer()
        inner = VirtualServiceActuator(api_client=api)
        actuator = TimedActuator(inner, act_timer)

        @source_timer.wrap
        def weights_source(route: RouteRef) -> Weights | None:  # as serve.py wires it
            try:
                return inner.current(route)
            except Exception:
                return None

        with prometheus_observer(routes, subsets, weights_source) as (observer, what):
            clock = WallClock()
            loop = ControlLoop(
                observer=TimedObserver(observer, obs_timer),
                actuator=actuator,
                policy=RandomWalkPolicy(decide_timer),
                guard=Guard(GuardConfig(max_step=10, stale_after_s=30, hold_s=30)),
                store=DecisionStore(":memory:"),
                routes=routes,
                clock=clock,
                slo_ms=250,
                writer_id="bench",
                verify_after_s=1e9,  # synthetic traffic ignores the weights: no verify
                verify_tolerance=10,
            )
            rows: list[dict[str, float]] = []
            for n in range(warmup + ticks):
                queries0 = getattr(observer, "queries_issued", 0)
                reads0, writes0, conflicts0 = inner.reads, inner.writes, inner.conflicts
                act_timer.take(), obs_timer.take(), decide_timer.take(), source_timer.take()
                started = time.perf_counter()
                results = loop.tick()
                tick = time.perf_counter() - started
                written = sum(1 for r in results if r.wrote)
                if n >= warmup:
                    rows.append(
                        {
                            "tick_s": tick,
                            "observe_s": obs_timer.take(),
                            "weights_source_s": source_timer.take(),
                            "decide_s": decide_timer.take(),
                            "act_s": act_timer.take(),
                            "promql": getattr(observer, "queries_issued", 0) - queries0,
                            "k8s_gets": inner.reads - reads0,
                            "k8s_patches": inner.writes - writes0,
                            "conflicts": inner.conflicts - conflicts0,
                            "routes_written": written,
                        }
                    )
                time.sleep(max(0.0, tick_s - tick))
    summary: dict[str, Any] = {
        "routes": n_routes,
        "subsets": n_subsets,
        "ticks": ticks,
        "observer": what,
        "setup_s": round(setup_s, 2),
    }
    for key in ("tick_s", "observe_s", "weights_source_s", "decide_s", "act_s"):
        values = [r[key] for r in rows]
        summary[key.removesuffix("_s") + "_ms"] = {
            "median": round(1000 * statistics.median(values), 1),
            "p90": round(1000 * pct(values, 0.9), 1),
        }
    for key in ("promql", "k8s_gets", "k8s_patches", "conflicts", "routes_written"):
        summary[f"{key}_per_tick"] = statistics.median(r[key] for r in rows)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--routes", type=int, default=100)
    p.add_argument("--subsets", type=int, default=4)
    p.add_argument("--ticks", type=int, default=15, help="measured ticks (after 2 warm-up)")
    p.add_argument("--tick-s", type=float, default=1.0, help="pause between tick starts (s)")
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args()
    s = run(args.routes, args.subsets, args.ticks, warmup=2, tick_s=args.tick_s)
    if args.json:
        print(json.dumps(s))
        return
    print(f"tick latency: {s['routes']} routes x {s['subsets']} subsets, {s['ticks']} ticks")
    print(f"  observer: {s['observer']}")
    print(f"  objects created in {s['setup_s']} s")
    labels = {
        "tick": "tick",
        "observe": "observe",
        "weights_source": "  of which weight reads",
        "decide": "decide",
        "act": "act",
    }
    for part, label in labels.items():
        v = s[f"{part}_ms"]
        print(f"  {label:24s} median {v['median']:8.1f} ms   p90 {v['p90']:8.1f} ms")
    print(
        f"  per tick: {s['promql_per_tick']:g} PromQL queries, {s['k8s_gets_per_tick']:g} "
        f"VirtualService GETs, {s['k8s_patches_per_tick']:g} patches, "
        f"{s['conflicts_per_tick']:g} conflicts, {s['routes_written_per_tick']:g} routes written"
    )
    print(json.dumps(s))


if __name__ == "__main__":
    main()

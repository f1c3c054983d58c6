"""Control-tick latency at scale: 100 routes x 4 subsets against real servers (printed only).

What runs, all on 127.0.0.1:

* a real kube-apiserver v1.20.2 + etcd (``tests/integration/kube_lab.py``) with Istio's CRDs,
  one VirtualService (one weighted http route, 4 subsets) and one DestinationRule per route,
  reached as the least-privilege controller user bound to ``manifests/base/role.yaml``, through
  a client built like ``meshpilot serve`` builds it (`kube_api_client`, pool sized for the
  parallel writers);
* when the ``prometheus`` binary is installed: a real Prometheus (scrape and rule interval
  5 s) scraping an `IstioSeriesExporter` that runs in its own process (as Envoy would) and
  publishes Istio-shaped series for every (service, subset), with meshpilot's recording rules
  loaded (``meshpilot prometheus-rules``); read by `PrometheusObserver` wired as ``meshpilot
  serve --mesh k8s`` wires it (30 s window, its ``weights_source`` is the actuator), once
  with the live queries (the default) and once with ``recording_rules``; otherwise a
  synthetic in-process observer, and the report says so;
* the real `ControlLoop` (guard, SQLite audit log in a WAL file) and `VirtualServiceActuator`.

Two cases, each on a fresh loop over the same routes:

* **realistic**: the policy keeps the current split of most routes and asks for a new one on
  ``--change-fraction`` of them (default 1 in 8, a different eighth every tick: the shipped
  policy behind the default guard writes on 12 % of its ticks over the suite, measured by
  ``bench/write_rate.py``), so the guard writes only those; the others are read, decided,
  guarded and recorded but not written;
* **worst case**: the policy asks for a new split on every route every tick, so every route
  is written every tick.

By default the actuator reads from its watch cache and the loop writes on
``--max-parallel-writes`` threads (as ``meshpilot serve`` runs); ``--baseline`` also measures
the cache-less actuator (a GET per read) writing one route after the other, for comparison.

Per tick it reports as median and p90 over the measured ticks: observe + decide + act (the
issue's tick latency: the wall time of `ControlLoop.tick()` minus the audit-log inserts), the
whole tick, and the parts: observe (one call for all routes; of which the PromQL requests,
sent at once, and the observer's per-route weight reads through the actuator), decide (policy,
all routes in one batched call), act = reads (the loop's `Actuator.current`, one per route,
all before the decision) + writes (wall time from the first `apply` starting to the last one
ending), the rest (guard, metrics) and the audit record (SQLite inserts). Also per
tick: PromQL queries and Kubernetes requests (VirtualService GETs, PATCHes, LISTs;
DestinationRule LISTs), conflicts, routes written, and whether the target (median observe +
decide + act <= 100 ms with <= 3 PromQL queries) is met.

The lab (servers, objects, feeder, observers, timers) is set up by ``tick_latency_lab.py``.

    python bench/tick_latency.py [--routes 100] [--subsets 4] [--ticks 15] [--baseline] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from kube_lab import KubeLab, kube_binaries, kube_cache_dir  # noqa: E402
from tick_latency_lab import (  # noqa: E402
    NS,
    Span,
    Timer,
    host,
    prometheus_observers,
    setup_kube,
    subset_names,
)

from controller.adapters.istio.actuator import VirtualServiceActuator  # noqa: E402
from controller.clock import WallClock  # noqa: E402
from controller.guard import Guard, GuardConfig  # noqa: E402
from controller.loop import ControlLoop  # noqa: E402
from controller.store import DecisionStore  # noqa: E402
from meshcore import Observation, RouteRef, Weights  # noqa: E402

TARGET_MS = 100.0
MAX_PROMQL = 3


class TimedActuator:
    """The actuator as the loop sees it: reads and writes timed, per-route conflicts kept."""

    def __init__(self, inner: VirtualServiceActuator, reads: Timer, writes: Span) -> None:
        self.inner = inner
        self.current = reads.wrap(inner.current)
        self.apply = writes.wrap(inner.apply)
        self.conflicts_for = inner.conflicts_for

    @property
    def conflicts(self) -> int:
        return self.inner.conflicts


class TimedObserver:
    def __init__(self, inner: Any, timer: Timer) -> None:
        self.observe = timer.wrap(inner.observe)


def random_split(rng: random.Random, subsets: Sequence[str]) -> Weights:
    shares = [rng.random() + 0.05 for _ in subsets]
    total = sum(shares)
    values = [int(100 * s / total) for s in shares]
    values[0] += 100 - sum(values)
    return Weights(subsets, values)


class ChurnPolicy:
    """A new random split (seeded) for a `fraction` of the routes each tick, a different
    slice every tick; every other route keeps the split it observes (no write).

    fraction 1.0: every route changes every tick (the worst case for the actuator).
    """

    def __init__(self, timer: Timer, routes: Sequence[RouteRef], fraction: float) -> None:
        self.name = "churn" if fraction < 1 else "random-walk"
        self.rng = random.Random(0)
        self.index = {r: i for i, r in enumerate(routes)}
        self.period = max(1, round(1 / fraction)) if fraction > 0 else 0
        self.tick = 0
        self.decide = timer.wrap(self._decide)

    def changes(self, route: RouteRef) -> bool:
        return self.period > 0 and self.index[route] % self.period == self.tick % self.period

    def _decide(self, obs: Observation) -> Weights:
        if self.changes(obs.route):
            return random_split(self.rng, obs.subsets)
        return Weights(obs.subsets, [int(st.weight) for st in obs.stats])

    def reset(self) -> None:
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


PARTS = (
    "oda",
    "tick",
    "observe",
    "promql",
    "weights_source",
    "decide",
    "reads",
    "writes",
    "act",
    "rest",
    "record",
)
COUNTS = ("promql_queries", "vs_gets", "vs_patches", "conflicts", "routes_written")
TOTALS = ("vs_lists", "dr_lists")


def measure(
    *,
    observer: Any,
    inner: VirtualServiceActuator,
    source_timer: Timer,
    routes: list[RouteRef],
    fraction: float,
    parallel: int,
    ticks: int,
    warmup: int,
    tick_s: float,
) -> dict[str, Any]:
    """Run `warmup` + `ticks` ticks of a fresh loop; summarize the measured ones."""
    obs_timer, decide_timer, reads_timer, writes_span = Timer(), Timer(), Timer(), Span()
    record_timer = Timer()
    store_dir = tempfile.TemporaryDirectory(prefix="meshpilot-bench-")
    store = DecisionStore(Path(store_dir.name) / "decisions.db")  # a WAL file, as serve uses
    store.record = record_timer.wrap(store.record)  # type: ignore[method-assign]
    promql_timer: Span = getattr(observer, "promql_timer", Span())
    policy = ChurnPolicy(decide_timer, routes, fraction)
    loop = ControlLoop(
        observer=TimedObserver(observer, obs_timer),
        actuator=TimedActuator(inner, reads_timer, writes_span),
        policy=policy,
        guard=Guard(GuardConfig(max_step=10, stale_after_s=30, hold_s=30)),
        store=store,
        routes=routes,
        clock=WallClock(),
        slo_ms=250,
        writer_id="bench",
        verify_after_s=1e9,  # synthetic traffic ignores the weights: no verify
        verify_tolerance=10,
        max_parallel_writes=parallel,
    )
    rows: list[dict[str, float]] = []
    outcomes: dict[str, int] = {}
    for n in range(warmup + ticks):
        policy.tick = n
        queries0 = getattr(observer, "queries_issued", 0)
        before = (inner.reads, inner.writes, inner.conflicts, inner.lists, inner.dr_lists)
        timers = (obs_timer, decide_timer, reads_timer, source_timer, writes_span, promql_timer)
        for t in (*timers, record_timer):
            t.take()
        started = time.perf_counter()
        results = loop.tick()
        tick = time.perf_counter() - started
        if n >= warmup:
            observe, reads, writes = obs_timer.take(), reads_timer.take(), writes_span.take()
            decide, record = decide_timer.take(), record_timer.take()
            rows.append(
                {
                    "tick": tick,
                    "oda": tick - record,
                    "record": record,
                    "observe": observe,
                    "weights_source": source_timer.take(),
                    "promql": promql_timer.take(),
                    "decide": decide,
                    "reads": reads,
                    "writes": writes,
                    "act": reads + writes,
                    "rest": max(0.0, tick - observe - decide - reads - writes - record),
                    "promql_queries": getattr(observer, "queries_issued", 0) - queries0,
                    "vs_gets": inner.reads - before[0],
                    "vs_patches": inner.writes - before[1],
                    "conflicts": inner.conflicts - before[2],
                    "vs_lists": inner.lists - before[3],
                    "dr_lists": inner.dr_lists - before[4],
                    "routes_written": sum(1 for r in results if r.wrote),
                }
            )
            for r in results:
                key = r.outcome.split(":")[0]
                outcomes[key] = outcomes.get(key, 0) + 1
        time.sleep(max(0.0, tick_s - tick))
    loop.store.close()
    store_dir.cleanup()
    out: dict[str, Any] = {"ticks": ticks, "outcomes": outcomes}
    for part in PARTS:
        values = [r[part] for r in rows]
        out[f"{part}_ms"] = {
            "median": round(1000 * statistics.median(values), 1),
            "p90": round(1000 * pct(values, 0.9), 1),
        }
    for key in COUNTS:
        out[f"{key}_per_tick"] = statistics.median(r[key] for r in rows)
        out[f"{key}_max"] = max(r[key] for r in rows)
    for key in TOTALS:
        out[f"{key}_total"] = sum(r[key] for r in rows)
    out["target_met"] = (
        out["oda_ms"]["median"] <= TARGET_MS and out["promql_queries_max"] <= MAX_PROMQL
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    binaries = kube_binaries()
    if binaries is None:
        raise SystemExit(
            f"kube-apiserver/etcd not built in {kube_cache_dir() / 'bin'}: "
            "run .ci/build-kube-apiserver.sh first"
        )
    subsets = subset_names(args.subsets)
    routes = [RouteRef(NS, f"svc-{i:03d}", "primary", host(i)) for i in range(args.routes)]
    pool = args.max_parallel_writes + 4  # as serve sizes it: writers, watches, the observer
    configs = [
        (
            f"watch cache + {args.max_parallel_writes} parallel writes",
            True,
            args.max_parallel_writes,
        )
    ]
    if args.baseline:
        configs.append(("baseline: GET per read, writes one by one", False, 1))
    cases = [
        (
            "realistic",
            args.change_fraction,
            f"~{100 * args.change_fraction:g} % of routes change per tick (the policy asks a "
            f"new split for 1 route in {max(1, round(1 / args.change_fraction))}, a different "
            "slice every tick; the others keep theirs and are not written)",
        ),
        ("worst", 1.0, "every route is written every tick (new split for every route)"),
    ]
    summary: dict[str, Any] = {
        "routes": args.routes,
        "subsets": args.subsets,
        "ticks": args.ticks,
        "warmup": args.warmup,
        "tick_s": args.tick_s,
        "client_pool": pool,
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    with KubeLab(binaries) as lab:
        lab.install_istio_crds()
        setup_s = time.perf_counter()
        api = setup_kube(lab, args.routes, subsets, pool)
        summary["setup_s"] = round(time.perf_counter() - setup_s, 2)
        source_timer = Timer()
        active: dict[str, VirtualServiceActuator] = {}

        @source_timer.wrap
        def weights_source(route: RouteRef) -> Weights | None:  # as serve.py wires it
            try:
                return active["actuator"].current(route)
            except Exception:
                return None

        with prometheus_observers(routes, subsets, weights_source) as (observers, what):
            summary["observer"] = what
            runs = [(o, c) for o in observers.items() for c in configs]
            for (observer_name, observer), (label, cache, parallel) in runs:
                inner = VirtualServiceActuator(api_client=api, watch_cache=cache)
                active["actuator"] = inner
                try:
                    if cache and not inner.cache_synced(NS, timeout_s=30):
                        raise SystemExit("the VirtualService watch cache did not sync in 30 s")
                    for case, fraction, description in cases:
                        result = measure(
                            observer=observer,
                            inner=inner,
                            source_timer=source_timer,
                            routes=routes,
                            fraction=fraction,
                            parallel=parallel,
                            ticks=args.ticks,
                            warmup=args.warmup,
                            tick_s=args.tick_s,
                        )
                        result.update(
                            config=f"{observer_name}, {label}", case=case, description=description
                        )
                        summary["runs"].append(result)
                finally:
                    inner.close()
    summary["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return summary


def report(s: dict[str, Any]) -> None:
    print(
        f"tick latency: {s['routes']} routes x {s['subsets']} subsets, {s['ticks']} measured "
        f"ticks per case (after {s['warmup']} warm-up), one tick every {s['tick_s']:g} s"
    )
    print(f"  observer: {s['observer']}")
    print(f"  objects created in {s['setup_s']} s; kubernetes client pool {s['client_pool']}")
    print(
        f"  machine: {s['cpus']} CPUs, load average {s['load_before']} before the run, "
        f"{s['load_after']} after (other work on the machine slows Prometheus and the API "
        "server)"
    )
    labels = {
        "oda": "observe + decide + act (target)",
        "tick": "whole tick (+ audit record)",
        "observe": "observe",
        "promql": "  of which PromQL requests",
        "weights_source": "  of which weight reads",
        "decide": "decide",
        "act": "act",
        "reads": "  reads (current, per route)",
        "writes": "  writes (apply, wall)",
        "rest": "rest (guard, metrics)",
        "record": "audit record (SQLite WAL)",
    }
    for run in s["runs"]:
        print(f"\n[{run['config']}] {run['case']}: {run['description']}")
        print(f"  {'':32s} {'median':>9s} {'p90':>9s}")
        for part, label in labels.items():
            v = run[f"{part}_ms"]
            print(f"  {label:32s} {v['median']:6.1f} ms {v['p90']:6.1f} ms")
        print(
            f"  per tick (median/max): {run['promql_queries_per_tick']:g}/"
            f"{run['promql_queries_max']:g} PromQL queries, "
            f"{run['vs_gets_per_tick']:g}/{run['vs_gets_max']:g} VirtualService GETs, "
            f"{run['vs_patches_per_tick']:g}/{run['vs_patches_max']:g} PATCHes, "
            f"{run['routes_written_per_tick']:g}/{run['routes_written_max']:g} routes written, "
            f"{run['conflicts_per_tick']:g}/{run['conflicts_max']:g} conflicts"
        )
        print(
            f"  over {run['ticks']} ticks: {run['vs_lists_total']} VirtualService LISTs, "
            f"{run['dr_lists_total']} DestinationRule LISTs (cached 10 s); outcomes "
            + ", ".join(f"{k} {v}" for k, v in sorted(run["outcomes"].items()))
        )
        verdict = "MET" if run["target_met"] else "NOT MET"
        print(
            f"  target (median observe+decide+act <= {TARGET_MS:g} ms, <= {MAX_PROMQL} PromQL "
            f"per tick): {verdict} (median {run['oda_ms']['median']:.1f} ms, whole tick "
            f"{run['tick_ms']['median']:.1f} ms, "
            f"{run['promql_queries_max']:g} PromQL queries max)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--routes", type=int, default=100)
    p.add_argument("--subsets", type=int, default=4)
    p.add_argument("--ticks", type=int, default=15, help="measured ticks per case")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured ticks first, per case")
    p.add_argument("--tick-s", type=float, default=1.0, help="pause between tick starts (s)")
    p.add_argument(
        "--change-fraction",
        type=float,
        default=0.125,
        help=(
            "realistic case: share of routes written each tick (default 0.125, 1 in 8: the "
            "shipped policy behind the default guard writes on 12 %% of ticks, "
            "bench/write_rate.py)"
        ),
    )
    p.add_argument("--max-parallel-writes", type=int, default=8)
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also measure the cache-less actuator writing one route at a time",
    )
    p.add_argument("--json", action="store_true", help="print JSON only")
    args = p.parse_args()
    if not 0 < args.change_fraction <= 1:
        p.error("--change-fraction must be in (0, 1]")
    s = run(args)
    if not args.json:
        report(s)
    print(json.dumps(s))


if __name__ == "__main__":
    main()

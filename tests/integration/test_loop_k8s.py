"""Two `ControlLoop` replicas, one Lease, one VirtualService on a real kube-apiserver.

Each replica runs the real scheduled loop (`ControlLoop.start`) with its own `LeaseElector`
(2 s Lease) and `VirtualServiceActuator` (least-privilege controller user, Role from
manifests/base/role.yaml), a simulated observer and a policy that asks for a different split
every tick; both record into one SQLite audit log. Cases:

* only the Lease holder writes: in the audit log, ordered by time, the writers form one block
  per leadership (no interleaving), and the follower records ``follower`` decisions;
* killing the leader replica (loop stopped, Lease left to expire, as in a crash) hands writing
  over to the other replica after the Lease expired, and it writes from then on;
* the VirtualService ends with exactly the last recorded write, weights summing to 100.

Both replicas read through the actuator's watch cache, as ``meshpilot serve`` wires them. A
second case drives one loop over 24 routes with writes on 8 threads sharing one kubernetes
client: after each tick every VirtualService holds exactly what the loop recorded, and once
the cache is in sync a tick sends no GET at all (one PATCH per written route).

Fails with the fix (`make system-deps`) when the kube-apiserver/etcd binaries are not built.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_lab import KubeLab, destination_rule, running_lab, virtual_service

from controller.adapters.istio.actuator import VirtualServiceActuator
from controller.adapters.kube.lease import LeaseElector
from controller.clock import WallClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.store import DecisionStore
from meshcore import Observation, RouteRef, SubsetStats, Weights

pytestmark = pytest.mark.integration

NS = "lirmm-services"
GROUP, VERSION = "networking.istio.io", "v1"
LEASE_NAME = "meshpilot"  # the Role names this Lease
LEASE_S = 2
TICK_S = 0.2
ROUTE = RouteRef(NS, "reviews", "primary", f"reviews.{NS}.svc.cluster.local")
SUBSETS = ("v1", "v2", "v3")


@pytest.fixture(scope="module")
def lab() -> Iterator[KubeLab]:
    yield from running_lab()


@pytest.fixture(scope="module")
def controller_api(lab: KubeLab) -> Any:
    from kubernetes import client

    admin = lab.api_client("admin")
    core: Any = client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": NS}})
    custom: Any = client.CustomObjectsApi(admin)
    dr = destination_rule("reviews", NS, "reviews", SUBSETS)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "destinationrules", dr)
    vs = virtual_service("reviews", NS, "reviews", list(zip(SUBSETS, (80, 10, 10), strict=True)))
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", vs)
    lab.grant_controller_role(NS)
    api = lab.api_client("controller")
    probe = VirtualServiceActuator(api_client=api)
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer reads from an informer cache
        try:
            probe.current(ROUTE)
            return api
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class SimulatedObserver:
    """Fresh telemetry that follows the configured weights (read like a real observer would)."""

    def __init__(self, reader: VirtualServiceActuator, clock: WallClock) -> None:
        self.reader, self.clock = reader, clock

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        out = {}
        for route in routes:
            weights = self.reader.current(route)
            stats = tuple(
                SubsetStats(
                    rps=4.0 * weights[s] + 1, error_ratio=0.0, p99_ms=40.0, weight=weights[s]
                )
                for s in weights.subsets
            )
            out[route] = Observation(route, weights.subsets, stats, self.clock.now(), 0.0)
        return out


class SeesawPolicy:
    """Asks for all traffic on v1, then on v3, alternately: the guard writes every tick."""

    name = "seesaw"

    def __init__(self) -> None:
        self.n = 0

    def decide(self, obs: Observation) -> Weights:
        self.n += 1
        return Weights.single(obs.subsets, "v1" if self.n % 2 else "v3")

    def reset(self) -> None:
        self.n = 0


def replica(api: Any, identity: str, store: DecisionStore) -> tuple[ControlLoop, LeaseElector]:
    clock = WallClock()
    elector = LeaseElector(
        api_client=api,
        namespace=NS,
        name=LEASE_NAME,
        identity=identity,
        lease_duration_s=LEASE_S,
    )
    actuator = VirtualServiceActuator(api_client=api, watch_cache=True)
    loop = ControlLoop(
        observer=SimulatedObserver(actuator, clock),
        actuator=actuator,
        policy=SeesawPolicy(),
        guard=Guard(GuardConfig(max_step=10, hold_s=30, stale_after_s=30)),
        store=store,
        routes=[ROUTE],
        clock=clock,
        leader=elector,
        slo_ms=250,
        writer_id=identity,
        verify_after_s=30,
        verify_tolerance=10,
        tick_s=TICK_S,
    )
    return loop, elector


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_one_writer_at_a_time_and_handover_after_leader_dies(
    controller_api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "audit.db"
    stores = [DecisionStore(db), DecisionStore(db)]  # two replicas, one audit file
    replicas = {
        name: replica(controller_api, name, store)
        for name, store in zip(("pod-a", "pod-b"), stores, strict=True)
    }
    try:
        for loop, elector in replicas.values():
            elector.start()
            loop.start()
        wait_for(lambda: any(e.is_leader() for _, e in replicas.values()), 3 * LEASE_S, "a leader")
        first = next(n for n, (_, e) in replicas.items() if e.is_leader())
        second = next(n for n in replicas if n != first)
        time.sleep(2.0)  # the leader writes, the follower follows
        loop, elector = replicas[first]
        loop.stop()  # the leader replica dies: no more ticks, no renewal, no release
        elector.stop(release=False)
        died = time.time()
        wait_for(lambda: replicas[second][1].is_leader(), 4 * LEASE_S, "the handover")
        time.sleep(2.0)  # the new leader writes
    finally:
        for loop, elector in replicas.values():
            loop.stop()
            elector.stop()
            close = getattr(loop.actuator, "close", None)
            if callable(close):
                close()

    audit = sorted(
        (r for r in stores[0].latest(limit=10_000) if r.route == ROUTE.key), key=lambda r: r.ts_s
    )
    writes = [r for r in audit if r.wrote]
    blocks = [w.writer for i, w in enumerate(writes) if i == 0 or writes[i - 1].writer != w.writer]
    assert blocks == [first, second], blocks  # one writer at a time, one handover
    last_old = max(r.ts_s for r in writes if r.writer == first)
    first_new = min(r.ts_s for r in writes if r.writer == second)
    # The old leader wrote only within renew_deadline_s of a renewal, the new one only after
    # that renewal + the lease duration: at least their difference lies between the writes.
    deadline_s = replicas[first][1].renew_deadline_s
    assert first_new - last_old >= LEASE_S - deadline_s
    assert first_new >= died
    followers = [r for r in audit if r.outcome == "follower"]
    assert {r.writer for r in followers} >= {second}
    assert all(not r.wrote for r in followers)
    assert all(r.outcome in ("written", "conflict-retried") for r in writes), {
        r.outcome for r in writes
    }
    final = VirtualServiceActuator(api_client=controller_api).current(ROUTE)
    assert final.as_dict() == writes[-1].written
    for s in stores:
        s.close()
    with capsys.disabled():
        print(
            f"\n[loop-k8s] {len(writes)} writes: {sum(w.writer == first for w in writes)} by "
            f"{first}, then {sum(w.writer == second for w in writes)} by {second}; "
            f"{len(followers)} follower decisions; gap at handover {first_new - last_old:.2f} s "
            f"(lease {LEASE_S} s)"
        )


class StepPolicy:
    """Moves all traffic toward v1 or v3, alternating every 3 ticks: most ticks write."""

    name = "step"

    def __init__(self) -> None:
        self.tick = 0

    def decide(self, obs: Observation) -> Weights:
        return Weights.single(obs.subsets, "v1" if (self.tick // 3) % 2 else "v3")

    def reset(self) -> None:
        self.tick = 0


def test_parallel_writes_over_many_routes_from_the_watch_cache(
    lab: KubeLab, controller_api: Any
) -> None:
    from kubernetes import client

    admin: Any = client.CustomObjectsApi(lab.api_client("admin"))
    routes = []
    for i in range(24):
        name = f"multi-{i:02d}"
        even = list(zip(SUBSETS, (34, 33, 33), strict=True))
        vs = virtual_service(name, NS, "reviews", even)
        admin.create_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", vs)
        routes.append(RouteRef(NS, name, "primary", f"reviews.{NS}.svc.cluster.local"))
    clock = WallClock()
    actuator = VirtualServiceActuator(api_client=controller_api, watch_cache=True)
    policy = StepPolicy()
    loop = ControlLoop(
        observer=SimulatedObserver(actuator, clock),
        actuator=actuator,
        policy=policy,
        guard=Guard(GuardConfig(max_step=10, hold_s=30, stale_after_s=30)),
        store=DecisionStore(":memory:"),
        routes=routes,
        clock=clock,
        slo_ms=250,
        writer_id="pod-a",
        verify_after_s=30,
        verify_tolerance=10,
        max_parallel_writes=8,
    )
    try:
        assert actuator.cache_synced(NS, timeout_s=10)
        for tick in range(8):
            policy.tick = tick
            reads, writes = actuator.reads, actuator.writes
            results = loop.tick()
            assert [r.route for r in results] == routes
            assert all(r.outcome in ("written", "conflict-retried") for r in results), {
                r.outcome for r in results
            }
            assert actuator.reads - reads == 0  # current, weights and patch base: the cache
            assert actuator.writes - writes == len(routes)
            for r in results:
                obj = admin.get_namespaced_custom_object(
                    GROUP, VERSION, NS, "virtualservices", r.route.virtual_service
                )
                weights = {
                    d["destination"]["subset"]: d["weight"] for d in obj["spec"]["http"][0]["route"]
                }
                assert r.written is not None and weights == r.written.as_dict()
    finally:
        actuator.close()

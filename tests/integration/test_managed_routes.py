"""ManagedRoute resources drive the loop on a real kube-apiserver (CRD from manifests/base).

One `ControlLoop` with no route from settings, the `ManagedRoutes` hook over a
`ManagedRouteWatch`, and a `VirtualServiceActuator`, both as the least-privilege controller
user bound to manifests/base/role.yaml (so the Role's managedroutes rules are proven enough).
The loop is ticked by hand; a seesaw policy asks for a new split every tick, so every tick
would write unless something stops it. In order:

* a ManagedRoute is created -> the first tick after the watch saw it manages and writes the
  route, and the leader writes status (phase, weights = the VirtualService's,
  observedGeneration); ``kubectl get managedroutes`` shows phase and weights, ``kubectl
  describe`` the Event of the write;
* ``kubectl patch --type merge`` of spec.controls.pin -> the next tick writes the pin exactly,
  status ``overridden`` at the new generation, the audit log has the ``pin`` action;
* spec.controls.paused -> ticks write nothing (VirtualService resourceVersion unchanged);
* unpaused and unpinned -> it writes again; then the ManagedRoute is deleted -> the loop
  manages no route, and later ticks leave the VirtualService as it was (same resourceVersion).

A second case builds the loop as ``meshpilot serve --mesh k8s`` does (`build_loop`) with
``kube.managed_routes`` and no route in the settings, from the controller user's kubeconfig.
A third runs two replicas with one Lease: the leader dies after writing a ManagedRoute's pin
and pausing; the new leader keeps the pause (no writes) and then the pin. A fourth makes the
same hand-over with the controls made through the API (`Operators` mirrored into the
ManagedRoute's spec), and a control the API server refuses changes nothing. A fifth shows a
repeated Event counted on one Event, as Kubernetes' recorder does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_lab import KubeLab, destination_rule, running_lab, virtual_service
from test_loop_k8s import SeesawPolicy, SimulatedObserver, wait_for

from controller.adapters.istio.actuator import VirtualServiceActuator
from controller.adapters.kube.managed_routes import GROUP, PLURAL, VERSION, ManagedRouteWatch
from controller.clock import WallClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.managed import ManagedRoutes
from controller.store import DecisionStore
from meshcore import RouteRef

pytestmark = pytest.mark.integration

CRD = Path(__file__).resolve().parents[2] / "manifests" / "base" / "managedroute-crd.yaml"
NS = "lirmm-services"
ISTIO = ("networking.istio.io", "v1")
HOST = f"reviews.{NS}.svc.cluster.local"
ROUTE = RouteRef(NS, "reviews", "primary", HOST)
SUBSETS = ("v1", "v2", "v3")
MR_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/reviews"


@pytest.fixture(scope="module")
def lab() -> Iterator[KubeLab]:
    yield from running_lab()


@pytest.fixture(scope="module")
def controller_api(lab: KubeLab) -> Any:
    from kubernetes import client

    lab.install_istio_crds(CRD)
    wait_for(lambda: lab.request("GET", f"/apis/{GROUP}/{VERSION}")[0] == 200, 30, "meshpilot.io")
    admin = lab.api_client("admin")
    client.CoreV1Api(admin).create_namespace({"metadata": {"name": NS}})
    custom: Any = client.CustomObjectsApi(admin)
    dr = destination_rule("reviews", NS, "reviews", SUBSETS)
    custom.create_namespaced_custom_object(*ISTIO, NS, "destinationrules", dr)
    vs = virtual_service("reviews", NS, "reviews", list(zip(SUBSETS, (80, 10, 10), strict=True)))
    custom.create_namespaced_custom_object(*ISTIO, NS, "virtualservices", vs)
    lab.grant_controller_role(NS)
    api = lab.api_client("controller")
    probe: Any = client.CustomObjectsApi(api)
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer reads from an informer cache
        try:
            probe.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
            VirtualServiceActuator(api_client=api).current(ROUTE)
            return api
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def vs_state(lab: KubeLab) -> tuple[str, dict[str, int]]:
    status, body = lab.request(
        "GET", f"/apis/{ISTIO[0]}/{ISTIO[1]}/namespaces/{NS}/virtualservices/reviews"
    )
    assert status == 200, body
    route = body["spec"]["http"][0]["route"]
    return body["metadata"]["resourceVersion"], {
        d["destination"]["subset"]: d["weight"] for d in route
    }


def managed_route(lab: KubeLab) -> dict[str, Any]:
    status, body = lab.request("GET", MR_PATH)
    assert status == 200, body
    return dict(body)


def kubectl(kubectl_bin: str, lab: KubeLab, *args: str) -> str:
    argv = [kubectl_bin, "--kubeconfig", str(lab.kubeconfig("admin")), "-n", NS, *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def seen(source: ManagedRouteWatch, generation: int | None) -> bool:
    """The watch holds the ManagedRoute at `generation` (None: holds none)."""
    items = source.snapshot() or []
    if generation is None:
        return source.snapshot() == []
    return any(i.generation == generation for i in items)


def managed_route_body(name: str) -> dict[str, Any]:
    """A ManagedRoute named `name` for the reviews route."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ManagedRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"virtualService": "reviews", "route": "primary", "host": HOST},
    }


def stop_replicas(replicas: list[tuple[ControlLoop, Any, ManagedRouteWatch]]) -> None:
    """Every part of each replica stopped, its Lease not released (as a dead pod)."""
    for loop, elector, source in replicas:
        loop.stop()
        source.stop()
        elector.stop(release=False)
        close = getattr(loop.actuator, "close", None)
        if callable(close):
            close()
        loop.store.close()


def test_managed_route_lifecycle(
    controller_api: Any, lab: KubeLab, kubectl_bin: str, tmp_path: Path
) -> None:
    clock = WallClock()
    guard = Guard(GuardConfig(max_step=10, hold_s=30, stale_after_s=30, min_change=1))
    source = ManagedRouteWatch(NS, api_client=controller_api, watch_timeout_s=30)
    actuator = VirtualServiceActuator(api_client=controller_api, watch_cache=False)
    store = DecisionStore(tmp_path / "audit.db")
    loop = ControlLoop(
        observer=SimulatedObserver(actuator, clock),
        actuator=actuator,
        policy=SeesawPolicy(),
        guard=guard,
        store=store,
        routes=[],
        clock=clock,
        slo_ms=250,
        writer_id="pod-a",
        verify_after_s=30,
        verify_tolerance=10,
        hooks=[ManagedRoutes(source, guard)],
    )
    source.start()
    try:
        wait_for(lambda: source.snapshot() == [], 10, "the first list")
        assert loop.tick() == [] and loop.routes == ()

        # created -> managed and written within one tick, status written
        body = managed_route_body("reviews")
        status, created = lab.request("POST", MR_PATH.rsplit("/", 1)[0], body)
        assert status == 201, created
        wait_for(lambda: seen(source, created["metadata"]["generation"]), 5, "the watch")
        (result,) = loop.tick()
        assert loop.routes == (ROUTE,)
        assert result.outcome == "written", result
        _, weights = vs_state(lab)
        assert weights != {"v1": 80, "v2": 10, "v3": 10} and sum(weights.values()) == 100
        mr = managed_route(lab)
        assert mr["status"]["phase"] == "active", mr
        assert mr["status"]["weights"] == weights
        assert mr["status"]["observedGeneration"] == mr["metadata"]["generation"]
        assert mr["status"]["lastDecision"]["outcome"] == "written"
        table = kubectl(kubectl_bin, lab, "get", "managedroutes")
        assert "PHASE" in table and "WEIGHTS" in table and "active" in table, table
        described = kubectl(kubectl_bin, lab, "describe", "managedroute", "reviews")
        assert "Normal  Written" in described and "weights {v1: " in described, described

        # kubectl patch of the pin -> the pin is written at the next tick
        expires = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        pin = {"weights": {"v1": 20, "v2": 30, "v3": 50}, "expiresAt": expires, "reason": "t"}
        patch = {"spec": {"controls": {"pin": pin}}}
        kubectl(
            kubectl_bin,
            lab,
            "patch",
            "managedroute",
            "reviews",
            "--type",
            "merge",
            "-p",
            json.dumps(patch),
        )
        generation = managed_route(lab)["metadata"]["generation"]
        wait_for(lambda: seen(source, generation), 5, "the watch to see the pin")
        (result,) = loop.tick()
        assert result.outcome == "written" and result.phase == "overridden", result
        assert vs_state(lab)[1] == pin["weights"]
        mr = managed_route(lab)
        assert mr["status"]["phase"] == "overridden"
        assert mr["status"]["weights"] == pin["weights"]
        assert mr["status"]["observedGeneration"] == generation
        (action,) = store.latest(operators=True)
        assert (action.action, action.caller, action.reason) == ("pin", "managedroute:reviews", "t")

        # paused -> nothing written
        lab.request(
            "PATCH",
            MR_PATH,
            {"spec": {"controls": {"paused": True, "pin": None}}},
            content_type="application/merge-patch+json",
        )
        generation = managed_route(lab)["metadata"]["generation"]
        wait_for(lambda: seen(source, generation), 5, "the watch to see the pause")
        before = vs_state(lab)
        for _ in range(3):
            (result,) = loop.tick()
            assert result.phase == "paused" and not result.outcome.startswith("written"), result
        assert vs_state(lab) == before
        assert managed_route(lab)["status"]["phase"] == "paused"

        # resumed -> writes again; deleted -> released, the VirtualService left as it is
        lab.request(
            "PATCH",
            MR_PATH,
            {"spec": {"controls": {"paused": False}}},
            content_type="application/merge-patch+json",
        )
        generation = managed_route(lab)["metadata"]["generation"]
        wait_for(lambda: seen(source, generation), 5, "the watch to see the resume")
        (result,) = loop.tick()
        assert result.outcome == "written", result
        status, _ = lab.request("DELETE", MR_PATH)
        assert status == 200
        wait_for(lambda: seen(source, None), 5, "the watch to see the deletion")
        left = vs_state(lab)
        for _ in range(3):
            assert loop.tick() == []
        assert loop.routes == ()
        assert vs_state(lab) == left
    finally:
        loop.stop()
        source.stop()
        actuator.close()
        store.close()


def test_serve_wires_the_watch_with_no_route_in_settings(
    controller_api: Any, lab: KubeLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`meshpilot serve --mesh k8s` with ``kube.managed_routes`` and no ``routes``: the loop
    it builds (as the controller user's kubeconfig) manages a new ManagedRoute at its first
    tick and writes its status; Prometheus is unreachable here, so the route holds."""
    import contextlib

    from controller.settings import load_settings
    from meshpilot.commands.serve import build_loop

    monkeypatch.delenv("MESHPILOT_CONFIG", raising=False)
    settings = load_settings(
        None,
        mesh="k8s",
        policy="proportional",
        supervisor=False,
        store={"path": str(tmp_path / "audit.db")},
        kube={"kubeconfig": str(lab.kubeconfig("controller")), "managed_routes": True},
        prometheus={"url": "http://127.0.0.1:9", "timeout_s": 0.5},
    )
    assert settings.routes == []
    path = MR_PATH.rsplit("/", 1)[0]
    body = managed_route_body("reviews-serve")
    with contextlib.ExitStack() as stack:
        loop, _ = build_loop(settings, stack)
        assert loop.routes == ()
        status, created = lab.request("POST", path, body)
        assert status == 201, created
        try:
            (hook,) = loop.hooks
            source = getattr(hook, "source", None)
            assert isinstance(source, ManagedRouteWatch)
            wait_for(lambda: seen(source, 1), 10, "the watch")
            (result,) = loop.tick()
            assert loop.routes == (ROUTE,) and result.phase == "holding", result
            status, mr = lab.request("GET", f"{path}/reviews-serve")
            assert mr["status"]["phase"] == "holding", mr
            assert mr["status"]["observedGeneration"] == 1
            assert sum(mr["status"]["weights"].values()) == 100
        finally:
            lab.request("DELETE", f"{path}/reviews-serve")


def replica(api: Any, identity: str, tmp_path: Path) -> tuple[ControlLoop, Any, ManagedRouteWatch]:
    """A loop as one Pod runs it: its own guard, watch, actuator, Lease elector and store."""
    from controller.adapters.kube.lease import LeaseElector

    clock = WallClock()
    guard = Guard(GuardConfig(max_step=10, hold_s=30, stale_after_s=30, min_change=1))
    source = ManagedRouteWatch(NS, api_client=api, watch_timeout_s=30)
    actuator = VirtualServiceActuator(api_client=api, watch_cache=False)
    elector = LeaseElector(
        api_client=api, namespace=NS, name="meshpilot", identity=identity, lease_duration_s=2
    )
    loop = ControlLoop(
        observer=SimulatedObserver(actuator, clock),
        actuator=actuator,
        policy=SeesawPolicy(),
        guard=guard,
        store=DecisionStore(tmp_path / f"{identity}.db"),
        routes=[],
        clock=clock,
        leader=elector,
        slo_ms=250,
        writer_id=identity,
        verify_after_s=30,
        verify_tolerance=10,
        hooks=[ManagedRoutes(source, guard)],
    )
    source.start()
    return loop, elector, source


def test_a_new_leader_keeps_the_pin_and_the_pause(
    controller_api: Any, lab: KubeLab, tmp_path: Path
) -> None:
    """Two replicas, one Lease (2 s): the leader writes a ManagedRoute's pin and then pauses;
    it dies (no renewal, no release); the other replica, leader after the Lease expired,
    writes nothing while paused, and once unpaused keeps the pin (not its policy's split)."""
    path = MR_PATH.rsplit("/", 1)[0]
    name = "reviews-handover"
    replicas = [replica(controller_api, identity, tmp_path) for identity in ("pod-a", "pod-b")]
    (a, lease_a, _), (b, lease_b, _) = replicas

    def both_see(generation: int) -> None:
        for _, _, source in replicas:
            wait_for(lambda s=source: seen(s, generation), 5, f"generation {generation}")

    def merge(patch: dict[str, Any]) -> int:
        status, got = lab.request(
            "PATCH", f"{path}/{name}", patch, content_type="application/merge-patch+json"
        )
        assert status == 200, got
        generation = int(got["metadata"]["generation"])
        both_see(generation)
        return generation

    try:
        body = managed_route_body(name)
        status, created = lab.request("POST", path, body)
        assert status == 201, created
        both_see(1)
        assert lease_a.try_acquire_or_renew(), lease_a.last_error
        expires = (datetime.now(UTC) + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        pin = {"weights": {"v1": 35, "v2": 35, "v3": 30}, "expiresAt": expires, "by": "alice"}
        merge({"spec": {"controls": {"pin": pin}}})
        assert lease_a.try_acquire_or_renew()
        (result,) = a.tick()
        assert result.outcome == "written" and result.phase == "overridden", result
        assert b.tick()[0].outcome == "follower"
        merge({"spec": {"controls": {"paused": True}}})
        assert lease_a.try_acquire_or_renew()
        assert a.tick()[0].phase == "paused"
        pinned = vs_state(lab)
        assert pinned[1] == pin["weights"]

        # pod-a dies: no more ticks, no renewal, no release; pod-b takes the Lease
        wait_for(lambda: lease_b.try_acquire_or_renew(), 10, "pod-b to lead")
        for _ in range(2):
            (result,) = b.tick()
            assert result.phase == "paused" and result.outcome != "written", result
        assert vs_state(lab) == pinned
        generation = merge({"spec": {"controls": {"paused": False}}})
        (result,) = b.tick()
        assert result.phase == "overridden" and result.outcome != "written", result
        assert vs_state(lab) == pinned  # the pin kept: in place, nothing to write
        status, mr = lab.request("GET", f"{path}/{name}")
        assert mr["status"]["phase"] == "overridden"
        assert mr["status"]["observedGeneration"] == generation
    finally:
        lab.request("DELETE", f"{path}/{name}")
        stop_replicas(replicas)


def test_api_controls_live_in_the_managedroute_and_outlive_their_leader(
    controller_api: Any, lab: KubeLab, tmp_path: Path
) -> None:
    """The API's controls (`Operators` as `meshpilot serve` builds them, mirrored into the
    ManagedRoute): pod-a's pin and pause land in ``spec.controls`` (weights, expiresAt, by,
    reason) and in pod-a's audit once (the watch's echo is not a second action); pod-a dies;
    pod-b, which never saw an API call, keeps the pause and the pin; pod-b's resume goes
    into the same spec. A control the API server refuses changes nothing (503 in the API)."""
    from controller.access import Caller
    from controller.operators import Operators
    from meshcore import TemporaryError, Weights

    path = MR_PATH.rsplit("/", 1)[0]
    name = "reviews-api"
    replicas = [replica(controller_api, identity, tmp_path) for identity in ("pod-c", "pod-d")]
    (a, lease_a, _), (b, lease_b, _) = replicas

    def operators(loop: ControlLoop) -> Operators:
        (hook,) = loop.hooks
        assert isinstance(hook, ManagedRoutes)
        return Operators(
            loop.guard, loop.store, now=loop.now, writer_id=loop.writer_id, mirror=hook
        )

    def spec_controls() -> dict[str, Any]:
        status, mr = lab.request("GET", f"{path}/{name}")
        assert status == 200, mr
        return dict(mr["spec"].get("controls") or {})

    def both_see(generation: int) -> None:
        for _, _, source in replicas:
            wait_for(lambda s=source: seen(s, generation), 5, f"generation {generation}")

    try:
        body = managed_route_body(name)
        status, created = lab.request("POST", path, body)
        assert status == 201, created
        both_see(1)
        wait_for(lambda: lease_a.try_acquire_or_renew(), 10, "pod-c to lead")
        a.tick()  # pod-c manages the route from its ManagedRoute
        ops_a = operators(a)
        pinned = Weights(SUBSETS, (20, 30, 50))
        before_s = time.time()
        ops_a.pin(ROUTE, pinned, 600.0, caller=Caller("alice"), reason="canary looks bad")
        controls = spec_controls()
        pin = controls["pin"]
        assert pin["weights"] == pinned.as_dict(), controls
        assert (pin["by"], pin["reason"]) == ("alice", "canary looks bad")
        expires = datetime.fromisoformat(pin["expiresAt"].replace("Z", "+00:00")).timestamp()
        assert before_s + 598 <= expires <= time.time() + 600
        assert controls["paused"] is False
        (result,) = a.tick()
        assert result.outcome == "written" and result.phase == "overridden", result
        assert vs_state(lab)[1] == pinned.as_dict()
        ops_a.pause(ROUTE, caller=Caller("bob"), reason="freeze for the incident")
        controls = spec_controls()
        assert controls["paused"] is True and controls["pin"]["by"] == "alice", controls
        generation = int(lab.request("GET", f"{path}/{name}")[1]["metadata"]["generation"])
        both_see(generation)
        assert lease_a.try_acquire_or_renew()
        assert a.tick()[0].phase == "paused"
        actions = [str(r.action) for r in a.store.latest(ROUTE, 50, operators=True)]
        assert sorted(actions) == ["pause", "pin"], actions  # the echo added nothing

        # pod-c dies: no more ticks, no renewal, no release; pod-d takes the Lease
        wait_for(lambda: lease_b.try_acquire_or_renew(), 10, "pod-d to lead")
        (result,) = b.tick()
        assert result.phase == "paused" and result.outcome != "written", result
        assert b.guard.controls(ROUTE).pin == pinned
        operators(b).resume(ROUTE, caller=Caller("carol"), reason="incident over")
        controls = spec_controls()
        assert controls["paused"] is False and controls["pin"]["weights"] == pinned.as_dict()
        (result,) = b.tick()
        assert result.phase == "overridden" and result.outcome != "written", result
        assert vs_state(lab)[1] == pinned.as_dict()

        # the resource gone under pod-d's feet: the API's control is refused, nothing changes
        lab.request("DELETE", f"{path}/{name}")
        with pytest.raises(TemporaryError, match="not kept"):
            operators(b).pause(ROUTE, caller=Caller("carol"), reason="again")
        assert b.guard.controls(ROUTE).paused is False
    finally:
        lab.request("DELETE", f"{path}/{name}")
        stop_replicas(replicas)


def test_a_repeated_event_is_counted_on_one_event(controller_api: Any, lab: KubeLab) -> None:
    """As the controller user (the Role's events rules): the same Event three times is one
    Event with count 3 and a later lastTimestamp; another message is an Event of its own."""
    from controller.managed import ManagedRoute

    path = MR_PATH.rsplit("/", 1)[0]
    name = "reviews-events"
    source = ManagedRouteWatch(NS, api_client=controller_api, watch_timeout_s=30)
    body = managed_route_body(name)
    status, created = lab.request("POST", path, body)
    assert status == 201, created
    try:
        item = ManagedRoute(name, 1, ROUTE, uid=created["metadata"]["uid"])
        for _ in range(3):
            source.emit_event(item, True, "Holding", "no fresh data: holding")
            time.sleep(1.1)  # lastTimestamp has whole seconds
        source.emit_event(item, False, "Written", "weights {v1: 50, v2: 50}")
        status, events = lab.request(
            "GET", f"/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.name%3D{name}"
        )
        assert status == 200, events
        seen = sorted((e["reason"], e["count"]) for e in events["items"])
        assert seen == [("Holding", 3), ("Written", 1)], events["items"]
        holding = next(e for e in events["items"] if e["reason"] == "Holding")
        assert holding["lastTimestamp"] > holding["firstTimestamp"]
    finally:
        lab.request("DELETE", f"{path}/{name}")


def test_spec_guard_settings_limit_their_route_and_the_schema_checks_them(
    controller_api: Any, lab: KubeLab, tmp_path: Path
) -> None:
    """``spec.guard.maxStep: 3`` on the real CRD: each write of the seesaw moves a version by
    at most 3 points (the controller's own guard allows 10); ``maxStep: 0`` is refused by the
    API server's schema (422) before any controller sees it."""
    path = MR_PATH.rsplit("/", 1)[0]
    name = "reviews-guarded"
    replicas = [replica(controller_api, "pod-e", tmp_path)]
    ((loop, lease, source),) = replicas
    bad = managed_route_body("reviews-bad-guard")
    bad["spec"]["guard"] = {"maxStep": 0}
    status, refused = lab.request("POST", path, bad)
    assert status == 422 and "maxStep" in json.dumps(refused), refused
    body = managed_route_body(name)
    body["spec"]["guard"] = {"maxStep": 3}
    try:
        status, created = lab.request("POST", path, body)
        assert status == 201, created
        wait_for(lambda: seen(source, 1), 5, "the watch")
        wait_for(lambda: lease.try_acquire_or_renew(), 10, "pod-e to lead")
        before = vs_state(lab)[1]
        for _ in range(3):
            (result,) = loop.tick()
            assert result.outcome == "written", result
            after = vs_state(lab)[1]
            assert max(abs(after[s] - before[s]) for s in SUBSETS) <= 3, (before, after)
            before = after
        assert loop.guard.config_for(ROUTE).max_step == 3
    finally:
        lab.request("DELETE", f"{path}/{name}")
        stop_replicas(replicas)

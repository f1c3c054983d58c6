"""The API over a loop on a real kube-apiserver: a pin repairs a broken route, and who may act.

One VirtualService ``reviews`` (v1/v2/v3), the controller's least-privilege Role
(manifests/base/role.yaml) and the operator RBAC of manifests/base/operator-rbac.yaml, on the
kube-apiserver of `kube_lab`; the loop is ticked by hand (one call is one tick) and reads
through the watch cache, as `meshpilot serve --mesh k8s` wires it. Cases:

* repair: a foreign write makes the route's weights sum to 110 -> the route is ``failed`` and
  ``/routes`` shows what the object holds (no weights, ``invalid_weights`` 50/30/30); a pin
  through the API answers that the next tick writes it, and that one tick does, with a JSON
  Patch whose first op tests the resourceVersion of the broken object; the route is managed
  again and shows the pin;
* Kubernetes callers (``api.auth: kubernetes``), two ServiceAccounts: alice bound to the
  ``meshpilot-operator`` ClusterRole in the namespace, bob bound to nothing. While the
  controller may not create reviews, a control is a 503 that changes nothing; then no token is
  a 401, bob (and a token the API server does not know) a 401/403, with no state change and no
  audit record; alice's pause works and its audit record names her, with her reason; answers
  are cached (a second control costs no review), and alice may not act in another namespace.

Fails with the fix (`make system-deps`) when the kube-apiserver/etcd binaries are not built.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from controller.adapters.istio.actuator import VirtualServiceActuator
from controller.adapters.kube.access import KubernetesAccess
from controller.api.app import create_app
from controller.clock import WallClock
from controller.guard import Guard, GuardConfig
from controller.loop import ControlLoop
from controller.settings import load_settings
from controller.store import DecisionStore
from meshcore import Observation, RouteRef, SubsetStats, Weights
from tests.integration.kube_lab import (
    CONTROLLER_USER,
    REPO,
    KubeLab,
    destination_rule,
    running_lab,
    virtual_service,
)

pytestmark = pytest.mark.integration

NS = "lirmm-services"
GROUP, VERSION = "networking.istio.io", "v1"
ROUTE = RouteRef(NS, "reviews", "primary", f"reviews.{NS}.svc.cluster.local")
PATH = f"/routes/{NS}/reviews/primary"
SUBSETS = ("v1", "v2", "v3")
TOKEN = "static-operator-token-for-tests"
OPERATOR_RBAC = REPO / "manifests" / "base" / "operator-rbac.yaml"
ALICE = f"system:serviceaccount:{NS}:alice"


class PatchSpy:
    """`CustomObjectsApi` that remembers every JSON Patch it sends."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.patches: list[list[dict[str, Any]]] = []

    def patch_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        self.patches.append(args[5])
        return self.inner.patch_namespaced_custom_object(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class SteadyObserver:
    """Fresh telemetry for v1..v3 with the weights the route holds (0 when unreadable)."""

    def __init__(self, reader: VirtualServiceActuator) -> None:
        self.reader = reader

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        out = {}
        for route in routes:
            try:
                weights = self.reader.current(route).as_dict()
            except Exception:
                weights = dict.fromkeys(SUBSETS, 0)
            stats = tuple(SubsetStats(50.0, 0.0, 40.0, weights[s]) for s in SUBSETS)
            out[route] = Observation(route, SUBSETS, stats, time.time(), 0.0)
        return out


class KeepPolicy:
    """Proposes the split the route has: the loop writes only what operators ask."""

    name = "keep"

    def decide(self, obs: Observation) -> Weights:
        return Weights(obs.subsets, [st.weight for st in obs.stats])

    def reset(self) -> None:
        return None


def wait_for(predicate: Any, what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def lab() -> Iterator[KubeLab]:
    yield from running_lab()


@pytest.fixture(scope="module")
def world(lab: KubeLab) -> Iterator[tuple[ControlLoop, PatchSpy, Any]]:
    from kubernetes import client

    admin = lab.api_client("admin")
    client.CoreV1Api(admin).create_namespace({"metadata": {"name": NS}})
    custom: Any = client.CustomObjectsApi(admin)
    dr = destination_rule("reviews", NS, "reviews", SUBSETS)
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "destinationrules", dr)
    vs = virtual_service("reviews", NS, "reviews", list(zip(SUBSETS, (80, 10, 10), strict=True)))
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", vs)
    lab.grant_controller_role(NS)
    api = lab.api_client("controller")
    actuator = VirtualServiceActuator(api_client=api, watch_cache=True)
    spy = PatchSpy(actuator.custom_objects)
    actuator.custom_objects = spy
    wait_for(lambda: _readable(actuator), "the controller's Role to take effect")
    loop = ControlLoop(
        observer=SteadyObserver(actuator),
        actuator=actuator,
        policy=KeepPolicy(),
        guard=Guard(GuardConfig(max_step=10)),
        store=DecisionStore(":memory:"),
        routes=[ROUTE],
        clock=WallClock(),
        slo_ms=250.0,
        writer_id="pod-a",
        verify_after_s=30.0,
        verify_tolerance=10.0,
        recheck_failed_every=1000,  # a failed route is re-checked only when a pin repairs it
    )
    try:
        yield loop, spy, custom
    finally:
        actuator.close()
        loop.store.close()


def _readable(actuator: VirtualServiceActuator) -> bool:
    try:
        actuator.current(ROUTE)
    except Exception:
        return False
    return True


def held_weights(custom: Any) -> tuple[dict[str, int], str]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", "reviews")
    route = obj["spec"]["http"][0]["route"]
    weights = {d["destination"]["subset"]: d["weight"] for d in route}
    return weights, obj["metadata"]["resourceVersion"]


def test_a_pin_through_the_api_repairs_weights_someone_broke(
    world: tuple[ControlLoop, PatchSpy, Any],
) -> None:
    loop, spy, custom = world
    (first,) = loop.tick()
    assert first.phase == "active" and first.weights is not None
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", "reviews")
    for j, points in enumerate((50, 30, 30)):  # a foreign PUT: the weights sum to 110
        obj["spec"]["http"][0]["route"][j]["weight"] = points
    custom.replace_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", "reviews", obj)
    broken, broken_rv = held_weights(custom)
    assert broken == {"v1": 50, "v2": 30, "v3": 30}
    wait_for(lambda: loop.tick()[0].phase == "failed", "the route to fail")

    app = create_app(
        settings=load_settings(mesh="sim"),
        loop=loop,
        store=loop.store,
        guard=loop.guard,
        api_token=TOKEN,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as api:
        shown = api.get(PATH).json()
        assert shown["phase"] == "failed" and "not a valid split" in shown["failed"]
        assert shown["weights"] is None and shown["invalid_weights"] == broken
        patches = len(spy.patches)
        pin = {"v1": 60, "v2": 40, "v3": 0}
        answer = api.post(f"{PATH}/override", json={"weights": pin, "ttl_s": 600})
        assert answer.status_code == 200, answer.text
        plan = answer.json()["pin_plan"]
        assert plan["writes"] and plan["phase"] == "overridden", plan

        (repaired,) = loop.tick()  # the very next tick
        assert repaired.outcome == "written" and repaired.phase == "overridden", repaired
        assert held_weights(custom)[0] == pin
        (ops,) = spy.patches[patches:]
        assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": broken_rv}
        assert [op["op"] for op in ops if op["path"].endswith("/weight")] == ["replace"] * 3
        shown = api.get(PATH).json()
        assert shown["phase"] == "overridden" and shown["weights"] == pin
        assert shown["failed"] is None and shown["invalid_weights"] is None
        (again,) = loop.tick()
        assert again.phase == "overridden" and again.outcome == "unchanged"
        assert api.delete(f"{PATH}/override").status_code == 200


def _service_account_token(lab: KubeLab, name: str) -> str:
    assert (
        lab.request(
            "POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": name}}
        )[0]
        == 201
    )
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    status, answer = lab.request(
        "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{name}/token", body
    )
    assert status == 201, answer
    return str(answer["status"]["token"])


def _operator_rbac(lab: KubeLab) -> None:
    """The manifests' operator ClusterRole, bound to alice in NS; the manifests' reviewer
    ClusterRole bound to the lab's controller user (in a cluster: the ServiceAccount)."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(OPERATOR_RBAC.read_text()) if d}
    role, delegator = docs["ClusterRole"], docs["ClusterRoleBinding"]
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    assert lab.request("POST", f"{rbac}/clusterroles", role)[0] == 201
    binding = {
        "metadata": {"name": "alice-steers-traffic"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": NS}],
    }
    assert lab.request("POST", f"{rbac}/namespaces/{NS}/rolebindings", binding)[0] == 201
    for_lab = {
        **delegator,
        "subjects": [
            {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}
        ],
    }
    assert lab.request("POST", f"{rbac}/clusterrolebindings", for_lab)[0] == 201


def test_kubernetes_callers_need_a_token_and_the_permission_and_are_audited(
    lab: KubeLab, world: tuple[ControlLoop, PatchSpy, Any], tmp_path: Path
) -> None:
    loop, _, _ = world
    alice, bob = _service_account_token(lab, "alice"), _service_account_token(lab, "bob")
    access = KubernetesAccess(api_client=lab.api_client("controller"), cache_s=10.0)
    app = create_app(
        settings=load_settings(mesh="sim"),
        loop=loop,
        store=loop.store,
        guard=loop.guard,
        auth=access,
    )
    api = TestClient(app)

    def control(token: str | None, reason: str = "test") -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return api.post(f"{PATH}/pause", json={"reason": reason}, headers=headers)

    def pauses() -> int:
        return sum(r.action == "pause" for r in loop.store.latest(ROUTE, 100, operators=True))

    def unchanged() -> None:
        assert not loop.guard.controls(ROUTE).paused
        assert pauses() == 0

    refused = control(alice)  # the controller may not create TokenReviews yet
    assert refused.status_code == 503 and "RBAC denied" in refused.json()["detail"], refused.text
    unchanged()

    _operator_rbac(lab)
    probe = KubernetesAccess(api_client=lab.api_client("controller"), cache_s=0)
    caller = wait_for(lambda: _try(probe.authenticate, alice), "TokenReview to be allowed")
    assert caller.name == ALICE and f"system:serviceaccounts:{NS}" in caller.groups
    wait_for(lambda: _try(probe.authorize, caller, NS) == "allowed", "alice's RoleBinding")

    assert control(None).status_code == 401
    assert control("not-a-token-the-apiserver-knows").status_code == 401
    denied = control(bob)
    assert denied.status_code == 403, denied.text
    assert (
        f"system:serviceaccount:{NS}:bob may not patch managedroutes.meshpilot.io"
        in denied.json()["detail"]
    )
    unchanged()

    reviews = (access.token_reviews, access.access_reviews)
    allowed = control(alice, reason="freeze during INC-7")
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["controls"]["paused"] is True
    (record,) = loop.store.latest(ROUTE, 1, operators=True)
    assert (record.action, record.caller, record.reason) == ("pause", ALICE, "freeze during INC-7")
    resumed = api.post(f"{PATH}/resume", headers={"Authorization": f"Bearer {alice}"})
    assert resumed.status_code == 200 and not loop.guard.controls(ROUTE).paused
    assert (access.token_reviews, access.access_reviews) == (reviews[0] + 1, reviews[1] + 1)
    assert "may not patch" in (probe.authorize(caller, "another-namespace") or "")
    access.close()
    probe.close()


def _try(fn: Any, *args: Any) -> Any:
    """fn(*args), ``"allowed"`` for an authorization without objection, None on an error."""
    try:
        answer = fn(*args)
    except Exception:
        return None
    return "allowed" if answer is None and fn.__name__ == "authorize" else answer

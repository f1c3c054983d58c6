"""Real kube-apiserver v1.20.2 + Istio CRDs: the API behaviours meshpilot's writer relies on.

Needs the binaries from .ci/build-kube-apiserver.sh (``make test`` builds them; missing, the
tests fail with that fix). The lab installs Istio's crd-all.gen.yaml when it is there, else our
structural stand-ins (tests/integration/data/istio-networking-crds.yaml); the last test swaps
in the stand-ins and checks they give meshpilot the same API: v1 served, objects kept as sent,
a string weight refused.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# kube_lab.py sits next to this file; import it whether or not tests/ is a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_lab import CONTROLLER_USER, OWN_CRDS, KubeLab, istio_crds_file, running_lab

pytestmark = pytest.mark.integration

NS = "lirmm-services"
GROUP, VERSION = "networking.istio.io", "v1"
JSON_PATCH = "application/json-patch+json"

VS: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "VirtualService",
    "metadata": {"name": "reviews", "namespace": NS},
    "spec": {
        "hosts": ["reviews"],
        "http": [
            {
                "route": [
                    {"destination": {"host": "reviews", "subset": "v1"}, "weight": 80},
                    {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20},
                ]
            }
        ],
    },
}
DR: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "DestinationRule",
    "metadata": {"name": "reviews", "namespace": NS},
    "spec": {
        "host": "reviews",
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ],
    },
}


@pytest.fixture(scope="session")
def lab() -> Iterator[KubeLab]:
    yield from running_lab()


@pytest.fixture(scope="session")
def admin(lab: KubeLab) -> Any:
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(lab.kubeconfig("admin")))
    core: Any = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    return api


@pytest.fixture(scope="session")
def controller(lab: KubeLab) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(lab.kubeconfig("controller")))


def custom(api: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api)


def api_error(fn: Callable[[], Any]) -> Any:
    from kubernetes.client.rest import ApiException

    with pytest.raises(ApiException) as ei:
        fn()
    return ei.value


@pytest.fixture(scope="session")
def vs(admin: Any) -> dict[str, Any]:
    co = custom(admin)
    co.create_namespaced_custom_object(GROUP, VERSION, NS, "destinationrules", DR)
    return co.create_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", VS)


def get_vs(api: Any) -> dict[str, Any]:
    return custom(api).get_namespaced_custom_object(
        GROUP, VERSION, NS, "virtualservices", "reviews"
    )


def weights(obj: dict[str, Any]) -> list[int]:
    return [r["weight"] for r in obj["spec"]["http"][0]["route"]]


def test_istio_crds_established(lab: KubeLab) -> None:
    status, body = lab.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert status == 200
    crds = {c["metadata"]["name"]: c for c in body["items"]}
    for name in ("virtualservices.networking.istio.io", "destinationrules.networking.istio.io"):
        conds = {c["type"]: c["status"] for c in crds[name]["status"]["conditions"]}
        assert conds["Established"] == "True"
        served = {v["name"] for v in crds[name]["spec"]["versions"] if v["served"]}
        assert "v1" in served


def test_version(lab: KubeLab) -> None:
    status, body = lab.request("GET", "/version")
    assert status == 200 and body["gitVersion"] == "v1.20.2"


def test_create_virtualservice_and_destinationrule(admin: Any, vs: dict[str, Any]) -> None:
    assert weights(vs) == [80, 20]
    dr = custom(admin).get_namespaced_custom_object(
        GROUP, VERSION, NS, "destinationrules", "reviews"
    )
    assert [s["name"] for s in dr["spec"]["subsets"]] == ["v1", "v2"]


def test_merge_patch_with_stale_resource_version_is_409(admin: Any, vs: dict[str, Any]) -> None:
    co = custom(admin)
    stale = get_vs(admin)["metadata"]["resourceVersion"]
    # Someone else writes: the resourceVersion moves on.
    co.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        "reviews",
        {"metadata": {"labels": {"touched": "yes"}}},
    )
    body = {
        "metadata": {"resourceVersion": stale},
        "spec": {
            "http": [
                {
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50},
                    ]
                }
            ]
        },
    }
    err = api_error(
        lambda: co.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualservices", "reviews", body
        )
    )
    assert err.status == 409
    assert weights(get_vs(admin)) == [80, 20]


def test_json_patch_with_failing_test_op_is_422(admin: Any, vs: dict[str, Any]) -> None:
    co = custom(admin)
    cur = get_vs(admin)
    rv = cur["metadata"]["resourceVersion"]

    def ops(expected_subset: str, w0: int, w1: int) -> list[dict[str, Any]]:
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {
                "op": "test",
                "path": "/spec/http/0/route/0/destination/subset",
                "value": expected_subset,
            },
            {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": w0},
            {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": w1},
        ]

    err = api_error(
        lambda: co.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            "virtualservices",
            "reviews",
            ops("v9", 10, 90),
            _content_type=JSON_PATCH,
        )
    )
    assert err.status == 422
    assert weights(get_vs(admin)) == weights(cur)

    # The same patch with true preconditions applies.
    out = co.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        "virtualservices",
        "reviews",
        ops("v1", 70, 30),
        _content_type=JSON_PATCH,
    )
    assert weights(out) == [70, 30]


def test_strategic_merge_patch_on_custom_object_is_415(lab: KubeLab, vs: dict[str, Any]) -> None:
    status, _ = lab.request(
        "PATCH",
        f"/apis/{GROUP}/{VERSION}/namespaces/{NS}/virtualservices/reviews",
        {"metadata": {"labels": {"x": "y"}}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 415


def test_string_weight_is_422(admin: Any, vs: dict[str, Any]) -> None:
    bad = copy.deepcopy(VS)
    bad["metadata"]["name"] = "reviews-bad"
    bad["spec"]["http"][0]["route"][0]["weight"] = "80"
    err = api_error(
        lambda: custom(admin).create_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualservices", bad
        )
    )
    assert err.status == 422
    assert "weight" in json.loads(err.body)["message"]


def test_controller_without_rbac_is_403_then_role_grants_exactly_that(
    admin: Any, controller: Any, vs: dict[str, Any]
) -> None:
    from kubernetes import client

    err = api_error(lambda: get_vs(controller))
    assert err.status == 403
    assert CONTROLLER_USER in json.loads(err.body)["message"]

    rbac: Any = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        NS,
        {
            "metadata": {"name": "meshpilot-controller"},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["virtualservices"],
                    "verbs": ["get", "list", "watch", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": "meshpilot-controller"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "meshpilot-controller",
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": CONTROLLER_USER}
            ],
        },
    )
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer reads from an informer cache
        try:
            got = get_vs(controller)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert got["metadata"]["name"] == "reviews"
    # Still least privilege: no delete, nothing on DestinationRules.
    err = api_error(
        lambda: custom(controller).delete_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualservices", "reviews"
        )
    )
    assert err.status == 403
    err = api_error(
        lambda: custom(controller).get_namespaced_custom_object(
            GROUP, VERSION, NS, "destinationrules", "reviews"
        )
    )
    assert err.status == 403


def test_apiserver_outage_and_restart_keeps_state(
    lab: KubeLab, admin: Any, vs: dict[str, Any]
) -> None:
    before = get_vs(admin)
    port = lab.port
    lab.kill_apiserver()
    assert not lab.apiserver_running
    with pytest.raises(OSError):
        lab.request("GET", "/readyz", timeout=2)
    lab.restart_apiserver()
    assert lab.port == port
    after = get_vs(admin)  # same client, same kubeconfig: same port and CA
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_our_structural_crds_stand_in_for_istios(lab: KubeLab, admin: Any) -> None:
    """Without Istio's file the labs install ours: the same API for everything meshpilot does."""
    names = lab.install_istio_crds(OWN_CRDS)
    try:
        assert sorted(names) == [
            "destinationrules.networking.istio.io",
            "virtualservices.networking.istio.io",
        ]
        co = custom(admin)
        probe = copy.deepcopy(VS)
        probe["metadata"]["name"] = "reviews-probe"
        probe["spec"]["http"][0]["meshpilotProbe"] = "kept"  # unknown to Istio: it prunes it
        deadline = time.monotonic() + 20
        while True:  # the API server switches to the new schema a moment after Established
            got = co.create_namespaced_custom_object(
                GROUP, VERSION, NS, "virtualservices", probe, dry_run="All"
            )
            if got["spec"] == probe["spec"]:
                break
            assert time.monotonic() < deadline, f"still pruned by the old schema: {got['spec']}"
            time.sleep(0.2)
        # Everything meshpilot and its tests send is kept as sent.
        full = copy.deepcopy(VS)
        full["metadata"]["name"] = "reviews-full"
        full["spec"]["http"].insert(
            0,
            {
                "name": "canary",
                "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                "mirror": {"host": "ratings", "subset": "v1"},
                "retries": {"attempts": 3, "perTryTimeout": "2s"},
                "route": [
                    {"destination": {"host": "reviews", "subset": "v2", "port": {"number": 9080}}}
                ],
            },
        )
        got = co.create_namespaced_custom_object(GROUP, VERSION, NS, "virtualservices", full)
        assert got["spec"] == full["spec"]
        dr = copy.deepcopy(DR)
        dr["metadata"]["name"] = "reviews-full"
        dr["spec"]["trafficPolicy"] = {"loadBalancer": {"simple": "ROUND_ROBIN"}}
        got = co.create_namespaced_custom_object(GROUP, VERSION, NS, "destinationrules", dr)
        assert got["spec"] == dr["spec"]
        # A weight must be an integer, a destination needs a host, a DestinationRule a host.
        for plural, bad, field in (
            ("virtualservices", ("http", 0, "route", 0, "weight"), "80"),
            ("virtualservices", ("http", 0, "route", 0, "destination"), {"subset": "v1"}),
            ("destinationrules", (), {"subsets": [{"name": "v1"}]}),
        ):
            obj = copy.deepcopy(VS if plural == "virtualservices" else DR)
            obj["metadata"]["name"] = "reviews-bad"
            parent: Any = obj["spec"]
            if bad:
                for step in bad[:-1]:
                    parent = parent[step]
                parent[bad[-1]] = field
            else:
                obj["spec"] = field
            err = api_error(
                lambda obj=obj, plural=plural: co.create_namespaced_custom_object(
                    GROUP, VERSION, NS, plural, obj
                )
            )
            assert err.status == 422, (plural, bad, err.body)
    finally:
        if istio_crds_file() is not None:
            lab.install_istio_crds()  # back to Istio's for whatever runs next

"""The Kubernetes and Istio manifests in manifests/ are valid, consistent and sufficient.

Cases:

* the kustomization lists every file of manifests/base (and only those), uses only the features
  this test renders (namespace + resources), and `kubectl kustomize` (Debian's
  kubernetes-client, installed by ``make test``) renders the same objects;
* every Istio object validates against its CRD's openAPIV3Schema from Istio's
  crd-all.gen.yaml (jsonschema), with no field the schema does not know (the API server would
  silently drop a typo like ``wieght``) — and the check does catch such mistakes;
* every object (base and examples) is accepted by a server-side dry-run create as admin on a
  real kube-apiserver with Istio's CRDs, comes back with every field it was sent (nothing
  pruned), and is not persisted (the ManagedRoute CRD is created for real, so the example
  ManagedRoute can be dry-run, and checked the same way);
* end to end through the ServiceAccount: base + examples created for real, a token for
  ServiceAccount ``meshpilot`` (TokenRequest) drives `VirtualServiceActuator` on the route of
  the ConfigMap, `LeaseElector` on the Lease of the settings and `ManagedRouteWatch` (list +
  watch, status write) on the example ManagedRoute — the manifests' RoleBinding and Role are
  enough;
* and that is all it can do: as that ServiceAccount, patching a ManagedRoute's spec or
  deleting it, patching a DestinationRule, deleting a VirtualService or DestinationRule,
  reading or listing Secrets, and getting, listing or patching a VirtualService in another
  namespace each get 403 from the real apiserver;
* the ConfigMap's settings load with the Deployment's environment, and agree with the
  Deployment (port, probes), the Role (Lease name) and the example VirtualService (route,
  host, subsets);
* ``kubectl kustomize`` of the base and of each overlay (manifests/overlays/kind, prod) is
  accepted by ``kubectl apply --dry-run=server`` on the real API server (kubectl validates core
  kinds against the server's OpenAPI schema first, and that check does catch an unknown field),
  nothing is persisted; the examples pass the same dry run against Istio's CRDs and ours (our
  CRD is created for real first: a dry-run CRD serves nothing).
  The lab's API server is v1.20, which serves PodDisruptionBudget only as policy/v1beta1: the
  prod overlay's policy/v1 PDB is sent as v1beta1 (same fields for what it uses).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kube_lab import (
    ISTIO_CRDS_ENV,
    SHARED_ISTIO_CRDS,
    KubeLab,
    istio_crds_file,
    repository_roots,
    running_lab,
)

from tests.helpers import unavailable

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
EXAMPLES = MANIFESTS / "examples"
NS = "lirmm-services"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def render_base() -> list[dict[str, Any]]:
    """What ``kubectl kustomize manifests/base`` renders, for the features the base uses."""
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    unsupported = set(kust) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unsupported, f"extend render_base() for kustomization keys {unsupported}"
    out = []
    for resource in kust["resources"]:
        for doc in load_docs(BASE / resource):
            if doc["kind"] not in CLUSTER_SCOPED and "namespace" in kust:
                doc["metadata"]["namespace"] = kust["namespace"]
            out.append(doc)
    return out


def example_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(EXAMPLES.glob("*.yaml")) for d in load_docs(p)]


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# -- static ----------------------------------------------------------------------------------------


def test_kustomization_lists_every_base_file() -> None:
    kust = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(files)
    kinds = {d["kind"] for d in render_base()}
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    }
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    assert all(
        d["metadata"].get("namespace") == NS
        for d in render_base()
        if d["kind"] not in cluster_scoped
    )


def test_kubectl_kustomize_renders_the_same_objects(kubectl_bin: str) -> None:
    out = subprocess.run(
        [kubectl_bin, "kustomize", str(BASE)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    theirs = {key(d): d for d in yaml.safe_load_all(out) if d}
    ours = {key(d): d for d in render_base()}
    assert theirs == ours


@pytest.fixture(scope="module")
def istio_crds() -> Path:
    """Istio's crd-all.gen.yaml. Only Istio's full schemas make these checks meaningful, so
    without it the tests that need it skip (fail under CI=true) with where it was looked for."""
    path = istio_crds_file()
    if path is None:
        unavailable(
            f"Istio's crd-all.gen.yaml not found at {SHARED_ISTIO_CRDS} relative to "
            f"{' or '.join(map(str, repository_roots()))}: put it there or name it with "
            f"{ISTIO_CRDS_ENV}"
        )
    return path


def crd_schemas(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, for every served version of every CRD."""
    out = {}
    for crd in load_docs(path):
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = version["schema"]["openAPIV3Schema"]
                out[(f"{group}/{version['name']}", kind)] = schema
    return out


TOP_LEVEL = {"apiVersion", "kind", "metadata"}  # checked by the API server, not the CRD schema


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths in `value` that `schema` does not declare (what a structural schema prunes)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            here = f"{path}.{k}" if path else k
            if props is not None and k in props:
                found += unknown_fields(v, props[k], here)
            elif isinstance(extra, dict):
                found += unknown_fields(v, extra, here)
            elif props is not None and not (path == "" and k in TOP_LEVEL):
                found.append(here)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, v in enumerate(value):
            found += unknown_fields(v, schema["items"], f"{path}[{n}]")
    return found


def schema_problems(
    doc: dict[str, Any], schemas: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    schema = schemas[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    ]
    return problems + [f"{p}: unknown field" for p in unknown_fields(doc, schema)]


def istio_docs() -> list[dict[str, Any]]:
    docs = [d for d in render_base() + example_docs() if d["apiVersion"].endswith(".istio.io/v1")]
    assert {d["kind"] for d in docs} >= {"VirtualService", "DestinationRule"}
    return docs


def test_istio_objects_validate_against_the_crd_schemas(istio_crds: Path) -> None:
    schemas = crd_schemas(istio_crds)
    for doc in istio_docs():
        assert schema_problems(doc, schemas) == [], key(doc)


def test_managedroute_example_validates_against_our_crd() -> None:
    schemas = crd_schemas(BASE / "managedroute-crd.yaml")
    (example,) = by_kind(example_docs(), "ManagedRoute")
    assert schema_problems(example, schemas) == []
    typo = copy.deepcopy(example)
    typo["spec"]["controls"]["pasued"] = True
    assert schema_problems(typo, schemas) == ["spec.controls.pasued: unknown field"]


def test_schema_check_catches_typos_and_wrong_types(istio_crds: Path) -> None:
    schemas = crd_schemas(istio_crds)
    vs = next(d for d in istio_docs() if d["kind"] == "VirtualService")
    typo = copy.deepcopy(vs)
    route = typo["spec"]["http"][1]["route"][0]
    route["wieght"] = route.pop("weight")
    assert schema_problems(typo, schemas) == ["spec.http[1].route[0].wieght: unknown field"]
    wrong = copy.deepcopy(vs)
    wrong["spec"]["http"][1]["route"][0]["weight"] = "80"
    assert any("is not of type 'integer'" in p for p in schema_problems(wrong, schemas))


# -- against a real API server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[KubeLab]:
    """A real API server with Istio's CRDs when they are there, else with our structural ones
    (enough for the end-to-end test; the dry run asks for Istio's)."""
    yield from running_lab()


def resource_path(lab: KubeLab, doc: dict[str, Any]) -> str:
    """Collection URL of `doc`'s kind, found through API discovery."""
    api_version = doc["apiVersion"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    status, body = lab.request("GET", prefix)
    assert status == 200, (prefix, body)
    plural = next(
        r["name"] for r in body["resources"] if r["kind"] == doc["kind"] and "/" not in r["name"]
    )
    if doc["kind"] in CLUSTER_SCOPED:
        return f"{prefix}/{plural}"
    return f"{prefix}/namespaces/{doc['metadata']['namespace']}/{plural}"


def missing_in(sent: Any, got: Any, path: str = "") -> list[str]:
    """Paths of `sent` that are absent or different in `got` (defaults may be added)."""
    if isinstance(sent, dict):
        if not isinstance(got, dict):
            return [path]
        return [p for k, v in sent.items() for p in missing_in(v, got.get(k), f"{path}.{k}")]
    if isinstance(sent, list):
        if not isinstance(got, list) or len(got) != len(sent):
            return [path]
        return [
            p
            for i, (s, g) in enumerate(zip(sent, got, strict=True))
            for p in missing_in(s, g, f"{path}[{i}]")
        ]
    return [] if sent == got else [f"{path}: sent {sent!r}, got {got!r}"]


def test_every_manifest_passes_a_server_side_dry_run_create(istio_crds: Path, lab: KubeLab) -> None:
    assert lab.crds_file == istio_crds  # "nothing pruned" means something with Istio's schemas
    docs = render_base() + example_docs()
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    status, body = lab.request("POST", resource_path(lab, namespace), namespace)  # for real:
    assert status == 201, body  # a dry-run namespace cannot hold the dry-run objects
    for crd in ensure_own_crds(lab):  # nor can a dry-run CRD serve its kind: created for real
        status, body = lab.request("GET", f"{resource_path(lab, crd)}/{crd['metadata']['name']}")
        assert missing_in(crd, body) == [], key(crd)
    for doc in docs:
        if doc["kind"] in ("Namespace", "CustomResourceDefinition"):
            continue
        path = resource_path(lab, doc)
        status, body = lab.request("POST", f"{path}?dryRun=All&fieldManager=test", doc)
        assert status in (200, 201), (key(doc), body)
        assert missing_in(doc, body) == [], key(doc)
        status, _ = lab.request("GET", f"{path}/{doc['metadata']['name']}")
        assert status == 404, f"{key(doc)} was persisted by a dry run"


# -- end to end through the ServiceAccount ---------------------------------------------------------


def service_account_client(lab: KubeLab, namespace: str, name: str) -> Any:
    from kubernetes import client

    status, body = lab.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    assert status == 201, body
    configuration = client.Configuration()
    configuration.host = lab.url
    configuration.ssl_ca_cert = str(lab.ca_file)
    configuration.api_key = {"authorization": f"Bearer {body['status']['token']}"}
    return client.ApiClient(configuration)


def settings_from_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """`load_settings` as the Pod runs it: the ConfigMap file plus the Deployment's env."""
    from controller.settings import load_settings

    docs = render_base()
    config_map = by_kind(docs, "ConfigMap")[0]
    deployment = by_kind(docs, "Deployment")[0]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_map["data"]["config.yaml"])
    field_refs = {"metadata.name": "ai-controller-7d9f-abcde", "metadata.namespace": NS}
    for var in container["env"]:
        if var["name"] == "MESHPILOT_CONFIG":
            assert var["value"] == f"{mount['mountPath']}/config.yaml"
            continue
        value = var.get("value")
        if value is None:
            value = field_refs[var["valueFrom"]["fieldRef"]["fieldPath"]]
        monkeypatch.setenv(var["name"], value)
    monkeypatch.delenv("MESHPILOT_CONFIG", raising=False)
    return load_settings(config_file)


def test_configmap_settings_load_and_agree_with_the_other_manifests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_manifests(tmp_path, monkeypatch)
    docs = render_base()
    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] + container["args"] == ["meshpilot", "serve", "--mesh", "k8s"]
    assert container["image"] == "meshpilot:latest"
    assert settings.mesh == "k8s" and settings.leader.enabled
    assert settings.leader.identity == "ai-controller-7d9f-abcde"
    assert settings.api.host == "0.0.0.0" and settings.api.port == 8080
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == settings.api.port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    service = by_kind(docs, "Service")[0]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    sa = by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
    assert pod["serviceAccountName"] == sa
    binding = by_kind(docs, "RoleBinding")[0]
    role = by_kind(docs, "Role")[0]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]
    lease_rules = [r for r in role["rules"] if "leases" in r["resources"]]
    assert any(settings.leader.lease_name in r.get("resourceNames", []) for r in lease_rules)
    assert settings.leader.lease_namespace == NS
    # The managed route exists in the example VirtualService, with subsets its DR defines.
    examples = example_docs()
    vs = by_kind(examples, "VirtualService")[0]
    dr = by_kind(examples, "DestinationRule")[0]
    (route,) = settings.routes
    assert (route.namespace, route.virtual_service) == (
        vs["metadata"]["namespace"],
        vs["metadata"]["name"],
    )
    http = next(h for h in vs["spec"]["http"] if h.get("name") == route.route)
    assert [d["destination"]["subset"] for d in http["route"]] == route.subsets
    assert {s["name"] for s in dr["spec"]["subsets"]} >= set(route.subsets or [])
    assert sum(d["weight"] for d in http["route"]) == 100


def test_service_account_with_manifest_rbac_drives_actuator_and_lease(
    lab: KubeLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from controller.adapters.istio.actuator import VirtualServiceActuator
    from controller.adapters.kube.lease import LeaseElector
    from meshcore import PermanentError, Weights

    if lab.request("GET", f"/api/v1/namespaces/{NS}")[0] != 200:
        namespace = by_kind(render_base(), "Namespace")[0]
        assert lab.request("POST", "/api/v1/namespaces", namespace)[0] == 201
    ensure_own_crds(lab)
    for doc in render_base() + example_docs():
        if doc["kind"] in ("Namespace", "Deployment", "CustomResourceDefinition"):
            continue
        status, body = lab.request("POST", resource_path(lab, doc), doc)
        assert status == 201, (key(doc), body)
    settings = settings_from_manifests(tmp_path, monkeypatch)
    (route_settings,) = settings.routes
    route = route_settings.ref()
    api = service_account_client(lab, NS, "meshpilot")
    act = VirtualServiceActuator(api_client=api)
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer reads from an informer cache
        try:
            before = act.current(route)
            break
        except PermanentError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert before.as_dict() == {"v1": 80, "v2": 15, "v3": 5}
    assert act.discover(route) == tuple(route_settings.subsets or ())
    assert act.apply(route, Weights(["v1", "v2", "v3"], [70, 20, 10])).as_dict() == {
        "v1": 70,
        "v2": 20,
        "v3": 10,
    }
    leader = settings.leader
    elector = LeaseElector(
        api_client=api,
        namespace=leader.lease_namespace,
        name=leader.lease_name,
        identity=leader.identity,
        lease_duration_s=leader.lease_duration_s,
    )
    assert elector.try_acquire_or_renew() and elector.is_leader(), elector.last_error
    assert elector.try_acquire_or_renew(), elector.last_error  # renew = update
    elector.release()
    # the example ManagedRoute: watched, names the ConfigMap's route, its status written
    from controller.adapters.kube.managed_routes import ManagedRouteWatch

    watcher = ManagedRouteWatch(NS, api_client=api)
    watcher.start()
    try:
        assert watcher.synced.wait(10), "the ServiceAccount cannot list+watch managedroutes"
        (managed,) = watcher.snapshot() or []
        assert managed.route == route and managed.error is None
        assert watcher.write_status(managed.name, {"phase": "pending"})
    finally:
        watcher.stop()


OTHER_NS = "lirmm-elsewhere"
"""A namespace the manifests grant nothing in."""


def ensure_exists(lab: KubeLab, doc: dict[str, Any]) -> None:
    status, body = lab.request("POST", resource_path(lab, doc), doc)
    assert status in (201, 409), (key(doc), body)


def ensure_own_crds(lab: KubeLab) -> list[dict[str, Any]]:
    """The base's CRDs (ManagedRoute), created for real if missing and served; returned."""
    crds = by_kind(render_base(), "CustomResourceDefinition")
    for crd in crds:
        ensure_exists(lab, crd)
        served = f"/apis/{crd['spec']['group']}/{crd['spec']['versions'][0]['name']}"
        deadline = time.monotonic() + 30
        while lab.request("GET", served)[0] != 200:
            assert time.monotonic() < deadline, f"{served} not served"
            time.sleep(0.2)
    return crds


def test_service_account_with_manifest_rbac_is_refused_everything_else(lab: KubeLab) -> None:
    """The negative half, each a 403 from the real apiserver's RBAC authorizer: no create or
    replace of a ManagedRoute (its spec.controls is merge-patched, never rewritten), no patch of
    a DestinationRule, no delete of a VirtualService (or a DestinationRule), no Secret read or
    list, and no VirtualService in another namespace (get, list, patch). The same account is
    first seen reading what the Role grants, so no 403 here comes from a binding the
    authorizer has not loaded yet."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    ensure_own_crds(lab)
    for doc in render_base() + example_docs():
        if doc["kind"] != "Deployment":
            ensure_exists(lab, doc)
    ensure_exists(
        lab,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "meshpilot-api-token", "namespace": NS},
            "stringData": {"token": "0123456789abcdef0123456789abcdef"},
        },
    )
    ensure_exists(lab, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}})
    elsewhere = copy.deepcopy(by_kind(example_docs(), "VirtualService")[0])
    elsewhere["metadata"]["namespace"] = OTHER_NS
    ensure_exists(lab, elsewhere)

    custom = client.CustomObjectsApi(service_account_client(lab, NS, "meshpilot"))
    core = client.CoreV1Api(custom.api_client)
    istio = ("networking.istio.io", "v1")
    deadline = time.monotonic() + 10
    while True:  # the RBAC authorizer reads from an informer cache
        try:
            custom.get_namespaced_custom_object(*istio, NS, "virtualservices", "reviews")
            custom.get_namespaced_custom_object(*istio, NS, "destinationrules", "reviews")
            break
        except ApiException as err:
            if err.status != 403 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)

    label = {"metadata": {"labels": {"meshpilot-test": "x"}}}
    mr = ("meshpilot.io", "v1alpha1", NS, "managedroutes", "reviews")
    refused = {
        "replace a ManagedRoute (its spec is patched, never rewritten)": lambda: (
            custom.replace_namespaced_custom_object(*mr, custom.get_namespaced_custom_object(*mr))
        ),
        "create a ManagedRoute": lambda: custom.create_namespaced_custom_object(
            *mr[:4],
            {
                "apiVersion": "meshpilot.io/v1alpha1",
                "kind": "ManagedRoute",
                "metadata": {"name": "made-by-meshpilot", "namespace": NS},
                "spec": {"virtualService": "reviews", "route": "primary"},
            },
        ),
        "delete a ManagedRoute": lambda: custom.delete_namespaced_custom_object(*mr),
        "patch a DestinationRule": lambda: custom.patch_namespaced_custom_object(
            *istio, NS, "destinationrules", "reviews", label
        ),
        "delete a VirtualService": lambda: custom.delete_namespaced_custom_object(
            *istio, NS, "virtualservices", "reviews"
        ),
        "delete a DestinationRule": lambda: custom.delete_namespaced_custom_object(
            *istio, NS, "destinationrules", "reviews"
        ),
        "read a Secret": lambda: core.read_namespaced_secret("meshpilot-api-token", NS),
        "list Secrets": lambda: core.list_namespaced_secret(NS),
        "get a VirtualService elsewhere": lambda: custom.get_namespaced_custom_object(
            *istio, OTHER_NS, "virtualservices", "reviews"
        ),
        "list VirtualServices elsewhere": lambda: custom.list_namespaced_custom_object(
            *istio, OTHER_NS, "virtualservices"
        ),
        "patch a VirtualService elsewhere": lambda: custom.patch_namespaced_custom_object(
            *istio, OTHER_NS, "virtualservices", "reviews", label
        ),
    }
    statuses = {}
    for what, call in refused.items():
        try:
            call()
            statuses[what] = 200
        except ApiException as err:
            statuses[what] = err.status
    assert statuses == dict.fromkeys(refused, 403)
    for doc in (by_kind(example_docs(), "DestinationRule")[0], elsewhere):
        path = f"{resource_path(lab, doc)}/{doc['metadata']['name']}"
        status, body = lab.request("GET", path)
        assert status == 200 and "meshpilot-test" not in body["metadata"].get("labels", {})


# -- kubectl kustomize of base and overlays, server-side dry run ------------------------------

OVERLAYS = ("base", "overlays/kind", "overlays/prod")


def kustomize(kubectl_bin: str, what: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl_bin, "kustomize", str(MANIFESTS / what)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def served_by(lab: KubeLab, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`docs` with a policy/v1 PodDisruptionBudget sent as policy/v1beta1 when the server has
    no policy/v1 (Kubernetes < 1.21: the lab's v1.20); the fields the overlays use
    (minAvailable, selector) are the same in both."""
    if lab.request("GET", "/apis/policy/v1")[0] == 200:
        return docs
    out = []
    for doc in docs:
        if doc["apiVersion"] == "policy/v1" and doc["kind"] == "PodDisruptionBudget":
            doc = dict(doc, apiVersion="policy/v1beta1")
        out.append(doc)
    return out


def ensure_namespace(lab: KubeLab) -> None:
    """A dry run cannot create the namespace its objects need: create it for real."""
    if lab.request("GET", f"/api/v1/namespaces/{NS}")[0] != 200:
        namespace = by_kind(render_base(), "Namespace")[0]
        status, body = lab.request("POST", "/api/v1/namespaces", namespace)
        assert status == 201, body


def server_dry_run(
    kubectl_bin: str, lab: KubeLab, docs: list[dict[str, Any]], tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    return subprocess.run(
        [
            kubectl_bin,
            "--kubeconfig",
            str(lab.kubeconfig("admin")),
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            str(manifest),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("what", OVERLAYS)
def test_kustomize_output_passes_a_server_side_dry_run(
    what: str, kubectl_bin: str, istio_crds: Path, lab: KubeLab, tmp_path: Path
) -> None:
    assert lab.crds_file == istio_crds
    ensure_namespace(lab)
    docs = served_by(lab, kustomize(kubectl_bin, what))
    result = server_dry_run(kubectl_bin, lab, docs, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(docs), result.stdout
    assert all(line.endswith("(server dry run)") for line in lines), result.stdout
    status, _ = lab.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/ai-controller")
    assert status == 404, "a dry run persisted the Deployment"


def test_server_dry_run_rejects_an_unknown_field(
    kubectl_bin: str, lab: KubeLab, tmp_path: Path
) -> None:
    """The dry run above means something: kubectl's schema check refuses a typo."""
    ensure_namespace(lab)
    docs = kustomize(kubectl_bin, "overlays/kind")
    deployment = copy.deepcopy(by_kind(docs, "Deployment")[0])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = container.pop("imagePullPolicy")
    result = server_dry_run(kubectl_bin, lab, [deployment], tmp_path)
    assert result.returncode != 0
    assert "imagePullPolicyy" in result.stderr, result.stderr


def test_examples_pass_a_server_side_dry_run_against_istio_crds(
    kubectl_bin: str, istio_crds: Path, lab: KubeLab, tmp_path: Path
) -> None:
    assert lab.crds_file == istio_crds
    ensure_namespace(lab)
    ensure_own_crds(lab)
    docs = example_docs()
    assert {d["kind"] for d in docs} == {"VirtualService", "DestinationRule", "ManagedRoute"}
    result = server_dry_run(kubectl_bin, lab, docs, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs), result.stdout

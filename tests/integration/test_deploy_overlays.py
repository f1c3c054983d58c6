"""What the kustomize overlays deploy, read from `kubectl kustomize` output (parsed YAML).

Cases:

* every rendering (base, overlays/kind, overlays/prod) runs the controller hardened: non-root
  uid 10001, read-only root filesystem, no privilege escalation, every capability dropped,
  seccomp RuntimeDefault, only emptyDirs (and read-only config/Secret mounts) writable;
  liveness on /healthz, readiness on /readyz, a startup probe; memory requested at least the
  measured ~110 MiB and limited to 512 Mi; the ``app``/``version`` labels Kiali reads (version
  = the package's version);
* the NetworkPolicy selects exactly the controller's Pods, admits only the API port and only
  from the peers docs/deploying.md names, and lets out only DNS, the kube-apiserver and the
  Prometheus the ConfigMap points at; the Grafana dashboard ConfigMap carries the sidecar label;
* overlays/kind: one replica, the image ``kind load`` puts on the nodes with
  ``imagePullPolicy: IfNotPresent``, the API token from the Secret, no PodDisruptionBudget;
* overlays/prod: two replicas, a PodDisruptionBudget over the Deployment's own Pods keeping one
  up, pod anti-affinity on hostname, an immutable image tag, no unavailable replica in a
  rollout, the same token Secret;
* the overlays change nothing else: the kind overlay's objects equal the base's but for the
  Deployment.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NS = "lirmm-services"
RENDERINGS = ("base", "overlays/kind", "overlays/prod")
MEASURED_MIB = 110  # README "Deploying": the image serving the sim mesh
TOKEN_SECRET = "meshpilot-api-token"


def kustomize(kubectl_bin: str, what: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [kubectl_bin, "kustomize", str(MANIFESTS / what)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi)", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    return float(match[1]) * units[match[2]]


def package_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@pytest.fixture(scope="module")
def rendered(kubectl_bin: str) -> dict[str, list[dict[str, Any]]]:
    return {what: kustomize(kubectl_bin, what) for what in RENDERINGS}


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = pod_spec(docs)["containers"]
    assert c["name"] == "ai-controller"
    return dict(c)


# -- every rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize("what", RENDERINGS)
def test_the_controller_runs_hardened(what: str, rendered: dict[str, Any]) -> None:
    docs = rendered[what]
    pod, c = pod_spec(docs), container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        volume = volumes[mount["name"]]
        writable = not mount.get("readOnly", False)
        assert not writable or "emptyDir" in volume, f"{mount} is writable and not an emptyDir"
        assert writable or "configMap" in volume or "secret" in volume, mount
    assert {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")} == {
        "/var/lib/meshpilot",
        "/tmp",
    }


@pytest.mark.parametrize("what", RENDERINGS)
def test_probes_resources_and_labels(what: str, rendered: dict[str, Any]) -> None:
    docs = rendered[what]
    c = container(docs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["timeoutSeconds"] >= 1
    resources = c["resources"]
    request, limit = (mebibytes(resources[k]["memory"]) for k in ("requests", "limits"))
    assert MEASURED_MIB <= request <= limit
    assert limit == 512
    assert resources["requests"]["cpu"] and resources["limits"]["cpu"]
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app"] == "ai-controller"
    assert labels["version"] == labels["app.kubernetes.io/version"] == package_version()
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert one(docs, "Service")["metadata"]["labels"]["app"] == "ai-controller"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
    assert annotations["prometheus.io/port"] == str(port)


def peers(rule: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(rule.get(key, []))


@pytest.mark.parametrize("what", RENDERINGS)
def test_network_policy_admits_only_the_named_peers(what: str, rendered: dict[str, Any]) -> None:
    docs = rendered[what]
    policy = one(docs, "NetworkPolicy")
    deployment = one(docs, "Deployment")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    api_port = next(p["containerPort"] for p in container(docs)["ports"] if p["name"] == "http")
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": api_port}]
    sources = peers(ingress, "from")
    assert {"podSelector": {"matchLabels": {"meshpilot.io/api-client": "true"}}} in sources
    istio_system = {"matchLabels": {"kubernetes.io/metadata.name": "istio-system"}}
    assert {
        "namespaceSelector": istio_system,
        "podSelector": {"matchLabels": {"istio": "ingressgateway"}},
    } in sources
    prometheus = {
        "namespaceSelector": istio_system,
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert prometheus in sources
    assert len(sources) == 3
    assert all(s.get("podSelector", {}).get("matchLabels") for s in sources), "no open selector"
    egress_ports = {(p["protocol"], p["port"]) for rule in spec["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 6443), ("TCP", 9090)}
    # The Prometheus the controller queries is the one egress admits.
    settings = yaml.safe_load(one_configmap(docs, "meshpilot-config")["data"]["config.yaml"])
    url = urlparse(settings["prometheus"]["url"])
    host = (url.hostname or "").split(".")
    assert host[:2] == ["prometheus", "istio-system"] and url.port == 9090
    to_prometheus = [r for r in spec["egress"] if prometheus in r.get("to", [])]
    assert to_prometheus and to_prometheus[0]["ports"] == [{"protocol": "TCP", "port": 9090}]


def one_configmap(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("what", RENDERINGS)
def test_grafana_dashboard_configmap_has_the_sidecar_label(
    what: str, rendered: dict[str, Any]
) -> None:
    cm = one_configmap(rendered[what], "meshpilot-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == NS
    assert list(cm["data"]) == ["meshpilot-controller.json"]


# -- overlays --------------------------------------------------------------------------------


def token_from_secret(docs: list[dict[str, Any]]) -> None:
    pod, c = pod_spec(docs), container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    token_file = Path(env["MESHPILOT_API__TOKEN_FILE"])
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(token_file.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == TOKEN_SECRET
    assert token_file.name == "token"  # the key scripts/ensure-api-token.sh writes
    assert volume["secret"]["defaultMode"] == 0o440  # owner root, group fsGroup 10001
    assert pod["securityContext"]["fsGroup"] == 10001


def test_kind_overlay_runs_one_replica_of_the_loaded_image(rendered: dict[str, Any]) -> None:
    docs = rendered["overlays/kind"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    c = container(docs)
    assert c["image"] == "meshpilot:latest"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    token_from_secret(docs)


def test_kind_overlay_changes_only_the_deployment(rendered: dict[str, Any]) -> None:
    def by_key(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    base, kind = by_key(rendered["base"]), by_key(rendered["overlays/kind"])
    assert base.keys() == kind.keys()
    changed = {k for k in base if base[k] != kind[k]}
    assert changed == {("Deployment", "ai-controller")}


def test_prod_overlay_runs_two_spread_replicas_with_a_disruption_budget(
    rendered: dict[str, Any],
) -> None:
    docs = rendered["overlays/prod"]
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["metadata"]["namespace"] == NS
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    anti = pod_spec(docs)["affinity"]["podAntiAffinity"]
    terms = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    hostname = [t for t in terms if t["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"]
    assert hostname and hostname[0]["weight"] == 100
    assert (
        hostname[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == spec["selector"]["matchLabels"]
    )
    c = container(docs)
    image, _, tag = c["image"].rpartition(":")
    assert image.endswith("meshpilot") and tag and tag != "latest"
    assert c["imagePullPolicy"] == "IfNotPresent"
    token_from_secret(docs)


def test_base_runs_one_replica_with_its_own_token(rendered: dict[str, Any]) -> None:
    docs = rendered["base"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    env = {e["name"] for e in container(docs)["env"]}
    assert "MESHPILOT_API__TOKEN_FILE" not in env  # the ConfigMap's per-Pod token file

"""scripts/ and the Jenkinsfile: static checks, and the Kind scripts run against a fake cluster.

kind and istioctl are not installed on CI machines and no Kind cluster can run here, so the
scripts are never run against a real cluster (docs/deploying.md says so). What is checked:

* every script passes ``bash -n`` and ``shellcheck`` (Debian's, installed by
  ``.ci/system-deps.sh``); each answers ``--help`` with exit 0; a missing kind, kubectl or
  docker is one clear error naming each missing tool;
* against fakes of kind, kubectl, docker and istioctl (one small Python program keeping a
  cluster's state in a JSON file; ``kubectl kustomize`` is the real one, so the fake applies
  exactly what the overlay renders):
  - on the platform's existing cluster (Istio and addons installed, the namespace already
    holding a platform workload): kind-deploy.sh creates nothing cluster-wide, builds and
    ``kind load``s meshpilot:latest, labels the namespace, creates the token Secret, applies
    manifests/overlays/kind, waits for the rollout and loads the alert rules; a second run
    redeploys (rollout restart); kind-down.sh then leaves the cluster exactly as it was before
    (objects, labels, annotations, ConfigMap data, images), and never deletes the cluster;
  - without a cluster: kind-deploy.sh makes one the platform's way (Kind config mapping
    NodePort 30000 to host port 13000, ``istioctl install --set profile=demo -y``, the
    samples/addons, the ingress NodePort) and kind-down.sh deletes that cluster;
  - kind-down.sh without a state file removes nothing;
* the Jenkinsfile: agent label ``wsl``, the stages in order (build, ``kind load
  docker-image``, ``kubectl apply -k manifests/overlays/kind``, ``rollout status``), the
  ``post { failure { ... kubectl get pods -o wide ... } }`` block, every ``sh`` step valid bash,
  the same image, cluster and Secret as the overlay and the scripts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import require_binary

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
DEPLOY = SCRIPTS / "kind-deploy.sh"
DOWN = SCRIPTS / "kind-down.sh"
JENKINSFILE = ROOT / "Jenkinsfile"
CLUSTER = "lirmm-dev-cluster"
NS = "lirmm-services"
ALL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))


# -- static -------------------------------------------------------------------------------------


def test_there_are_scripts() -> None:
    names = {p.name for p in ALL_SCRIPTS}
    assert {"kind-deploy.sh", "kind-down.sh", "ensure-api-token.sh"} <= names


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_bash_n(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = require_binary("shellcheck")
    result = subprocess.run(
        [shellcheck, "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_strict_mode_and_executable(script: Path) -> None:
    text = script.read_text()
    if script.name == "kind-common.sh":  # sourced, not run
        assert "shell=bash" in text.splitlines()[0]
        return
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize("name", ["kind-deploy.sh", "kind-down.sh", "ensure-api-token.sh"])
def test_help_exits_0(name: str) -> None:
    result = subprocess.run(
        [str(SCRIPTS / name), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: scripts/{name}")


BASIC_TOOLS = (
    *("bash", "env", "dirname", "basename", "cat", "grep", "mktemp", "rm", "mkdir", "tail"),
    *("cut", "mv", "readlink", "sed", "tr", "od", "seq", "sleep", "head"),
)


def minimal_path(tmp_path: Path) -> str:
    """A PATH with the basic tools the scripts use, and no kind, kubectl, docker, istioctl."""
    bin_dir = tmp_path / "minbin"
    bin_dir.mkdir()
    for tool in BASIC_TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_missing_tools_are_named_in_one_clear_error(tmp_path: Path) -> None:
    env = {"PATH": minimal_path(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(DEPLOY)], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("kind-deploy.sh: error: missing on PATH: kind kubectl docker")
    result = subprocess.run(
        [str(SCRIPTS / "ensure-api-token.sh")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1 and "missing on PATH: kubectl" in result.stderr


def test_unknown_option_is_refused() -> None:
    result = subprocess.run([str(DEPLOY), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr


# -- a fake cluster -------------------------------------------------------------------------------

FAKE = r'''
"""Fake kind / kubectl / docker / istioctl over a JSON cluster state (see test_scripts.py)."""
import json, os, re, subprocess, sys
from pathlib import Path

STATE = Path(os.environ["FAKE_STATE"])
tool = Path(sys.argv[0]).name
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([tool, *args]) + "\n")
s = json.loads(STATE.read_text())


def save():
    STATE.write_text(json.dumps(s, indent=1, sort_keys=True))


def fail(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)


def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default


def cluster():
    return s["clusters"].get(s["current"]) if s.get("current") else None


def name_of(doc):
    group = doc["apiVersion"].rpartition("/")[0]
    kind = doc["kind"].lower() + ("." + group if group else "")
    return kind + "/" + doc["metadata"]["name"]


if tool == "kind":
    if args[:2] == ["get", "clusters"]:
        print("\n".join(s["clusters"]))
    elif args[:2] == ["get", "nodes"]:
        print(opt("--name") + "-control-plane")
    elif args[:2] == ["create", "cluster"]:
        s["kind_config"] = Path(opt("--config")).read_text()
        s["clusters"][opt("--name")] = {"objects": {}, "images": []}
        s["current"] = opt("--name")
    elif args[:2] == ["delete", "cluster"]:
        del s["clusters"][opt("--name")]
    elif args[:2] == ["load", "docker-image"]:
        assert args[2] in s["docker_images"], args
        s["clusters"][opt("--name")]["images"].append(args[2])
    else:
        fail(f"fake kind: {args}")
    save()
    sys.exit(0)

if tool == "docker":
    if args[0] == "build":
        assert Path(args[-1]).joinpath("Dockerfile").is_file()
        s["docker_images"].append(opt("-t"))
    elif args[:2] == ["image", "inspect"]:
        sys.exit(0 if args[2] in s["docker_images"] else 1)
    elif args[0] == "exec" and args[2:4] == ["crictl", "inspecti"]:
        sys.exit(1)
    elif args[0] == "exec" and args[2:4] == ["crictl", "rmi"]:
        images = cluster()["images"]
        ref = args[4].removeprefix("docker.io/library/")
        cluster()["images"] = [i for i in images if i != ref]
    else:
        fail(f"fake docker: {args}")
    save()
    sys.exit(0)

if tool == "istioctl":
    c = s["clusters"][opt("--context").removeprefix("kind-")]
    if args[0] == "install":
        assert "profile=demo" in args and "-y" in args, args
        c["objects"]["|namespace/istio-system"] = {}
        c["objects"]["istio-system|deployment.apps/istiod"] = {}
        c["objects"]["istio-system|service/istio-ingressgateway"] = {}
    elif args[0] == "uninstall":
        c["objects"] = {k: v for k, v in c["objects"].items() if "istio" not in k}
    save()
    sys.exit(0)

# kubectl
assert args[0] == "--context", args
context, args = args[1], args[2:]
c = s["clusters"].get(context.removeprefix("kind-"))
if c is None:
    fail(f"context {context} does not exist")
objects = c["objects"]
ns = opt("-n", "")
if "-n" in args:
    i = args.index("-n")
    args = args[:i] + args[i + 2:]
KINDS = {"deployment": "deployment.apps", "service": "service", "secret": "secret",
         "lease": "lease.coordination.k8s.io", "configmap": "configmap",
         "namespace": "namespace"}


def key(kind_name, namespace):
    kind, _, name = kind_name.partition("/")
    kind = KINDS.get(kind, kind)
    return ("" if kind == "namespace" else namespace) + "|" + kind + "/" + name


def kustomize(path):
    real = os.environ["REAL_KUBECTL"]
    out = subprocess.run([real, "kustomize", path], check=True, capture_output=True,
                         text=True).stdout
    import yaml
    return [d for d in yaml.safe_load_all(out) if d]


def jsonpath(obj, expr):
    m = re.fullmatch(r"\{\.(metadata\.labels|metadata\.annotations|data)\.(.+)\}", expr)
    section, field = m[1], m[2].replace("\\.", ".")
    node = obj
    for part in section.split("."):
        node = node.get(part, {})
    return node.get(field, "")


verb = args[0]
if verb == "cluster-info":
    pass
elif verb == "get" and args[1] == "-k":
    wanted = {d.get("metadata", {}).get("namespace", "") + "|" + name_of(d)
              for d in kustomize(args[2])}
    for k in sorted(wanted):
        if k in objects:
            print(k.split("|", 1)[1])
        elif "--ignore-not-found" not in args:
            fail(f"not found: {k}")
elif verb == "get":
    kind_name = args[1] + "/" + args[2]
    k = key(kind_name, ns)
    if k not in objects:
        fail(f'Error from server (NotFound): {kind_name} not found')
    expr = opt("-o", "")
    if expr.startswith("jsonpath="):
        print(jsonpath(objects[k], expr.removeprefix("jsonpath=")), end="")
elif verb == "apply" and args[1] == "-k":
    for d in kustomize(args[2]):
        namespace = d["metadata"].get("namespace", "")
        k = ("" if d["kind"] == "Namespace" else namespace) + "|" + name_of(d)
        obj = objects.setdefault(k, {})
        meta = obj.setdefault("metadata", {})
        meta.setdefault("labels", {}).update(d["metadata"].get("labels", {}))
        meta.setdefault("annotations", {})[
            "kubectl.kubernetes.io/last-applied-configuration"] = "{}"
        if "data" in d:
            obj["data"] = d["data"]
        print(k.split("|", 1)[1] + " configured")
elif verb == "apply" and args[1] == "-f":
    addon = Path(args[2]).stem
    objects[f"istio-system|deployment.apps/{addon}"] = {}
    if addon == "prometheus":
        objects["istio-system|configmap/prometheus"] = {"data": {"alerts": "{}\n"}}
elif verb == "delete" and args[1] == "-f":
    addon = Path(args[2]).stem
    objects.pop(f"istio-system|deployment.apps/{addon}", None)
    if addon == "prometheus":
        objects.pop("istio-system|configmap/prometheus", None)
elif verb == "delete":
    target = args[1] if "/" in args[1] else args[1] + "/" + args[2]
    k = key(target, ns)
    if k.startswith("|namespace/"):
        name = k.split("/", 1)[1]
        for other in [o for o in objects if o.startswith(name + "|")]:
            del objects[other]
    if k not in objects and "--ignore-not-found" not in args:
        fail(f"not found: {k}")
    objects.pop(k, None)
elif verb == "create" and args[1] == "namespace":
    objects["|namespace/" + args[2]] = {"metadata": {"labels": {}, "annotations": {}}}
elif verb == "create" and args[1:3] == ["secret", "generic"]:
    source = next(a for a in args if a.startswith("--from-file="))
    field, _, path = source.removeprefix("--from-file=").partition("=")
    token = Path(path).read_text()
    assert field == "token" and re.fullmatch(r"[0-9a-f]{64}", token), token
    objects[key("secret/" + args[3], ns)] = {"metadata": {"labels": {}}, "token": token}
elif verb in ("label", "annotate"):
    obj = objects[key(args[1] + "/" + args[2], ns)]
    section = obj.setdefault("metadata", {}).setdefault(
        "labels" if verb == "label" else "annotations", {})
    for change in args[3:]:
        if change.startswith("--"):
            continue
        if change.endswith("-"):
            section.pop(change[:-1], None)
        else:
            k, _, v = change.partition("=")
            section[k] = v
elif verb == "patch":
    obj = objects[key(args[1] + "/" + args[2], ns)]
    if opt("--patch-file"):
        import yaml
        patch = yaml.safe_load(Path(opt("--patch-file")).read_text())
        obj.setdefault("data", {}).update(patch["data"])
    else:
        obj["patched"] = opt("-p")
elif verb == "rollout":
    k = key(args[2], ns)
    if k not in objects:
        fail(f"not found: {k}")
    if args[1] == "restart":
        objects[k]["restarts"] = objects[k].get("restarts", 0) + 1
else:
    fail(f"fake kubectl: {args}")
save()
'''


class FakeCluster:
    """The fakes on PATH, their state file and their call log."""

    def __init__(self, tmp_path: Path, kubectl_bin: str, state: dict[str, Any]) -> None:
        self.dir = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        fake = tmp_path / "fake.py"
        fake.write_text(f"#!{sys.executable}\n{FAKE}")
        fake.chmod(0o755)
        for tool in ("kind", "kubectl", "docker", "istioctl"):
            (self.bin / tool).symlink_to(fake)
        self.state_file = tmp_path / "cluster.json"
        self.state_file.write_text(json.dumps(state))
        self.log = tmp_path / "calls.log"
        self.log.write_text("")
        self.deploy_state = tmp_path / "kind.state"
        self.env = {
            "PATH": f"{self.bin}:{minimal_path(tmp_path)}",
            "HOME": str(tmp_path),
            "FAKE_STATE": str(self.state_file),
            "FAKE_LOG": str(self.log),
            "REAL_KUBECTL": kubectl_bin,
            "PYTHONPATH": os.pathsep.join(sys.path),
        }

    def run(self, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(script), "--state-file", str(self.deploy_state), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )

    @property
    def state(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.state_file.read_text())
        return parsed

    def calls(self, tool: str | None = None) -> list[list[str]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in lines if tool is None or c[0] == tool]

    def called(self, *words: str) -> bool:
        return any(all(w in call for w in words) for call in self.calls())


def platform_cluster() -> dict[str, Any]:
    """The platform's cluster as setup-kind.sh leaves it, plus one workload of its own."""
    objects = {
        "|namespace/istio-system": {},
        "istio-system|deployment.apps/istiod": {},
        "istio-system|service/istio-ingressgateway": {},
        "istio-system|deployment.apps/prometheus": {},
        "istio-system|deployment.apps/grafana": {},
        "istio-system|deployment.apps/kiali": {},
        "istio-system|configmap/prometheus": {"data": {"alerts": "{}\n"}},
        f"|namespace/{NS}": {"metadata": {"labels": {"team": "lirmm"}, "annotations": {}}},
        f"{NS}|deployment.apps/catalogue": {},
    }
    return {
        "clusters": {CLUSTER: {"objects": objects, "images": ["catalogue:1"]}},
        "current": CLUSTER,
        "docker_images": [],
    }


@pytest.fixture
def platform(tmp_path: Path, kubectl_bin: str) -> FakeCluster:
    return FakeCluster(tmp_path, kubectl_bin, platform_cluster())


def test_deploy_on_the_platform_cluster_then_down_restores_it_exactly(
    platform: FakeCluster,
) -> None:
    before = platform.state["clusters"][CLUSTER]
    result = platform.run(DEPLOY)
    assert result.returncode == 0, result.stderr
    after = platform.state["clusters"][CLUSTER]
    assert not platform.called("kind", "create") and not platform.calls("istioctl")
    assert platform.called("docker", "build", "--target", "serve", "meshpilot:latest", str(ROOT))
    assert platform.called("kind", "load", "docker-image", "meshpilot:latest", "--name", CLUSTER)
    assert "meshpilot:latest" in after["images"]
    kubectl = platform.calls("kubectl")
    assert all(call[1:3] == ["--context", f"kind-{CLUSTER}"] for call in kubectl)
    assert platform.called("apply", "-k", str(ROOT / "manifests" / "overlays" / "kind"))
    assert platform.called("rollout", "status", "deployment/ai-controller")
    objects = after["objects"]
    namespace = objects[f"|namespace/{NS}"]["metadata"]
    assert namespace["labels"] == {"team": "lirmm", "istio-injection": "enabled"}
    assert f"{NS}|secret/meshpilot-api-token" in objects
    assert f"{NS}|deployment.apps/ai-controller" in objects
    assert f"{NS}|networkpolicy.networking.k8s.io/ai-controller" in objects
    alerts = objects["istio-system|configmap/prometheus"]["data"]["alerts"]
    shipped = (ROOT / "manifests" / "prometheus" / "meshpilot-alerts.yaml").read_text()
    assert yaml.safe_load(alerts) == yaml.safe_load(shipped)
    assert "kubectl --context kind-lirmm-dev-cluster -n lirmm-services port-forward" in (
        result.stdout
    )
    assert "get secret meshpilot-api-token" in result.stdout
    assert "kind-down.sh" in result.stdout
    state = platform.deploy_state.read_text()
    assert "CLUSTER_CREATED" not in state and "NAMESPACE_CREATED" not in state

    # Redeploy: same tag, new image, so the Pods restart; nothing new is recorded as ours.
    result = platform.run(DEPLOY, "--skip-build")
    assert result.returncode == 0, result.stderr
    assert platform.called("rollout", "restart", "deployment/ai-controller")
    assert "NAMESPACE_LABEL_BEFORE=<none>" in platform.deploy_state.read_text()

    result = platform.run(DOWN)
    assert result.returncode == 0, result.stderr
    assert not platform.called("kind", "delete")
    assert platform.state["clusters"][CLUSTER] == before
    assert not platform.deploy_state.exists()


def test_deploy_makes_a_cluster_the_platforms_way_and_down_deletes_it(
    tmp_path: Path, kubectl_bin: str
) -> None:
    fake = FakeCluster(tmp_path, kubectl_bin, {"clusters": {}, "docker_images": []})
    addons = tmp_path / "istio-1.30.3" / "samples" / "addons"
    addons.mkdir(parents=True)
    for addon in ("prometheus", "grafana", "kiali"):
        (addons / f"{addon}.yaml").write_text("# fake\n")
    result = fake.run(DEPLOY, "--istio-dir", str(addons.parents[1]))
    assert result.returncode == 0, result.stderr
    assert fake.called("kind", "create", "cluster", "--name", CLUSTER)
    config = yaml.safe_load(fake.state["kind_config"])
    (node,) = config["nodes"]
    assert {"containerPort": 30000, "hostPort": 13000, "protocol": "TCP"} in node[
        "extraPortMappings"
    ]
    assert fake.called("istioctl", "install", "--set", "profile=demo", "-y")
    for addon in ("prometheus", "grafana", "kiali"):
        assert fake.called("kubectl", "apply", "-f", str(addons / f"{addon}.yaml"))
    patches = [c for c in fake.calls("kubectl") if "patch" in c and "istio-ingressgateway" in c]
    assert patches and '"nodePort":30000' in patches[0][-1]
    assert "CLUSTER_CREATED=1" in fake.deploy_state.read_text()

    result = fake.run(DOWN)
    assert result.returncode == 0, result.stderr
    assert fake.calls("kind")[-1] == ["kind", "delete", "cluster", "--name", CLUSTER]
    assert fake.state["clusters"] == {}
    assert not fake.deploy_state.exists()


def test_down_without_a_state_file_removes_nothing(platform: FakeCluster) -> None:
    before = platform.state
    result = platform.run(DOWN)
    assert result.returncode == 0, result.stderr
    assert "nothing to remove" in result.stderr
    assert platform.calls() == [] and platform.state == before


def test_down_refuses_a_state_file_of_another_cluster(platform: FakeCluster) -> None:
    platform.deploy_state.write_text("CLUSTER=other\nCLUSTER_CREATED=1\n")
    result = platform.run(DOWN)
    assert result.returncode == 1 and "records cluster 'other'" in result.stderr
    assert platform.calls() == []


def test_deploy_without_istioctl_on_a_cluster_without_istio_says_so(
    tmp_path: Path, kubectl_bin: str
) -> None:
    state = platform_cluster()
    objects = state["clusters"][CLUSTER]["objects"]
    state["clusters"][CLUSTER]["objects"] = {k: v for k, v in objects.items() if "istio" not in k}
    fake = FakeCluster(tmp_path, kubectl_bin, state)
    (fake.bin / "istioctl").unlink()
    result = fake.run(DEPLOY)
    assert result.returncode == 1
    assert "missing on PATH: istioctl" in result.stderr
    assert not fake.called("apply")


# -- Jenkinsfile --------------------------------------------------------------------------------


def jenkins_sh_steps(text: str) -> list[str]:
    return re.findall(r"\bsh '([^']*)'", text)


def test_jenkinsfile_is_the_platform_pipeline() -> None:
    text = JENKINSFILE.read_text()
    assert re.search(r"agent\s*\{\s*label 'wsl'\s*\}", text)
    stages = re.findall(r"stage\('([^']+)'\)", text)
    assert stages == ["Build image", "Load into Kind", "Deploy", "Rollout"]
    steps = jenkins_sh_steps(text)
    order = [
        'docker build --target serve -t "$IMAGE" .',
        'kind load docker-image "$IMAGE" --name "$KIND_CLUSTER"',
        "apply -k manifests/overlays/kind",
        "rollout status deployment/ai-controller",
    ]
    positions = [next(i for i, s in enumerate(steps) if wanted in s) for wanted in order]
    assert positions == sorted(positions)
    post = re.search(r"post\s*\{\s*failure\s*\{\s*sh '([^']*)'\s*\}\s*\}", text)
    assert post and post[1] == "kubectl get pods -o wide -n lirmm-services"
    env = dict(re.findall(r"(\w+) = '([^']*)'", text))
    assert env["KIND_CLUSTER"] == CLUSTER and env["KUBE_CONTEXT"] == f"kind-{CLUSTER}"
    assert env["NAMESPACE"] == NS
    overlay = yaml.safe_load(
        (ROOT / "manifests" / "overlays" / "kind" / "deployment-patch.yaml").read_text()
    )
    (container,) = overlay["spec"]["template"]["spec"]["containers"]
    assert env["IMAGE"] == container["image"]
    common = (SCRIPTS / "kind-common.sh").read_text()
    assert f'IMAGE_DEFAULT="{env["IMAGE"]}"' in common
    assert f'CLUSTER_DEFAULT="{CLUSTER}"' in common
    (volume,) = [v for v in overlay["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert f'TOKEN_SECRET="{volume["secret"]["secretName"]}"' in common
    assert any("scripts/ensure-api-token.sh" in s for s in steps)
    for path in ("manifests/overlays/kind", "manifests/base/namespace.yaml"):
        assert (ROOT / path).exists()


@pytest.mark.parametrize("step", jenkins_sh_steps(JENKINSFILE.read_text()))
def test_jenkinsfile_sh_steps_are_valid_bash(step: str) -> None:
    result = subprocess.run(["bash", "-n", "-c", step], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

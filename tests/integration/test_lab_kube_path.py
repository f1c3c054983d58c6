"""The closed loop through the production write path: kube-apiserver, bridge, Envoy, Prometheus.

As in test_lab_closed_loop.py, one lab runs two identical services under the same Poisson
load and faults: `shop` is controlled, `shop-static` keeps its start split. Here the
controller is `meshpilot serve --mesh k8s` (shipped policy, supervisor, guard, 5 s tick): its
`VirtualServiceActuator` patches the VirtualService `shop` on a real kube-apiserver (with
Istio's CRDs and a DestinationRule), and `meshpilot lab bridge` — istiod's part, weights
only — copies that VirtualService's weights onto Envoy's route file. Prometheus scrapes Envoy
as before. Cases, in one run:

- 30 % 5xx on v2 of both services: the VirtualService's v2 weight, read from the API server,
  is at most 5 within 30 s;
- Envoy's route file follows the VirtualService (and Envoy runs it), and `shop-static`,
  whose VirtualService nobody writes, keeps its start split there;
- the controlled service's client-side bad fraction over the run is lower than the static
  one's (both printed);
- afterwards nothing is left running: serve and the bridge exit, `lab down` stops the lab
  (`running_lab` checks), and nothing answers on the API server's or etcd's port.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from controller.adapters.envoy import EnvoyRouteActuator
from envs.lab.lab import LabState
from envs.lab.load_result import LoadResult
from envs.lab.spec import parse_lab
from envs.lab.traffic import apply_fault
from meshcore import RouteRef
from tests.helpers import tail
from tests.integration.kube_lab import KubeLab, destination_rule, virtual_service
from tests.integration.kube_lab import running_lab as running_kube
from tests.integration.lab_run import (
    FAULT_S,
    SHED_WITHIN_S,
    SHOP,
    TWINS,
    ServedController,
    child_env,
    running_lab,
    start_load,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(360)]

SPEC = parse_lab(TWINS, source="test")
NS = SPEC.namespace
SERVICES = ("shop", "shop-static")
VS_PATH = "/apis/networking.istio.io/v1/namespaces/{ns}/virtualservices/{name}"


def _created(kube: KubeLab, path: str, body: dict[str, Any]) -> None:
    status, answer = kube.request("POST", path, body)
    assert status == 201, (path, status, answer)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeLab]:
    """A kube-apiserver holding, for each lab service, a DestinationRule and a VirtualService
    whose http route ``default`` is at the lab's start weights."""
    started = running_kube()
    kl = next(started)
    ports = (kl.port, kl.etcd_port)
    try:
        _created(kl, "/api/v1/namespaces", {"metadata": {"name": NS}})
        for name in SERVICES:
            svc = SPEC.service(name)
            crds = f"/apis/networking.istio.io/v1/namespaces/{NS}"
            dr = destination_rule(name, NS, name, svc.subset_names)
            _created(kl, f"{crds}/destinationrules", dr)
            split = list(svc.start_weights().items())
            _created(
                kl, f"{crds}/virtualservices", virtual_service(name, NS, name, split, "default")
            )
        yield kl
    finally:
        for _ in started:  # resumes it past its yield: KubeLab.stop
            pass
        for port in ports:
            with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1.0):
                pass


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    with running_lab(TWINS, tmp_path_factory.mktemp("lab")) as state:
        yield state


@pytest.fixture(scope="module")
def bridge(
    kube: KubeLab, lab: LabState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[subprocess.Popen[bytes]]:
    """`meshpilot lab bridge` as a process; on exit it must stop on SIGTERM with a summary."""
    work = tmp_path_factory.mktemp("bridge")
    out, log = work / "bridge.out", work / "bridge.log"
    cmd = [
        sys.executable,
        "-m",
        "meshpilot.cli",
        "lab",
        "bridge",
        "--kubeconfig",
        str(kube.kubeconfig("admin")),
        "--state-dir",
        str(lab.state_dir),
        "--interval",
        "0.5",
    ]
    with open(out, "wb") as stdout, open(log, "wb") as stderr:
        proc = subprocess.Popen(
            cmd, stdout=stdout, stderr=stderr, env=child_env({}), cwd=work, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"bridge exited {proc.returncode}:\n{tail(log)}"
    summary = json.loads(out.read_text())
    print("bridge:", summary)
    assert summary["copies"] >= 1, summary


@pytest.fixture(scope="module")
def served(
    kube: KubeLab, lab: LabState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedController]:
    work = tmp_path_factory.mktemp("serve")
    shop = SPEC.service("shop")
    settings = {
        "routes": [
            {
                "virtual_service": "shop",
                "route": "default",
                "capacity_rps": {s.name: s.capacity_rps for s in shop.subsets},
            }
        ],
        "prometheus": {"url": lab.prometheus_url, "window_s": 10},
        "kube": {"kubeconfig": str(kube.kubeconfig("admin"))},
        "leader": {"enabled": False},
        "api": {"auth": "token"},
        "tick_s": 5,
    }
    config = work / "settings.yaml"
    config.write_text(json.dumps(settings, indent=2))  # JSON is YAML
    controller = ServedController(
        lab.state_dir, work, mesh_args=("--mesh", "k8s"), args=("--config", str(config))
    )
    try:
        controller.wait_for("the first decision", lambda: controller.route(SHOP)["weights"], 60)
        yield controller
    finally:
        controller.stop()
    assert controller.proc.returncode == 0, tail(controller.log)


def _vs_weights(kube: KubeLab, name: str) -> dict[str, int]:
    """The weights of the VirtualService's http route ``default``, read from the API server."""
    status, obj = kube.request("GET", VS_PATH.format(ns=NS, name=name))
    assert status == 200, (status, obj)
    (http,) = [h for h in obj["spec"]["http"] if h.get("name") == "default"]
    return {d["destination"]["subset"]: int(d["weight"]) for d in http["route"]}


def _route(name: str) -> RouteRef:
    return SPEC.service(name).route(NS)


def _envoy_follows(kube: KubeLab, envoy: EnvoyRouteActuator, timeout_s: float) -> dict[str, int]:
    """Wait until Envoy's route file holds the VirtualService's weights for `shop` and Envoy
    runs that file's version; returns those weights."""
    deadline = time.monotonic() + timeout_s
    while True:
        wanted = _vs_weights(kube, "shop")
        have = envoy.current(_route("shop")).as_dict()
        version = json.loads(envoy.routes_file.read_text())["version_info"]
        running = envoy.applied_version()
        if have == wanted and running is not None and running >= int(version):
            return have
        assert time.monotonic() < deadline, (
            f"Envoy's route file {have} (version {version}, Envoy runs {running}) did not "
            f"follow the VirtualService {wanted} within {timeout_s} s"
        )
        time.sleep(0.2)


def test_the_closed_loop_through_the_kube_apiserver_path(
    kube: KubeLab, lab: LabState, bridge: subprocess.Popen[bytes], served: ServedController
) -> None:
    envoy = EnvoyRouteActuator(lab.routes_file, lab.admin_url)
    start_static = SPEC.service("shop-static").start_weights()
    controlled, static = start_load(lab, "shop", 1), start_load(lab, "shop-static", 2)
    results: list[LoadResult] = []
    try:
        time.sleep(10.0)
        faults = {"error_rate": 0.3}
        before = {svc: apply_fault(lab, svc, "v2", faults) for svc in SERVICES}
        start = time.monotonic()
        served.wait_for(
            "the VirtualService's v2 weight <= 5 after 30 % 5xx on v2",
            lambda: _vs_weights(kube, "shop")["v2"] <= 5,
            SHED_WITHIN_S,
        )
        shed_s = time.monotonic() - start
        shed = _envoy_follows(kube, envoy, 10.0)
        time.sleep(max(FAULT_S - (time.monotonic() - start), 0.0))
        for svc, old in before.items():
            apply_fault(lab, svc, "v2", old)
        final = _envoy_follows(kube, envoy, 10.0)
    finally:
        results = [controlled.stop(), static.stop()]
    assert bridge.poll() is None, "the bridge must keep running"
    bad_controlled = results[0].bad_fraction(SPEC.slo_ms)
    bad_static = results[1].bad_fraction(SPEC.slo_ms)
    print(
        f"\n[kube path] v2 shed to <= 5 on the API server in {shed_s:.0f} s (Envoy {shed}, "
        f"at the end {final}); bad fraction served {bad_controlled:.4f} vs static split "
        f"{bad_static:.4f} ({results[0].achieved_rps:.0f} / {results[1].achieved_rps:.0f} rps)"
    )
    assert envoy.current(_route("shop-static")).as_dict() == start_static
    assert _vs_weights(kube, "shop-static") == start_static
    assert bad_controlled < bad_static

"""The served controller closes the loop on the lab: real Envoy, backends and Prometheus.

One lab runs two identical services under the same Poisson load and the same faults: `shop`
is controlled by `meshpilot serve --mesh lab` (shipped policy, supervisor and guard, default
settings, 5 s tick), `shop-static` keeps its capacity-proportional split. So the static run
is the same schedule, at the same time, on the same machine. Cases:

- 30 % 5xx on v2: its weight is at most 5 within 30 s, the controlled service's bad fraction
  over the fault and recovery is lower than the static one's (both printed), and once the
  fault is gone traffic returns to v2;
- v2 five times slower: the same;
- the split Prometheus measures follows the written weights within 5 points one rate window
  after a write (the verify step, with ``verify.tolerance_points`` 5, says ok);
- Envoy killed mid-run: `lab status` names it, the controller holds on stale data and says
  so; then Prometheus: the route is degraded with the reason; the controller keeps serving.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from envs.lab.lab import LabState, lab_status
from envs.lab.load_result import LoadResult
from envs.lab.traffic import apply_fault
from tests.integration.lab_run import (
    FAULT_S,
    SHED_WITHIN_S,
    SHOP,
    TWINS,
    ServedController,
    running_lab,
    start_load,
)

pytestmark = pytest.mark.timeout(600)

RETURN_WITHIN_S = 200.0
"""The planner, in control after the fallback, gives a version it shed for a fault a probe
after 2 min without traffic (`PlannerPolicy.probe_s`); the probe's healthy answers then bring
the traffic back."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    with running_lab(TWINS, tmp_path_factory.mktemp("lab")) as state:
        yield state


@pytest.fixture(scope="module")
def served(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedController]:
    work = tmp_path_factory.mktemp("serve")
    (work / "routes.yaml").write_text(
        "routes:\n  - {virtual_service: shop, route: default}\nverify:\n  tolerance_points: 5\n"
    )
    controller = ServedController(
        lab.state_dir, work, args=("--config", str(work / "routes.yaml"), "--tick-s", "5")
    )
    try:
        controller.wait_for("the first decision", lambda: controller.route(SHOP)["weights"], 60)
        yield controller
    finally:
        controller.stop()


def _weight(served: ServedController, subset: str) -> int:
    return int(served.route(SHOP)["weights"][subset])


def _operator(served: ServedController) -> dict[str, str]:
    token = (served.log.parent / "token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _start_from_the_static_split(served: ServedController, lab: LabState) -> None:
    """Pin the route to the static service's split until written, then hand it back: every
    fault starts from the same split on both services."""
    split = lab.spec.service("shop-static").start_weights()
    pin = {"weights": split, "ttl_s": 60, "reason": "closed-loop test: common start"}
    answer = served.client.post(f"/routes/{SHOP}/override", json=pin, headers=_operator(served))
    assert answer.status_code == 200, answer.text
    served.wait_for("the pinned start split", lambda: served.route(SHOP)["weights"] == split, 30)
    release = {"reason": "closed-loop test: fault starts"}
    answer = served.client.request(
        "DELETE", f"/routes/{SHOP}/override", json=release, headers=_operator(served)
    )
    assert answer.status_code == 200, answer.text


def _fault_run(
    lab: LabState, served: ServedController, changes: dict[str, float], label: str
) -> None:
    controlled, static = start_load(lab, "shop", 1), start_load(lab, "shop-static", 2)
    results: list[LoadResult] = []
    before: dict[str, dict[str, float]] = {}
    try:
        time.sleep(5.0)
        _start_from_the_static_split(served, lab)
        assert _weight(served, "v2") > 5
        for svc in ("shop", "shop-static"):
            before[svc] = apply_fault(lab, svc, "v2", changes)
        start = time.monotonic()
        served.wait_for(
            f"v2's weight <= 5 after {label}", lambda: _weight(served, "v2") <= 5, SHED_WITHIN_S
        )
        shed_s = time.monotonic() - start
        time.sleep(max(FAULT_S - (time.monotonic() - start), 0.0))
        _restore(lab, before)
        ended = time.monotonic()
        served.wait_for(
            f"traffic back on v2 after {label} ended",
            lambda: _weight(served, "v2") >= 1,
            RETURN_WITHIN_S,
        )
        back_s = time.monotonic() - ended
        time.sleep(5.0)
    finally:
        _restore(lab, before)  # a failed wait must not leave the fault for the next test
        results = [controlled.stop(), static.stop()]
    bad_controlled = results[0].bad_fraction(lab.spec.slo_ms)
    bad_static = results[1].bad_fraction(lab.spec.slo_ms)
    print(
        f"{label}: v2 shed to <= 5 in {shed_s:.0f} s, traffic back {back_s:.0f} s after the "
        f"fault ended; bad fraction served "
        f"{bad_controlled:.4f} vs static split {bad_static:.4f} "
        f"({results[0].achieved_rps:.0f} / {results[1].achieved_rps:.0f} rps)"
    )
    assert bad_controlled < bad_static, "\n".join(_breakdown(r, lab) for r in results)


def _restore(lab: LabState, before: dict[str, dict[str, float]]) -> None:
    while before:
        svc, old = before.popitem()
        apply_fault(lab, svc, "v2", old)


def _breakdown(result: LoadResult, lab: LabState) -> str:
    """What made a run bad, for a failure message: statuses, per-version stats, send lag."""
    lag_p99 = float(np.quantile(result.lag_ms, 0.99)) if result.sent else float("nan")
    return (
        f"{result.hosts}: statuses {result.status_counts}, send lag p99 {lag_p99:.1f} ms, "
        f"per version {result.by_subset(lab.spec.slo_ms)}"
    )


def test_errors_on_one_version_are_shed_and_traffic_returns(
    lab: LabState, served: ServedController
) -> None:
    _fault_run(lab, served, {"error_rate": 0.3}, "30 % 5xx on v2")


def test_a_five_times_slower_version_is_shed_and_traffic_returns(
    lab: LabState, served: ServedController
) -> None:
    _fault_run(lab, served, {"service_ms": 50.0}, "v2 5x slower")


def test_the_measured_split_follows_the_written_weights(
    lab: LabState, served: ServedController
) -> None:
    load = start_load(lab, "shop", 3)
    try:
        since = time.time()
        pin = {"weights": {"v1": 20, "v2": 40, "v3": 40}, "ttl_s": 120, "reason": "verify test"}
        answer = served.client.post(f"/routes/{SHOP}/override", json=pin, headers=_operator(served))
        assert answer.status_code == 200, answer.text
        verify: dict[str, Any] = served.wait_for(
            "a verification of the pinned split",
            lambda: (v := served.route(SHOP)["verify"]) and v["at_s"] > since + 10 and v,
            60,
        )
    finally:
        load.stop()
        served.client.request(
            "DELETE", f"/routes/{SHOP}/override", json={}, headers=_operator(served)
        )
    print("verify after a pinned write:", verify)
    assert verify["ok"] is True, verify


def _down(lab: LabState, part: str) -> bool:
    return bool(lab_status(lab.state_dir)["components"][part]["process"] == "down")


def test_a_dead_envoy_or_prometheus_makes_the_controller_hold_and_say_why(
    lab: LabState, served: ServedController
) -> None:
    """Last in the module: it kills parts of the lab for good."""
    load = start_load(lab, "shop", 4)
    try:
        served.wait_for(
            "the policy back in control", lambda: served.route(SHOP)["phase"] == "active", 30
        )
        os.killpg(lab.processes["envoy"].pid, signal.SIGKILL)
        served.wait_for("lab status naming Envoy", lambda: _down(lab, "envoy"), 10)
        held = served.wait_for(
            "the route holding without fresh data",
            lambda: (r := served.route(SHOP))["phase"] == "holding" and r,
            60,
        )
        reason = held["last_decision"]["reason"]
        print("Envoy down:", reason)
        assert "old" in reason and "holding" in reason
        os.killpg(lab.processes["prometheus"].pid, signal.SIGKILL)
        served.wait_for("lab status naming Prometheus", lambda: _down(lab, "prometheus"), 10)
        degraded = served.wait_for(
            "the route degraded without Prometheus", lambda: served.route(SHOP)["degraded"], 30
        )
        print("Prometheus down:", degraded)
        assert "Prometheus" in degraded
        status = lab_status(lab.state_dir)
        assert status["running"] is False and status["components"]["backends"]["healthy"]
    finally:
        load.stop()
    assert served.proc.poll() is None, "the controller must keep running"
    assert served.client.get("/healthz").status_code == 200

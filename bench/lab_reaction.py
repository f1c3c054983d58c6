"""On the lab: how fast the served controller sheds a failing version, and what a tick costs.

The issue's goals: fault-to-weight reaction time <= 15 s at a 5 s tick, and the observe + act
latency on a real data plane. A one-service lab (v1 4 replicas, v2 and v3 2 each, all 10 ms;
400 rps, half its capacity) runs under Poisson load with `meshpilot serve --mesh lab` (shipped
policy, supervisor, guard, default settings, 5 s tick) as a process. Each trial pins the route
to its capacity-proportional split, hands it back, injects 30 % 5xx on v2, and times until the
route's weight for v2 (read from the API every 0.2 s) is <= 5; then the fault is lifted. Printed:
every trial's reaction time and its median.

Then, without the controller, the two halves of a tick against the lab's real Prometheus and
Envoy: `PrometheusObserver.observe` (two PromQL queries, all routes) and
`EnvoyRouteActuator.apply` (atomic route-file write + Envoy's confirmation in `config_dump`),
median and p90 over `--samples` calls. Prints, never asserts.

    python bench/lab_reaction.py [--trials 5] [--samples 50]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from controller.adapters.envoy import EnvoyRouteActuator
from controller.adapters.prometheus import PrometheusObserver
from envs.lab.lab import LabState, lab_down, lab_up
from envs.lab.load_process import LoadGenerator
from envs.lab.spec import parse_lab
from envs.lab.traffic import apply_fault
from envs.simulator.scenario import Load
from meshcore import Weights
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[1]
RPS = 400.0
KEY = "lirmm-services/shop/default"
LAB = {
    "name": "reaction",
    "services": [
        {
            "name": "shop",
            "load": {"rps": RPS},
            "subsets": [
                {"name": "v1", "replicas": 4, "service_ms": 10},
                {"name": "v2", "replicas": 2, "service_ms": 10},
                {"name": "v3", "replicas": 2, "service_ms": 10},
            ],
        }
    ],
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _serve(
    lab: LabState, work: Path
) -> tuple[subprocess.Popen[bytes], httpx.Client, dict[str, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPILOT_")}
    env["PYTHONPATH"] = str(REPO)
    argv = [sys.executable, "-m", "meshpilot.cli", "serve", "--mesh", "lab"]
    argv += ["--lab-state-dir", str(lab.state_dir), "--port", str(port), "--tick-s", "5"]
    argv += ["--db", str(work / "decisions.db"), "--token-file", str(work / "token")]
    with open(work / "serve.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get(f"/routes/{KEY}").json().get("weights"):
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    token = (work / "token").read_text().strip()
    return proc, client, {"Authorization": f"Bearer {token}"}


def _weights(client: httpx.Client) -> dict[str, int]:
    weights: dict[str, int] = client.get(f"/routes/{KEY}").json()["weights"]
    return weights


def _wait(client: httpx.Client, ok: Any, timeout_s: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if ok(_weights(client)):
                return time.monotonic() - start
        except (httpx.HTTPError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    return None


def reaction_trials(lab: LabState, work: Path, trials: int) -> list[float | None]:
    proc, client, operator = _serve(lab, work)
    split = lab.spec.services[0].start_weights()
    times: list[float | None] = []
    try:
        for trial in range(trials):
            pin = {"weights": split, "ttl_s": 60, "reason": "bench: common start"}
            client.post(f"/routes/{KEY}/override", json=pin, headers=operator)
            _wait(client, lambda w: w == split, 30)
            time.sleep(12.0)  # a full rate window of the start split
            client.request("DELETE", f"/routes/{KEY}/override", json={}, headers=operator)
            old = apply_fault(lab, "shop", "v2", {"error_rate": 0.3})
            took = _wait(client, lambda w: w["v2"] <= 5, 60)
            times.append(took)
            print(f"trial {trial}: v2 <= 5 after {'-' if took is None else f'{took:.1f}'} s")
            apply_fault(lab, "shop", "v2", old)
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return times


def tick_parts(lab: LabState, samples: int) -> None:
    route = lab.spec.routes()[0]
    actuator = EnvoyRouteActuator(lab.routes_file, lab.admin_url)
    observer = PrometheusObserver(url=lab.prometheus_url, profile="istio", window_s=10.0)
    observe_ms, apply_ms = [], []
    splits = [Weights(("v1", "v2", "v3"), (50, 25, 25)), Weights(("v1", "v2", "v3"), (40, 30, 30))]
    try:
        for i in range(samples):
            t0 = time.perf_counter()
            observer.observe([route])
            t1 = time.perf_counter()
            actuator.apply(route, splits[i % 2])
            t2 = time.perf_counter()
            observe_ms.append((t1 - t0) * 1000)
            apply_ms.append((t2 - t1) * 1000)
            time.sleep(0.1)
    finally:
        observer.close()
        actuator.close()
    for name, values in (("observe (2 PromQL queries)", observe_ms), ("apply + confirm", apply_ms)):
        print(
            f"{name:>28}: median {statistics.median(values):.1f} ms, "
            f"p90 {_pct(values, 0.9):.1f} ms, max {max(values):.1f} ms ({len(values)} calls)"
        )
    total = [a + b for a, b in zip(observe_ms, apply_ms, strict=True)]
    print(f"{'observe + act':>28}: median {statistics.median(total):.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="faults injected (default 5)")
    parser.add_argument("--samples", type=int, default=50, help="observe/apply calls timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshpilot-lab-reaction-") as tmp:
        work = Path(tmp)
        lab, _ = lab_up(parse_lab(LAB, source="bench"), work / "lab")
        host = lab.spec.services[0].host(lab.spec.namespace)
        load = LoadGenerator(f"127.0.0.1:{lab.listener_port}", [(host, Load(rps=RPS))], seed=1)
        load.start()
        try:
            times = reaction_trials(lab, work, args.trials)
            done = [t for t in times if t is not None]
            if done:
                print(
                    f"fault-to-weight (30 % 5xx, v2 <= 5 points, 5 s tick): median "
                    f"{statistics.median(done):.1f} s, max {max(done):.1f} s, "
                    f"{len(times) - len(done)} of {len(times)} trials never got there in 60 s"
                )
            tick_parts(lab, args.samples)
        finally:
            result = load.stop()
            lab_down(lab.state_dir)
        print(f"load: asked {RPS:.0f} rps, achieved {result.achieved_rps:.0f} rps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

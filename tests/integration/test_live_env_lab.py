"""MeshLive-v0 on the real lab (backends, Envoy, Prometheus on 127.0.0.1) under ~100 rps.

Cases:
- `check_env` passes on MeshLive-v0 built from the lab's real ports (PrometheusObserver with
  the istio profile, EnvoyRouteActuator, wall clock; its close check, which deep-copies the
  ports, replaced by closing twice), and a step writes the decoded split to
  Envoy and then observes the route's traffic (rps > 0, the split it wrote);
- `meshpilot train --mesh lab --init agents/models/default.npz --total-steps 8 --step-s 1`
  runs end to end against the running lab and writes a policy.npz that loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the envs)
from agents.network import NumpyPolicy
from agents.policy_file import DEFAULT_MODEL, load_numpy_policy
from controller.adapters.envoy import EnvoyRouteActuator
from controller.adapters.prometheus import PrometheusObserver
from controller.clock import WallClock
from envs.lab.lab import LabState, lab_down, lab_up
from envs.lab.load_process import LoadGenerator
from envs.lab.processes import is_alive
from envs.lab.spec import parse_lab
from envs.live_env import MeshLiveEnv
from envs.registration import LIVE_ENV_ID
from envs.simulator.scenario import Load
from meshcore.features import FeatureSpec, encode_weights
from meshcore.model import Weights
from tests.helpers import require_binary

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
RPS = 100.0
LAB = {
    "name": "live-env",
    "slo_ms": 250,
    "services": [
        {
            "name": "shop",
            "load": {"rps": RPS},
            "subsets": [
                {"name": "v1", "replicas": 2, "service_ms": 10},
                {"name": "v2", "replicas": 1, "service_ms": 10},
            ],
            "initial_weights": {"v1": 50, "v2": 50},
        }
    ],
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabState]:
    """The lab up with ~100 rps on its one route; everything stopped afterwards."""
    require_binary("prometheus", "MESHPILOT_PROMETHEUS")
    state_dir = tmp_path_factory.mktemp("lab")
    state, _ = lab_up(parse_lab(LAB, source="test"), state_dir)
    records = list(state.processes.values())
    try:
        host = state.spec.services[0].host(state.spec.namespace)
        target = f"127.0.0.1:{state.listener_port}"
        with LoadGenerator(target, [(host, Load(rps=RPS))], duration_s=600.0, seed=1):
            yield state
    finally:
        lab_down(state_dir)
        left = [r.name for r in records if is_alive(r)]
        assert not left, f"lab processes left running after lab down: {left}"


def _live_env(lab: LabState, step_s: float) -> tuple[gym.Env[np.ndarray, np.ndarray], object]:
    actuator = EnvoyRouteActuator(lab.routes_file, lab.admin_url)
    observer = PrometheusObserver(
        url=lab.prometheus_url,
        profile="istio",
        window_s=10.0,
        slo_ms=lab.spec.slo_ms,
        weights_source=actuator.current,
    )
    env = gym.make(
        LIVE_ENV_ID,
        observer=observer,
        actuator=actuator,
        route=lab.spec.routes()[0],
        clock=WallClock(),
        step_s=step_s,
        slo_ms=lab.spec.slo_ms,
    )
    return env, observer


def test_check_env_passes_and_a_step_writes_to_envoy_then_observes(lab: LabState) -> None:
    env, observer = _live_env(lab, step_s=0.2)
    try:
        # The close check re-makes the env from its spec, which deep-copies the spec's kwargs:
        # real ports (HTTP clients, locks) are shared, not copied. Closing twice is checked
        # directly instead; the fake-port unit test runs the full check.
        check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
        live = env.unwrapped
        assert isinstance(live, MeshLiveEnv)
        env.reset(seed=0)
        target = Weights(("v1", "v2"), (80, 20))
        deadline = time.monotonic() + 30.0
        while True:
            obs_vec, _, _, _, info = env.step(encode_weights(target, FeatureSpec()))
            if info["rps"] > 0 or time.monotonic() > deadline:
                break
        assert info["weights"] == {"v1": 80, "v2": 20}
        assert info["held"] == []
        assert info["rps"] > 0, "no traffic observed within 30 s"
        assert live.observation.weights == target  # as Envoy's route file now says
        assert obs_vec in env.observation_space
        env.close()
        env.close()
    finally:
        observer.close()  # type: ignore[attr-defined]


def test_meshpilot_train_on_the_lab_fine_tunes_the_shipped_policy(
    lab: LabState, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "meshpilot.cli",
        "train",
        "--mesh",
        "lab",
        "--lab-state-dir",
        str(lab.state_dir),
        "--init",
        str(DEFAULT_MODEL),
        "--total-steps",
        "8",
        "--step-s",
        "1",
        "--out-dir",
        str(out),
        "--no-progress",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = out.iterdir()
    assert isinstance(load_numpy_policy(run_dir / "policy.npz"), NumpyPolicy)
    meta = json.loads((run_dir / "config.json").read_text())
    assert meta["env_steps"] == 8
    assert meta["init"] == str(DEFAULT_MODEL)
    assert meta["live"]["routes"] == ["lirmm-services/shop/default"]

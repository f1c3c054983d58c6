"""`MeshLiveEnv` (meshpilot/MeshLive-v0) over in-memory ports.

Cases: check_env passes on the registered env built with fake ports; its spaces are
MeshSim-v0's, so a simulator-trained policy runs on it; a step applies the decoded weights,
sleeps exactly step_s on the clock, then observes, and reports weights, rps and 5xx in info;
reset writes reset_weights; episodes are truncated at max_steps, never terminated; a route
absent from the observer's answer and NaN statistics (NaN staleness included) give a finite
observation inside the space; a TemporaryError of the observer holds the previous observation
and one of the actuator reads the route back (a write that landed unconfirmed counts, a failed
read keeps the previous split), all reported in info; a PermanentError
propagates; the reward is `meshcore.reward.reward` on the observed telemetry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import envs  # noqa: F401  (registers the envs)
from agents.policy_file import load_ppo_policy
from envs.live_env import MeshLiveEnv
from envs.mesh_env import MeshEnv
from envs.registration import LIVE_ENV_ID
from meshcore.errors import PermanentError, TemporaryError
from meshcore.features import FeatureSpec, encode_weights
from meshcore.model import Observation, RouteRef, SubsetStats, Weights
from meshcore.reward import reward

ROUTE = RouteRef("lirmm-services", "reviews", "default", "reviews.lirmm-services.svc.cluster.local")
SUBSETS = ("v1", "v2")


class FakeClock:
    """Records sleeps instead of sleeping."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


class FakeMesh:
    """Observer and actuator of one route: 100 rps split by the weights, v2 slow and failing."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.weights = Weights(SUBSETS, (50, 50))
        self.applied: list[tuple[Weights, float]] = []
        self.observe_error: Exception | None = None
        self.apply_error: Exception | None = None
        self.drop_route = False
        self.nan_stats = False

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        if self.observe_error is not None:
            raise self.observe_error
        if self.drop_route:
            return {}
        out: dict[RouteRef, Observation] = {}
        for route in routes:
            stats = []
            for name in SUBSETS:
                w = self.weights[name]
                if self.nan_stats:
                    stats.append(SubsetStats(math.nan, math.nan, math.nan, w))
                elif name == "v1":
                    stats.append(SubsetStats(float(w), 0.0, 80.0, w, slow_ratio=0.0))
                else:
                    stats.append(SubsetStats(float(w), 0.2, 400.0, w, slow_ratio=0.5))
            staleness = math.nan if self.nan_stats else 1.0
            out[route] = Observation(
                route, SUBSETS, tuple(stats), self.clock.now(), staleness_s=staleness
            )
        return out

    def current(self, route: RouteRef) -> Weights:
        return self.weights

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        if self.apply_error is not None:
            raise self.apply_error
        self.weights = weights
        self.applied.append((weights, self.clock.now()))
        return weights


def _env(**kwargs: object) -> tuple[MeshLiveEnv, FakeMesh, FakeClock]:
    clock = FakeClock()
    mesh = FakeMesh(clock)
    env = MeshLiveEnv(mesh, mesh, ROUTE, clock=clock, **kwargs)  # type: ignore[arg-type]
    return env, mesh, clock


def _action(weights: Weights) -> np.ndarray:
    return encode_weights(weights, FeatureSpec())


def test_check_env_passes_on_the_registered_env_with_fake_ports() -> None:
    clock = FakeClock()
    mesh = FakeMesh(clock)
    env = gym.make(LIVE_ENV_ID, observer=mesh, actuator=mesh, route=ROUTE, clock=clock)
    assert isinstance(env.unwrapped, MeshLiveEnv)
    check_env(env.unwrapped, skip_render_check=True)


def test_spaces_are_those_of_the_simulator_env_and_a_shipped_policy_acts_on_it() -> None:
    env, _, _ = _env()
    sim = MeshEnv(scenario="steady-50")
    assert env.observation_space == sim.observation_space
    assert env.action_space == sim.action_space
    policy = load_ppo_policy(None)
    obs_vec, _ = env.reset(seed=0)
    assert obs_vec in env.observation_space
    weights = policy.decide(env.observation)
    assert weights.subsets == SUBSETS


def test_a_step_applies_the_decoded_weights_then_sleeps_step_s_then_observes() -> None:
    env, mesh, clock = _env(step_s=7.5, slo_ms=250.0)
    env.reset(seed=0)
    target = Weights(SUBSETS, (80, 20))
    before = env.observation
    obs_vec, r, terminated, truncated, info = env.step(_action(target))
    assert mesh.applied == [(target, 1000.0)]  # written before the sleep
    assert clock.sleeps == [7.5]
    assert env.observation.timestamp_s == 1007.5  # observed after it
    assert env.observation.weights == target
    assert info["weights"] == {"v1": 80, "v2": 20}
    assert info["rps"] == pytest.approx(100.0)
    assert info["error_ratio"] == pytest.approx(0.2 * 20 / 100)
    assert info["held"] == []
    assert r == pytest.approx(reward(before, target, env.observation, slo_ms=250.0))
    assert not terminated and not truncated
    assert obs_vec in env.observation_space


def test_reset_writes_reset_weights_and_episodes_truncate_at_max_steps() -> None:
    start = Weights(SUBSETS, (90, 10))
    env, mesh, _ = _env(max_steps=3, reset_weights=start)
    _, info = env.reset(seed=0)
    assert mesh.applied[0][0] == start and info["weights"] == start.as_dict()
    flags = [env.step(env.action_space.sample())[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.reset()
    assert mesh.weights == start


def test_missing_route_and_nan_statistics_encode_as_no_data() -> None:
    env, mesh, _ = _env()
    env.reset(seed=0)
    mesh.drop_route = True
    obs_vec, r, _, _, info = env.step(_action(Weights(SUBSETS, (30, 70))))
    assert np.all(np.isfinite(obs_vec)) and obs_vec in env.observation_space
    assert env.observation.weights == Weights(SUBSETS, (30, 70))
    assert not any(s.has_data for s in env.observation.stats)
    assert math.isnan(info["rps"]) and math.isfinite(r)
    mesh.drop_route, mesh.nan_stats = False, True
    obs_vec, r, _, _, info = env.step(_action(Weights(SUBSETS, (60, 40))))
    assert np.all(np.isfinite(obs_vec)) and obs_vec in env.observation_space
    assert math.isnan(info["error_ratio"]) and math.isfinite(r)


@settings(max_examples=50, deadline=None)
@given(
    rps=st.sampled_from([math.nan, math.inf, 0.0, 5.0]),
    p99=st.sampled_from([math.nan, math.inf, 10.0, 1e9]),
    err=st.sampled_from([math.nan, 0.0, 0.5, 1.0]),
    staleness=st.sampled_from([math.nan, math.inf, 0.0, 3.0]),
)
def test_any_mix_of_missing_values_gives_an_observation_inside_the_space(
    rps: float, p99: float, err: float, staleness: float
) -> None:
    clock = FakeClock()

    class Odd(FakeMesh):
        def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
            stats = (SubsetStats(rps, err, p99, 50), SubsetStats(1.0, 0.0, 10.0, 50))
            return {ROUTE: Observation(ROUTE, SUBSETS, stats, clock.now(), staleness_s=staleness)}

    mesh = Odd(clock)
    env = MeshLiveEnv(mesh, mesh, ROUTE, clock=clock)
    obs_vec, _ = env.reset(seed=0)
    assert obs_vec in env.observation_space
    obs_vec, r, *_ = env.step(env.action_space.sample())
    assert obs_vec in env.observation_space and math.isfinite(r)


def test_a_temporary_observer_error_holds_the_previous_observation() -> None:
    env, mesh, _ = _env()
    first, _ = env.reset(seed=0)
    before = env.observation
    mesh.observe_error = TemporaryError("prometheus timed out")
    target = Weights(SUBSETS, (70, 30))
    obs_vec, r, terminated, truncated, info = env.step(_action(target))
    assert env.observation is before
    assert np.array_equal(obs_vec, first)
    assert info["held"] == ["observe: prometheus timed out"]
    assert mesh.weights == target  # the write still happened
    assert r == pytest.approx(reward(before, target, before))
    assert not terminated and not truncated


def test_a_temporary_actuator_error_keeps_the_previous_split() -> None:
    env, mesh, clock = _env(step_s=2.0)
    env.reset(seed=0)
    mesh.apply_error = TemporaryError("envoy admin unreachable")
    _, r, _, _, info = env.step(_action(Weights(SUBSETS, (10, 90))))
    assert info["held"] == ["apply: envoy admin unreachable"]
    assert info["weights"] == {"v1": 50, "v2": 50}
    assert clock.sleeps == [2.0]  # the interval still passes
    assert r == pytest.approx(reward(env.observation, env.observation.weights, env.observation))


def test_a_write_that_landed_without_its_confirmation_is_read_back() -> None:
    env, mesh, _ = _env(step_s=2.0)
    env.reset(seed=0)
    target = Weights(SUBSETS, (10, 90))
    original_apply = mesh.apply

    def lands_then_times_out(route: RouteRef, weights: Weights) -> Weights:
        original_apply(route, weights)
        raise TemporaryError("config_dump did not show the new routes in time")

    mesh.apply = lands_then_times_out  # type: ignore[method-assign]
    _, _, _, _, info = env.step(_action(target))
    assert info["weights"] == target.as_dict()
    assert info["held"] == ["apply: config_dump did not show the new routes in time"]


def test_a_failed_write_and_a_failed_read_back_keep_the_previous_split() -> None:
    env, mesh, _ = _env(step_s=2.0)
    env.reset(seed=0)
    mesh.apply_error = TemporaryError("envoy admin unreachable")

    def unreadable(route: RouteRef) -> Weights:
        raise TemporaryError("routes file locked")

    mesh.current = unreadable  # type: ignore[method-assign]
    _, _, _, _, info = env.step(_action(Weights(SUBSETS, (10, 90))))
    assert info["held"] == ["apply: envoy admin unreachable", "read back: routes file locked"]
    assert info["weights"] == {"v1": 50, "v2": 50}


def test_a_permanent_error_propagates() -> None:
    env, mesh, _ = _env()
    env.reset(seed=0)
    mesh.apply_error = PermanentError("route deleted")
    with pytest.raises(PermanentError, match="route deleted"):
        env.step(env.action_space.sample())


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="step_s"):
        _env(step_s=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        _env(max_steps=0)
    with pytest.raises(ValueError, match="slo_ms"):
        _env(slo_ms=0.0)

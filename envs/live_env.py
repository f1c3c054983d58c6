"""`MeshLiveEnv`: the Gymnasium face of the observe/act contract, stepping a live mesh in real time.

Why a module of its own: `envs.mesh_env.MeshEnv` owns a simulator; this env owns nothing. It
takes the ports (`Observer`, `Actuator`, `Clock`) as arguments, so the same env runs against
the local lab (Envoy + Prometheus), a Kubernetes mesh or in-memory fakes, and the envs layer
never imports the controller's adapters. Its spaces, `encode` and `decode` are MeshEnv's, so a
policy trained on MeshSim-v0 runs on it unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from envs.route_env import RouteEnv
from meshcore.errors import TemporaryError
from meshcore.features import FeatureSpec, encode
from meshcore.model import Observation, RouteRef, SubsetStats, Weights
from meshcore.ports import Actuator, Clock, Observer
from meshcore.reward import CHURN_COST, bad_fraction_estimate, reward


def _sanitized(obs: Observation) -> Observation:
    """`obs` with the values `encode` cannot take made explicit: an unknown data age (NaN)
    becomes infinitely stale, an infinite rate becomes "no data"."""
    stats = tuple(
        st if math.isfinite(st.rps) or math.isnan(st.rps) else dataclasses.replace(st, rps=math.nan)
        for st in obs.stats
    )
    staleness = math.inf if math.isnan(obs.staleness_s) else obs.staleness_s
    if stats == obs.stats and staleness == obs.staleness_s:
        return obs
    return dataclasses.replace(obs, stats=stats, staleness_s=staleness)


def _no_data(route: RouteRef, weights: Weights, now_s: float) -> Observation:
    """What the env sees when the observer's answer lacks the route: the configured weights,
    every statistic NaN, infinitely stale."""
    nan = math.nan
    stats = tuple(SubsetStats(nan, nan, nan, weights[s]) for s in weights.subsets)
    return Observation(route, weights.subsets, stats, now_s, staleness_s=math.inf)


def _error_ratio(obs: Observation) -> float:
    """Route-level 5xx / all over the subsets with data (0..1); NaN without data."""
    total = obs.total_rps
    if not math.isfinite(total) or total <= 0:
        return math.nan
    errors = math.fsum(
        st.rps * st.error_ratio
        for st in obs.stats
        if st.has_data and math.isfinite(st.error_ratio) and st.rps > 0
    )
    return min(max(errors / total, 0.0), 1.0)


class MeshLiveEnv(RouteEnv):
    """Set the traffic split of one route of a live mesh, one real control interval per step.

    ## Description
    Each step writes the split through the `Actuator`, waits `step_s` seconds on the `Clock`
    (real time with a wall clock: a step *is* the control interval), then asks the `Observer`
    for the route. Nothing is simulated, so nothing can be reset: an episode is a stretch of
    `max_steps` intervals, and `reset` at most writes `reset_weights`.

    ## Observation space
    `FeatureSpec.observation_space()`, laid out by `meshcore.features.encode` exactly as in
    MeshSim-v0. A route the observer's answer lacks, and statistics it reports as NaN, encode
    as "no data" (``has_data`` 0, rates and latencies 0); an unknown data age counts as
    infinitely stale.

    ## Action space
    `FeatureSpec.action_space()`: Box[-1, 1]^K logits that `decode` turns into integer weights
    over the subsets of the last observation.

    ## Rewards
    `meshcore.reward.reward(before, weights, after)` on the *observed* telemetry: the noisy,
    delayed estimate Prometheus gives over its rate window, not the simulator's truth. A
    change shows fully only about one rate window after it is written, so with `step_s`
    shorter than the window the reward of a step partly scores the steps before it.

    ## Episode end
    Truncated after `max_steps` steps; never terminated.

    ## Errors
    A `TemporaryError` of the actuator is followed by a read of the route (a write can land
    and only its confirmation fail): the step's weights and churn are what that read returns,
    the previous split when it fails too (``"read back: ..."`` in ``held``). A `TemporaryError`
    of the observer holds the previous observation (the reward is computed on it). Each is
    reported in ``info["held"]`` (``"apply: ..."``, ``"observe: ..."``), and the episode goes
    on. A `PermanentError` propagates.

    ## Info
    ``weights`` (the split in place, by subset), ``rps`` (route request rate),
    ``error_ratio`` (route 5xx / all), ``bad_fraction_estimate``, ``held`` (list of texts),
    ``route`` (the route key). NaN where the observation has no data.

    ## Arguments
    observer, actuator, route: the ports and the route they serve; clock: time source whose
    `sleep` is the control interval (a fake one makes tests instant); step_s: control interval
    (s); slo_ms: latency bound of a bad request in the reward (ms); max_steps: episode length
    (steps); spec: the `FeatureSpec` (default: the controller's); churn_cost: see `reward`;
    reset_weights: split written at every reset (None: keep the route's split).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        observer: Observer,
        actuator: Actuator,
        route: RouteRef,
        *,
        clock: Clock,
        step_s: float = 5.0,
        slo_ms: float = 250.0,
        max_steps: int = 120,
        spec: FeatureSpec | None = None,
        churn_cost: float = CHURN_COST,
        reset_weights: Weights | None = None,
    ) -> None:
        if not (math.isfinite(step_s) and step_s >= 0):
            raise ValueError(f"step_s must be a finite number of seconds >= 0, got {step_s}")
        if not (math.isfinite(slo_ms) and slo_ms > 0):
            raise ValueError(f"slo_ms must be a positive number of ms, got {slo_ms}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.spec_features = spec or FeatureSpec()
        if reset_weights is not None:
            self.spec_features.mask(len(reset_weights))
        self._observer = observer
        self._actuator = actuator
        self.route = route
        self._clock = clock
        self.step_s = float(step_s)
        self.slo_ms = float(slo_ms)
        self._max_steps = int(max_steps)
        self._churn_cost = float(churn_cost)
        self._reset_weights = reset_weights
        self.observation_space = self.spec_features.observation_space()
        self.action_space = self.spec_features.action_space()
        self._obs: Observation | None = None
        self._steps = 0

    def _observe(self, configured: Weights | None, held: list[str]) -> Observation | None:
        """The route now; None (and a line in `held`) on a temporary observer error. A route
        missing from the answer is a no-data observation of the `configured` weights (or of
        the actuator's, when unknown)."""
        try:
            answer = self._observer.observe([self.route])
        except TemporaryError as err:
            held.append(f"observe: {err}")
            return None
        obs = answer.get(self.route)
        if obs is None:
            weights = configured or self._actuator.current(self.route)
            return _no_data(self.route, weights, self._clock.now())
        return _sanitized(obs)

    def _read_back(self, fallback: Weights, held: list[str]) -> Weights:
        """The split in force after a failed write. A write can land and only its confirmation
        fail (Envoy took the file but its admin did not answer in time), so the route is read
        back; `fallback` (the split before) when that read fails too."""
        try:
            return self._actuator.current(self.route)
        except TemporaryError as err:
            held.append(f"read back: {err}")
            return fallback

    def _encoded(self, obs: Observation) -> np.ndarray:
        return encode(obs, self.spec_features)

    def _info(self, obs: Observation, weights: Weights, held: list[str]) -> dict[str, Any]:
        return {
            "weights": weights.as_dict(),
            "rps": obs.total_rps,
            "error_ratio": _error_ratio(obs),
            "bad_fraction_estimate": bad_fraction_estimate(obs, self.slo_ms),
            "held": held,
            "route": self.route.key,
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Write `reset_weights` (if any) and observe; does not wait for the split to show.

        Errors are held as in `step`; with no observation at all yet, a temporary observer
        error gives a no-data observation of the configured weights.
        """
        super().reset(seed=seed)
        held: list[str] = []
        configured = self._reset_weights
        if configured is not None:
            try:
                configured = self._actuator.apply(self.route, configured)
            except TemporaryError as err:
                held.append(f"apply: {err}")
                configured = None
        obs = self._observe(configured, held)
        if obs is None:
            obs = self._obs or _no_data(
                self.route, configured or self._actuator.current(self.route), self._clock.now()
            )
        self._obs = obs
        self._steps = 0
        return self._encoded(obs), self._info(obs, obs.weights, held)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        before = self._obs
        held: list[str] = []
        weights = self.weights_for(action)
        try:
            written = self._actuator.apply(self.route, weights)
        except TemporaryError as err:
            held.append(f"apply: {err}")
            written = self._read_back(before.weights, held)
        self._clock.sleep(self.step_s)
        after = self._observe(written, held) or before
        self._steps += 1
        r = reward(before, written, after, slo_ms=self.slo_ms, churn_cost=self._churn_cost)
        self._obs = after
        truncated = self._steps >= self._max_steps
        return self._encoded(after), float(r), False, truncated, self._info(after, written, held)

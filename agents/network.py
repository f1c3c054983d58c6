"""Serve a trained PPO policy with numpy alone: the controller never imports torch.

Training (`agents.training`) exports the actor network of a stable-baselines3 PPO model and
its `VecNormalize` observation statistics; `NumpyPolicy` runs
``encode -> extend -> canonical slot order -> normalize -> MLP -> action prior -> the route's
own slot order -> decode`` for every decision, exactly as the training env did (parity with
SB3's deterministic ``predict`` is tested), and `EnsemblePolicy` writes the split of several
such networks' mean action. Reading and writing the `.npz` files they come from is
`agents.policy_file`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from agents.action_prior import (
    apply_action_prior,
    corrected_action,
    corrected_actions,
    prior_action,
    prior_actions,
)
from agents.obs_extensions import TrendMemory, extension_size
from agents.slot_order import sort_slots
from meshcore.errors import ConfigError
from meshcore.features import FeatureSpec, decode, encode
from meshcore.model import WEIGHT_TOTAL, Observation, Weights

ACTIVATION = "tanh"
"""The hidden layers' activation (SB3's ``activation_fn`` torch.nn.Tanh), as policy files
record it (``activation``)."""


class NumpyPolicy:
    """The exported PPO actor as a `Policy`: deterministic (the Gaussian mean), numpy only.

    `last_raw_action` is the action handed to `decode` at the last decision (Box[-1, 1]^K,
    after the action prior), kept for the audit log; `last_raw_actions` those of the last
    `decide_many`, one per observation.
    """

    name = "ppo"

    def __init__(
        self,
        *,
        spec: FeatureSpec,
        layers: list[tuple[np.ndarray, np.ndarray]],
        obs_mean: np.ndarray,
        obs_var: np.ndarray,
        clip_obs: float,
        eps: float,
        source: str = "<memory>",
    ) -> None:
        if not layers:
            raise ConfigError(f"{source}: the network has no layers")
        n_in = spec.obs_size + extension_size(spec)
        width = n_in
        for i, (w, b) in enumerate(layers):
            if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[1] != width:
                raise ConfigError(
                    f"{source}: layer {i} has shape {w.shape}/{b.shape}, expected input {width}"
                )
            width = w.shape[0]
        if width != spec.max_subsets:
            raise ConfigError(
                f"{source}: the network outputs {width} values, the spec has "
                f"{spec.max_subsets} subset slots"
            )
        if obs_mean.shape != (n_in,) or obs_var.shape != (n_in,):
            raise ConfigError(
                f"{source}: normalization statistics have shape {obs_mean.shape}, "
                f"expected ({n_in},)"
            )
        self.spec = spec
        self.source = source
        self._layers = [(w.astype(np.float64), b.astype(np.float64)) for w, b in layers]
        self._mean = obs_mean.astype(np.float64)
        self._std = np.sqrt(obs_var.astype(np.float64) + eps)
        self._clip = float(clip_obs)
        self._memory = TrendMemory()
        self.last_raw_action: list[float] = []
        self.last_raw_actions: list[list[float]] = []

    # ---- the network -------------------------------------------------------------------
    def normalize(self, obs_vec: np.ndarray) -> np.ndarray:
        """VecNormalize's transform: clip((x - mean) / sqrt(var + eps), -clip, clip)."""
        x = (np.asarray(obs_vec, dtype=np.float64) - self._mean) / self._std
        return np.clip(x, -self._clip, self._clip).astype(np.float32)

    def mean_action(self, normalized_obs: np.ndarray) -> np.ndarray:
        """Actor MLP on normalized observations (shape (obs,) or (n, obs)) -> Gaussian mean."""
        x = np.asarray(normalized_obs, dtype=np.float64)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            x = x @ w.T + b
            if i < last:
                x = np.tanh(x)
        return x

    def predict(self, obs_vec: np.ndarray) -> np.ndarray:
        """What SB3's ``predict(obs, deterministic=True)`` returns: clip(mean, -1, 1)."""
        return np.clip(self.mean_action(self.normalize(obs_vec)), -1.0, 1.0)

    def action_for(self, obs_vec: np.ndarray) -> np.ndarray:
        """Encoded, extended observation (the route's slot order) -> the action `decode`
        receives: the network and the action prior see the slots in canonical order
        (`agents.slot_order`)."""
        slots = sort_slots(np.asarray(obs_vec)[None, :], self.spec)
        canonical = slots.vectors[0]
        action = apply_action_prior(self.predict(canonical), canonical, self.spec)
        return slots.original_actions(action[None, :])[0]

    def observation_action(self, obs: Observation) -> np.ndarray:
        """`action_for` of the observation as this policy's network sees it (extended with the
        route's previous tick, which it remembers)."""
        return self.action_for(self._memory.extend(encode(obs, self.spec), obs, self.spec))

    # ---- the Policy protocol -----------------------------------------------------------
    def decide(self, obs: Observation) -> Weights:
        action = self.observation_action(obs)
        self.last_raw_action = [float(v) for v in action]
        return _decode_for(action, obs, self.spec)

    def decide_many(self, observations: Sequence[Observation]) -> list[Weights]:
        """`decide` of each observation in order (the same weights and memory), with one
        forward pass for all of them; `last_raw_actions` holds their raw actions."""
        slots = sort_slots(self._memory.extend_many(observations, self.spec), self.spec)
        canonical = slots.vectors
        actions = corrected_actions(self.predict(canonical), prior_actions(canonical, self.spec))
        return _decided(self, slots.original_actions(actions), observations)

    def reset(self) -> None:
        self.last_raw_action = []
        self.last_raw_actions = []
        self._memory.clear()


def _decode_for(action: np.ndarray, obs: Observation, spec: FeatureSpec) -> Weights:
    mask = spec.mask(len(obs.subsets))
    return decode(action, mask, obs.subsets, temperature=spec.action_temperature)


def _decided(
    policy: NumpyPolicy | EnsemblePolicy, actions: np.ndarray, observations: Sequence[Observation]
) -> list[Weights]:
    """Record the raw actions of a `decide_many` and decode them."""
    policy.last_raw_actions = actions.tolist()
    if policy.last_raw_actions:
        policy.last_raw_action = policy.last_raw_actions[-1]
    return decode_many(actions, observations, policy.spec)


def decode_many(
    actions: np.ndarray, observations: Sequence[Observation], spec: FeatureSpec
) -> list[Weights]:
    """`decode` of each row of `actions` for its observation's subsets, as arrays (the same
    softmax and largest-remainder rounding, the same weights)."""
    k = spec.max_subsets
    n = np.array([len(obs.subsets) for obs in observations], dtype=np.int64)
    mask = np.arange(k)[None, :] < n[:, None]
    a = np.asarray(actions, dtype=np.float64).reshape(len(n), k)
    logits = np.clip(np.where(np.isfinite(a), a, 0.0), -1.0, 1.0) * spec.action_temperature
    logits = np.where(mask, logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.where(mask, np.exp(logits), 0.0)
    shares = exp / exp.sum(axis=1, keepdims=True)
    # largest_remainder of each row's first n shares
    cleaned = np.where((shares > 0) & np.isfinite(shares) & mask, shares, 0.0)
    mass = np.array([math.fsum(row) for row in cleaned.tolist()])
    if np.any(mass <= 0):
        raise ValueError("largest_remainder needs at least one positive share")
    exact = cleaned * WEIGHT_TOTAL / mass[:, None]
    floors = np.floor(exact)
    missing = WEIGHT_TOTAL - floors.sum(axis=1)
    order = np.argsort(np.where(mask, -(exact - floors), np.inf), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(k)[None, :].repeat(len(n), axis=0), axis=1)
    values = (floors + (rank < missing[:, None])).astype(np.int64).tolist()
    return [
        Weights(obs.subsets, row[: len(obs.subsets)])
        for obs, row in zip(observations, values, strict=True)
    ]


class EnsemblePolicy:
    """Several PPO policies trained alike from different seeds; writes the split of the mean
    of their actions (the logits `decode` receives).

    Each trained network misses its teacher by a weight point or two in its own,
    seed-dependent places; averaging independent errors shrinks them, the way bagging does,
    at the price of one more small matrix product per member and tick.
    """

    name = "ppo"

    def __init__(self, members: Sequence[NumpyPolicy]) -> None:
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least two member policies")
        hashes = {m.spec.hash for m in members}
        if len(hashes) != 1:
            raise ConfigError(
                f"ensemble members were trained on different feature specs: {sorted(hashes)}"
            )
        self.members = list(members)
        self.spec = members[0].spec
        self.source = members[0].source
        self._memory = TrendMemory()
        self.last_raw_action: list[float] = []
        self.last_raw_actions: list[list[float]] = []

    def decide(self, obs: Observation) -> Weights:
        """The members' mean action. Encoding, the observation extension and the action prior
        are the same for every member, so each is computed once per tick; only the networks
        run per member (the same numbers as each member's `observation_action`)."""
        vec = self._memory.extend(encode(obs, self.spec), obs, self.spec)[None, :]
        slots = sort_slots(vec, self.spec)
        canonical = slots.vectors[0]
        prior = prior_action(canonical, self.spec)
        mean = np.mean([corrected_action(m.predict(canonical), prior) for m in self.members], 0)
        action = slots.original_actions(mean[None, :])[0]
        self.last_raw_action = [float(v) for v in action]
        return _decode_for(action, obs, self.spec)

    def decide_many(self, observations: Sequence[Observation]) -> list[Weights]:
        """`decide` of each observation in order (the same weights and memory): one forward
        pass per member for all of them; `last_raw_actions` holds their raw actions."""
        slots = sort_slots(self._memory.extend_many(observations, self.spec), self.spec)
        canonical = slots.vectors
        prior = prior_actions(canonical, self.spec)
        mean = np.mean([corrected_actions(m.predict(canonical), prior) for m in self.members], 0)
        return _decided(self, slots.original_actions(mean), observations)

    def reset(self) -> None:
        self.last_raw_action = []
        self.last_raw_actions = []
        self._memory.clear()
        for m in self.members:
            m.reset()

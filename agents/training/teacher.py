"""The imitation teacher: the drain-aware, hedged oracle's split for the state a training env
is in, as the network output that makes the env write it.

Why a module of its own: the labels serve both the DAgger warm start (`agents.training.imitation`)
and the imitation steps during PPO (`bc_lr`, through `agents.training.wrappers.OracleLabel`);
the teacher reads the simulator's true state, which only training may see.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.action_prior import prior_action
from agents.training.config import TrainConfig


def oracle_target(
    env: gym.Env[np.ndarray, np.ndarray], obs_vec: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(network output that makes the env write the teacher's weights, mask of present slots).

    `env` is a training env (its base is a MeshEnv) and `obs_vec` its extended observation
    in canonical slot order (`CanonicalSlots`), the order the target is in;
    the target undoes the action prior, so ``apply_action_prior(target) ==
    encode_weights(teacher's weights)`` up to clipping. The mask is empty where the network
    is not consulted (no telemetry yet).
    """
    from agents.oracle import drain_aware_weights
    from meshcore.features import encode_weights
    from meshcore.model import Weights

    sim = env.unwrapped.sim  # type: ignore[attr-defined]
    spec = config.feature_spec
    state = sim.true_state()  # the coming interval's, at its middle
    best, _ = drain_aware_weights(sim, state, config.teacher_drain_s, config.teacher_pull)
    own = encode_weights(Weights(sim.subsets, best), spec).astype(np.float64)
    full = own[env.get_wrapper_attr("slot_order")]  # the network's (canonical) slot order
    prior, consulted = prior_action(obs_vec, spec)
    mask = spec.mask(len(sim.subsets))
    if not consulted:
        mask = np.zeros_like(mask)
    return np.clip(full - prior, -1.0, 1.0), mask

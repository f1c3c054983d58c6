"""The imitation teacher: the oracle's split for the state a training env is in, as the
network output that makes the env write it.

Why a module of its own: the labels serve both the DAgger warm start (`agents.training.imitation`)
and the imitation steps during PPO (`bc_lr`, through `agents.training.wrappers.OracleLabel`);
the teacher reads the simulator's true state, which only training may see.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from agents.action_prior import apply_action_prior, has_any_data, unshape_correction
from agents.training.config import TrainConfig


def teacher_state(sim: Any, delay_steps: int) -> Any:
    """The true state the teacher labels with: the coming interval's (`delay_steps` 0) or the
    one `delay_steps` intervals back, at its middle (the episode's first interval before that)."""
    step_s = sim.scenario.step_s
    return sim.true_state(max(sim.t_s - delay_steps * step_s, 0.0) + step_s / 2)


MISS_COST_CAP = 0.02
"""Cap on the miss cost that weighs an imitation sample (bad-request fraction per weight
point): beyond it a subset is saturated and the state is lost whatever one point does."""


class TeacherLabel(NamedTuple):
    """What the teacher says about one observation: the network output `oracle_target`
    returns, the mask of present slots, the action prior the target undoes and the cost of a
    one-point miss there (`agents.oracle.miss_cost`, capped; 0 unless asked for)."""

    target: np.ndarray
    mask: np.ndarray
    prior: np.ndarray
    miss_cost: float


def teacher_label(
    env: gym.Env[np.ndarray, np.ndarray],
    obs_vec: np.ndarray,
    config: TrainConfig,
    *,
    with_miss_cost: bool = False,
) -> TeacherLabel:
    """The teacher's `TeacherLabel` for the observation `obs_vec` of training env `env`."""
    from agents.oracle import drain_aware_weights, hedged_weights, miss_cost
    from meshcore.features import encode_weights
    from meshcore.model import Weights

    base = env.unwrapped
    sim = base.sim  # type: ignore[attr-defined]
    spec = config.feature_spec
    state = teacher_state(sim, config.teacher_delay_steps)
    if config.teacher_drain_s > 0:
        best, state = drain_aware_weights(sim, state, config.teacher_drain_s, config.teacher_pull)
    else:
        best = hedged_weights(state, config.teacher_pull)
    weights = Weights(sim.subsets, best)
    full = encode_weights(weights, spec).astype(np.float64)
    prior = apply_action_prior(np.zeros(spec.max_subsets), obs_vec, spec, config.action_prior)
    mask = spec.mask(len(sim.subsets))
    if not has_any_data(obs_vec, spec):  # the network is not consulted there
        mask = np.zeros_like(mask)
    miss = min(miss_cost(state, best), MISS_COST_CAP) if with_miss_cost else 0.0
    return TeacherLabel(unshape_correction(full - prior, config.action_gain), mask, prior, miss)


def oracle_target(
    env: gym.Env[np.ndarray, np.ndarray], obs_vec: np.ndarray, config: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(network output that makes the env write the oracle's weights, mask of present slots).

    `env` is a training env (its base is a MeshEnv); the target undoes the action prior, so
    ``apply_action_prior(target) == encode_weights(oracle weights)`` up to clipping.
    """
    label = teacher_label(env, obs_vec, config)
    return label.target, label.mask

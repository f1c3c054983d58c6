"""The DAgger warm start: fit actor and critic to the teacher before PPO (`imitation_steps`),
and the actor's imitation loss it shares with the imitation steps during PPO (`bc_lr`).

Why a module of its own: it is a training phase of its own, with its own rollouts and sample
weights, run once before `model.learn`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from agents.training.config import TrainConfig
from agents.training.teacher import oracle_target

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize


def actor_mean(policy: Any, obs: Any) -> Any:
    """The Gaussian mean of an SB3 ``ActorCriticPolicy`` for normalized observations `obs`
    (a torch tensor, one row per sample)."""
    return policy.action_net(policy.mlp_extractor.forward_actor(policy.extract_features(obs)))


def _critic_value(policy: Any, obs: Any) -> Any:
    """The value estimate of an SB3 ``ActorCriticPolicy`` for normalized observations `obs`."""
    return policy.value_net(
        policy.mlp_extractor.forward_critic(policy.extract_features(obs))
    ).squeeze(-1)


def imitation_loss(mean: Any, target: Any, weight: Any) -> Any:
    """Weighted mean squared error of the actor's `mean` to the teacher's `target` (torch
    tensors, one row per sample, one column per subset slot): ``weight`` is 0 on absent
    slots and on samples where the network is not consulted, else the sample's weight."""
    return ((mean - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


def imitate_oracle(model: PPO, vecnorm: VecNormalize, config: TrainConfig) -> dict[str, Any]:
    """DAgger warm start of actor and critic from the teacher; returns statistics for
    config.json.

    Round 0 drives the envs with the teacher's weights, later rounds with the student's
    deterministic action; every visited state is labelled with the teacher's target. After
    each round the actor's mean is fitted to the targets (`imitation_loss`, each sample
    weighted by `imitation_bad_weight`), and the critic to the discounted (normalized) returns
    of the visited states, so PPO starts from a sensible policy *and* sensible advantages. The
    step size falls linearly from `imitation_lr` to 1 % of it within each fit.
    """
    import torch
    from tqdm import tqdm

    venv = vecnorm.venv
    n_envs = venv.num_envs
    n_in = vecnorm.observation_space.shape[0]  # type: ignore[index]
    per_round = max(1, config.imitation_steps // (config.imitation_rounds * n_envs))
    slots = config.feature_spec.max_subsets
    raw_obs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    returns: list[np.ndarray] = []
    sample_weights: list[np.ndarray] = []
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.imitation_lr)
    losses: list[float] = []
    gamma = config.gamma
    vecnorm.reset()
    bar = tqdm(
        total=per_round * n_envs * config.imitation_rounds,
        desc="imitation",
        unit="step",
        disable=not config.progress,
        leave=False,
    )
    for rnd in range(config.imitation_rounds):
        obs_r = np.zeros((per_round, n_envs, n_in), dtype=np.float32)
        tgt_r = np.zeros((per_round, n_envs, slots))
        mask_r = np.zeros((per_round, n_envs, slots), dtype=bool)
        rew_r = np.zeros((per_round, n_envs))
        done_r = np.zeros((per_round, n_envs), dtype=bool)
        bad_r = np.zeros((per_round, n_envs))
        for t in range(per_round):
            original = np.asarray(vecnorm.get_original_obs())
            for i, env in enumerate(venv.envs):  # type: ignore[attr-defined]
                tgt_r[t, i], mask_r[t, i] = oracle_target(env, original[i], config)
            obs_r[t] = original
            if rnd == 0:
                actions = tgt_r[t].astype(np.float32)
            else:
                actions, _ = model.predict(vecnorm.normalize_obs(original), deterministic=True)
            _, rew_r[t], done_r[t], infos = vecnorm.step(actions)
            bad_r[t] = [i.get("bad", 0) / max(i.get("requests", 0), 1) for i in infos]
            bar.update(n_envs)
        ret = np.zeros((per_round, n_envs))
        running = np.zeros(n_envs)
        for t in range(per_round - 1, -1, -1):
            running = rew_r[t] + gamma * running * (1.0 - done_r[t])
            ret[t] = running
        keep = max(1, per_round - int(5 / max(1e-6, 1 - gamma)))  # drop unfinished tails
        raw_obs.append(obs_r[:keep].reshape(-1, n_in))
        targets.append(tgt_r[:keep].reshape(-1, slots))
        masks.append(mask_r[:keep].reshape(-1, slots))
        returns.append(ret[:keep].reshape(-1))
        before = np.vstack([np.zeros((1, n_envs)), bad_r[:-1]])  # the step the obs shows
        before[1:][done_r[:-1]] = 0.0  # a new episode's first observation shows nothing
        weight = 1.0 + config.imitation_bad_weight * np.maximum(before, bad_r)
        sample_weights.append(weight[:keep].reshape(-1))
        x = torch.as_tensor(vecnorm.normalize_obs(np.concatenate(raw_obs)), dtype=torch.float32)
        y = torch.as_tensor(np.concatenate(targets), dtype=torch.float32)
        m = torch.as_tensor(np.concatenate(masks), dtype=torch.float32)
        g = torch.as_tensor(np.concatenate(returns), dtype=torch.float32)
        sw = torch.as_tensor(np.concatenate(sample_weights), dtype=torch.float32)[:, None]
        n = x.shape[0]
        gen = torch.Generator().manual_seed(config.seed + rnd)
        n_batches = config.imitation_epochs * -(-n // config.batch_size)
        step = 0
        for _ in range(config.imitation_epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch_size):
                for group in optimizer.param_groups:
                    group["lr"] = config.imitation_lr * (1.0 - 0.99 * step / n_batches)
                step += 1
                idx = perm[start : start + config.batch_size]
                actor_loss = imitation_loss(actor_mean(policy, x[idx]), y[idx], m[idx] * sw[idx])
                critic_loss = ((_critic_value(policy, x[idx]) - g[idx]) ** 2).mean()
                loss = actor_loss + config.vf_coef * critic_loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
            losses.append(float(actor_loss.detach()))
    bar.close()
    return {
        "imitation_samples": int(sum(len(o) for o in raw_obs)),
        "imitation_env_steps": int(per_round * n_envs * config.imitation_rounds),
        "imitation_first_actor_loss": losses[0] if losses else None,
        "imitation_final_actor_loss": losses[-1] if losses else None,
    }

"""The DAgger warm start: fit actor and critic to the teacher before PPO (`imitation_steps`).

Why a module of its own: it is a training phase of its own, with its own rollouts, sample
weights (bad fraction, miss cost) and smoothness penalty, run once before `model.learn`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from agents.training.config import TrainConfig
from agents.training.teacher import teacher_label

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

MISS_RELATIVE_FLOOR = 0.001
"""Least episode bad-request fraction `imitation_miss_relative` divides by (steady-50's)."""


def episode_means(values: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Each (step, env) entry of `values` replaced by the mean over its episode's steps in
    this array (`done[t, i]`: step t ended env i's episode; the array's ends cut episodes)."""
    steps, n_envs = values.shape
    episode = np.vstack([np.zeros((1, n_envs), dtype=np.int64), np.cumsum(done[:-1], axis=0)])
    ids = (episode + np.arange(n_envs) * steps).ravel()  # one id per (env, episode)
    sums = np.bincount(ids, weights=np.asarray(values, dtype=np.float64).ravel())
    counts = np.bincount(ids)
    means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    return means[ids].reshape(steps, n_envs)


QUIET_TICKS = 6
"""`imitation_smooth` penalizes a student's move only where the teacher has not moved for this
many ticks (the suite's 30 s telemetry window at 5 s ticks): right after the teacher moves, a
student that sees the change through the window has to catch up."""


def quiet_pairs(full: np.ndarray, mask: np.ndarray, done: np.ndarray) -> np.ndarray:
    """(pairs, 2) indices, into the round's samples flattened time-major, of consecutive ticks
    (t, t + 1) of one env's episode where the teacher's full action `full` (steps, envs, slots)
    did not change from t - QUIET_TICKS + 1 to t + 1 on the present slots `mask`."""
    steps, n_envs = full.shape[:2]
    out: list[tuple[int, int]] = []
    for i in range(n_envs):
        quiet = 0
        for t in range(steps - 1):
            present = mask[t, i] | mask[t + 1, i]
            same = not done[t, i] and bool(
                np.all(np.abs(full[t + 1, i] - full[t, i])[present] < 1e-6)
            )
            quiet = quiet + 1 if same else 0
            if quiet >= QUIET_TICKS and present.any():
                out.append((t * n_envs + i, (t + 1) * n_envs + i))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _actor_mean(policy: Any, x: Any) -> Any:
    latent_pi, _ = policy.mlp_extractor(policy.extract_features(x))
    return policy.action_net(latent_pi)


def imitate_oracle(model: PPO, vecnorm: VecNormalize, config: TrainConfig) -> dict[str, Any]:
    """DAgger warm start of actor and critic from the oracle; returns statistics for config.json.

    Round 0 drives the envs with the oracle's weights, later rounds with the student's
    deterministic action; every visited state is labelled with the oracle's target. After each
    round the actor's mean is fitted by masked MSE to the targets, and the critic to the
    discounted (normalized) returns of the visited states, so PPO starts from a sensible
    policy *and* sensible advantages.
    """
    import torch

    venv = vecnorm.venv
    n_envs = venv.num_envs
    n_in = vecnorm.observation_space.shape[0]  # type: ignore[index]
    per_round = max(1, config.imitation_steps // (config.imitation_rounds * n_envs))
    spec = config.feature_spec
    raw_obs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    returns: list[np.ndarray] = []
    sample_weights: list[np.ndarray] = []
    priors: list[np.ndarray] = []
    pairs: list[np.ndarray] = []
    smooth = config.imitation_smooth > 0
    policy = model.policy
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.imitation_lr)
    losses: list[float] = []
    gamma = config.gamma
    vecnorm.reset()
    for rnd in range(config.imitation_rounds):
        obs_r = np.zeros((per_round, n_envs, n_in), dtype=np.float32)
        tgt_r = np.zeros((per_round, n_envs, spec.max_subsets))
        mask_r = np.zeros((per_round, n_envs, spec.max_subsets), dtype=bool)
        rew_r = np.zeros((per_round, n_envs))
        done_r = np.zeros((per_round, n_envs), dtype=bool)
        bad_r = np.zeros((per_round, n_envs))
        prior_r = np.zeros((per_round, n_envs, spec.max_subsets))
        miss_r = np.zeros((per_round, n_envs))
        for t in range(per_round):
            original = np.asarray(vecnorm.get_original_obs())
            for i, env in enumerate(venv.envs):  # type: ignore[attr-defined]
                tgt_r[t, i], mask_r[t, i], prior_r[t, i], miss_r[t, i] = teacher_label(
                    env, original[i], config, with_miss_cost=config.imitation_miss_weight > 0
                )
            obs_r[t] = original
            if rnd == 0:
                actions = tgt_r[t].astype(np.float32)
            else:
                actions, _ = model.predict(vecnorm.normalize_obs(original), deterministic=True)
            _, rew_r[t], done_r[t], infos = vecnorm.step(actions)
            bad_r[t] = [i.get("bad", 0) / max(i.get("requests", 0), 1) for i in infos]
        ret = np.zeros((per_round, n_envs))
        running = np.zeros(n_envs)
        for t in range(per_round - 1, -1, -1):
            running = rew_r[t] + gamma * running * (1.0 - done_r[t])
            ret[t] = running
        keep = max(1, per_round - int(5 / max(1e-6, 1 - gamma)))  # drop unfinished tails
        if smooth:
            offset = sum(len(o) for o in raw_obs)
            pairs.append(quiet_pairs(tgt_r[:keep] + prior_r[:keep], mask_r[:keep], done_r[:keep]))
            pairs[-1] += offset
            priors.append(prior_r[:keep].reshape(-1, spec.max_subsets))
        raw_obs.append(obs_r[:keep].reshape(-1, n_in))
        targets.append(tgt_r[:keep].reshape(-1, spec.max_subsets))
        masks.append(mask_r[:keep].reshape(-1, spec.max_subsets))
        returns.append(ret[:keep].reshape(-1))
        before = np.vstack([np.zeros((1, n_envs)), bad_r[:-1]])  # the step the obs shows
        before[1:][done_r[:-1]] = 0.0  # a new episode's first observation shows nothing
        if config.imitation_miss_relative:
            miss_r /= np.maximum(episode_means(bad_r, done_r), MISS_RELATIVE_FLOOR)
        weight = (
            1.0
            + config.imitation_bad_weight * np.maximum(before, bad_r)
            + config.imitation_miss_weight * miss_r
        )
        sample_weights.append(weight[:keep].reshape(-1))
        x = torch.as_tensor(vecnorm.normalize_obs(np.concatenate(raw_obs)), dtype=torch.float32)
        y = torch.as_tensor(np.concatenate(targets), dtype=torch.float32)
        m = torch.as_tensor(np.concatenate(masks), dtype=torch.float32)
        g = torch.as_tensor(np.concatenate(returns), dtype=torch.float32)
        sw = torch.as_tensor(np.concatenate(sample_weights), dtype=torch.float32)[:, None]
        if smooth:
            pr = torch.as_tensor(np.concatenate(priors), dtype=torch.float32)
            pair_index = torch.as_tensor(np.concatenate(pairs), dtype=torch.long)
        n = x.shape[0]
        gen = torch.Generator().manual_seed(config.seed + rnd)
        n_batches = config.imitation_epochs * -(-n // config.batch_size)
        step = 0
        for _ in range(config.imitation_epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, config.batch_size):
                if config.imitation_anneal:
                    for group in optimizer.param_groups:
                        group["lr"] = config.imitation_lr * (1.0 - 0.99 * step / n_batches)
                step += 1
                idx = perm[start : start + config.batch_size]
                features = policy.extract_features(x[idx])
                latent_pi, latent_vf = policy.mlp_extractor(features)
                mean = policy.action_net(latent_pi)
                value = policy.value_net(latent_vf).squeeze(-1)
                mw = m[idx] * sw[idx]
                actor_loss = ((mean - y[idx]) ** 2 * mw).sum() / mw.sum().clamp(min=1.0)
                critic_loss = ((value - g[idx]) ** 2).mean()
                loss = actor_loss + config.vf_coef * critic_loss
                if smooth and len(pair_index) > 0:
                    pick = pair_index[
                        torch.randint(len(pair_index), (config.batch_size,), generator=gen)
                    ]
                    now, nxt = pick[:, 0], pick[:, 1]
                    both = m[now] * m[nxt]
                    moved = (_actor_mean(policy, x[now]) + pr[now]) - (
                        _actor_mean(policy, x[nxt]) + pr[nxt]
                    )
                    smooth_loss = (moved**2 * both).sum() / both.sum().clamp(min=1.0)
                    loss = loss + config.imitation_smooth * smooth_loss
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
                optimizer.step()
            losses.append(float(actor_loss.detach()))
    return {
        "imitation_samples": int(sum(len(o) for o in raw_obs)),
        "imitation_env_steps": int(per_round * n_envs * config.imitation_rounds),
        "imitation_first_actor_loss": losses[0] if losses else None,
        "imitation_final_actor_loss": losses[-1] if losses else None,
        "imitation_quiet_pairs": int(sum(len(p) for p in pairs)),
    }

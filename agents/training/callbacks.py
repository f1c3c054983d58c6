"""The stable-baselines3 callback of a training run.

Why a module of its own: everything that happens between PPO's steps lives here (progress
bar, episode log, periodic resumable checkpoints, and the imitation pass after every
rollout when `bc_lr` > 0), built by a function so that importing it imports neither torch nor
stable-baselines3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from agents.training.artifacts import Episode, save_checkpoint
from agents.training.imitation import actor_mean, imitation_loss


def run_callback(
    *,
    run_dir: Path,
    total_steps: int,
    checkpoint_every: int,
    episodes: list[Episode],
    progress: bool,
    bc_lr: float,
    batch_size: int,
) -> Any:
    """Progress bar, episode log, periodic resumable checkpoints and (``bc_lr`` > 0) an
    imitation pass after every rollout, in one SB3 callback.

    (Built by a function so that importing this module does not import stable-baselines3.)
    """
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class RunCallback(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self._bar: Any = None
            self._next_ckpt = 0
            self._targets: list[np.ndarray] = []
            self._masks: list[np.ndarray] = []
            self._bc_optimizer: Any = None
            self.bc_passes = 0

        def _imitate_rollout(self) -> None:
            """One pass of Adam steps fitting the actor's mean to the rollout's teacher labels
            (`imitation_loss`, every sample weighing the same), the step size annealed
            linearly to 0 over total_steps."""
            model: Any = self.model
            buffer = model.rollout_buffer
            if bc_lr <= 0 or len(self._targets) != buffer.buffer_size:
                return
            policy: Any = model.policy
            actor = [
                *policy.mlp_extractor.policy_net.parameters(),
                *policy.action_net.parameters(),
            ]
            if self._bc_optimizer is None:
                self._bc_optimizer = torch.optim.Adam(actor, lr=bc_lr)
            lr = bc_lr * max(0.0, 1.0 - model.num_timesteps / max(total_steps, 1))
            for group in self._bc_optimizer.param_groups:
                group["lr"] = lr
            obs = torch.as_tensor(buffer.observations.reshape(-1, buffer.observations.shape[-1]))
            y = torch.as_tensor(np.stack(self._targets).reshape(obs.shape[0], -1))
            m = torch.as_tensor(np.stack(self._masks).reshape(obs.shape[0], -1))
            y, m = y.float(), m.float()
            perm = torch.randperm(obs.shape[0])
            for start in range(0, obs.shape[0], batch_size):
                idx = perm[start : start + batch_size]
                loss = imitation_loss(actor_mean(policy, obs[idx]), y[idx], m[idx])
                self._bc_optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(actor, 0.5)
                self._bc_optimizer.step()
            self.bc_passes += 1

        def _on_rollout_start(self) -> None:
            self._targets.clear()
            self._masks.clear()

        def _on_rollout_end(self) -> None:
            self._imitate_rollout()

        def _on_training_start(self) -> None:
            start = self.model.num_timesteps
            if checkpoint_every:
                self._next_ckpt = (start // checkpoint_every + 1) * checkpoint_every
            if progress:
                self._bar = tqdm(
                    total=total_steps, initial=start, unit="step", desc="train", smoothing=0.05
                )

        def _on_step(self) -> bool:
            infos = self.locals.get("infos", [])
            if bc_lr > 0 and infos and "oracle_target" in infos[0]:
                self._targets.append(np.stack([i["oracle_target"] for i in infos]))
                self._masks.append(np.stack([i["oracle_mask"] for i in infos]))
            for info in infos:
                ep = info.get("episode")
                if ep is not None:
                    episodes.append(
                        (self.num_timesteps, float(ep["r"]), int(ep["l"]), str(info["scenario"]))
                    )
            if self._bar is not None:
                self._bar.n = min(self.num_timesteps, total_steps)
                if episodes and self.n_calls % 50 == 0:
                    recent = float(np.mean([e[1] for e in episodes[-50:]]))
                    self._bar.set_postfix(ep_return=f"{recent:.2f}", refresh=False)
                self._bar.update(0)
            if checkpoint_every and self.num_timesteps >= self._next_ckpt:
                save_checkpoint(self.model, run_dir, episodes)
                self._next_ckpt += checkpoint_every
            return True

        def _on_training_end(self) -> None:
            if self._bar is not None:
                self._bar.n = min(self.num_timesteps, total_steps)
                self._bar.close()

    return RunCallback()

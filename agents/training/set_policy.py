"""The set actor in torch, for training: the twin of `agents.set_network` inside SB3's PPO.

Why a module of its own: SB3's ``ActorCriticPolicy`` builds a flat MLP and a Linear action
head that mixes every slot; the set actor scores each slot with shared weights, so this
module gives SB3 an extractor whose actor output *is* the per-slot Gaussian mean (the action
head becomes the identity), and an observation normalizer whose statistics are shared across
slots (`agents.set_network.tie_statistics`). The critic is never served and stays a flat MLP.
`set_actor_linears` lists the actor's layers in the order `agents.set_network` stores them.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from torch import nn

from agents.obs_extensions import slot_layout
from agents.set_network import set_input_width, tie_statistics
from meshcore.features import FeatureSpec

OUTPUT_GAIN = 0.01
"""Orthogonal-init gain of the output layer (SB3 gives its action head the same): the first
actions stay near the action prior until training moves them."""


class SetExtractor(nn.Module):
    """`agents.set_network`'s actor (encoder, mean context, head) and a flat MLP critic, with
    the ``forward_actor``/``forward_critic`` interface of SB3's ``MlpExtractor``."""

    def __init__(self, features_dim: int, spec: FeatureSpec, net_arch: list[int]) -> None:
        super().__init__()
        slots, route = slot_layout(spec)
        self.slots: torch.Tensor
        self.route: torch.Tensor
        self.register_buffer("slots", torch.as_tensor(slots, dtype=torch.long), persistent=False)
        self.register_buffer("route", torch.as_tensor(route, dtype=torch.long), persistent=False)
        widths = [set_input_width(spec), *net_arch]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.head = nn.Linear(2 * widths[-1], widths[-1])
        self.output = nn.Linear(widths[-1], 1)
        critic: list[nn.Module] = []
        width = features_dim
        for w in net_arch:
            critic += [nn.Linear(width, w), nn.Tanh()]
            width = w
        self.value_net = nn.Sequential(*critic)
        self.latent_dim_pi = spec.max_subsets
        self.latent_dim_vf = width

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        per_slot = features[:, self.slots]
        shared = features[:, self.route].unsqueeze(1).expand(-1, per_slot.shape[1], -1)
        h = torch.cat([per_slot, shared], dim=2)
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        context = h.mean(dim=1, keepdim=True).expand_as(h)
        z = torch.tanh(self.head(torch.cat([h, context], dim=2)))
        return self.output(z).squeeze(-1)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(features)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


class SetActorCriticPolicy(ActorCriticPolicy):
    """SB3's Gaussian actor-critic with `SetExtractor`: the action mean is the extractor's
    per-slot output (no action head of its own); ``feature_spec`` is `FeatureSpec.to_dict`."""

    def __init__(self, *args: Any, feature_spec: dict[str, Any], **kwargs: Any) -> None:
        self.feature_spec = dict(feature_spec)
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        net_arch = self.net_arch["pi"] if isinstance(self.net_arch, dict) else self.net_arch
        self.mlp_extractor = SetExtractor(  # type: ignore[assignment]
            self.features_dim, FeatureSpec.from_dict(self.feature_spec), list(net_arch)
        )

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()
        extractor = self.mlp_extractor
        assert isinstance(extractor, SetExtractor)
        nn.init.orthogonal_(extractor.output.weight, gain=OUTPUT_GAIN)
        nn.init.zeros_(extractor.output.bias)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "feature_spec": self.feature_spec}


def set_actor_linears(policy: ActorCriticPolicy) -> list[nn.Linear]:
    """The set actor's Linear layers in `agents.set_network`'s order: encoder, head, output."""
    extractor = policy.mlp_extractor
    if not isinstance(extractor, SetExtractor):
        raise TypeError("not a set actor policy")
    return [*extractor.encoder, extractor.head, extractor.output]


class TiedRunningMeanStd(RunningMeanStd):
    """VecNormalize's running statistics, shared across slots after every update (each
    slot's input f is normalized like every other slot's input f)."""

    def __init__(self, spec: dict[str, Any], shape: tuple[int, ...]) -> None:
        super().__init__(shape=shape)
        self.spec = dict(spec)

    def update(self, arr: np.ndarray) -> None:
        super().update(arr)
        self.mean, self.var = tie_statistics(self.mean, self.var, FeatureSpec.from_dict(self.spec))

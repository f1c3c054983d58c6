"""Fixed-rule policies people use today, each a `Policy` over the same `Observation`.

They are the yardsticks the learned policy has to beat in `meshpilot evaluate`.
"""

from __future__ import annotations

from controller.core.model import Observation, Weights, largest_remainder


def _capacities(obs: Observation) -> list[float]:
    caps = list(obs.capacity_hint_rps)
    return caps if caps and sum(caps) > 0 else [1.0] * len(obs.subsets)


class EqualPolicy:
    """The same weight for every subset (Istio's behaviour without a weighted route)."""

    name = "equal"

    def decide(self, obs: Observation) -> Weights:
        return Weights(obs.subsets, largest_remainder([1.0] * len(obs.subsets)))

    def reset(self) -> None:
        return None


class ProportionalPolicy:
    """Weights proportional to each subset's nominal capacity (rps)."""

    name = "proportional"

    def decide(self, obs: Observation) -> Weights:
        return Weights(obs.subsets, largest_remainder(_capacities(obs)))

    def reset(self) -> None:
        return None

"""How an `Observation` becomes the policy's vector, and how the policy's action becomes `Weights`.

The same `encode`/`decode` pair runs in the simulator env, in training and in the live loop, and
the `FeatureSpec.hash` travels with every exported model so a model trained on one layout can
never be served against another.

Observation vector (float32, length ``max_subsets * PER_SUBSET + GLOBAL``), per subset slot:

====  ===============  ==========================================================
 idx  feature          meaning
====  ===============  ==========================================================
  0   present          1 if the slot holds a subset, else 0 (and all zeros after)
  1   has_data         1 if Prometheus had a rate for the subset, else 0
  2   weight           configured weight / 100
  3   traffic_share    observed rps / route rps (0 without data)
  4   error_ratio      5xx / all, 0..1 (0 without data)
  5   p99              p99_ms / slo_ms, clipped to ``p99_clip`` (0 without data)
  6   slow_ratio       fraction slower than the SLO, 0..1 (0 without data)
  7   capacity_share   nominal capacity share when known, else 1/n
====  ===============  ==========================================================

followed by two route features: log1p(route rps) / log1p(rps_scale) and
min(staleness_s / staleness_scale_s, 1).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from gymnasium import spaces

from meshcore.model import Observation, Weights, largest_remainder

PER_SUBSET = 8
GLOBAL = 2
_LAYOUT_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec:
    """Layout and scaling of the policy's observation and action.

    max_subsets: slots K (routes with fewer subsets are masked); slo_ms: latency that makes a
    request "bad" (ms); p99_clip: cap of p99/slo; rps_scale: route rate mapped to ~1 (rps);
    staleness_scale_s: data age mapped to 1 (s); action_temperature: logit scale applied to the
    Box[-1, 1] action before the softmax (3.0 lets one subset get ~400x another's share).
    """

    max_subsets: int = 8
    slo_ms: float = 250.0
    p99_clip: float = 8.0
    rps_scale: float = 5000.0
    staleness_scale_s: float = 60.0
    action_temperature: float = 3.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_subsets <= 100:
            raise ValueError(f"max_subsets must be 1..100, got {self.max_subsets}")
        for name in ("slo_ms", "p99_clip", "rps_scale", "staleness_scale_s", "action_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FeatureSpec.{name} must be a positive number, got {value}")

    @property
    def obs_size(self) -> int:
        return self.max_subsets * PER_SUBSET + GLOBAL

    @property
    def hash(self) -> str:
        """Stable id of this layout (16 hex chars); changes whenever encode would change."""
        payload = json.dumps({"layout": _LAYOUT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def observation_space(self) -> spaces.Box:
        return spaces.Box(low=0.0, high=self.p99_clip, shape=(self.obs_size,), dtype=np.float32)

    def action_space(self) -> spaces.Box:
        return spaces.Box(low=-1.0, high=1.0, shape=(self.max_subsets,), dtype=np.float32)

    def mask(self, n_subsets: int) -> np.ndarray:
        if not 1 <= n_subsets <= self.max_subsets:
            raise ValueError(
                f"route has {n_subsets} subsets; this feature spec handles 1..{self.max_subsets}"
            )
        m = np.zeros(self.max_subsets, dtype=bool)
        m[:n_subsets] = True
        return m

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> FeatureSpec:
        return cls(**data)  # type: ignore[arg-type]


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def encode(obs: Observation, spec: FeatureSpec) -> np.ndarray:
    """Observation -> float32 vector laid out as in the module docstring."""
    n = len(obs.subsets)
    spec.mask(n)
    vec = np.zeros(spec.obs_size, dtype=np.float32)
    total = obs.total_rps
    caps = obs.capacity_hint_rps
    cap_total = math.fsum(caps) if caps else 0.0
    for i, st in enumerate(obs.stats):
        base = i * PER_SUBSET
        has = st.has_data
        vec[base + 0] = 1.0
        vec[base + 1] = 1.0 if has else 0.0
        vec[base + 2] = st.weight / 100.0
        if has and math.isfinite(total) and total > 0:
            vec[base + 3] = max(st.rps, 0.0) / total
        vec[base + 4] = min(max(_finite_or(st.error_ratio, 0.0), 0.0), 1.0)
        vec[base + 5] = min(max(_finite_or(st.p99_ms, 0.0), 0.0) / spec.slo_ms, spec.p99_clip)
        vec[base + 6] = min(max(_finite_or(st.slow_ratio, 0.0), 0.0), 1.0)
        vec[base + 7] = (caps[i] / cap_total) if cap_total > 0 else 1.0 / n
    g = spec.max_subsets * PER_SUBSET
    vec[g] = math.log1p(max(_finite_or(total, 0.0), 0.0)) / math.log1p(spec.rps_scale)
    stale_s = math.inf if math.isnan(obs.staleness_s) else obs.staleness_s  # unknown: stale
    vec[g + 1] = min(max(stale_s, 0.0) / spec.staleness_scale_s, 1.0)
    return np.clip(vec, 0.0, spec.p99_clip)


def decode(
    action: np.ndarray | Sequence[float],
    mask: np.ndarray | Sequence[bool],
    subsets: Sequence[str],
    *,
    temperature: float = 3.0,
) -> Weights:
    """Box[-1, 1]^K action -> masked softmax -> largest-remainder integer `Weights`.

    Non-finite action entries count as 0 (neutral); masked slots always get weight 0 and are
    not part of the result, which names exactly the first ``len(subsets)`` slots.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    m = np.asarray(mask, dtype=bool).reshape(-1)
    if a.shape != m.shape:
        raise ValueError(f"action has {a.size} entries but mask has {m.size}")
    if int(m.sum()) == 0:
        raise ValueError("decode needs at least one unmasked subset")
    if int(m.sum()) != len(subsets) or not m[: len(subsets)].all():
        raise ValueError("mask must select exactly the first len(subsets) slots")
    a = np.where(np.isfinite(a), a, 0.0)
    logits = np.clip(a, -1.0, 1.0) * temperature
    logits = np.where(m, logits, -np.inf)
    logits -= logits[m].max()
    exp = np.where(m, np.exp(logits), 0.0)
    shares = exp / exp.sum()
    values = largest_remainder(list(shares[: len(subsets)]))
    return Weights(tuple(subsets), tuple(values))


def encode_weights(weights: Weights, spec: FeatureSpec) -> np.ndarray:
    """Inverse of `decode` up to rounding: the action whose decode gives (about) `weights`.

    Used to seed policies and to test decode. Zero weights map to -1 and, when there are any,
    the largest weight to +1, so the zeros get the smallest share decode can express (e^-6 of
    the largest with the default temperature), which rounds to 0.
    """
    vals = np.asarray(weights.values_tuple, dtype=np.float64) / 100.0
    logits = np.log(np.maximum(vals, 1e-12)) / spec.action_temperature
    positive = vals > 0
    if positive.all():
        logits -= (logits[positive].max() + logits[positive].min()) / 2.0
    else:
        logits -= logits[positive].max() - 1.0
    action = np.full(spec.max_subsets, -1.0, dtype=np.float32)
    action[: len(vals)] = np.clip(logits, -1.0, 1.0)
    return action

"""One decision or operator action as a value: `DecisionRecord` and the JSON it carries.

Kept apart from SQLite so the loop and the API can build, compare and serve records without
a store; non-finite floats are normalized on creation so a record equals its read-back copy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from meshcore import Observation, SubsetStats


def json_safe(value: Any) -> Any:
    """A copy of `value` that strict JSON accepts: non-finite floats become None (null)."""
    kind = type(value)  # exact types first: this runs for every decision of every tick
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if kind is dict:
        return {str(k): json_safe(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


STATS_FIELDS = tuple(f.name for f in fields(SubsetStats))


def encode_observation(obs: Observation) -> dict[str, Any]:
    """An `Observation` as the JSON object stored with a decision (NaN where no data -> null)."""
    return {
        "route": obs.route.key,
        "timestamp_s": json_safe(obs.timestamp_s),
        "staleness_s": json_safe(obs.staleness_s),
        "subsets": [
            {"name": name, **{f: json_safe(getattr(stats, f)) for f in STATS_FIELDS}}
            for name, stats in zip(obs.subsets, obs.stats, strict=True)
        ],
        "capacity_hint_rps": json_safe(obs.capacity_hint_rps),
        "slo_ms": json_safe(obs.slo_ms),
        "window_s": json_safe(obs.window_s),
        "balancer": obs.balancer,
    }


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """One decision for one route in one tick, as stored and as served by the API.

    id: assigned by the store (leave None when recording); ts_s: the loop's clock when it
    decided (s); route: `RouteRef.key`; phase: the guard's phase; reason: the guard's text;
    outcome: what happened at the actuator ("written", "conflict-retried" (written after a
    conflict and a fresh read), "unchanged", "held", "shadow", "follower" (decided, not the
    leader), "error: ..." (temporary, the route holds), "failed: ..." (permanent, the route is
    not managed until it recovers)); observation: `encode_observation` of what was seen;
    raw_action: the policy's raw action vector; proposed: the policy's split in points;
    written: the guarded split that was (or, in shadow, would have been) written; wrote: whether
    the actuator was called; reward: the reward of the previous action, None if unknown;
    policy: policy name; writer: identity of the writing replica (pod name), for leader checks;
    caller: who took an operator action (``token``, a Kubernetes user, ``meshpilot`` for
    controls restored at start), None for the controller's own decisions; action: the
    operator action (``pin``, ``release``, ``pause``, ``resume``, ``shadow``, ``restore``);
    detail: its arguments and the controls before and after. An operator action's reason is
    the one the operator gave ("" when none) and its outcome ``operator: <action>``.

    Non-finite floats are stored as null: the observation reads back with None there, the
    raw action with NaN, and a NaN reward reads back as None (it is normalized on creation so
    a record equals its read-back copy).
    """

    id: int | None = None
    ts_s: float
    route: str
    phase: str
    reason: str
    outcome: str
    observation: dict[str, Any] | None = None
    raw_action: list[float] | None = None
    proposed: dict[str, int] | None = None
    written: dict[str, int] | None = None
    wrote: bool = False
    reward: float | None = None
    policy: str = ""
    writer: str = ""
    caller: str | None = None
    action: str | None = None
    detail: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.ts_s):
            raise ValueError(f"decision ts_s must be a finite time in s, got {self.ts_s}")
        if not self.route:
            raise ValueError("decision route must be a route key, got an empty string")
        fixed: dict[str, Any] = {
            "wrote": bool(self.wrote),
            "observation": None if self.observation is None else json_safe(self.observation),
            "raw_action": None if self.raw_action is None else [float(x) for x in self.raw_action],
            "proposed": None if self.proposed is None else dict(self.proposed),
            "written": None if self.written is None else dict(self.written),
            "detail": None if self.detail is None else json_safe(self.detail),
            "reward": (
                float(self.reward)
                if self.reward is not None and math.isfinite(self.reward)
                else None
            ),
        }
        for name, value in fixed.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """A strict-JSON-ready dict (NaN in the raw action becomes null)."""
        result: dict[str, Any] = json_safe(asdict(self))
        return result

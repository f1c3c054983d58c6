"""Policies as `meshpilot serve` runs them, for measuring claims "as served" in simulation.

Why: a raw policy writes every proposal at once, but in production its split passes the
supervisor (fallback to the planner when it does visible harm) and the guard (at most
``max_step`` points per subset per tick except relief from a version in distress,
``min_change``, floors, hold on stale data) before
anything is written. A number measured raw is not the number an operator gets. `served_setup`
builds, per episode, what `serve` builds with its default settings:

* the policy behind `SupervisedPolicy` with its defaults, exactly as `serve` wraps it when
  ``supervisor`` is on (the default) — except names already ``supervised:...`` (wrapped once,
  by the registry) and the oracles (``oracle*``: simulation-only yardsticks that know the
  truth; they stay raw, supervisor and guard alike, so ratios to them keep their meaning);
* a fresh `Guard` with `GuardSettings`' defaults (`GuardSettings().to_config()`: what `serve`
  uses when neither file, environment nor options set ``guard``), without pins, pause or
  shadow. `agents.rollout.run_episode` calls its ``review`` every step with the route's
  current weights, the proposal, the observation and the simulator's clock (simulated s), as
  `controller.loop` calls it every tick with the loop's clock (which reads simulated s under
  ``serve --mesh sim``), and writes only what the `Verdict` says to write.

`agents` may not import `controller`, so the combination is made here and handed down as a
module-level function (it pickles by name into `run_evaluation`'s spawned workers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.registry import SUPERVISED_PREFIX, make_policy
from meshcore.ports import Policy

if TYPE_CHECKING:  # deferred at run time: `meshpilot --help` should not load them
    from agents.rollout import Gate
    from controller.guard import GuardConfig

__all__ = [
    "YARDSTICK_PREFIX",
    "as_served",
    "is_yardstick",
    "served_guard_config",
    "served_setup",
]

YARDSTICK_PREFIX = "oracle"
"""Names starting with this (``oracle``, ``oracle-late``, ``oracle-hindsight``) stay raw."""


def is_yardstick(name: str) -> bool:
    """True for the oracles: they know the simulator's truth, cannot be served, stay raw."""
    return name.startswith(YARDSTICK_PREFIX)


def served_guard_config() -> GuardConfig:
    """The guard `meshpilot serve` builds with default settings (``max_step`` 10 points,
    ``min_change`` 3 points, ``hold_s`` and ``stale_after_s`` 30 s, ``decay_step`` 5 points,
    no floors, baseline: the first weights seen)."""
    from controller.settings import GuardSettings

    return GuardSettings().to_config()


def as_served(policy: Policy, *, supervise: bool = True) -> tuple[Policy, Gate]:
    """`policy` as `serve` runs it: behind a default `SupervisedPolicy` when `supervise` (pass
    False for a policy that already is one), and a fresh default guard for one episode."""
    from agents.supervisor import SupervisedPolicy
    from controller.guard import Guard

    served = SupervisedPolicy(policy) if supervise else policy
    return served, Guard(served_guard_config())


def served_setup(name: str) -> tuple[Policy, Gate | None]:
    """A fresh (policy, gate) for one episode of the policy called `name`, as served.

    The gate is None (raw) for the yardsticks (`is_yardstick`). Unknown names raise the
    registry's `ConfigError`.
    """
    policy = make_policy(name)
    if is_yardstick(name):
        return policy, None
    return as_served(policy, supervise=not name.startswith(SUPERVISED_PREFIX))

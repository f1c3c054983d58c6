"""Policy names on the command line -> `Policy` objects (see DESIGN.md for the list).

``ppo`` is the shipped default model and ``ppo:PATH`` a model file; both are loaded by
`agents.policy_file` and served by `agents.network` (numpy only). They and the oracle (which
needs the simulator) are imported only when asked for, so listing names or building a
baseline stays light for the live loop.
"""

from __future__ import annotations

from collections.abc import Callable

from agents.baselines import (
    CanaryPolicy,
    EqualPolicy,
    EwmaPolicy,
    GreedyPolicy,
    ProportionalPolicy,
    SqrtPolicy,
)
from meshcore.errors import ConfigError
from meshcore.ports import Policy

PPO_PREFIX = "ppo:"
SUPERVISED_PREFIX = "supervised:"


def _oracle() -> Policy:
    """Imported on demand: the oracle pulls in the simulator (numba), which serving never needs."""
    from agents.oracle import OraclePolicy

    return OraclePolicy()


def _planner() -> Policy:
    from agents.planner import PlannerPolicy

    return PlannerPolicy()


def _oracle_late() -> Policy:
    from agents.oracle import DelayedOraclePolicy

    return DelayedOraclePolicy(delay_steps=1)


def _oracle_hindsight() -> Policy:
    from agents.oracle import HindsightOraclePolicy

    return HindsightOraclePolicy()


_FACTORIES: dict[str, Callable[[], Policy]] = {
    "equal": EqualPolicy,
    "proportional": ProportionalPolicy,
    "sqrt": SqrtPolicy,
    "greedy": GreedyPolicy,
    "canary": CanaryPolicy,
    "ewma": EwmaPolicy,
    "planner": _planner,
    "oracle": _oracle,
    "oracle-late": _oracle_late,
    "oracle-hindsight": _oracle_hindsight,
}


def policy_names() -> list[str]:
    """Every accepted policy name, ``ppo:PATH`` standing for any model file."""
    return ["ppo", "ppo:PATH", *sorted(_FACTORIES), "supervised:NAME"]


def _load_ppo(path: str | None) -> Policy:
    what = "the shipped PPO model" if path is None else f"the PPO model {path}"
    try:
        from agents.policy_file import load_ppo_policy
    except ImportError as err:
        raise ConfigError(
            f"cannot load {what}: the PPO policy module is not available ({err})"
        ) from err
    try:
        policy: Policy = load_ppo_policy(path)
    except OSError as err:
        raise ConfigError(f"cannot load {what}: {err.strerror or err}") from err
    return policy


def make_policy(name: str) -> Policy:
    """Build the policy called `name`; unknown names raise `ConfigError` listing the known ones."""
    if name.startswith(SUPERVISED_PREFIX):
        from agents.supervisor import SupervisedPolicy

        return SupervisedPolicy(make_policy(name[len(SUPERVISED_PREFIX) :]))
    if name == "ppo":
        return _load_ppo(None)
    if name.startswith(PPO_PREFIX):
        path = name[len(PPO_PREFIX) :]
        if not path:
            raise ConfigError("policy 'ppo:' needs a model path, e.g. ppo:runs/x/policy.npz")
        return _load_ppo(path)
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown policy {name!r}; choose one of: {', '.join(policy_names())}"
        ) from None
    return factory()

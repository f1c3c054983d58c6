"""Policy names on the command line -> `Policy` objects (see DESIGN.md for the list)."""

from __future__ import annotations

from collections.abc import Callable

from agents.baselines import EqualPolicy, ProportionalPolicy
from controller.core.errors import ConfigError
from controller.core.ports import Policy

_FACTORIES: dict[str, Callable[[], Policy]] = {
    "equal": EqualPolicy,
    "proportional": ProportionalPolicy,
}


def policy_names() -> list[str]:
    return sorted(_FACTORIES)


def make_policy(name: str) -> Policy:
    """Build the policy called `name`; unknown names raise `ConfigError` listing the known ones."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown policy {name!r}; choose one of: {', '.join(policy_names())}"
        ) from None
    return factory()

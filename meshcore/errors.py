"""meshpilot's own error tree.

Adapters translate library errors (HTTP, kubernetes ApiException, timeouts) into one of two
kinds so the control loop can decide what to do without knowing which library failed:
a `TemporaryError` means "hold and retry next tick", a `PermanentError` means "stop managing
this route and alert". Always raise them ``from`` the library error to keep the cause.
"""

from __future__ import annotations


class MeshpilotError(Exception):
    """Base of every error meshpilot raises on purpose."""


class TemporaryError(MeshpilotError):
    """A failure that may go away by itself (timeout, 5xx, conflict, leader change)."""


class PermanentError(MeshpilotError):
    """A failure that retrying will not fix (missing route, RBAC denied, bad config)."""


class InvalidWeightsError(PermanentError):
    """The route is there but its weights, set outside meshpilot, are not a valid split.

    `weights` is what the route holds (points by subset, e.g. summing to 110): the route is not
    managed by the policy, but a pin may repair it, since writing needs only its structure.
    """

    def __init__(self, message: str, weights: dict[str, int]) -> None:
        super().__init__(message)
        self.weights = dict(weights)


class ConfigError(PermanentError):
    """A configuration, scenario or model file is malformed; the message names file and field."""


def yaml_error_text(err: Exception) -> str:
    """``not valid YAML at line L, column C: <problem>`` for a PyYAML error (duck-typed, so
    the pure core needs no YAML import); lines and columns count from 1."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or "syntax error"
    return f"not valid YAML{where}: {problem}"

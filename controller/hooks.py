"""Who may write, and what else runs inside a tick: the loop's two plug-in points.

Why a module of its own: leadership (a Lease elector, or always-leader for one replica) and
tick hooks (the managed-routes watch that calls `set_routes` before a tick, the lease renewal
after it) are wired in by `meshpilot serve`, not by the control logic; the loop only asks
`is_leader` once per tick and runs the hooks around it. A hook that fails is logged and the
tick goes on: a broken watch must not stop the routes already managed.

`controller.loop` re-exports all of it (`from controller.loop import TickHook` keeps working).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from controller.loop import ControlLoop

__all__ = ["AlwaysLeader", "Leadership", "TickHook", "run_hooks"]

_log = logging.getLogger("controller.loop")


@runtime_checkable
class Leadership(Protocol):
    """Whether this replica may write. Only the leader writes; followers observe and record.

    ``is_leader`` is called once per tick and by ``/readyz``, so it must be cheap (a Lease
    elector answers from its cached state, not from the API server).
    """

    def is_leader(self) -> bool: ...


class TickHook(Protocol):
    """Runs inside each tick: before it (may `set_routes`) and after it (with leadership)."""

    def before_tick(self, loop: ControlLoop) -> None: ...
    def after_tick(self, loop: ControlLoop, leader: bool) -> None: ...


class AlwaysLeader:
    """A single replica: always the leader (leader election disabled)."""

    def is_leader(self) -> bool:
        return True


def run_hooks(hooks: Sequence[TickHook], loop: ControlLoop, leader: bool | None) -> None:
    """`before_tick` (leader None) or `after_tick` of every hook, in order; a failing hook is
    logged and the others still run."""
    for hook in hooks:
        try:
            if leader is None:
                hook.before_tick(loop)
            else:
                hook.after_tick(loop, leader)
        except Exception:
            _log.exception("tick hook %s failed", type(hook).__name__)

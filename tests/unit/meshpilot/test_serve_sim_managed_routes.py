"""`meshpilot serve --mesh sim` wires the in-memory ManagedRoutes (`controller.managed_memory`):
one resource per route of the mesh, the API's controls in its spec, and across a restart
the controls the store file keeps are adopted into the fresh specs before the first tick.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from controller.access import Caller
from controller.managed import ManagedRoutes
from controller.managed_memory import MemoryManagedRoutes, resource_name
from controller.settings import load_settings
from meshpilot.commands.serve import _operators, build_loop


def test_sim_serve_keeps_controls_in_memory_managed_routes_across_a_restart(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        None, mesh="sim", policy="proportional", store={"path": str(tmp_path / "audit.db")}
    )
    with contextlib.ExitStack() as stack:
        loop, guard = build_loop(settings, stack)
        (hook,) = [h for h in loop.hooks if isinstance(h, ManagedRoutes)]
        assert isinstance(hook.source, MemoryManagedRoutes)
        names = [item.name for item in hook.source.snapshot()]
        assert names == [resource_name(r) for r in loop.routes]
        route = loop.routes[0]
        _operators(settings, loop, guard).pause(route, caller=Caller("alice"), reason="freeze")
        assert hook.source.item(resource_name(route)).controls.paused
    with contextlib.ExitStack() as stack:  # a restart: fresh in-memory specs, same store file
        loop, guard = build_loop(settings, stack)
        (hook,) = [h for h in loop.hooks if isinstance(h, ManagedRoutes)]
        assert isinstance(hook.source, MemoryManagedRoutes)
        _operators(settings, loop, guard)
        assert hook.source.item(resource_name(route)).controls.paused, "adopted at start"
        hook.before_tick(loop)  # what the first tick does first
        assert guard.controls(route).paused

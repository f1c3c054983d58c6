"""``/healthz`` (liveness: is the loop still ticking) and ``/readyz`` (readiness, leader).

Readiness comes with the first finished tick, with or without data: a pod whose Prometheus is
down still serves reads and applies pins, so the Service must keep sending it operators.
"""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from controller.api.deps import LoopDep
from controller.api.schemas import HealthView, ReadyView

router = APIRouter(tags=["health"])

STALL_TICKS = 10
"""Liveness fails when no tick finished for this many intervals (and at least `STALL_MIN_S`):
a tick stuck on a hung connection is fixed by a restart, a slow one is not worth one."""
STALL_MIN_S = 60.0


@router.get(
    "/healthz",
    summary="Liveness: 503 when the loop stopped ticking",
    responses={503: {"model": HealthView, "description": "the loop stopped ticking"}},
)
def healthz(loop: LoopDep, response: Response) -> HealthView:
    age = loop.last_tick_age_s()
    started = loop.started_age_s()
    limit_s = max(STALL_TICKS * loop.tick_s, STALL_MIN_S)
    waited = age if age is not None else started
    stalled = started is not None and waited is not None and waited > limit_s
    if stalled:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthView(status="stalled" if stalled else "ok", ticks=loop.ticks, last_tick_age_s=age)


@router.get(
    "/readyz",
    summary="Readiness: 200 after the first finished tick",
    responses={503: {"model": ReadyView, "description": "no tick has finished yet"}},
)
def readyz(loop: LoopDep, response: Response) -> ReadyView:
    if not loop.ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ReadyView(
        ready=loop.ready,
        leader=loop.is_leader(),
        mode=loop.mode,
        ticks=loop.ticks,
        failed_routes=[s.route.key for s in loop.status() if s.failed is not None],
        observing=loop.observing,
    )

"""The last step of a route's tick: what its plan and write came to, verified, as an `Entry`.

Why a module of its own: after the tick's writes ran (together, on the write threads), each
route is completed alone and in route order, exactly as if its write had run alone: the
outcome of its verdict and write (`controller.steps.act_outcome`), the write counted, the
check that earlier writes show up in the observed traffic split (`controller.verify`), and
the write remembered for the next checks. `controller.loop` records the `Entry` (or fails the
route when the write raised a `PermanentError`).
"""

from __future__ import annotations

import logging

from controller.metrics import ControllerMetrics
from controller.recording import Entry, RouteRuntime
from controller.steps import Applied, Plan, act_outcome
from controller.verify import VerifyResult, remember_write, verify_writes
from meshcore import Observation, RouteRef

__all__ = ["complete_plan", "verify_route"]

_log = logging.getLogger("controller.loop")


def complete_plan(
    plan: Plan,
    applied: Applied | None,
    rt: RouteRuntime,
    now_s: float,
    *,
    metrics: ControllerMetrics,
    verify_after_s: float,
    verify_tolerance: float,
) -> Entry:
    """The `Entry` of `plan` after its write `applied` (None: nothing was written); rt: the
    route's state (pending writes, last split written); now_s: loop clock (s); verify_after_s
    and verify_tolerance as in `verify_route`.

    Raises the `PermanentError` of a failed write (RBAC revoked, route deleted between read
    and write: the route fails) and any unexpected exception (the route holds).
    """
    route, verdict, obs = plan.route, plan.verdict, plan.obs
    outcome, written, wrote, weights_after = act_outcome(plan, applied)
    landed = outcome in ("written", "conflict-retried")  # the actuator took the weights
    if landed:
        metrics.writes.labels(route=route.key).inc()
    verify = verify_route(  # before this write joins the pending ones
        route, rt, obs, now_s, metrics=metrics, delay_s=verify_after_s, tolerance=verify_tolerance
    )
    if landed and weights_after is not None:
        remember_write(rt.pending, now_s, weights_after)
        rt.last_written = weights_after
    reason = "; ".join(
        [*plan.notes, verdict.reason] + ([f"verify: {verify.detail}"] if verify else [])
    )
    return Entry(
        phase=verdict.phase,
        outcome=outcome,
        reason=reason,
        obs=obs,
        current=plan.current,
        proposed=plan.proposed,
        raw_action=plan.raw_action,
        written=written,
        wrote=wrote,
        weights_after=weights_after,
        verify=verify,
        invalid_weights=None if landed else plan.invalid_weights,
        degraded=plan.degraded,
    )


def verify_route(
    route: RouteRef,
    rt: RouteRuntime,
    obs: Observation | None,
    now_s: float,
    *,
    metrics: ControllerMetrics,
    delay_s: float,
    tolerance: float,
) -> VerifyResult | None:
    """Check the route's newest write older than `delay_s` (s; `verify_writes`) against `obs`
    within `tolerance` (points): settled writes are dropped, a failure is counted and logged."""
    check = verify_writes(rt.pending, obs, now_s, delay_s=delay_s, tolerance=tolerance)
    del rt.pending[: check.settled]
    result = check.result
    if result is not None and result.ok is False:
        metrics.verify_failures.labels(route=route.key).inc()
        _log.warning(
            "route %s: traffic does not follow the written weights: %s", route.key, result.detail
        )
    return result

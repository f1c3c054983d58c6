"""Request and response bodies of the API (they are the OpenAPI schema operators read).

Weights are JSON objects ``{subset: points}``; times are on the loop's clock (s: Unix time in
production, simulated time with ``mesh: sim``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from controller.guard import Guard
from controller.loop import ControlLoop
from controller.operators import MAX_REASON_CHARS
from controller.store import DecisionRecord, DecisionStore
from controller.verify import VerifyResult
from meshcore import WEIGHT_TOTAL, RouteRef

Points = Annotated[int, Field(strict=True, ge=0, le=WEIGHT_TOTAL)]
"""One weight: an integer 0..100 (strict: 50.0 or "50" is rejected, not rounded)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


Reason = Annotated[
    str | None,
    Field(
        strict=True,
        max_length=MAX_REASON_CHARS,
        examples=["canary v2 returns 5xx since 14:02, INC-4711"],
        description=f"why (at most {MAX_REASON_CHARS} characters): recorded with the caller "
        "in the audit log (GET /decisions?operators=true)",
    ),
]
"""The optional why of every control."""


class ControlRequest(_Body):
    """The optional body of pause, resume and release: why."""

    reason: Reason = None


class OverrideRequest(_Body):
    """Pin a route's weights for `ttl_s` seconds.

    `weights` names every subset of the route (0 is a value like any other), unless
    `others_zero` is true: a pin that silently zeroed a forgotten subset could drain a version
    nobody meant to touch, so leaving one out must be said out loud.
    """

    weights: dict[str, Points] = Field(
        min_length=1,
        examples=[{"stable": 90, "canary": 10}],
        description="points per subset (integers 0..100 summing to 100); every subset of the "
        "route unless others_zero is true",
    )
    ttl_s: float = Field(
        gt=0,
        allow_inf_nan=False,
        strict=True,
        examples=[600],
        description="how long the pin holds (s, on the loop's clock): at least one control "
        "interval (tick_s, else it could expire before a tick writes it), at most "
        "api.max_override_ttl_s",
    )
    others_zero: bool = Field(
        default=False,
        strict=True,
        description="true: subsets not named in weights get 0 points; false (default): "
        "weights must name every subset of the route",
    )
    reason: Reason = None

    @field_validator("weights")
    @classmethod
    def _sums_to_100(cls, weights: dict[str, int]) -> dict[str, int]:
        total = sum(weights.values())
        if total != WEIGHT_TOTAL:
            raise PydanticCustomError(
                "weights_sum",
                "weights must sum to {expected}, got {total}",
                {"expected": WEIGHT_TOTAL, "total": total},
            )
        return weights


class ShadowRequest(_Body):
    """Put one route in shadow (decide and record, never write) or take it out."""

    enabled: bool = Field(strict=True)
    reason: Reason = None


class VerifyView(BaseModel):
    """The last concluded check that traffic follows the written weights."""

    ok: bool | None
    at_s: float
    detail: str

    @classmethod
    def of(cls, result: VerifyResult | None) -> VerifyView | None:
        return None if result is None else cls(ok=result.ok, at_s=result.at_s, detail=result.detail)


class ControlsView(BaseModel):
    """Operator controls of a route."""

    paused: bool
    shadow: bool
    pin: dict[str, int] | None
    pin_until_s: float | None


class DecisionView(BaseModel):
    """One recorded decision of the controller, or one operator action (``caller`` set; see
    `controller.store.DecisionRecord`)."""

    id: int | None
    ts_s: float
    route: str
    phase: str
    reason: str
    outcome: str
    observation: dict[str, Any] | None
    raw_action: list[float | None] | None
    proposed: dict[str, int] | None
    written: dict[str, int] | None
    wrote: bool
    reward: float | None
    policy: str
    writer: str
    caller: str | None = Field(
        description="who took this operator action: 'token' (the shared static token), a "
        "Kubernetes user (api.auth kubernetes), or 'meshpilot' for controls restored at start; "
        "null for the controller's own decisions"
    )
    action: str | None = Field(
        description="the operator action: pin, release, pause, resume, shadow or restore "
        "(its reason is the operator's, its outcome 'operator: <action>'); null for decisions"
    )
    detail: dict[str, Any] | None = Field(
        description="an operator action's arguments (weights, ttl_s, enabled) and the route's "
        "controls before and after it; null for decisions"
    )

    @classmethod
    def of(cls, record: DecisionRecord) -> DecisionView:
        return cls.model_validate(record.to_dict())


class RouteView(BaseModel):
    """A managed route: where it stands, who controls it, what was decided last."""

    key: str
    namespace: str
    virtual_service: str
    route: str | int
    host: str
    phase: str
    weights: dict[str, int] | None = Field(
        description="the split the route is configured with (points); null when not known, "
        "or while the route failed (its weights unreadable or not a valid split)"
    )
    invalid_weights: dict[str, int] | None = Field(
        description="what a failed route holds when it is not a valid split (points, set "
        "outside meshpilot, e.g. summing to 110): a pin repairs it at the next tick"
    )
    failed: str | None
    failed_since_s: float | None
    degraded: str | None = Field(
        description="why the last tick had no telemetry (e.g. Prometheus unreachable): the "
        "route holds its weights, pins and other controls still act; null when observing"
    )
    controls: ControlsView
    verify: VerifyView | None
    last_decision: DecisionView | None
    steered_by: str | None = Field(
        default=None,
        description="who chose the last split under the supervisor: 'policy', or 'fallback' "
        "(the planner, after the policy's split did visible harm); null without a supervisor",
    )

    @classmethod
    def build(
        cls, route: RouteRef, *, loop: ControlLoop, guard: Guard, store: DecisionStore
    ) -> RouteView:
        status = loop.route_status(route)
        controls = guard.controls(route)
        last = store.get(status.last_decision_id) if status.last_decision_id is not None else None
        return cls(
            key=route.key,
            namespace=route.namespace,
            virtual_service=route.virtual_service,
            route=route.route,
            host=route.host,
            phase=status.phase,
            weights=status.weights.as_dict() if status.weights is not None else None,
            invalid_weights=(
                dict(status.invalid_weights) if status.invalid_weights is not None else None
            ),
            failed=status.failed,
            failed_since_s=status.failed_since_s,
            degraded=status.degraded,
            controls=ControlsView(
                paused=controls.paused,
                shadow=controls.shadow,
                pin=controls.pin.as_dict() if controls.pin is not None else None,
                pin_until_s=controls.pin_until_s,
            ),
            verify=VerifyView.of(status.verify),
            last_decision=DecisionView.of(last) if last is not None else None,
            steered_by=status.steered_by,
        )


class PinPlan(BaseModel):
    """What the loop will do with a pin just set, so the operator need not guess.

    The API only records the pin; the loop's next tick reviews it (`controller.guard`) and,
    unless the route is paused or in shadow, writes it at once, whole, without step limit.
    """

    weights: dict[str, int] = Field(description="the pinned split, every subset (points)")
    until_s: float = Field(description="the pin expires at this time (s, the loop's clock)")
    applies_at: datetime | None = Field(
        description="UTC wall time (ISO 8601) of the next tick, which reviews the pin at the "
        "latest; null when the route failed for another reason than weights a pin repairs "
        "(its next check is not scheduled by the clock)"
    )
    applies_in_s: float | None = Field(
        description="seconds from this answer to applies_at (>= 0); null with applies_at"
    )
    phase: str = Field(
        description="the phase that tick gives the route: overridden, or paused / shadow "
        "(the pin is kept but not written), or failed"
    )
    writes: bool = Field(
        description="whether that tick writes the pinned weights (false when paused, in "
        "shadow, already in place, or failed for another reason than invalid weights)"
    )
    detail: str = Field(description="the same in words")


class OverrideView(RouteView):
    """The route after a pin, with `pin_plan`: when and how the pin takes effect."""

    pin_plan: PinPlan


class ErrorBody(BaseModel):
    """Every error but a 422: one sentence saying what is wrong (never the request body)."""

    detail: str


class Problem(BaseModel):
    """One problem of an invalid request: where (``["body", "ttl_s"]``) and what."""

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    """A 422: every problem found, with where and what; the input is never echoed."""

    detail: list[Problem]


class HealthView(BaseModel):
    """Liveness: is the loop still ticking?"""

    status: str
    ticks: int
    last_tick_age_s: float | None


class ReadyView(BaseModel):
    """Readiness: has a tick finished; is this replica the leader; did the last tick observe?"""

    ready: bool
    leader: bool
    mode: str
    ticks: int
    failed_routes: list[str]
    observing: bool
    """False while the observer fails (e.g. Prometheus down): routes hold, controls still act."""

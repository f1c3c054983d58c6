"""``GET /decisions``: the audit log — why did v2 get 40 points at 03:12, and who paused it?

The controller's decisions and operators' actions (caller, reason, before and after) are one
timeline; ``operators=true`` lists only the actions, ``false`` only the decisions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status

from controller.api.deps import StoreDep
from controller.api.errors import error_responses, unprocessable
from controller.api.schemas import DecisionView
from meshcore import RouteRef

router = APIRouter(tags=["decisions"])

MAX_DECISION_ID = 2**63 - 1
"""SQLite's largest rowid: a larger id is a 422, not an overflow deep in the store."""
ROUTE_KEY_PATTERN = "^[^/]+/[^/]+/[^/]+$"
"""Three non-empty parts: what `RouteRef.parse` accepts."""
MAX_LIMIT = 1000
"""Most decisions one request returns (a day of one route at a 5 s tick is 17 280)."""


@router.get(
    "/decisions",
    summary="Newest decisions and operator actions first, of one route or of all",
    responses=error_responses(422, 503),
)
def list_decisions(
    store: StoreDep,
    route: Annotated[
        str | None,
        Query(
            description="route key `namespace/virtualservice/route`; all routes if omitted",
            # documented, checked below by RouteRef.parse with a clearer message than a regex
            json_schema_extra={"pattern": ROUTE_KEY_PATTERN},
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="how many")] = 50,
    operators: Annotated[
        bool | None,
        Query(
            description="true: only operators' actions (pin, release, pause, resume, shadow, "
            "restore; with caller and reason); false: only the controller's decisions; "
            "both if omitted"
        ),
    ] = None,
) -> list[DecisionView]:
    if route is not None:
        try:
            RouteRef.parse(route)
        except ValueError as err:
            unprocessable(("query", "route"), str(err), route)
    return [DecisionView.of(r) for r in store.latest(route, limit, operators=operators)]


@router.get(
    "/decisions/{decision_id}",
    summary="One decision by id",
    responses=error_responses(404, 422, 503, why={404: "no decision with that id"}),
)
def get_decision(
    decision_id: Annotated[int, Path(ge=1, le=MAX_DECISION_ID, description="a decision's id")],
    store: StoreDep,
) -> DecisionView:
    record = store.get(decision_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no decision {decision_id}")
    return DecisionView.of(record)

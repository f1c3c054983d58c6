"""``/``: the operator dashboard, its assets, and the history it charts.

Why: ``curl`` answers "what is the split now", not "what happened to the canary over the last
hour and why"; an operator in an incident wants weights, p99, 5xx and traffic per version on
one screen next to the decisions and the controls. The page is static HTML, CSS and a small
script shipped as package data (no CDN, no external font: it must work in a cluster without
egress). It reads ``/routes``, ``/decisions`` and ``/readyz``, and calls the controls
(override, pause, resume, shadow) with the bearer token the operator types in; only the
per-version telemetry over time has no endpoint of its own, so ``/dashboard/api/history``
serves it from the same decision store ``/decisions`` reads (each decision keeps what was
observed), as columns a chart draws directly.

The page's answers carry a Content-Security-Policy that allows only this origin's script and
styles, so text from the data it shows (reasons, subset names) can never run; the script also
builds the page with ``textContent`` only.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response, status
from pydantic import BaseModel, Field

from controller.api.deps import LoopDep, StoreDep
from controller.store import DecisionRecord

__all__ = [
    "ASSETS",
    "HISTORY_MAX_ROWS",
    "STATIC_PREFIX",
    "HistoryView",
    "history",
    "router",
]

STATIC_PREFIX = "/dashboard/static"
"""Where the page's script, styles and icon are served."""

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
"""The files served from ``static/`` (name -> media type); nothing else is reachable."""

PAGE = "index.html"

HISTORY_MAX_ROWS = 1440
"""Most decisions one history answer reads (an hour of one route at a 2.5 s tick)."""

MAX_WINDOW_S = 24 * 3600
"""Longest history window (s, loop clock)."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
"""Only this origin's script, styles and requests: nothing in the data can execute."""

_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["dashboard"])


@cache
def _static(name: str) -> bytes:
    """The bytes of ``static/<name>`` from the installed package (read once)."""
    return (files("controller.api.dashboard") / "static" / name).read_bytes()


@router.get("/", include_in_schema=False)
def page() -> Response:
    return Response(_static(PAGE), media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


@router.get(STATIC_PREFIX + "/{name}", include_in_schema=False)
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such dashboard asset")
    return Response(_static(name), media_type=media_type, headers=_PAGE_HEADERS)


Series = dict[str, list[float | None]]
PointsSeries = dict[str, list[int | None]]


class HistoryView(BaseModel):
    """One route's decisions over a window, as columns: index i of every list is one tick.

    Telemetry is what the controller observed at that tick (NaN, i.e. no data, is null);
    weights are the split configured after it (what was written, else what was observed).
    """

    route: str = Field(description="route key `namespace/virtualservice/route`")
    now_s: float = Field(description="the loop's clock when answering (s)")
    window_s: float = Field(description="how far back the columns reach (s, loop clock)")
    subsets: list[str] = Field(description="subset names, in the route's order")
    ts_s: list[float] = Field(description="decision times, oldest first (s, loop clock)")
    phase: list[str] = Field(description="the route's phase at each decision")
    weights: PointsSeries = Field(description="points per subset after each decision")
    rps: Series = Field(description="observed requests per second per subset")
    error_ratio: Series = Field(description="observed 5xx / all per subset (0..1)")
    p99_ms: Series = Field(description="observed 99th percentile latency per subset (ms)")
    truncated: bool = Field(
        description=f"true when the window holds more than {HISTORY_MAX_ROWS} decisions and "
        "only the newest are shown"
    )


_TELEMETRY = ("rps", "error_ratio", "p99_ms")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _points(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _observed(record: DecisionRecord) -> dict[str, dict[str, Any]]:
    """Per subset name, what the decision's observation holds for it."""
    subsets = (record.observation or {}).get("subsets") or []
    return {str(s["name"]): s for s in subsets if isinstance(s, dict) and "name" in s}


def _weights_after(record: DecisionRecord, seen: dict[str, dict[str, Any]]) -> dict[str, int]:
    if record.wrote and record.written is not None and record.outcome != "shadow":
        return dict(record.written)
    return {name: s["weight"] for name, s in seen.items() if isinstance(s.get("weight"), int)}


def history(
    records: list[DecisionRecord], *, route: str, now_s: float, window_s: float, truncated: bool
) -> HistoryView:
    """`records` (newest first, as the store returns them) as chart columns, oldest first."""
    rows = [r for r in reversed(records) if r.ts_s >= now_s - window_s]
    seen = [_observed(r) for r in rows]
    order: dict[str, None] = {}  # the newest observation's order first, then older names
    for observed in reversed(seen):
        order.update(dict.fromkeys(observed))
    for r in rows:
        order.update(dict.fromkeys(r.written or {}))
    subsets = list(order)
    after = [_weights_after(r, s) for r, s in zip(rows, seen, strict=True)]
    columns: dict[str, Series] = {
        field: {n: [_number(s.get(n, {}).get(field)) for s in seen] for n in subsets}
        for field in _TELEMETRY
    }
    return HistoryView(
        route=route,
        now_s=now_s,
        window_s=window_s,
        subsets=subsets,
        ts_s=[r.ts_s for r in rows],
        phase=[r.phase for r in rows],
        weights={n: [_points(w.get(n)) for w in after] for n in subsets},
        truncated=truncated,
        **columns,
    )


@router.get(
    "/dashboard/api/history",
    summary="One route's weights and per-version telemetry over a window, for charts",
    responses={
        404: {"description": "the route is not managed"},
        422: {"description": "invalid route key or window"},
        503: {"description": "the decision store is busy (e.g. locked): retrying later works"},
    },
)
def route_history(
    loop: LoopDep,
    store: StoreDep,
    route: Annotated[str, Query(description="route key `namespace/virtualservice/route`")],
    window_s: Annotated[
        int, Query(ge=1, le=MAX_WINDOW_S, description="how far back (s, loop clock)")
    ] = 3600,
) -> HistoryView:
    ref = loop.find(route)
    if ref is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="that route is not managed")
    records = store.latest(ref, HISTORY_MAX_ROWS)
    now_s = loop.now()
    truncated = len(records) == HISTORY_MAX_ROWS and records[-1].ts_s >= now_s - window_s
    return history(records, route=ref.key, now_s=now_s, window_s=window_s, truncated=truncated)

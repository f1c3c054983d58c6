"""What one load run sent and saw, request by request (`LoadResult`), and its summaries:
bad fraction against an SLO, errors, quantiles, per-version and JSON views."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

NO_SUBSET = "-"
"""Subset recorded for a request whose response had no ``x-meshpilot-subset`` header (an
Envoy local reply) or that got no response."""


@dataclass(frozen=True)
class LoadResult:
    """What one run sent and saw. Per-request arrays hold the requests actually sent, in send
    order: send_s (s from the start), latency_ms (client-side, until the last byte, or until
    the failure), status (HTTP code, 0 for a connection error or timeout), subset (the
    ``x-meshpilot-subset`` header, `NO_SUBSET` when absent), host (index into `hosts`),
    lag_ms (how late after its scheduled time the request left)."""

    target: str
    hosts: tuple[str, ...]
    duration_s: float
    asked_rps: float
    scheduled: int
    send_s: np.ndarray
    latency_ms: np.ndarray
    status: np.ndarray
    subset: np.ndarray
    host: np.ndarray
    lag_ms: np.ndarray = field(repr=False)

    @property
    def sent(self) -> int:
        return int(self.status.shape[0])

    @property
    def completed(self) -> int:
        """Requests answered with an HTTP status (any code)."""
        return int(np.count_nonzero(self.status > 0))

    @property
    def achieved_rps(self) -> float:
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def status_counts(self) -> dict[int, int]:
        codes, counts = np.unique(self.status, return_counts=True)
        return {int(c): int(n) for c, n in zip(codes, counts, strict=True)}

    @property
    def subset_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.subset, return_counts=True)
        return {str(s): int(n) for s, n in zip(names, counts, strict=True)}

    def bad_mask(self, slo_ms: float) -> np.ndarray:
        """Requests that failed (status >= 500 or 0) or were slower than `slo_ms`."""
        return (self.status >= 500) | (self.status == 0) | (self.latency_ms > slo_ms)

    def bad_fraction(self, slo_ms: float) -> float:
        """Share of sent requests that were bad (NaN when nothing was sent)."""
        return float(self.bad_mask(slo_ms).mean()) if self.sent else math.nan

    def error_fraction(self) -> float:
        """Share of sent requests with status >= 500 or 0 (NaN when nothing was sent)."""
        if not self.sent:
            return math.nan
        return float(((self.status >= 500) | (self.status == 0)).mean())

    def quantile_ms(self, q: float) -> float:
        """Latency quantile (ms) over answered requests (NaN when none)."""
        lat = self.latency_ms[self.status > 0]
        return float(np.quantile(lat, q)) if lat.size else math.nan

    def p99_ms(self) -> float:
        return self.quantile_ms(0.99)

    def select(self, mask: np.ndarray) -> LoadResult:
        """The same run restricted to the requests in `mask` (rates keep the run's duration)."""
        return LoadResult(
            target=self.target,
            hosts=self.hosts,
            duration_s=self.duration_s,
            asked_rps=self.asked_rps,
            scheduled=self.scheduled,
            send_s=self.send_s[mask],
            latency_ms=self.latency_ms[mask],
            status=self.status[mask],
            subset=self.subset[mask],
            host=self.host[mask],
            lag_ms=self.lag_ms[mask],
        )

    def by_subset(self, slo_ms: float) -> dict[str, dict[str, Any]]:
        """Per answering subset: requests, rps, bad and error fractions, p50/p99/mean (ms)."""
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(set(self.subset.tolist())):
            part = self.select(self.subset == name)
            out[name] = part._stats(slo_ms)
        return out

    def _stats(self, slo_ms: float) -> dict[str, Any]:
        answered = self.latency_ms[self.status > 0]
        return {
            "requests": self.sent,
            "rps": self.achieved_rps,
            "bad_fraction": _json_float(self.bad_fraction(slo_ms)),
            "error_fraction": _json_float(self.error_fraction()),
            "p50_ms": _json_float(self.quantile_ms(0.5)),
            "p99_ms": _json_float(self.p99_ms()),
            "mean_ms": _json_float(float(answered.mean()) if answered.size else math.nan),
        }

    def summary(self, slo_ms: float) -> dict[str, Any]:
        """JSON-able summary: rates, counts, SLO scores, lag, and the per-subset breakdown."""
        lag = self.lag_ms
        return {
            "target": self.target,
            "hosts": list(self.hosts),
            "duration_s": self.duration_s,
            "slo_ms": slo_ms,
            "asked_rps": self.asked_rps,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "completed": self.completed,
            "achieved_rps": self.achieved_rps,
            "achieved_share": self.achieved_rps / self.asked_rps if self.asked_rps else None,
            "status_counts": {str(k): v for k, v in self.status_counts.items()},
            "subset_counts": self.subset_counts,
            **{k: v for k, v in self._stats(slo_ms).items() if k not in ("requests", "rps")},
            "lag_p99_ms": _json_float(float(np.quantile(lag, 0.99)) if lag.size else math.nan),
            "subsets": self.by_subset(slo_ms),
        }


def _json_float(x: float) -> float | None:
    return x if math.isfinite(x) else None

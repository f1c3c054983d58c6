"""Latency histograms and what Prometheus would compute from them.

The simulator keeps per-step, per-subset histograms over fine log-spaced buckets that include
Istio's default duration buckets as exact edges, so it can report both a precise p99 (as a
mesh with fine `histogram_bucket_settings` would) and Istio-shaped bucket counts for export.
"""

from __future__ import annotations

import math

import numpy as np

from meshcore.telemetry_format import ISTIO_BUCKETS_MS

_FINE_RATIO = 1.03


def _fine_edges_ms() -> np.ndarray:
    n = math.ceil(math.log(3.6e6 / 0.01) / math.log(_FINE_RATIO))
    grid = 0.01 * _FINE_RATIO ** np.arange(n + 1)
    return np.unique(np.concatenate([grid, np.asarray(ISTIO_BUCKETS_MS, dtype=np.float64)]))


EDGES_MS: np.ndarray = _fine_edges_ms()
"""Upper bounds (ms) of the simulator's histogram buckets; one overflow bucket follows."""
EDGES_S: np.ndarray = EDGES_MS / 1000.0
N_BINS = EDGES_MS.size + 1
_ISTIO_EDGE_INDEX = np.searchsorted(EDGES_MS, np.asarray(ISTIO_BUCKETS_MS))


def quantile_ms(hist: np.ndarray, q: float) -> float:
    """`histogram_quantile` over one histogram (counts per bucket): linear inside the bucket.

    NaN for an empty histogram; the overflow bucket reports the last finite edge.
    """
    total = float(hist.sum())
    if total <= 0:
        return math.nan
    rank = q * total
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= EDGES_MS.size:
        return float(EDGES_MS[-1])
    lower = 0.0 if i == 0 else float(EDGES_MS[i - 1])
    upper = float(EDGES_MS[i])
    below = 0.0 if i == 0 else float(cum[i - 1])
    inside = float(hist[i])
    frac = 0.0 if inside <= 0 else (rank - below) / inside
    return lower + (upper - lower) * min(max(frac, 0.0), 1.0)


def istio_bucket_counts(hist: np.ndarray) -> np.ndarray:
    """Fine histogram -> non-cumulative counts over `ISTIO_BUCKETS_MS` plus an overflow count."""
    cum = np.cumsum(hist)
    at_edges = cum[_ISTIO_EDGE_INDEX]
    return np.diff(np.concatenate([[0], at_edges, [cum[-1]]])).astype(np.int64)

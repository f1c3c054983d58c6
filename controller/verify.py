"""Verification: did the observed traffic split follow the weights the loop wrote?

Why a module of its own: a write the API server accepted is not yet traffic that moved — a
sidecar that missed the push, a second controller, or a VirtualService shadowed by another
one all leave the split where it was while every write "succeeds". The judgment (which write
to check, when the observation can tell, what range each share must fall in) is pure
arithmetic over observations, weights and times, so it lives here, testable without a loop;
the loop only keeps each route's list of unverified writes and reports the verdict.

A write is checked one delay (``verify_after_s``, one rate window) after it was made: the
rate window of that observation then lies within [that write, now], so each subset's share
must fall in the range spanned by that write and the later ones, widened by the tolerance.
When the observation cannot tell (no data, stale data, too little traffic) the check is
postponed, and given up after three delays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from meshcore import Observation, Weights

__all__ = [
    "GIVE_UP_AFTER_DELAYS",
    "MAX_PENDING",
    "MIN_VERIFY_REQUESTS",
    "PendingWrite",
    "Verification",
    "VerifyResult",
    "remember_write",
    "shares",
    "unverifiable",
    "verify_writes",
]

MIN_VERIFY_REQUESTS = 50.0
"""Fewer requests than this over the verify delay make a traffic split too noisy to judge (a
50/50 split of 50 requests is off by 7 points one time in three): the check is postponed."""

MAX_PENDING = 1000
"""Unverified writes kept per route; beyond this the oldest are dropped (memory bound)."""

GIVE_UP_AFTER_DELAYS = 3
"""A write that no observation could judge for this many verify delays is given up on."""


@dataclass(frozen=True)
class VerifyResult:
    """Did the observed traffic split follow what was written?

    ok: True (within tolerance), False (it did not), None (inconclusive: no data, too little
    traffic; given up after three verify delays); at_s: loop clock when checked (s); detail:
    human text with the observed shares and the expected range (points).
    """

    ok: bool | None
    at_s: float
    detail: str


@dataclass(frozen=True)
class PendingWrite:
    """A write not verified yet: when it was made (loop clock, s) and the weights in force."""

    at_s: float
    weights: Weights


@dataclass(frozen=True)
class Verification:
    """The outcome of one check: `result` when a verification concluded (None: nothing due,
    or postponed), and how many pending writes, oldest first, it `settled` (to be dropped)."""

    result: VerifyResult | None = None
    settled: int = 0


def remember_write(pending: list[PendingWrite], at_s: float, weights: Weights) -> None:
    """Append a write to `pending`, dropping the oldest beyond `MAX_PENDING`."""
    pending.append(PendingWrite(at_s, weights))
    del pending[:-MAX_PENDING]


def verify_writes(
    pending: Sequence[PendingWrite],
    obs: Observation | None,
    now_s: float,
    *,
    delay_s: float,
    tolerance: float,
) -> Verification:
    """Check the newest write older than `delay_s` against the observed split `obs`.

    Every share must fall in the range spanned by that write and the later ones (all in force
    during the rate window), widened by `tolerance` (points). Nothing due, or `obs` cannot
    judge and the write is younger than three delays: nothing concluded, nothing settled.
    """
    due = [i for i, w in enumerate(pending) if now_s - w.at_s >= delay_s]
    if not due:
        return Verification()
    last = due[-1]
    written_at_s = pending[last].at_s
    in_force = [w.weights for w in pending[last:]]
    problem = unverifiable(obs, in_force, delay_s, tolerance)
    if problem is not None:
        if now_s - written_at_s < GIVE_UP_AFTER_DELAYS * delay_s:
            return Verification()  # try again next tick
        text = f"gave up on the write at {written_at_s:.1f} s: {problem}"
        return Verification(VerifyResult(None, now_s, text), last + 1)
    assert obs is not None
    observed = shares(obs)
    worst, detail = 0.0, []
    for subset in obs.subsets:
        lo = min(w[subset] for w in in_force)
        hi = max(w[subset] for w in in_force)
        share = observed[subset]
        off = max(lo - share, share - hi, 0.0)
        worst = max(worst, off)
        expect = f"{lo}" if lo == hi else f"{lo}..{hi}"
        detail.append(f"{subset} {share:.1f} (wrote {expect})")
    ok = worst <= tolerance
    verdict = "ok" if ok else f"FAILED, off by {worst:.1f} > {tolerance:g} points"
    text = f"{verdict}: observed {', '.join(detail)}"
    return Verification(VerifyResult(ok, now_s, text), last + 1)


def shares(obs: Observation) -> dict[str, float]:
    """Observed traffic share per subset (points, 0..100); a subset without data counts 0."""
    rates = {
        s: (st.rps if st.has_data and st.rps > 0 else 0.0)
        for s, st in zip(obs.subsets, obs.stats, strict=True)
    }
    total = math.fsum(rates.values())
    return (
        {s: 100.0 * r / total for s, r in rates.items()} if total > 0 else dict.fromkeys(rates, 0.0)
    )


def unverifiable(
    obs: Observation | None, in_force: Sequence[Weights], delay_s: float, tolerance: float
) -> str | None:
    """Why `obs` cannot judge the split (None when it can)."""
    if obs is None:
        return "no observation"
    if not obs.staleness_s <= delay_s:
        return f"data is {obs.staleness_s:.1f} s old"
    if set(obs.subsets) != set(in_force[0].subsets):
        return f"observed subsets {sorted(obs.subsets)} differ from the written ones"
    for subset, st in zip(obs.subsets, obs.stats, strict=True):
        if not st.has_data and max(w[subset] for w in in_force) > tolerance:
            return f"no data for {subset}"
    total = obs.total_rps
    if not (math.isfinite(total) and total * delay_s >= MIN_VERIFY_REQUESTS):
        return f"too little traffic ({total:.2f} rps over {delay_s:.0f} s)"
    return None

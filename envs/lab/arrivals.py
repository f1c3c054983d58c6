"""The lab's arrival process: the scenario `Load`'s rate at any instant (mean rate, diurnal sine,
bursts, as `MeshSimulator.load_rps`), and seeded Poisson arrival times drawn from it by
thinning, one independent stream per (Host header, Load) pair of a plan."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from envs.simulator.scenario import Load

Plan = Sequence[tuple[str, Load]]
"""(Host header, load) pairs: one independent Poisson stream each."""


def load_rps(load: Load, t_s: np.ndarray | float) -> np.ndarray:
    """Mean arrival rate (rps) at times `t_s` (s), as `MeshSimulator.load_rps` computes it."""
    t = np.asarray(t_s, dtype=float)
    rate = np.full(t.shape, load.rps)
    if load.diurnal is not None:
        d = load.diurnal
        rate = rate * (1.0 + d.amplitude * np.sin(2 * np.pi * (t + d.phase_s) / d.period_s))
    for b in load.bursts:
        rate = np.where((t >= b.at_s) & (t < b.at_s + b.duration_s), rate * b.factor, rate)
    return rate


def peak_rps(load: Load) -> float:
    """An upper bound of `load_rps` over all times (the thinning envelope)."""
    bound = load.rps * (1.0 + (load.diurnal.amplitude if load.diurnal else 0.0))
    for b in load.bursts:
        bound *= max(b.factor, 1.0)
    return bound


def mean_rps(load: Load, duration_s: float) -> float:
    """The rate asked on average over [0, duration_s) (numerical mean on a 1 ms grid)."""
    n = max(1000, int(duration_s * 1000))
    t = (np.arange(n) + 0.5) * (duration_s / n)
    return float(load_rps(load, t).mean())


def arrival_times(load: Load, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted arrival times (s) in [0, duration_s): a Poisson process of rate `load_rps`,
    drawn as a homogeneous one at `peak_rps` and thinned."""
    peak = peak_rps(load)
    n = int(rng.poisson(peak * duration_s))
    t = np.sort(rng.uniform(0.0, duration_s, n))
    keep = rng.random(n) * peak < load_rps(load, t)
    return t[keep]


def schedule(plan: Plan, duration_s: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times in s, index of the plan entry of each), merged in time order; each
    entry draws from its own child of ``SeedSequence(seed)``."""
    seqs = np.random.SeedSequence(seed).spawn(len(plan))
    times = [
        arrival_times(load, duration_s, np.random.Generator(np.random.PCG64(seq)))
        for (_, load), seq in zip(plan, seqs, strict=True)
    ]
    which = [np.full(t.shape, i, dtype=np.int32) for i, t in enumerate(times)]
    all_t = np.concatenate(times) if times else np.empty(0)
    all_i = np.concatenate(which) if which else np.empty(0, dtype=np.int32)
    order = np.argsort(all_t, kind="stable")
    return all_t[order], all_i[order]

"""Batch decisions of the numpy policies (agents.network, agents.obs_extensions,
agents.action_prior): `decide_many` is `decide` called route after route.

Cases:
- `encode_many` is `encode`, `TrendMemory.extend_many` is `extend` (bit for bit), on random
  observations with 1..8 versions, dropped and non-finite telemetry, missing or unusable
  capacity hints, a route twice in one batch and a route whose versions change;
- `prior_actions` / `corrected_actions` are `prior_action` / `corrected_action` (bit for bit),
  also on random vectors whose present slots are not a prefix;
- `decode_many` is `decode` (the same weights), ties and non-finite actions included;
- the shipped ensemble, a single network and a three-network ensemble decide the same
  weights batched as one by one over ticks with trend memory (2..8 versions, a route twice
  in one batch), with the same raw actions up to the last bits of the matrix products;
- a batch holding an observation the spec cannot take raises before it remembers anything.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agents.action_prior import corrected_action, corrected_actions, prior_action, prior_actions
from agents.network import EnsemblePolicy, NumpyPolicy, decode_many
from agents.obs_extensions import TrendMemory, encode_many
from agents.policy_file import load_ppo_policy
from meshcore.features import FeatureSpec, decode, encode
from meshcore.model import Observation, RouteRef, SubsetStats, Weights

SPEC = FeatureSpec()
K = SPEC.max_subsets


def _maybe(rng: np.random.Generator, value: float, p_nan: float = 0.1) -> float:
    """`value`, or now and then NaN, an infinity or a negative number."""
    u = rng.random()
    if u < p_nan:
        return math.nan
    if u < p_nan + 0.02:
        return math.inf
    if u < p_nan + 0.04:
        return -abs(value)
    return value


def random_observation(
    rng: np.random.Generator, route: int, t_s: float, n: int | None = None
) -> Observation:
    """One route's observation with 1..8 versions and every kind of missing or odd value."""
    n = int(rng.integers(1, K + 1)) if n is None else n
    weights = [int(w) for w in np.diff(np.sort(rng.integers(0, 101, n - 1)), prepend=0, append=100)]
    stats = []
    for w in weights:
        rps = math.nan if rng.random() < 0.1 else float(rng.choice([0.0, rng.uniform(0, 500)]))
        stats.append(
            SubsetStats(
                rps=rps,
                error_ratio=_maybe(rng, float(rng.uniform(0, 0.4))),
                p99_ms=_maybe(rng, float(rng.uniform(5, 3000))),
                weight=w,
                slow_ratio=_maybe(rng, float(rng.uniform(0, 1))),
                recent_p99_ms=_maybe(rng, float(rng.uniform(5, 3000)), 0.3),
                recent_slow_ratio=_maybe(rng, float(rng.uniform(0, 1.2)), 0.3),
            )
        )
    kind = rng.random()
    if kind < 0.2:
        caps: tuple[float, ...] = ()
    elif kind < 0.3:
        caps = tuple(float(rng.choice([0.0, -5.0, math.nan, 100.0])) for _ in range(n))
    else:
        caps = tuple(float(c) for c in rng.uniform(20, 800, n))
    return Observation(
        route=RouteRef("ns", f"vs{route}", "r", "h"),
        subsets=tuple(f"v{i}" for i in range(n)),
        stats=tuple(stats),
        timestamp_s=t_s,
        staleness_s=float(rng.choice([0.0, rng.uniform(-5, 200)])),
        capacity_hint_rps=caps,
        slo_ms=250.0,
    )


def ticks_of(
    seed: int, routes: int = 40, ticks: int = 6, fixed_n: bool = False
) -> list[list[Observation]]:
    """Per tick one observation per route, each route keeping its versions (so its memory
    matters) except route 0, whose number of versions changes; route 1 is seen twice a tick."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, K + 1, routes)
    out = []
    for t in range(ticks):
        tick = [
            random_observation(rng, r, 5.0 * t, None if r == 0 and not fixed_n else int(sizes[r]))
            for r in range(routes)
        ]
        tick.insert(routes // 2, random_observation(rng, 1, 5.0 * t + 1.0, int(sizes[1])))
        out.append(tick)
    return out


def test_encode_many_is_encode_and_extend_many_is_extend() -> None:
    one_by_one, batched = TrendMemory(), TrendMemory()
    for tick in ticks_of(seed=1):
        encoded = np.array([encode(obs, SPEC) for obs in tick])
        assert np.array_equal(encode_many(tick, SPEC), encoded, equal_nan=True)
        expected = np.array([one_by_one.extend(encode(o, SPEC), o, SPEC) for o in tick])
        got = batched.extend_many(tick, SPEC)
        assert got.dtype == np.float32
        assert np.array_equal(got, expected, equal_nan=True)


def test_prior_actions_are_prior_action_row_by_row() -> None:
    memory = TrendMemory()
    rows = [memory.extend_many(tick, SPEC) for tick in ticks_of(seed=2)]
    rng = np.random.default_rng(3)
    noise = rng.uniform(0.0, 1.2, (500, rows[0].shape[1])).astype(np.float32)  # any presence
    vecs = np.concatenate([*rows, noise])
    actions, consulted = prior_actions(vecs, SPEC)
    assert consulted.any() and not consulted.all()
    raw = rng.uniform(-1.5, 1.5, (len(vecs), K))
    corrected = corrected_actions(raw, (actions, consulted))
    for i, vec in enumerate(vecs):
        base, asks = prior_action(vec, SPEC)
        assert asks == consulted[i]
        assert np.array_equal(actions[i], base)
        assert np.array_equal(corrected[i], corrected_action(raw[i], (base, asks)))


def test_decode_many_is_decode() -> None:
    rng = np.random.default_rng(4)
    observations = [random_observation(rng, r, 0.0) for r in range(400)]
    actions = rng.uniform(-1.3, 1.3, (400, K))
    actions[::7] = 0.25  # every slot alike: ties everywhere
    actions[::11, 0] = np.nan
    actions[::13, 1] = np.inf
    got = decode_many(actions, observations, SPEC)
    for obs, action, weights in zip(observations, actions, got, strict=True):
        expected = decode(action, SPEC.mask(len(obs.subsets)), obs.subsets)
        assert weights == expected and weights.subsets == expected.subsets


def _policies() -> list[NumpyPolicy | EnsemblePolicy]:
    shipped = load_ppo_policy(None)
    assert isinstance(shipped, EnsemblePolicy)
    first, second = shipped.members
    return [shipped, first, EnsemblePolicy([first, second, first])]


@pytest.mark.parametrize("which", range(3), ids=["shipped", "one-network", "three-networks"])
def test_decide_many_decides_what_decide_decides_route_after_route(which: int) -> None:
    one_by_one, batched = _policies()[which], _policies()[which]
    for tick in ticks_of(seed=5, routes=60, ticks=8, fixed_n=True):
        expected: list[Weights] = []
        raw: list[list[float]] = []
        for obs in tick:
            expected.append(one_by_one.decide(obs))
            raw.append(one_by_one.last_raw_action)
        got = batched.decide_many(tick)
        assert got == expected
        assert [w.subsets for w in got] == [w.subsets for w in expected]
        # the matrix products of a batch and of one row may differ in the last bits
        assert np.allclose(batched.last_raw_actions, raw, rtol=0.0, atol=1e-12)
        assert batched.last_raw_action == batched.last_raw_actions[-1]


def test_decide_many_on_real_telemetry_with_every_version_count() -> None:
    from envs.simulator.engine import MeshSimulator
    from envs.simulator.scenario import parse_scenario

    sims = []
    for n in range(2, K + 1):
        subsets = [
            {"name": f"v{i}", "replicas": 1 + i % 3, "service_ms": 10 + 5 * i} for i in range(n)
        ]
        scenario = {"name": f"m{n}", "duration_s": 600, "load": {"rps": 40 * n}, "subsets": subsets}
        sims.append(MeshSimulator(parse_scenario(scenario), seed=n))
    one_by_one, batched = _policies()[0], _policies()[0]
    for _ in range(12):
        tick = []
        for sim in sims:
            sim.step(sim.weights)
            obs = sim.observe()
            for j in range(3):
                route = RouteRef("ns", f"{obs.route.key}-{j}", "r", "h")
                tick.append(dataclasses.replace(obs, route=route))
        assert batched.decide_many(tick) == [one_by_one.decide(obs) for obs in tick]


def test_a_batch_with_an_observation_the_spec_cannot_take_changes_nothing() -> None:
    rng = np.random.default_rng(6)
    ticks = ticks_of(seed=7, routes=10, ticks=3, fixed_n=True)
    too_wide = random_observation(rng, 99, 0.0, n=K + 1)
    one_by_one, batched = _policies()[1], _policies()[1]
    with pytest.raises(ValueError):
        batched.decide_many([*ticks[0], too_wide])
    for tick in ticks:
        assert batched.decide_many(tick) == [one_by_one.decide(obs) for obs in tick]


def test_an_unknown_data_age_is_encoded_as_stale_in_batch_too() -> None:
    tick = ticks_of(seed=2)[0]
    unknown = [dataclasses.replace(obs, staleness_s=math.nan) for obs in tick]
    batched = encode_many(unknown, SPEC)
    assert np.isfinite(batched).all()
    assert np.array_equal(batched, np.array([encode(obs, SPEC) for obs in unknown]))

"""The supervisor (agents.supervisor): falls back on visible harm, returns with hysteresis."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agents.planner import PlannerPolicy
from agents.registry import make_policy
from agents.rollout import run_episode
from agents.supervisor import MODE_FALLBACK, MODE_POLICY, SupervisedPolicy
from envs.simulator.scenario import parse_scenario
from meshcore.model import Observation, RouteRef, SubsetStats, Weights

ROUTE = RouteRef("shop", "product", 0, "product")
NAMES = ("v1", "v2", "v3")


class Stubborn:
    """A primary that always writes the same split, whatever it sees."""

    name = "stubborn"

    def __init__(self, values: list[int]) -> None:
        self.values = values

    def decide(self, obs: Observation) -> Weights:
        return Weights(obs.subsets, self.values)

    def reset(self) -> None:
        pass


def observe(t_s: float, weights: tuple[int, ...], errors: list[float]) -> Observation:
    rps = [2.0 * w for w in weights]
    return Observation(
        route=ROUTE,
        subsets=NAMES,
        stats=tuple(
            SubsetStats(rps[i], errors[i] if rps[i] else float("nan"), 90.0, weights[i], 0.0)
            for i in range(3)
        ),
        timestamp_s=t_s,
        capacity_hint_rps=(400.0, 400.0, 400.0),
        slo_ms=250.0,
    )


def test_falls_back_on_a_failing_version_that_keeps_its_traffic_and_recovers() -> None:
    sup = SupervisedPolicy(Stubborn([60, 20, 20]), harm_ticks=2, hold_ticks=6, clear_ticks=3)
    weights: tuple[int, ...] = (60, 20, 20)
    modes: list[str] = []
    notes: list[str | None] = []
    for k in range(150):  # the planner forgets the fault within minutes (its recovery_s)
        failing = 5 <= k < 12
        errors = [0.3 if failing else 0.001, 0.001, 0.001]
        weights = sup.decide(observe(5.0 * k, weights, errors)).values_tuple
        modes.append(sup.modes()[ROUTE])
        notes.append(sup.last_note)
    assert modes[:6] == [MODE_POLICY] * 6, "one harmful tick is not enough"
    assert modes[6] == MODE_FALLBACK
    first = notes[6]
    assert first is not None and "fallback to planner" in first and "v1" in first
    assert weights[0] == 60 and modes[-1] == MODE_POLICY, "back to the policy after the fault"
    back = modes.index(MODE_POLICY, 6)
    assert back - 6 >= 6, "held in fallback for hold_ticks at least"
    note = notes[back]
    assert note is not None and "back to stubborn" in note


def test_fallback_sheds_the_failing_version() -> None:
    sup = SupervisedPolicy(Stubborn([60, 20, 20]))
    weights: tuple[int, ...] = (60, 20, 20)
    for k in range(6):
        weights = sup.decide(observe(5.0 * k, weights, [0.3, 0.001, 0.001])).values_tuple
    assert sup.modes()[ROUTE] == MODE_FALLBACK
    assert weights[0] < 10


def test_by_default_the_first_harmful_tick_falls_back() -> None:
    sup = SupervisedPolicy(Stubborn([60, 20, 20]))
    healthy = sup.decide(observe(0.0, (60, 20, 20), [0.001, 0.001, 0.001]))
    assert healthy.values_tuple == (60, 20, 20) and sup.modes()[ROUTE] == MODE_POLICY
    shed = sup.decide(observe(5.0, (60, 20, 20), [0.3, 0.001, 0.001]))
    assert sup.modes()[ROUTE] == MODE_FALLBACK and shed["v1"] < 60


def test_a_harmless_policy_is_never_overruled() -> None:
    sup = SupervisedPolicy(Stubborn([34, 33, 33]))
    weights: tuple[int, ...] = (34, 33, 33)
    for k in range(40):
        weights = sup.decide(observe(5.0 * k, weights, [0.001, 0.001, 0.001])).values_tuple
        assert sup.last_note is None
    assert weights == (34, 33, 33)


def test_supervised_policies_by_name_and_in_the_simulator() -> None:
    sc = parse_scenario(
        {
            "name": "failing-v1",
            "duration_s": 400,
            "load": {"rps": 120},
            "subsets": [
                {"name": "v1", "replicas": 2, "service_ms": 20},
                {"name": "v2", "replicas": 2, "service_ms": 20},
                {"name": "v3", "replicas": 2, "service_ms": 20},
            ],
            "events": [{"at_s": 100, "subset": "v1", "set": {"error_rate": 0.4}}],
        }
    )
    plain, _ = run_episode(sc, make_policy("equal"), seed=3)
    supervised = make_policy("supervised:equal")
    assert supervised.name == "equal+supervisor"
    guarded, _ = run_episode(sc, supervised, seed=3)
    assert guarded.error_rate < 0.6 * plain.error_rate


def test_no_split_is_blamed_when_every_version_is_in_trouble() -> None:
    """Two versions both over capacity: whatever the proposal, one keeps its weight."""
    sup = SupervisedPolicy(Stubborn([50, 50]))
    obs = Observation(
        route=ROUTE,
        subsets=("v1", "v2"),
        stats=tuple(SubsetStats(120.0, 0.0, 900.0, 50, slow_ratio=0.9) for _ in range(2)),
        timestamp_s=0.0,
        capacity_hint_rps=(100.0, 100.0),
        slo_ms=250.0,
    )
    for k in range(6):
        sup.decide(replace(obs, timestamp_s=5.0 * k))
    assert sup.modes()[ROUTE] == MODE_POLICY


def test_a_failing_fallback_serves_the_policy_with_a_note() -> None:
    class Broken(PlannerPolicy):
        def decide(self, obs: Observation) -> Weights:
            raise RuntimeError("boom")

    sup = SupervisedPolicy(Stubborn([60, 20, 20]), Broken())
    assert sup.decide(observe(0.0, (60, 20, 20), [0.3, 0.0, 0.0])).values_tuple == (60, 20, 20)
    assert sup.last_note is not None and "boom" in sup.last_note


def test_serve_does_not_wrap_a_supervised_policy_twice() -> None:
    from meshpilot.commands.serve import resolve_policy

    policy, _ = resolve_policy("supervised:proportional")
    assert policy.name == "proportional+supervisor"
    policy, _ = resolve_policy("proportional")
    assert policy.name == "proportional+supervisor"
    policy, _ = resolve_policy("proportional", supervised=False)
    assert policy.name == "proportional"


class Nibbler:
    """A primary that takes `cut` points a tick off v1 and gives them to v2 (a token cut)."""

    name = "nibbler"

    def __init__(self, cut: int) -> None:
        self.cut = cut

    def decide(self, obs: Observation) -> Weights:
        w = [s.weight for s in obs.stats]
        moved = min(self.cut, w[0])
        return Weights(obs.subsets, [w[0] - moved, w[1] + moved, *w[2:]])

    def reset(self) -> None:
        pass


@pytest.mark.parametrize(("cut", "harmful"), [(0, True), (2, True), (3, False), (10, False)])
def test_a_token_cut_off_a_failing_version_is_not_relief(cut: int, harmful: bool) -> None:
    """A cut smaller than `min_relief` points leaves the failing version (nearly) all its
    traffic: harm seen in telemetry. min_relief points or more is relief."""
    sup = SupervisedPolicy(Nibbler(cut), min_relief=3)
    obs = observe(0.0, (60, 20, 20), [0.3, 0.001, 0.001])
    sup.decide(obs)  # the planner's estimates
    why = sup.harm(obs, Nibbler(cut).decide(obs))
    assert (why is not None) is harmful
    if why is not None:
        assert "v1" in why and "5xx" in why


def test_stays_in_fallback_while_the_model_sees_the_policy_overload_a_version() -> None:
    """After a fault the primary wants 60 points on v1, which is still at a third of its
    capacity: no telemetry shows it (the fallback keeps v1 light), but the planner's model
    does, so the route stays with the fallback past hold_ticks and clear_ticks."""
    sup = SupervisedPolicy(Stubborn([60, 20, 20]), harm_ticks=2, hold_ticks=4, clear_ticks=2)
    weights: tuple[int, ...] = (60, 20, 20)
    modes, notes = [], []
    for k in range(12):
        # v1 serves a third of its nominal 150 rps: saturated by more than 50 rps
        rps = [2.0 * w for w in weights]
        slow = 0.95 if rps[0] > 50.0 else 0.0
        obs = Observation(
            route=ROUTE,
            subsets=NAMES,
            stats=tuple(
                SubsetStats(
                    rps[i], 0.001, 2000.0 if (i == 0 and slow) else 90.0, weights[i],
                    slow_ratio=slow if i == 0 else 0.0, recent_slow_ratio=slow if i == 0 else 0.0,
                )
                for i in range(3)
            ),
            timestamp_s=5.0 * k,
            capacity_hint_rps=(150.0, 150.0, 150.0),
            slo_ms=250.0,
        )  # fmt: skip
        weights = sup.decide(obs).values_tuple
        modes.append(sup.modes()[ROUTE])
        notes.append(sup.last_note)
    assert modes[1] == MODE_FALLBACK
    assert modes[1:] == [MODE_FALLBACK] * 11, "the model's view of harm blocks the return"
    assert weights[0] < 30
    assert notes[-1] is not None and "modelled" in notes[-1]


class Script:
    """A primary that writes `first` once, then `then` for ever."""

    name = "script"

    def __init__(self, first: list[int], then: list[int]) -> None:
        self.first, self.then, self.ticks = first, then, 0

    def decide(self, obs: Observation) -> Weights:
        self.ticks += 1
        return Weights(obs.subsets, self.first if self.ticks == 1 else self.then)

    def reset(self) -> None:
        self.ticks = 0


@pytest.mark.parametrize("same_bar", [False, True])
def test_the_way_back_has_a_higher_bar_than_the_way_out(same_bar: bool) -> None:
    """At 80 % load the primary first overloads v1 (the route falls back), then proposes
    36/32/32: not bad enough in the model to fall back for (against the planner's even split),
    but not clearly within it either, so the route stays with the planner; with the same bar
    both ways it would go back, and a noisy estimate could send it out again (a write each
    way)."""
    bars = {"back_ratio": 2.0, "back_margin": 0.005} if same_bar else {}
    sup = SupervisedPolicy(
        Script([60, 20, 20], [36, 32, 32]), hold_ticks=4, clear_ticks=2, surge=1.0, **bars
    )
    weights: tuple[int, ...] = (34, 33, 33)
    modes = []
    for k in range(12):
        weights = sup.decide(loaded(5.0 * k, weights, 240.0)).values_tuple
        modes.append(sup.modes()[ROUTE])
    proposal, safe = Weights(NAMES, [36, 32, 32]), sup.fallback.decide(loaded(60.0, weights, 240.0))
    assert sup.modelled_harm(ROUTE, proposal, safe) is None
    assert modes[0] == MODE_FALLBACK
    if same_bar:
        assert modes[-1] == MODE_POLICY and weights == (36, 32, 32)
    else:
        assert sup.modelled_harm(ROUTE, proposal, safe, returning=True) is not None
        assert modes == [MODE_FALLBACK] * 12


class Jitter:
    """A primary that answers a stationary route with moves of `points` points back and
    forth between v1 and v2 (what a learned policy does with telemetry noise)."""

    name = "jitter"

    def __init__(self, points: int) -> None:
        self.points = points
        self.ticks = 0

    def decide(self, obs: Observation) -> Weights:
        self.ticks += 1
        step = self.points if self.ticks % 2 else -self.points
        w = [s.weight for s in obs.stats]
        return Weights(obs.subsets, [w[0] + step, w[1] - step, *w[2:]])

    def reset(self) -> None:
        self.ticks = 0


def loaded(t_s: float, weights: tuple[int, ...], route_rps: float) -> Observation:
    """Three versions of 100 rps nominal capacity each, fed `route_rps` by `weights`."""
    return Observation(
        route=ROUTE,
        subsets=NAMES,
        stats=tuple(
            SubsetStats(route_rps * w / 100, 0.001, 90.0, w, slow_ratio=0.0) for w in weights
        ),
        timestamp_s=t_s,
        capacity_hint_rps=(100.0, 100.0, 100.0),
        slo_ms=250.0,
    )


def test_small_moves_that_buy_nothing_are_not_written() -> None:
    """At a third of capacity every nearby split is as good as the current one in the model:
    the jitter of a few points is held back, tick after tick, and each hold says why."""
    sup = SupervisedPolicy(Jitter(3))
    weights: tuple[int, ...] = (34, 33, 33)
    for k in range(30):
        weights = sup.decide(loaded(5.0 * k, weights, 100.0)).values_tuple
        assert weights == (34, 33, 33)
        assert sup.modes()[ROUTE] == MODE_POLICY
    assert sup.last_note is not None and "3-point move" in sup.last_note


def test_a_small_move_the_model_sees_gain_in_is_written() -> None:
    """v1 carries 80 % of its capacity, the others 60 %: 4 points off v1 lower the modelled
    bad fraction by far more than `quiet_gain`, so the move goes through."""

    class OffV1:
        name = "off-v1"

        def decide(self, obs: Observation) -> Weights:
            w = [s.weight for s in obs.stats]
            return Weights(obs.subsets, [w[0] - 4, w[1] + 2, w[2] + 2])

        def reset(self) -> None:
            pass

    sup = SupervisedPolicy(OffV1(), surge=1.0)  # the quiet gate alone
    obs = loaded(0.0, (40, 30, 30), 200.0)
    proposal = OffV1().decide(obs)
    decided = sup.decide(obs)
    assert sup.worth_moving(obs, proposal) is None
    assert decided == proposal


def test_big_moves_are_not_held_back_by_the_quiet_gate() -> None:
    sup = SupervisedPolicy(Jitter(6), quiet_points=5)
    obs = loaded(0.0, (34, 33, 33), 100.0)
    assert sup.decide(obs).values_tuple == (40, 27, 33)
    assert sup.last_note is None


@pytest.mark.parametrize("field", ["slow_ratio", "recent_slow_ratio"])
def test_the_quiet_gate_lets_every_move_through_while_a_version_is_slow(field: str) -> None:
    """A version slow on 5 % of its requests (window or newest interval) may be the start of a
    fault or a burst the model does not see yet: the policy's small move is written."""
    sup = SupervisedPolicy(Jitter(3))
    calm = loaded(0.0, (34, 33, 33), 100.0)
    assert sup.decide(calm).values_tuple == (34, 33, 33), "calm: held"
    move = Weights(NAMES, [37, 30, 33])
    assert sup.worth_moving(calm, move) is not None
    stats = list(calm.stats)
    stats[2] = replace(stats[2], **{field: 0.05})
    assert sup.worth_moving(replace(calm, stats=tuple(stats)), move) is None
    stats[2] = replace(stats[2], **{field: 0.04})
    assert sup.worth_moving(replace(calm, stats=tuple(stats)), move) is not None


def test_the_quiet_gate_judges_slowness_against_a_versions_usual() -> None:
    """Near capacity a version is always a little slow: once the route has been watched for
    `quiet_learn` ticks, the slowness it always shows no longer opens the gate, a jump well
    above it does, and a version that was never slow is judged on the fixed bar."""
    sup = SupervisedPolicy(Jitter(3), surge=1.0)
    stats = list(loaded(0.0, (34, 33, 33), 100.0).stats)
    stats[2] = replace(stats[2], slow_ratio=0.1, recent_slow_ratio=0.1)
    busy = replace(loaded(0.0, (34, 33, 33), 100.0), stats=tuple(stats))
    move = Weights(NAMES, [37, 30, 33])
    assert sup.worth_moving(busy, move) is None, "nothing learnt yet: 10 % slow is not calm"
    for k in range(sup.quiet_learn):
        sup.decide(replace(busy, timestamp_s=5.0 * k))
    held = sup.worth_moving(busy, move)
    assert held is not None and "3-point move" in held
    jump = list(stats)
    jump[2] = replace(jump[2], recent_slow_ratio=0.2)
    assert sup.worth_moving(replace(busy, stats=tuple(jump)), move) is None
    other = list(stats)
    other[0] = replace(other[0], slow_ratio=0.06)
    assert sup.worth_moving(replace(busy, stats=tuple(other)), move) is None


def test_a_one_point_move_is_held_even_while_a_version_is_slow() -> None:
    """Near capacity some version is always a little slow, and a policy answers the noise
    with one-point moves: those are held, calm or not; two points go through on a busy route."""
    sup = SupervisedPolicy(Jitter(1))
    calm = loaded(0.0, (34, 33, 33), 100.0)
    sup.decide(calm)
    stats = list(calm.stats)
    stats[2] = replace(stats[2], slow_ratio=0.1, recent_slow_ratio=0.1)
    busy = replace(calm, stats=tuple(stats))
    note = sup.worth_moving(busy, Weights(NAMES, [35, 32, 33]))
    assert note is not None and "1-point move" in note
    assert sup.worth_moving(busy, Weights(NAMES, [36, 31, 33])) is None


def test_the_quiet_gate_reads_a_proposal_by_version_name_not_position() -> None:
    sup = SupervisedPolicy(Jitter(3))
    calm = loaded(0.0, (34, 33, 33), 100.0)
    sup.decide(calm)  # the planner's estimates
    in_order = Weights(NAMES, [37, 30, 33])
    reversed_ = Weights(tuple(reversed(NAMES)), [33, 30, 37])
    held = sup.worth_moving(calm, in_order)
    assert held is not None and "3-point move" in held
    assert sup.worth_moving(calm, reversed_) is not None
    assert sup.worth_moving(calm, Weights(tuple(reversed(NAMES)), [33, 33, 34])) is None


def test_the_quiet_gate_leaves_a_route_without_a_valid_split_to_the_guard() -> None:
    """Weights in force outside 0..100 (even summing to 100) are no split to keep: a small
    move from them goes on to the guard, which refuses to build on them."""
    sup = SupervisedPolicy(Jitter(3), surge=1.0)  # the quiet gate alone
    sup.decide(loaded(0.0, (34, 33, 33), 100.0))
    sup.primary.reset()
    obs = loaded(5.0, (34, 33, 33), 100.0)
    stats = tuple(replace(st, weight=w) for st, w in zip(obs.stats, (-2, 36, 66), strict=True))
    broken = replace(obs, stats=stats)
    assert sup.worth_moving(broken, Weights(NAMES, [0, 36, 64])) is None
    assert sup.decide(broken).values_tuple == (1, 33, 66)  # Jitter's +3 / -3, unchanged


def test_a_split_that_leaves_no_headroom_for_a_burst_is_harm() -> None:
    """At 100 rps on three versions of 100 rps, 70/15/15 models as well as an even split
    (v1 at 70 %), but 30 % more traffic overloads v1: the surge check calls it harm, on the
    configured capacities."""
    proposal = Weights(NAMES, [70, 15, 15])
    sup = SupervisedPolicy(Stubborn(list(proposal.values_tuple)))
    weights: tuple[int, ...] = (34, 33, 33)
    for k in range(6):
        sup.decide(loaded(5.0 * k, weights, 100.0))
    obs = loaded(30.0, weights, 100.0)
    safe = sup.fallback.decide(obs)
    assert sup.fallback.modelled_bad(ROUTE, proposal) < 2 * sup.fallback.modelled_bad(ROUTE, safe)
    why = sup.modelled_harm(ROUTE, proposal, safe)
    assert why is not None and "at 1.3x the load on the configured capacities" in why
    assert SupervisedPolicy(Stubborn([70, 15, 15]), surge=1.0).harm(obs, proposal) is None
    unchecked = SupervisedPolicy(Stubborn([70, 15, 15]), surge=1.0)
    for k in range(6):
        unchecked.decide(loaded(5.0 * k, weights, 100.0))
    assert unchecked.modelled_harm(ROUTE, proposal, unchecked.fallback.decide(obs)) is None


def test_the_surge_check_does_not_hold_a_fault_that_ended_against_a_version() -> None:
    """After v1's 5xx, the planner's estimates still blame it and its split avoids v1; on the
    configured capacities a split giving v1 its share back has more headroom, not less, so
    the surge check never keeps the route from the policy that gives the traffic back."""
    sup = SupervisedPolicy(Stubborn([60, 20, 20]))
    weights: tuple[int, ...] = (34, 33, 33)
    for k in range(8):
        weights = sup.decide(observe(5.0 * k, weights, [0.3, 0.001, 0.001])).values_tuple
    assert weights[0] < 10 and sup.fallback.estimates(ROUTE)["v1"].error > 0.1
    safe = Weights(NAMES, list(weights))
    back = Weights(NAMES, [34, 33, 33])
    assert sup.fallback.nominal_bad(ROUTE, back, 1.3) <= sup.fallback.nominal_bad(ROUTE, safe, 1.3)


def test_the_planners_probe_is_said_in_the_supervisors_note() -> None:
    """In fallback, a version the planner shed gets its probe after `probe_s`; the decision's
    note says so, next to why the planner is in control."""
    sup = SupervisedPolicy(Stubborn([60, 20, 20]))
    weights: tuple[int, ...] = (60, 20, 20)
    notes: list[str | None] = []
    for k in range(40):
        weights = sup.decide(observe(5.0 * k, weights, [0.3, 0.001, 0.001])).values_tuple
        notes.append(sup.last_note)
    probes = [n for n in notes if n is not None and "planner: probe of v1 (3 points)" in n]
    assert probes and all(n.startswith("supervisor: planner in control") for n in probes)

"""Quality gate: the shipped controller, as served, does not lose to the square-root rule.

Validity tests say the controller writes legal splits; this one says they are good ones. The
shipped policy behind the supervisor and `serve`'s default guard (`meshpilot.served`) and the
raw square-root rule (`sqrt`, a static rule people would run instead) run on the same fixed set
of generated meshes: the first `COUNT` seeds of the validation range, one simulator seed each
(never trained on; the test range stays for the claims, `bench/generalization.py`). The
controller fails the gate when the geometric mean of its bad fraction over the rule's (both
floored at `FLOOR`) is above 1, i.e. when it loses to `sqrt` on this set.

What it gates is the controller an operator runs (network, supervisor, guard), not the network
alone: on this set the raw network is 1.11x `sqrt` and the served one 0.53x, with the planner
taking over where the network does visible harm (docs/benchmarks.md, "Meshes nobody has
seen", has the numbers on the test range).
"""

from __future__ import annotations

import math

import pytest

from agents.evaluate import raw_setup, run_evaluation
from agents.rollout import Gate
from envs.simulator.generator import sample_scenario, seed_range
from meshcore.ports import Policy
from meshpilot.served import served_setup

COUNT = 20
FLOOR = 1e-4
"""Bad-fraction floor of the ratios (as in bench/generalization.py): below it, two policies
are equally good."""


def setup(name: str) -> tuple[Policy, Gate | None]:
    """The candidate as served, the rule raw (module-level: it pickles into the workers)."""
    return raw_setup(name) if name == "sqrt" else served_setup(name)


@pytest.mark.slow
def test_the_served_shipped_policy_does_not_lose_to_the_square_root_rule() -> None:
    first = seed_range("validation").start
    scenarios = [sample_scenario(first + k) for k in range(COUNT)]
    results = run_evaluation(scenarios, ["ppo", "sqrt"], [0], workers=2, setup=setup)
    bad = {(r.scenario, r.policy): r.summary.bad_fraction for r in results}
    rows = []
    for sc in scenarios:
        mine, rule = bad[(sc.name, "ppo")], bad[(sc.name, "sqrt")]
        rows.append((sc.name, mine, rule, (mine + FLOOR) / (rule + FLOOR)))
    ratio = math.exp(sum(math.log(r[3]) for r in rows) / len(rows))
    table = "\n".join(f"{n:32s} ppo {m:.4f} sqrt {s:.4f} ratio {q:.2f}" for n, m, s, q in rows)
    assert ratio <= 1.0, f"served ppo / sqrt = {ratio:.3f} (geomean) > 1 on:\n{table}"

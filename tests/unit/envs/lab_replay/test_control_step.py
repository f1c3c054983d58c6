"""One control step of a controlled replay (`envs.lab.replay.control_step`) over fake ports.

Cases: the written split is recorded; a write that lands but fails its confirmation records
the split the route holds (read back), not the one before; a write and a read back that both
fail record the split before, with the error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import pytest

from envs.lab.replay import control_step
from envs.simulator.scenario import Scenario, parse_scenario
from meshcore.errors import TemporaryError
from meshcore.model import Observation, RouteRef, SubsetStats, Weights

ROUTE = RouteRef("lirmm-services", "shop", "default", "shop.lirmm-services.svc.cluster.local")
SUBSETS = ("v1", "v2")
START = Weights(SUBSETS, (50, 50))
TARGET = Weights(SUBSETS, (80, 20))


def _scenario() -> Scenario:
    return parse_scenario(
        {
            "name": "step",
            "duration_s": 60,
            "load": {"rps": 100},
            "subsets": [
                {"name": "v1", "replicas": 2, "service_ms": 20},
                {"name": "v2", "replicas": 2, "service_ms": 20},
            ],
        },
        source="test",
    )


class FakeRoute:
    """Observer and actuator of one route; `apply` can land and then fail, `current` can fail."""

    def __init__(self, *, lands: bool, confirms: bool, readable: bool = True) -> None:
        self.weights = START
        self.lands, self.confirms, self.readable = lands, confirms, readable

    def observe(self, routes: Sequence[RouteRef]) -> Mapping[RouteRef, Observation]:
        stats = tuple(SubsetStats(float(w), 0.0, 40.0, w) for w in self.weights.values_tuple)
        return {ROUTE: Observation(ROUTE, SUBSETS, stats, time.time(), staleness_s=1.0)}

    def current(self, route: RouteRef) -> Weights:
        if not self.readable:
            raise TemporaryError("routes file unreadable")
        return self.weights

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        if self.lands:
            self.weights = weights
        if not self.confirms:
            raise TemporaryError("Envoy did not confirm in time")
        return weights


def _step(mesh: FakeRoute) -> tuple[dict[str, int], str]:
    record = control_step(
        ROUTE, _scenario(), lambda obs, t_s: TARGET, mesh, mesh, time.monotonic(), START
    )
    assert record.proposed == TARGET.as_dict() and record.observed
    return record.weights, record.error


def test_a_confirmed_write_is_recorded() -> None:
    assert _step(FakeRoute(lands=True, confirms=True)) == (TARGET.as_dict(), "")


def test_a_write_that_landed_unconfirmed_records_what_the_route_holds() -> None:
    weights, error = _step(FakeRoute(lands=True, confirms=False))
    assert weights == TARGET.as_dict()
    assert "did not confirm" in error


@pytest.mark.parametrize("readable", [True, False])
def test_a_write_that_did_not_land_records_the_split_before(readable: bool) -> None:
    weights, error = _step(FakeRoute(lands=False, confirms=False, readable=readable))
    assert weights == START.as_dict()
    assert error.startswith("write: TemporaryError")

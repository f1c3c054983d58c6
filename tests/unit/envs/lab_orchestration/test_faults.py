"""Fault requests are checked against the lab's versions and the backends' own bounds before
anything is sent: one clear error, nothing changed."""

from __future__ import annotations

import pytest

from envs.lab.spec import parse_lab
from envs.lab.traffic import LabFaultError, fault_changes

SPEC = parse_lab(
    {
        "name": "t",
        "services": [
            {
                "name": "shop",
                "load": {"rps": 50},
                "subsets": [{"name": "v1", "replicas": 1, "service_ms": 20}],
            }
        ],
    }
)


def test_a_latency_factor_multiplies_the_nominal_service_time() -> None:
    assert fault_changes(SPEC, "shop", "v1", ["latency_factor=5"]) == {"service_ms": 100.0}
    assert fault_changes(SPEC, "shop", "v1", ["error_rate=0", "cv=2"]) == {
        "error_rate": 0.0,
        "cv": 2.0,
    }


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("latency_factor=40000", "latency_factor must be within"),
        ("error_rate=1.5", "error_rate must be within"),
        ("capacity_factor=0", "capacity_factor must be within"),
        ("cv=nan", "cv must be within"),
        ("replicas=2", "capacity_factor instead"),
        ("colour=red", "FIELD one of"),
        ("error_rate", "FIELD one of"),
        ("error_rate=lots", "not a number"),
    ],
)
def test_bad_faults_are_one_clear_error(text: str, needle: str) -> None:
    with pytest.raises(LabFaultError, match=needle):
        fault_changes(SPEC, "shop", "v1", [text])

"""Lab files: the shipped one loads, scenarios become one-service labs, bad files are one clear
error naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from envs.lab.spec import LABS_DIR, LabSpec, LabSpecError, load_lab, parse_lab
from envs.simulator.scenario import load_scenario, suite_paths

GOOD = {
    "name": "t",
    "services": [
        {
            "name": "shop",
            "load": {"rps": 50},
            "subsets": [{"name": "v1", "replicas": 1, "service_ms": 10}],
        }
    ],
}


def test_every_shipped_lab_loads_and_names_istio_routes() -> None:
    paths = sorted(LABS_DIR.glob("*.yaml"))
    assert paths
    for path in paths:
        spec = load_lab(path)
        for svc, route in zip(spec.services, spec.routes(), strict=True):
            assert route.host == f"{svc.name}.{spec.namespace}.svc.cluster.local"
            assert route.virtual_service == svc.name and route.route == "default"
            assert sum(svc.start_weights().values()) == 100
    assert load_lab().name == "lirmm-slice"


@pytest.mark.parametrize("path", suite_paths(), ids=lambda p: p.stem)
def test_every_suite_scenario_is_a_one_service_lab(path: Path) -> None:
    scenario = load_scenario(path)
    spec = LabSpec.from_scenario(scenario)
    (svc,) = spec.services
    assert svc.subsets == scenario.subsets and svc.load == scenario.load
    assert svc.start_weights() == scenario.start_weights()
    assert spec.slo_ms == scenario.slo_ms
    assert parse_lab(spec.model_dump(mode="json")) == spec


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"colour": "red"}, "field 'colour': unknown key"),
        ({"services": []}, "field 'services'"),
        ({"services": [GOOD["services"][0]] * 2}, "service names must be unique"),  # type: ignore[index]
        (
            {"services": [{**GOOD["services"][0], "initial_weights": {"v1": 90}}]},  # type: ignore[index, dict-item]
            "sum to 100",
        ),
        (
            {"services": [{**GOOD["services"][0], "name": "Shop_1"}]},  # type: ignore[index, dict-item]
            "services.0.name",
        ),
    ],
)
def test_bad_lab_files_name_the_field(change: dict[str, object], needle: str) -> None:
    with pytest.raises(LabSpecError, match=r"lab\.yaml") as err:
        parse_lab({**GOOD, **change}, source="lab.yaml")
    assert needle in str(err.value)


def test_unreadable_and_non_yaml_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(LabSpecError, match="cannot read lab file"):
        load_lab(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("services: [\n")
    with pytest.raises(LabSpecError, match=r"bad\.yaml"):
        load_lab(bad)


def test_an_unknown_service_lists_the_known_ones() -> None:
    with pytest.raises(LabSpecError, match=r"has no service 'cart'.*shop"):
        parse_lab(GOOD).service("cart")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"initial_weights": {"v1": True}}, "initial_weights"),
        ({"initial_weights": {"v1": "100"}}, "initial_weights"),
        ({"subsets": [{"name": "v1", "replicas": 1, "service_ms": 700_000}]}, "service_ms"),
    ],
)
def test_a_service_takes_integer_weights_and_servable_service_times(
    change: dict[str, object], needle: str
) -> None:
    service = {**GOOD["services"][0], **change}  # type: ignore[index, dict-item]
    with pytest.raises(LabSpecError, match=needle):
        parse_lab({**GOOD, "services": [service]})


def test_a_namespace_must_be_a_dns_label() -> None:
    with pytest.raises(LabSpecError, match="namespace"):
        parse_lab({**GOOD, "namespace": "a|b"})

"""Envoy's cluster names and route file as the lab and the Envoy actuator share them.

Cases: cluster names round-trip and anything else is rejected; any set of services round-trips
through the route file (property test), in subset order, with microsecond timeouts; every
malformed document is rejected with a message naming the place; a broken split is an
`InvalidWeightsError` carrying the weights; `weights_for` finds a service by host or says
which hosts exist; the applied version is read from both shapes of Envoy's config dump.
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore import InvalidWeightsError, PermanentError, Weights
from meshcore.envoy_format import (
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    RouteDocumentError,
    RouteEntry,
    RouteSpec,
    RouteWeightsError,
    applied_route_version,
    cluster_name,
    parse_cluster_name,
    read_route_document,
    read_route_entries,
    route_document,
    weights_for,
)

label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
subset_names = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=6),
    min_size=1,
    max_size=5,
    unique=True,
)


@st.composite
def weights(draw: st.DrawFn) -> Weights:
    names = draw(subset_names)
    cuts = sorted(
        draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1))
    )
    values = [b - a for a, b in itertools.pairwise([0, *cuts, 100])]
    return Weights(names, values)


@st.composite
def specs(draw: st.DrawFn) -> list[RouteSpec]:
    services = draw(st.lists(label, min_size=0, max_size=4, unique=True))
    namespace = draw(label)
    timeouts = st.one_of(
        st.integers(1, 600_000).map(float),
        st.integers(1, 10**7).map(lambda us: us / 1000),
    )
    return [
        RouteSpec(
            service=s,
            host=f"{s}.{namespace}.svc.cluster.local",
            port=draw(st.integers(1, 65535)),
            weights=draw(weights()),
            timeout_ms=draw(timeouts),
        )
        for s in services
    ]


def _two_services() -> dict[str, Any]:
    return route_document(
        7,
        [
            RouteSpec(
                "reviews",
                "reviews.shop.svc.cluster.local",
                9080,
                Weights(["v1", "v2"], [70, 30]),
                250.0,
            ),
            RouteSpec(
                "ratings", "ratings.shop.svc.cluster.local", 9080, Weights(["v1"], [100]), 5000.0
            ),
        ],
    )


# -- names --------------------------------------------------------------------------------------


@given(port=st.integers(1, 65535), subset=label, host=label)
def test_cluster_names_round_trip(port: int, subset: str, host: str) -> None:
    name = cluster_name(port, subset, f"{host}.ns.svc.cluster.local")
    assert name == f"outbound|{port}|{subset}|{host}.ns.svc.cluster.local"
    assert parse_cluster_name(name) == (port, subset, f"{host}.ns.svc.cluster.local")


@pytest.mark.parametrize(
    "name",
    [
        "inbound|9080|v1|reviews.shop.svc.cluster.local",
        "outbound|9080||reviews.shop.svc.cluster.local",
        "outbound|0|v1|reviews.shop.svc.cluster.local",
        "outbound|http|v1|reviews.shop.svc.cluster.local",
        "outbound|9080|v1",
        "reviews",
    ],
)
def test_other_cluster_names_are_rejected(name: str) -> None:
    with pytest.raises(RouteDocumentError, match="cluster name"):
        parse_cluster_name(name)


def test_cluster_name_refuses_parts_that_would_not_parse_back() -> None:
    with pytest.raises(ValueError, match=r"without '\|'"):
        cluster_name(9080, "v|1", "reviews")
    with pytest.raises(ValueError, match=r"1\.\.65535"):
        cluster_name(70000, "v1", "reviews")


# -- the route file -----------------------------------------------------------------------------


@given(version=st.integers(0, 10**9), services=specs())
def test_route_file_round_trips(version: int, services: list[RouteSpec]) -> None:
    doc = route_document(version, services)
    parsed_version, parsed = read_route_document(json.loads(json.dumps(doc)))
    assert parsed_version == version
    assert parsed == services
    for original, back in zip(services, parsed, strict=True):
        assert back.weights.subsets == original.weights.subsets  # route order kept


def test_route_file_has_the_shape_envoy_reads() -> None:
    doc = _two_services()
    assert doc["version_info"] == "7"
    (config,) = doc["resources"]
    assert config["@type"] == ROUTE_TYPE and config["name"] == ROUTE_CONFIG_NAME
    reviews = config["virtual_hosts"][0]
    assert reviews["domains"] == [
        "reviews.shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local:9080",
        "reviews",
        "reviews:9080",
    ]
    (route,) = reviews["routes"]
    assert route["name"] == "default" and route["match"] == {"prefix": "/"}
    assert route["route"] == {
        "weighted_clusters": {
            "clusters": [
                {"name": "outbound|9080|v1|reviews.shop.svc.cluster.local", "weight": 70},
                {"name": "outbound|9080|v2|reviews.shop.svc.cluster.local", "weight": 30},
            ]
        },
        "timeout": "0.250s",
    }


def test_route_document_refuses_duplicate_services_and_negative_versions() -> None:
    spec = RouteSpec("a", "a.ns.svc.cluster.local", 80, Weights(["v1"], [100]), 1.0)
    with pytest.raises(ValueError, match="listed twice"):
        route_document(1, [spec, spec])
    with pytest.raises(ValueError, match="version"):
        route_document(-1, [spec])


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


VH = ("resources", 0, "virtual_hosts", 0)
ROUTE = (*VH, "routes", 0)
CLUSTERS = (*ROUTE, "route", "weighted_clusters", "clusters")

MALFORMED: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no version", _drop(("version_info",)), r"missing \['version_info'\]"),
    ("numeric version", _set(("version_info",), 7), "version_info must be a string of digits"),
    ("extra top field", _set(("nonce",), "x"), r"unknown fields \['nonce'\]"),
    ("two configs", lambda d: d["resources"].append(d["resources"][0]), "exactly one"),
    ("wrong type", _set(("resources", 0, "@type"), "x"), "@type must be"),
    ("wrong config name", _set(("resources", 0, "name"), "other"), "name must be"),
    ("hosts not a list", _set(("resources", 0, "virtual_hosts"), {}), "must be a list"),
    ("host not an object", _set(VH, "reviews"), "must be an object"),
    ("two routes", lambda d: d["resources"][0]["virtual_hosts"][0]["routes"].append({}), "one"),
    ("route renamed", _set((*ROUTE, "name"), "canary"), "must be named 'default'"),
    ("other match", _set((*ROUTE, "match"), {"prefix": "/api"}), "must match"),
    ("retries added", _set((*ROUTE, "route", "retry_policy"), {}), "unknown fields"),
    ("bad timeout", _set((*ROUTE, "route", "timeout"), "250ms"), "duration like"),
    ("zero timeout", _set((*ROUTE, "route", "timeout"), "0s"), "positive"),
    ("no clusters", _set(CLUSTERS, []), "is empty"),
    ("string weight", _set((*CLUSTERS, 0, "weight"), "70"), "non-integer weight"),
    ("bool weight", _set((*CLUSTERS, 0, "weight"), True), "non-integer weight"),
    ("inbound cluster", _set((*CLUSTERS, 0, "name"), "inbound|9080|v1|r"), "cluster name"),
    ("cluster of another host", _set((*CLUSTERS, 1, "name"), "outbound|9080|v2|x"), "several"),
    (
        "subset twice",
        _set((*CLUSTERS, 1, "name"), "outbound|9080|v1|reviews.shop.svc.cluster.local"),
        "twice",
    ),
    ("domains changed", _set((*VH, "domains"), ["*"]), "domains must be"),
    (
        "service twice",
        lambda d: d["resources"][0]["virtual_hosts"].append(d["resources"][0]["virtual_hosts"][0]),
        "listed twice",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_route_files_are_rejected_naming_the_place(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = copy.deepcopy(_two_services())
    mutate(doc)
    with pytest.raises(RouteDocumentError, match=message) as info:
        read_route_document(doc)
    assert "route file" in str(info.value) or "cluster name" in str(info.value)


@pytest.mark.parametrize("doc", [None, [], "routes", {"version_info": "1"}])
def test_a_document_that_is_not_a_route_file_is_rejected(doc: Any) -> None:
    with pytest.raises(RouteDocumentError):
        read_route_document(doc)


@pytest.mark.parametrize(("v1", "v2"), [(70, 40), (-10, 110), (101, -1), (0, 0)])
def test_a_broken_split_is_an_invalid_weights_error_with_the_weights(v1: int, v2: int) -> None:
    doc = _two_services()
    _set((*CLUSTERS, 0, "weight"), v1)(doc)
    _set((*CLUSTERS, 1, "weight"), v2)(doc)
    with pytest.raises(RouteWeightsError, match="not a valid split") as info:
        read_route_document(doc)
    assert isinstance(info.value, InvalidWeightsError)
    assert info.value.weights == {"v1": v1, "v2": v2}


def test_weights_for_finds_the_service_by_host() -> None:
    doc = _two_services()
    expected = Weights(["v1", "v2"], [70, 30])
    assert weights_for(doc, "reviews.shop.svc.cluster.local") == expected
    assert weights_for(read_route_document(doc)[1], "ratings.shop.svc.cluster.local") == Weights(
        ["v1"], [100]
    )
    with pytest.raises(PermanentError, match=r"no service for host 'x'.*reviews\.shop"):
        weights_for(doc, "x")


def test_entries_keep_a_broken_split_to_its_own_service() -> None:
    doc = _two_services()
    _set((*CLUSTERS, 0, "weight"), 90)(doc)
    version, entries = read_route_entries(doc)
    assert version == 7
    reviews, ratings = entries
    assert reviews.split == (("v1", 90), ("v2", 30))
    with pytest.raises(RouteWeightsError):
        reviews.spec()
    assert ratings.spec().weights == Weights(["v1"], [100])
    assert weights_for(doc, "ratings.shop.svc.cluster.local") == Weights(["v1"], [100])
    with pytest.raises(RouteWeightsError):
        weights_for(doc, "reviews.shop.svc.cluster.local")
    repaired = reviews.with_weights(Weights(["v2", "v1"], [40, 60]))
    assert repaired.split == (("v1", 60), ("v2", 40))  # route order kept
    fixed_version, specs = read_route_document(route_document(8, [repaired, ratings]))
    assert fixed_version == 8 and specs[0].weights == Weights(["v1", "v2"], [60, 40])
    with pytest.raises(ValueError, match="the route has"):
        reviews.with_weights(Weights(["v1"], [100]))


def test_specs_and_entries_write_the_same_file() -> None:
    specs = read_route_document(_two_services())[1]
    entries: list[RouteEntry] = [spec.entry() for spec in specs]
    assert route_document(7, entries) == route_document(7, specs) == _two_services()


# -- what Envoy runs ----------------------------------------------------------------------------


def _dump_entry(version: str, name: str = ROUTE_CONFIG_NAME) -> dict[str, Any]:
    return {"version_info": version, "route_config": {"name": name, "virtual_hosts": []}}


def test_applied_version_read_from_both_config_dump_shapes() -> None:
    by_resource = {"configs": [{"@type": "x.DynamicRouteConfig", **_dump_entry("12")}]}
    full = {
        "configs": [{"@type": "x.RoutesConfigDump", "dynamic_route_configs": [_dump_entry("3")]}]
    }
    assert applied_route_version(by_resource) == 12
    assert applied_route_version(full) == 3


@pytest.mark.parametrize(
    "dump",
    [
        {},
        {"configs": []},
        {"configs": [_dump_entry("4", name="other_routes")]},
        {"configs": [{"route_config": {"name": ROUTE_CONFIG_NAME}}]},
        {"configs": [_dump_entry("")]},
        [],
    ],
)
def test_no_applied_version_without_our_routes(dump: Any) -> None:
    assert applied_route_version(dump) is None

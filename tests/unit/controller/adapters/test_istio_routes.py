"""The pure VirtualService logic of the Istio actuator, on plain dicts (no API server).

Covers: finding the managed http route by name and by index, and the `PermanentError` for a
missing, duplicated or malformed route; strict weight reading (non-integers, sums other than
100, values outside 0..100 refused; implied weights); the exact JSON Patch of a reweight (test
ops first, then weight ops of the managed route only, then the annotation) and, for any valid
`Weights` (hypothesis), that applying it sets exactly those weights and nothing else; the
managed-routes annotation ops; canonical host forms; RFC 6901 pointer escaping.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.adapters.istio.routes import (
    MANAGED_ANNOTATION,
    Destination,
    annotation_ops,
    canonical_host,
    check_subsets_match,
    confirm_written,
    json_pointer,
    locate_route,
    reweight_patch,
    strict_weights,
)
from meshcore import PermanentError, RouteRef, TemporaryError, Weights

NS = "shop"
BY_NAME = RouteRef(NS, "reviews", "primary", "reviews")
BY_INDEX = RouteRef(NS, "reviews", 0, "reviews")


def dest(host: str, subset: str | None, weight: Any = None) -> dict[str, Any]:
    d: dict[str, Any] = {"destination": {"host": host}}
    if subset is not None:
        d["destination"]["subset"] = subset
    if weight is not None:
        d["weight"] = weight
    return d


def virtual_service(
    *routes: dict[str, Any], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "reviews", "namespace": NS, "resourceVersion": "42"}
    if annotations is not None:
        meta["annotations"] = annotations
    return {"metadata": meta, "spec": {"hosts": ["reviews"], "http": list(routes)}}


def shop() -> dict[str, Any]:
    """An unnamed canary route to another host first, then the managed route "primary"."""
    return virtual_service(
        {"route": [dest("ratings", "v1", 100)]},
        {
            "name": "primary",
            "retries": {"attempts": 3},
            "route": [
                dest("reviews", "v1", 80),
                dest("reviews.shop.svc.cluster.local", "v2", 15),
                dest("reviews", "v3", 5),
            ],
        },
    )


def apply_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A minimal RFC 6902 for test/add/replace, as the API server applies them (all or none)."""
    out = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [
            t.replace("~1", "/").replace("~0", "~") for t in op["path"].split("/")[1:]
        ]
        node: Any = out
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], f"test failed at {op['path']}"
        elif op["op"] == "replace":
            assert key in node or isinstance(node, list), f"replace of absent {op['path']}"
            node[key] = op["value"]
        else:
            assert op["op"] == "add", op
            node[key] = op["value"]
    return out


# -- locating the managed route ---------------------------------------------------------------


def test_locates_a_named_route_and_only_its_destinations_for_the_host() -> None:
    loc = locate_route(BY_NAME, shop())
    assert (loc.resource_version, loc.http_index, loc.http_name) == ("42", 1, "primary")
    assert loc.destinations == (
        Destination(0, "reviews", "v1", 80),
        Destination(1, "reviews.shop.svc.cluster.local", "v2", 15),
        Destination(2, "reviews", "v3", 5),
    )
    assert loc.subsets == ("v1", "v2", "v3")


def test_locates_an_unnamed_route_by_its_index() -> None:
    obj = virtual_service({"route": [dest("reviews", "v1", 30), dest("reviews", "v2", 70)]})
    loc = locate_route(BY_INDEX, obj)
    assert (loc.http_index, loc.http_name) == (0, None)
    assert loc.raw_weights() == {"v1": 30, "v2": 70}


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (RouteRef(NS, "reviews", "canary", "reviews"), "no http route named 'canary'"),
        (RouteRef(NS, "reviews", 2, "reviews"), r"no http route #2 \(it has 2\)"),
        (RouteRef(NS, "reviews", -1, "reviews"), "no http route #-1"),
    ],
)
def test_a_missing_route_is_a_permanent_error(route: RouteRef, message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        locate_route(route, shop())


def test_two_routes_with_the_managed_name_are_refused() -> None:
    twice = {"name": "primary", "route": [dest("reviews", "v1", 100)]}
    with pytest.raises(PermanentError, match="has 2 http routes named 'primary'"):
        locate_route(BY_NAME, virtual_service(twice, twice))


def test_a_virtual_service_without_http_routes_is_refused() -> None:
    with pytest.raises(PermanentError, match="reviews has no http routes"):
        locate_route(BY_INDEX, virtual_service())


def test_a_route_without_a_destination_for_the_host_is_refused() -> None:
    obj = virtual_service({"name": "primary", "route": [dest("ratings", "v1", 100)]})
    with pytest.raises(
        PermanentError, match=r"has no destination for host reviews \(\['ratings'\]"
    ):
        locate_route(BY_NAME, obj)


def test_a_route_that_also_weights_another_host_is_refused_and_a_zero_weight_is_not() -> None:
    mixed = [dest("reviews", "v1", 90), dest("ratings", "v1", 10)]
    with pytest.raises(PermanentError, match=r"also sends traffic to other hosts: ratings \(10\)"):
        locate_route(BY_INDEX, virtual_service({"route": mixed}))
    idle = [dest("reviews", "v1", 100), dest("ratings", "v1", 0)]
    assert locate_route(BY_INDEX, virtual_service({"route": idle})).subsets == ("v1",)


def test_a_destination_without_subset_or_a_subset_listed_twice_is_refused() -> None:
    bare = virtual_service({"route": [dest("reviews", None, 100)]})
    with pytest.raises(PermanentError, match="destination #0 to reviews has no subset"):
        locate_route(BY_INDEX, bare)
    twice = virtual_service({"route": [dest("reviews", "v1", 50), dest("reviews", "v1", 50)]})
    with pytest.raises(PermanentError, match=r"lists a subset twice: \['v1', 'v1'\]"):
        locate_route(BY_INDEX, twice)


def test_a_route_without_destinations_is_refused() -> None:
    redirect = virtual_service({"redirect": {"uri": "/elsewhere"}})
    with pytest.raises(PermanentError, match="has no destinations"):
        locate_route(BY_INDEX, redirect)


# -- reading weights strictly -------------------------------------------------------------------


@pytest.mark.parametrize("weight", [50.0, "50", True])
def test_a_non_integer_weight_is_refused(weight: Any) -> None:
    obj = virtual_service({"route": [dest("reviews", "v1", weight), dest("reviews", "v2", 50)]})
    with pytest.raises(PermanentError, match=f"destination #0 has a non-integer weight {weight!r}"):
        locate_route(BY_INDEX, obj)


def test_valid_weights_are_read_in_route_order() -> None:
    weights = strict_weights(BY_NAME, locate_route(BY_NAME, shop()))
    assert weights.subsets == ("v1", "v2", "v3")
    assert weights.values_tuple == (80, 15, 5)


@pytest.mark.parametrize(
    "values",
    [
        (60, 30),  # sums to 90
        (160, -60),  # sums to 100, but outside 0..100 (the CRD accepts it)
        (0, 0),  # both absent in a split: each means 0
    ],
)
def test_weights_that_are_not_a_valid_split_are_refused(values: tuple[int, int]) -> None:
    route = [dest("reviews", "v1", values[0] or None), dest("reviews", "v2", values[1] or None)]
    loc = locate_route(BY_INDEX, virtual_service({"route": route}))
    with pytest.raises(PermanentError, match="set outside meshpilot that are not a valid split"):
        strict_weights(BY_INDEX, loc)


def test_a_lone_destination_without_weight_carries_all_traffic() -> None:
    loc = locate_route(BY_INDEX, virtual_service({"route": [dest("reviews", "v1")]}))
    assert strict_weights(BY_INDEX, loc).as_dict() == {"v1": 100}


def test_weights_for_other_subsets_than_the_routes_are_refused() -> None:
    loc = locate_route(BY_NAME, shop())
    check_subsets_match(BY_NAME, loc, Weights(["v3", "v2", "v1"], [0, 0, 100]))  # any order
    with pytest.raises(PermanentError, match="never adds or removes destinations"):
        check_subsets_match(BY_NAME, loc, Weights(["v1", "v2"], [50, 50]))


# -- the JSON Patch of a reweight -------------------------------------------------------------


def test_reweight_patch_tests_the_object_first_then_replaces_only_changed_weights() -> None:
    loc = locate_route(BY_NAME, shop())
    ops = reweight_patch(BY_NAME, loc, Weights(["v1", "v2", "v3"], [60, 15, 25]), annotate=False)
    assert ops == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
        {"op": "test", "path": "/spec/http/1/name", "value": "primary"},
        {"op": "test", "path": "/spec/http/1/route/0/destination/host", "value": "reviews"},
        {"op": "test", "path": "/spec/http/1/route/0/destination/subset", "value": "v1"},
        {
            "op": "test",
            "path": "/spec/http/1/route/1/destination/host",
            "value": "reviews.shop.svc.cluster.local",
        },
        {"op": "test", "path": "/spec/http/1/route/1/destination/subset", "value": "v2"},
        {"op": "test", "path": "/spec/http/1/route/2/destination/host", "value": "reviews"},
        {"op": "test", "path": "/spec/http/1/route/2/destination/subset", "value": "v3"},
        {"op": "replace", "path": "/spec/http/1/route/0/weight", "value": 60},
        {"op": "replace", "path": "/spec/http/1/route/2/weight", "value": 25},
    ]


def test_an_unnamed_route_is_not_name_tested_and_an_absent_weight_is_added() -> None:
    obj = virtual_service({"route": [dest("reviews", "v1"), dest("reviews", "v2", 0)]})
    loc = locate_route(BY_INDEX, obj)  # two destinations: the absent weight means 0
    ops = reweight_patch(BY_INDEX, loc, Weights(["v1", "v2"], [70, 30]), annotate=False)
    assert ops is not None
    assert not any(op["path"].endswith("/name") for op in ops)
    assert ops[-2:] == [
        {"op": "add", "path": "/spec/http/0/route/0/weight", "value": 70},
        {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 30},
    ]


def test_no_patch_when_the_weights_are_already_in_force_and_annotated() -> None:
    obj = shop()
    obj["metadata"]["annotations"] = {MANAGED_ANNOTATION: "primary"}
    loc = locate_route(BY_NAME, obj)
    same = Weights(["v1", "v2", "v3"], [80, 15, 5])
    assert reweight_patch(BY_NAME, loc, same, annotate=True) is None
    assert reweight_patch(BY_NAME, locate_route(BY_NAME, shop()), same, annotate=False) is None


def test_annotate_appends_the_annotation_op_after_the_weight_ops() -> None:
    loc = locate_route(BY_NAME, shop())
    ops = reweight_patch(BY_NAME, loc, Weights(["v1", "v2", "v3"], [0, 0, 100]), annotate=True)
    assert ops is not None
    assert ops[-1] == {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {MANAGED_ANNOTATION: "primary"},
    }
    assert [op["op"] for op in ops[:-1]] == ["test"] * 8 + ["replace"] * 3


@given(
    st.lists(st.integers(0, 100), min_size=2, max_size=2).filter(lambda v: sum(v) <= 100),
    st.permutations(["v1", "v2", "v3"]),
)
def test_any_valid_weights_patch_exactly_the_managed_weights_to_sum_100(
    two: list[int], order: list[str]
) -> None:
    values = [*two, 100 - sum(two)]
    weights = Weights(order, values)
    obj = shop()
    ops = reweight_patch(BY_NAME, locate_route(BY_NAME, obj), weights, annotate=False)
    if ops is None:
        assert weights.as_dict() == {"v1": 80, "v2": 15, "v3": 5}
        return
    writes = [op for op in ops if op["op"] != "test"]
    assert ops[: len(ops) - len(writes)] == [op for op in ops if op["op"] == "test"]
    assert all(
        op["path"].startswith("/spec/http/1/route/") and op["path"].endswith("/weight")
        for op in writes
    )
    after = apply_patch(obj, ops)  # every test op holds against the object it was built from
    managed = after["spec"]["http"][1]["route"]
    assert {d["destination"]["subset"]: d["weight"] for d in managed} == weights.as_dict()
    before = shop()
    for d_after, d_before in zip(managed, before["spec"]["http"][1]["route"], strict=True):
        d_before["weight"] = d_after["weight"]
    assert after == before  # nothing but those weights changed


# -- the managed-routes annotation --------------------------------------------------------------


def test_annotation_ops_create_the_map_when_the_object_has_none() -> None:
    loc = locate_route(BY_INDEX, virtual_service({"route": [dest("reviews", "v1")]}))
    assert annotation_ops(BY_INDEX, loc) == [
        {"op": "add", "path": "/metadata/annotations", "value": {MANAGED_ANNOTATION: "0"}}
    ]


def test_annotation_ops_merge_into_an_existing_list_sorted_and_keep_other_keys() -> None:
    obj = shop()
    obj["metadata"]["annotations"] = {"team": "shop", MANAGED_ANNOTATION: "zeta,0"}
    assert annotation_ops(BY_NAME, locate_route(BY_NAME, obj)) == [
        {
            "op": "add",
            "path": "/metadata/annotations/meshpilot.io~1managed-routes",
            "value": "0,primary,zeta",
        }
    ]


def test_annotation_ops_are_empty_when_the_route_is_listed_already() -> None:
    obj = shop()
    obj["metadata"]["annotations"] = {MANAGED_ANNOTATION: "0,primary"}
    assert annotation_ops(BY_NAME, locate_route(BY_NAME, obj)) == []


# -- reading back what the API server answered --------------------------------------------------


def test_the_answer_to_a_patch_must_carry_the_weights_written() -> None:
    wanted = Weights(["v1", "v2", "v3"], [80, 15, 5])
    assert confirm_written(BY_NAME, shop(), wanted) == wanted
    with pytest.raises(TemporaryError, match="the API server answered"):
        confirm_written(BY_NAME, shop(), Weights(["v1", "v2", "v3"], [70, 25, 5]))


# -- hosts and pointers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("reviews", "reviews.shop.svc.cluster.local"),
        ("reviews.books", "reviews.books.svc.cluster.local"),
        ("reviews.books.svc", "reviews.books.svc.cluster.local"),
        ("reviews.books.svc.cluster.local", "reviews.books.svc.cluster.local"),
        ("  Reviews.Books.SVC.cluster.local.", "reviews.books.svc.cluster.local"),
        ("api.example.com", "api.example.com"),
    ],
)
def test_canonical_host_forms(host: str, expected: str) -> None:
    assert canonical_host(host, NS) == expected


def test_canonical_host_uses_the_cluster_domain() -> None:
    assert canonical_host("reviews", NS, cluster_domain="corp.internal") == (
        "reviews.shop.svc.corp.internal"
    )


def test_short_and_full_host_names_locate_the_same_destinations() -> None:
    full = RouteRef(NS, "reviews", "primary", "reviews.shop.svc.cluster.local")
    assert locate_route(full, shop()).subsets == locate_route(BY_NAME, shop()).subsets


@pytest.mark.parametrize(
    ("tokens", "pointer"),
    [
        (("spec", "http", 1, "route", 0, "weight"), "/spec/http/1/route/0/weight"),
        (("metadata", "annotations", "meshpilot.io/managed-routes"),
         "/metadata/annotations/meshpilot.io~1managed-routes"),
        (("a~b",), "/a~0b"),
        (("~1",), "/~01"),  # "~" first: a literal "~1" must not read back as "/"
        ((), ""),
    ],
)  # fmt: skip
def test_json_pointer_escapes_tilde_then_slash(tokens: tuple[str | int, ...], pointer: str) -> None:
    assert json_pointer(*tokens) == pointer

"""What meshpilot reads from and writes to a VirtualService, as pure functions of the object.

Why it is shaped like this: a VirtualService is shared. Operators edit retries and matches,
CD tools add routes, other controllers annotate it — often within seconds of each other. Flagger
and Argo Rollouts GET and PUT the whole object, so whatever another writer changed in between is
lost. meshpilot sends a JSON Patch instead (`reweight_patch`) that

* starts with ``test`` ops on ``/metadata/resourceVersion`` and on the host and subset of every
  destination it reweights (and the route's name), so the patch applies only to the exact object
  it was computed from — otherwise the API server answers 422 (or 409) and we re-read and retry;
* then ``replace``/``add`` ops on ``/spec/http/<i>/route/<j>/weight`` only, plus once per route
  the `MANAGED_ANNOTATION` that tells humans who moves these weights (`annotation_ops`).

Nothing else is ever sent, so matches, retries, mirrors, other routes and other writers'
fields stay exactly as they are. The weights written always come from a `Weights` (each
0..100, summing to 100: the CRD itself accepts 160 and -60).

Reading is strict (`strict_weights`): a managed route whose weights someone else set to a sum
other than 100 (or to values outside 0..100) raises `InvalidWeightsError` naming the weights —
meshpilot will not silently renormalize or overwrite a human's intent. Writing only needs the
route's structure to be sound (`locate_route`), so an operator can repair such a route by
pinning weights through meshpilot.

Kept apart from the I/O (and free of ``kubernetes``) so that every rule about the object's
shape can be tested on plain dicts, without an API server.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller.adapters.promql import destination_service
from meshcore import (
    WEIGHT_TOTAL,
    InvalidWeightsError,
    PermanentError,
    RouteRef,
    TemporaryError,
    Weights,
)

__all__ = [
    "GROUP",
    "MANAGED_ANNOTATION",
    "VERSION",
    "Destination",
    "LocatedRoute",
    "annotation_ops",
    "canonical_host",
    "check_subsets_match",
    "confirm_written",
    "json_pointer",
    "locate_route",
    "reweight_patch",
    "route_label",
    "strict_weights",
]

GROUP = "networking.istio.io"
VERSION = "v1"
MANAGED_ANNOTATION = "meshpilot.io/managed-routes"
"""Annotation listing the http routes (name, or index when unnamed) whose weights meshpilot
manages, comma-separated; added once per route, never removed by meshpilot."""


# -- hosts and JSON pointers ------------------------------------------------------------------


def canonical_host(host: str, namespace: str, *, cluster_domain: str = "cluster.local") -> str:
    """The FQDN Istio resolves a destination or DestinationRule host to.

    Short names are relative to the object's namespace (``reviews`` in ``shop`` is
    ``reviews.shop.svc.cluster.local``), ``reviews.shop`` and ``reviews.shop.svc`` get the
    rest of the suffix, and anything else with two or more dots is kept (lower case, without a
    trailing dot). Same rule as the telemetry's ``destination_service``.
    """
    return _canonical_host(host, namespace, cluster_domain)


@functools.lru_cache(maxsize=8192)
def _canonical_host(host: str, namespace: str, cluster_domain: str) -> str:
    """`canonical_host`, memoized: a tick resolves the same few hundred hosts again and again."""
    name = host.strip().lower().rstrip(".")
    full = destination_service(name, namespace, cluster_domain=cluster_domain)
    if full.endswith(".svc"):
        full = f"{full}.{cluster_domain}"
    return full


def json_pointer(*tokens: str | int) -> str:
    """An RFC 6901 pointer: ``~`` becomes ``~0`` and ``/`` becomes ``~1`` in each token."""
    return "".join("/" + str(t).replace("~", "~0").replace("/", "~1") for t in tokens)


# -- what a route looks like --------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """One destination of the managed host in the route."""

    index: int  # position j in http[i].route
    host: str  # as written in the object
    subset: str
    weight: int | None  # None when the field is absent


@dataclass(frozen=True)
class LocatedRoute:
    """The managed route as found in one version of the VirtualService."""

    resource_version: str
    http_index: int
    http_name: str | None
    destinations: tuple[Destination, ...]
    annotations: Mapping[str, str] | None
    implied_weight: int  # what an absent weight means: 100 for a lone destination, else 0

    @property
    def subsets(self) -> tuple[str, ...]:
        return tuple(d.subset for d in self.destinations)

    def raw_weights(self) -> dict[str, int]:
        return {
            d.subset: self.implied_weight if d.weight is None else d.weight
            for d in self.destinations
        }


def route_label(route: RouteRef) -> str:
    """``http route 'name'`` or ``http route #index``, for messages."""
    if isinstance(route.route, str):
        return f"http route {route.route!r}"
    return f"http route #{route.route}"


def locate_route(
    route: RouteRef, obj: Mapping[str, Any], *, cluster_domain: str = "cluster.local"
) -> LocatedRoute:
    """Find the managed http route and its destinations for `route.host` in `obj`.

    Raises `PermanentError` when the route is missing (or named twice), has no destination for
    the host, sends weight to another host, has a destination without a subset, lists a subset
    twice or has a non-integer weight.
    """
    where = f"VirtualService {route.namespace}/{route.virtual_service}"
    meta = obj.get("metadata") or {}
    http = (obj.get("spec") or {}).get("http") or []
    if not isinstance(http, list) or not http:
        raise PermanentError(f"{where} has no http routes")
    if isinstance(route.route, int):
        if not 0 <= route.route < len(http):
            raise PermanentError(f"{where} has no http route #{route.route} (it has {len(http)})")
        index = route.route
    else:
        found = [i for i, h in enumerate(http) if (h or {}).get("name") == route.route]
        if not found:
            names = [h.get("name") for h in http if isinstance(h, dict) and h.get("name")]
            raise PermanentError(
                f"{where} has no http route named {route.route!r} (named routes: {names})"
            )
        if len(found) > 1:
            raise PermanentError(f"{where} has {len(found)} http routes named {route.route!r}")
        index = found[0]
    entry = http[index] or {}
    label = f"{where}, {route_label(route)}"
    dests = entry.get("route") or []
    if not dests:
        raise PermanentError(f"{label} has no destinations (a redirect or direct response?)")
    want = canonical_host(route.host, route.namespace, cluster_domain=cluster_domain)
    mine: list[Destination] = []
    others: list[str] = []
    for j, d in enumerate(dests):
        dest = (d or {}).get("destination") or {}
        host = str(dest.get("host", ""))
        weight = d.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)):
            raise PermanentError(f"{label}: destination #{j} has a non-integer weight {weight!r}")
        if canonical_host(host, route.namespace, cluster_domain=cluster_domain) != want:
            if weight:  # traffic to another host: our subsets cannot own all 100 points
                others.append(f"{host} ({weight})")
            continue
        subset = dest.get("subset")
        if not isinstance(subset, str) or not subset:
            raise PermanentError(
                f"{label}: the destination #{j} to {host} has no subset; meshpilot weights "
                "subsets defined by a DestinationRule"
            )
        mine.append(Destination(j, host, subset, weight))
    if not mine:
        hosts = sorted({str(((d or {}).get("destination") or {}).get("host")) for d in dests})
        raise PermanentError(f"{label} has no destination for host {route.host} ({hosts})")
    if others:
        raise PermanentError(
            f"{label} also sends traffic to other hosts: {', '.join(others)}; meshpilot "
            f"manages routes whose weight belongs to {route.host} alone"
        )
    subsets = [d.subset for d in mine]
    if len(set(subsets)) != len(subsets):
        raise PermanentError(f"{label} lists a subset twice: {subsets}")
    annotations = meta.get("annotations")
    return LocatedRoute(
        resource_version=str(meta.get("resourceVersion", "")),
        http_index=index,
        http_name=entry.get("name"),
        destinations=tuple(mine),
        annotations=dict(annotations) if isinstance(annotations, dict) else None,
        implied_weight=WEIGHT_TOTAL if len(dests) == 1 else 0,
    )


def strict_weights(route: RouteRef, loc: LocatedRoute) -> Weights:
    """The route's weights, or `InvalidWeightsError` (a `PermanentError` carrying them) when
    they are not a valid split (0..100 each, summing to 100): meshpilot does not manage
    weights someone else broke, but a pin may repair them."""
    raw = loc.raw_weights()
    try:
        return Weights(tuple(raw), tuple(raw.values()))
    except ValueError as err:
        raise InvalidWeightsError(
            f"VirtualService {route.namespace}/{route.virtual_service}, "
            f"{route_label(route)} has weights {raw} set outside meshpilot that are not a "
            f"valid split ({err}); meshpilot will not manage it until its weights are "
            "0..100 and sum to 100 (fix the VirtualService or pin weights)",
            raw,
        ) from err


def check_subsets_match(route: RouteRef, loc: LocatedRoute, weights: Weights) -> None:
    """`PermanentError` unless `weights` name exactly the route's subsets (in any order)."""
    if set(weights.subsets) != set(loc.subsets):
        raise PermanentError(
            f"VirtualService {route.namespace}/{route.virtual_service}, "
            f"{route_label(route)} has subsets {list(loc.subsets)} but the weights name "
            f"{list(weights.subsets)}; meshpilot never adds or removes destinations"
        )


# -- writing ----------------------------------------------------------------------------------


def reweight_patch(
    route: RouteRef, loc: LocatedRoute, weights: Weights, *, annotate: bool
) -> list[dict[str, Any]] | None:
    """The JSON Patch that sets `weights` on `loc`, or None when nothing would change.

    ``test`` ops first (resourceVersion, the route's name, each destination's host and subset),
    then an ``add``/``replace`` per weight that differs, then (with `annotate`) the
    `annotation_ops`.
    """
    http = ("spec", "http", loc.http_index)
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": loc.resource_version}
    ]
    if loc.http_name is not None:
        ops.append({"op": "test", "path": json_pointer(*http, "name"), "value": loc.http_name})
    changes: list[dict[str, Any]] = []
    for d in loc.destinations:
        base = (*http, "route", d.index)
        ops.append(
            {"op": "test", "path": json_pointer(*base, "destination", "host"), "value": d.host}
        )
        ops.append(
            {"op": "test", "path": json_pointer(*base, "destination", "subset"), "value": d.subset}
        )
        if d.weight != weights[d.subset]:
            changes.append(
                {
                    "op": "add" if d.weight is None else "replace",
                    "path": json_pointer(*base, "weight"),
                    "value": weights[d.subset],
                }
            )
    if annotate:
        changes.extend(annotation_ops(route, loc))
    return ops + changes if changes else None


def annotation_ops(route: RouteRef, loc: LocatedRoute) -> list[dict[str, Any]]:
    """The ops that add the route to `MANAGED_ANNOTATION` (none when it is listed already)."""
    mine = str(route.route)
    annotations = loc.annotations
    listed = (annotations or {}).get(MANAGED_ANNOTATION, "")
    names = [n for n in str(listed).split(",") if n]
    if mine in names:
        return []
    value = ",".join(sorted({*names, mine}))
    if annotations is None:  # the map itself is absent: create it with our key only
        return [
            {"op": "add", "path": "/metadata/annotations", "value": {MANAGED_ANNOTATION: value}}
        ]
    return [
        {
            "op": "add",  # add replaces an existing member (RFC 6902 4.1)
            "path": json_pointer("metadata", "annotations", MANAGED_ANNOTATION),
            "value": value,
        }
    ]


def confirm_written(
    route: RouteRef,
    obj: Mapping[str, Any],
    wanted: Weights,
    *,
    cluster_domain: str = "cluster.local",
) -> Weights:
    """The weights in `obj` (the API server's answer to a patch); `TemporaryError` when they
    are not `wanted`."""
    raw = locate_route(route, obj, cluster_domain=cluster_domain).raw_weights()
    if raw != wanted.as_dict():
        raise TemporaryError(
            f"VirtualService {route.namespace}/{route.virtual_service}: wrote "
            f"{wanted.as_dict()} but the API server answered {raw}"
        )
    return Weights(tuple(raw), tuple(raw.values()))

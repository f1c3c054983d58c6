"""Envoy's names and route file as meshpilot writes them, shared by the lab and the controller.

Why here: the lab (``envs.lab``) renders Envoy's bootstrap and first route file, and the
controller's `EnvoyRouteActuator` rewrites that file; neither may import the other, yet both
must agree byte for byte on cluster names, on the route configuration's name and on the shape
of the file. So the format lives in the pure core, with no I/O.

The route file is a filesystem-RDS ``DiscoveryResponse`` (JSON) holding one
``RouteConfiguration`` named `ROUTE_CONFIG_NAME`: one virtual host per service (named after
the service, answering its FQDN and short name with and without the port), each with one route
named `ROUTE_NAME` that matches every path and splits traffic with ``weighted_clusters`` over
the service's subsets. Clusters are named as Istio names them (``outbound|PORT|SUBSET|HOST``),
so Istio's stats tag regexes, and with them Istio-shaped telemetry, work unchanged.

Reading is strict (`read_route_document`): anything that is not exactly what `route_document`
writes is a `RouteDocumentError` naming the field, and a split that is not 0..100 summing to
100 is a `RouteWeightsError` carrying the weights found, as an `InvalidWeightsError`.
`read_route_entries` checks the same structure but leaves each split to `RouteEntry.spec`, so a
split broken on one service does not hide the others and can be repaired by a write.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcore.errors import ConfigError, InvalidWeightsError, PermanentError
from meshcore.model import Weights

__all__ = [
    "ROUTE_CONFIG_NAME",
    "ROUTE_NAME",
    "ROUTE_TYPE",
    "RouteDocumentError",
    "RouteEntry",
    "RouteSpec",
    "RouteWeightsError",
    "applied_route_version",
    "cluster_name",
    "parse_cluster_name",
    "read_route_document",
    "read_route_entries",
    "route_document",
    "weights_for",
]

ROUTE_CONFIG_NAME = "meshpilot_lab_routes"
"""Name of the one ``RouteConfiguration`` the listener asks RDS for."""

ROUTE_NAME = "default"
"""Name of the one weighted route of every virtual host (the ``RouteRef.route`` of the lab)."""

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
"""``@type`` of the route configuration resource in the file."""

_CLUSTER_PREFIX = "outbound"
_MAX_TIMEOUT_US = 10**12  # about 11.5 days: far beyond any sensible route timeout
_DURATION = re.compile(r"^(\d{1,9})(?:\.(\d{1,9}))?s$")


class RouteDocumentError(ConfigError):
    """A route file (or cluster name) is not what `route_document` writes; says where."""


class RouteWeightsError(RouteDocumentError, InvalidWeightsError):
    """A virtual host's split is not 0..100 summing to 100; `weights` holds what was found."""


# -- names ------------------------------------------------------------------------------------


def cluster_name(port: int, subset: str, host: str) -> str:
    """Istio's cluster name of one subset of a service: ``outbound|PORT|SUBSET|HOST``."""
    _check_port(port, "port")
    for label, text in (("subset", subset), ("host", host)):
        if not isinstance(text, str) or not text or "|" in text:
            raise ValueError(
                f"cluster {label} must be a non-empty string without '|', got {text!r}"
            )
    return f"{_CLUSTER_PREFIX}|{port}|{subset}|{host}"


def parse_cluster_name(name: str) -> tuple[int, str, str]:
    """(port, subset, host) of an ``outbound|PORT|SUBSET|HOST`` name; `RouteDocumentError`
    for anything else (other directions, a missing subset, a bad port)."""
    parts = name.split("|") if isinstance(name, str) else []
    if len(parts) != 4 or parts[0] != _CLUSTER_PREFIX or not parts[2] or not parts[3]:
        raise RouteDocumentError(
            f"cluster name {name!r} is not of the form 'outbound|PORT|SUBSET|HOST'"
        )
    if not parts[1].isdigit() or not 1 <= int(parts[1]) <= 65535:
        raise RouteDocumentError(f"cluster name {name!r} has no valid port (1..65535)")
    return int(parts[1]), parts[2], parts[3]


# -- the route file ---------------------------------------------------------------------------


def _check_names(service: Any, host: Any) -> None:
    for label, text in (("service", service), ("host", host)):
        if not isinstance(text, str) or not text or "|" in text:
            raise ValueError(f"{label} must be a non-empty string without '|', got {text!r}")


def _domains(service: str, host: str, port: int) -> list[str]:
    names = dict.fromkeys((host, service))
    return [d for name in names for d in (name, f"{name}:{port}")]


@dataclass(frozen=True)
class RouteSpec:
    """What the route file says about one service.

    service: the service (and virtual host) name; host: its FQDN, as ``destination_service``
    reports it; port: the service port in cluster names; weights: the split over its subsets,
    in route order; timeout_ms: Envoy's route timeout (ms, kept to the microsecond; a slower
    request is answered 504).
    """

    service: str
    host: str
    port: int
    weights: Weights
    timeout_ms: float

    def __post_init__(self) -> None:
        _check_names(self.service, self.host)
        _check_port(self.port, "port")
        if not isinstance(self.weights, Weights):
            raise TypeError(f"weights must be a Weights, got {type(self.weights).__name__}")
        object.__setattr__(self, "timeout_ms", _timeout_us(self.timeout_ms) / 1000)

    @property
    def domains(self) -> list[str]:
        """The Host header values the virtual host answers (FQDN and short name, ± port)."""
        return _domains(self.service, self.host, self.port)

    def replace_weights(self, weights: Weights) -> RouteSpec:
        return RouteSpec(self.service, self.host, self.port, weights, self.timeout_ms)

    def entry(self) -> RouteEntry:
        return RouteEntry(
            self.service, self.host, self.port, tuple(self.weights.items()), self.timeout_ms
        )


@dataclass(frozen=True)
class RouteEntry:
    """One virtual host as the file holds it, its split not checked yet (`spec` checks it).

    Why: one file holds every service, so a split someone broke by hand on one service must
    not stop meshpilot from reading or writing the others, and a pin must be able to repair
    it. split: (subset, weight) pairs in route order.
    """

    service: str
    host: str
    port: int
    split: tuple[tuple[str, int], ...]
    timeout_ms: float

    def __post_init__(self) -> None:
        _check_names(self.service, self.host)
        _check_port(self.port, "port")
        object.__setattr__(self, "timeout_ms", _timeout_us(self.timeout_ms) / 1000)

    @property
    def subsets(self) -> tuple[str, ...]:
        return tuple(subset for subset, _ in self.split)

    @property
    def domains(self) -> list[str]:
        return _domains(self.service, self.host, self.port)

    def spec(self) -> RouteSpec:
        """This service as a `RouteSpec`; `RouteWeightsError` when its split is not valid."""
        raw = dict(self.split)
        try:
            weights = Weights(self.subsets, tuple(raw.values()))
        except ValueError as err:
            raise RouteWeightsError(
                f"route file: virtual host {self.service!r} has weights {raw} that are not "
                f"a valid split ({err})",
                raw,
            ) from err
        return RouteSpec(self.service, self.host, self.port, weights, self.timeout_ms)

    def with_weights(self, weights: Weights) -> RouteEntry:
        """The same virtual host with `weights` (which must name exactly its subsets)."""
        if set(weights.subsets) != set(self.subsets):
            raise ValueError(f"weights name {list(weights)}, the route has {list(self.subsets)}")
        split = tuple((subset, weights[subset]) for subset in self.subsets)
        return RouteEntry(self.service, self.host, self.port, split, self.timeout_ms)


def route_document(version: int, services: Sequence[RouteSpec | RouteEntry]) -> dict[str, Any]:
    """The filesystem-RDS file (a ``DiscoveryResponse``) for `services` at `version`.

    ValueError when the version is negative or two services share a name or a domain.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an integer >= 0, got {version!r}")
    seen_names: set[str] = set()
    seen_domains: set[str] = set()
    virtual_hosts = []
    for service in services:
        entry = service.entry() if isinstance(service, RouteSpec) else service
        if entry.service in seen_names:
            raise ValueError(f"service {entry.service!r} is listed twice")
        clash = seen_domains.intersection(entry.domains)
        if clash:
            raise ValueError(f"service {entry.service!r} reuses domains {sorted(clash)}")
        seen_names.add(entry.service)
        seen_domains.update(entry.domains)
        virtual_hosts.append(_virtual_host(entry))
    return {
        "version_info": str(version),
        "resources": [
            {"@type": ROUTE_TYPE, "name": ROUTE_CONFIG_NAME, "virtual_hosts": virtual_hosts}
        ],
    }


def _virtual_host(entry: RouteEntry) -> dict[str, Any]:
    clusters = [
        {"name": cluster_name(entry.port, subset, entry.host), "weight": weight}
        for subset, weight in entry.split
    ]
    return {
        "name": entry.service,
        "domains": entry.domains,
        "routes": [
            {
                "name": ROUTE_NAME,
                "match": {"prefix": "/"},
                "route": {
                    "weighted_clusters": {"clusters": clusters},
                    "timeout": _duration_text(_timeout_us(entry.timeout_ms)),
                },
            }
        ],
    }


def read_route_document(doc: Any) -> tuple[int, list[RouteSpec]]:
    """(version, services) of a route file as `route_document` writes it.

    Strict: a missing, extra or mistyped field, a second route configuration or route, a
    cluster that is not ``outbound|PORT|SUBSET|HOST`` of the virtual host's service, or domains
    other than the service's raise `RouteDocumentError` naming the place; a split that is not
    a valid `Weights` raises `RouteWeightsError` (an `InvalidWeightsError`).
    """
    version, entries = read_route_entries(doc)
    return version, [entry.spec() for entry in entries]


def read_route_entries(doc: Any) -> tuple[int, list[RouteEntry]]:
    """`read_route_document` without checking the splits (weights must still be integers)."""
    top = _mapping(doc, "route file", {"version_info", "resources"})
    version_text = top.get("version_info")
    if not isinstance(version_text, str) or not version_text.isdigit():
        raise RouteDocumentError(
            f"route file: version_info must be a string of digits, got {version_text!r}"
        )
    resources = _list(top.get("resources"), "route file: resources")
    if len(resources) != 1:
        raise RouteDocumentError(
            f"route file: resources must hold exactly one RouteConfiguration, got {len(resources)}"
        )
    config = _mapping(resources[0], "route file: resources[0]", {"@type", "name", "virtual_hosts"})
    if config.get("@type") != ROUTE_TYPE:
        raise RouteDocumentError(
            f"route file: resources[0].@type must be {ROUTE_TYPE!r}, got {config.get('@type')!r}"
        )
    if config.get("name") != ROUTE_CONFIG_NAME:
        raise RouteDocumentError(
            f"route file: resources[0].name must be {ROUTE_CONFIG_NAME!r}, "
            f"got {config.get('name')!r}"
        )
    hosts = _list(config.get("virtual_hosts"), "route file: virtual_hosts")
    entries = [_read_virtual_host(vh, i) for i, vh in enumerate(hosts)]
    try:
        route_document(int(version_text), entries)  # names and domains unique
    except ValueError as err:
        raise RouteDocumentError(f"route file: {err}") from err
    return int(version_text), entries


def _read_virtual_host(raw: Any, index: int) -> RouteEntry:
    where = f"route file: virtual_hosts[{index}]"
    vh = _mapping(raw, where, {"name", "domains", "routes"})
    service = vh.get("name")
    if not isinstance(service, str) or not service:
        raise RouteDocumentError(f"{where}.name must be a non-empty string, got {service!r}")
    where = f"route file: virtual host {service!r}"
    routes = _list(vh.get("routes"), f"{where}: routes")
    if len(routes) != 1:
        raise RouteDocumentError(f"{where} must have exactly one route, got {len(routes)}")
    route = _mapping(routes[0], f"{where}: routes[0]", {"name", "match", "route"})
    if route.get("name") != ROUTE_NAME:
        raise RouteDocumentError(
            f"{where}: the route must be named {ROUTE_NAME!r}, got {route.get('name')!r}"
        )
    if route.get("match") != {"prefix": "/"}:
        raise RouteDocumentError(
            f"{where}: the route must match {{'prefix': '/'}}, got {route.get('match')!r}"
        )
    action = _mapping(route.get("route"), f"{where}: route", {"weighted_clusters", "timeout"})
    timeout_us = _parse_duration(action.get("timeout"), f"{where}: timeout")
    weighted = _mapping(
        action.get("weighted_clusters"), f"{where}: weighted_clusters", {"clusters"}
    )
    clusters = _list(weighted.get("clusters"), f"{where}: weighted_clusters.clusters")
    if not clusters:
        raise RouteDocumentError(f"{where}: weighted_clusters.clusters is empty")
    port_host: set[tuple[int, str]] = set()
    split: list[tuple[str, int]] = []
    for j, raw_cluster in enumerate(clusters):
        cluster = _mapping(raw_cluster, f"{where}: clusters[{j}]", {"name", "weight"})
        name = cluster.get("name")
        if not isinstance(name, str):
            raise RouteDocumentError(f"{where}: clusters[{j}].name must be a string, got {name!r}")
        port, subset, host = parse_cluster_name(name)
        weight = cluster.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise RouteDocumentError(
                f"{where}: clusters[{j}] ({subset}) has a non-integer weight {weight!r}"
            )
        port_host.add((port, host))
        split.append((subset, weight))
    if len(port_host) != 1:
        raise RouteDocumentError(
            f"{where}: its clusters name several services {sorted(port_host)}; one per host"
        )
    subsets = [subset for subset, _ in split]
    if len(set(subsets)) != len(subsets):
        raise RouteDocumentError(f"{where} lists a subset twice: {subsets}")
    ((port, host),) = port_host
    try:
        entry = RouteEntry(service, host, port, tuple(split), timeout_us / 1000)
    except ValueError as err:
        raise RouteDocumentError(f"{where}: {err}") from err
    domains = vh.get("domains")
    if domains != entry.domains:
        raise RouteDocumentError(f"{where}: domains must be {entry.domains}, got {domains!r}")
    return entry


def weights_for(doc_or_specs: Mapping[str, Any] | Sequence[RouteSpec], host: str) -> Weights:
    """The split of the service whose FQDN is `host`, from a route file or its `RouteSpec`s.

    `PermanentError` naming the hosts present when none matches (as for a missing route);
    `RouteWeightsError` when that service's split (and only that one) is broken.
    """
    entries = (
        read_route_entries(doc_or_specs)[1]
        if isinstance(doc_or_specs, Mapping)
        else [spec.entry() for spec in doc_or_specs]
    )
    for entry in entries:
        if entry.host == host:
            return entry.spec().weights
    known = ", ".join(entry.host for entry in entries) or "none"
    raise PermanentError(f"route file has no service for host {host!r} (hosts: {known})")


# -- what Envoy runs ---------------------------------------------------------------------------


def applied_route_version(config_dump: Any) -> int | None:
    """The ``version_info`` of the `ROUTE_CONFIG_NAME` routes Envoy has applied, from its admin
    ``/config_dump?resource=dynamic_route_configs`` (or a full ``/config_dump``); None when
    Envoy has not loaded them (yet) or the answer has no such entry."""
    if not isinstance(config_dump, Mapping):
        return None
    versions: list[int] = []
    for config in config_dump.get("configs") or []:
        if not isinstance(config, Mapping):
            continue
        entries = config.get("dynamic_route_configs")
        candidates = entries if isinstance(entries, list) else [config]
        for entry in candidates:
            if not isinstance(entry, Mapping):
                continue
            route_config = entry.get("route_config")
            version = entry.get("version_info")
            if (
                isinstance(route_config, Mapping)
                and route_config.get("name") == ROUTE_CONFIG_NAME
                and isinstance(version, str)
                and version.isdigit()
            ):
                versions.append(int(version))
    return max(versions) if versions else None


# -- helpers ----------------------------------------------------------------------------------


def _check_port(port: Any, label: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"{label} must be an integer 1..65535, got {port!r}")


def _timeout_us(timeout_ms: Any) -> int:
    """A timeout (ms) as whole microseconds; ValueError unless positive and finite."""
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int | float):
        raise ValueError(f"timeout_ms must be a number, got {timeout_ms!r}")
    if not math.isfinite(timeout_ms) or timeout_ms <= 0:
        raise ValueError(f"timeout_ms must be a positive number of ms, got {timeout_ms!r}")
    us = round(timeout_ms * 1000)
    if not 1 <= us <= _MAX_TIMEOUT_US:
        raise ValueError(
            f"timeout_ms must be 0.001..{_MAX_TIMEOUT_US // 1000} ms, got {timeout_ms}"
        )
    return us


def _duration_text(us: int) -> str:
    """Microseconds as a protobuf JSON Duration: ``5s``, ``0.250s``, ``1.000001s``."""
    seconds, rest = divmod(us, 1_000_000)
    if rest == 0:
        return f"{seconds}s"
    frac = f"{rest:06d}".rstrip("0")
    return f"{seconds}.{frac.ljust(3, '0')}s"


def _parse_duration(text: Any, where: str) -> int:
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise RouteDocumentError(f"{where} must be a duration like '5s' or '0.250s', got {text!r}")
    frac = match.group(2) or ""
    if len(frac) > 6 and set(frac[6:]) != {"0"}:
        raise RouteDocumentError(f"{where}: {text!r} is finer than a microsecond")
    us = int(match.group(1)) * 1_000_000 + int((frac[:6] or "0").ljust(6, "0"))
    if not 1 <= us <= _MAX_TIMEOUT_US:
        raise RouteDocumentError(f"{where} must be positive and at most 11 days, got {text!r}")
    return us


def _mapping(value: Any, where: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RouteDocumentError(f"{where} must be an object, got {type(value).__name__}")
    missing = sorted(keys - set(value))
    if missing:
        raise RouteDocumentError(f"{where} is missing {missing}")
    extra = sorted(set(value) - keys)
    if extra:
        raise RouteDocumentError(f"{where} has unknown fields {extra}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RouteDocumentError(f"{where} must be a list, got {type(value).__name__}")
    return value

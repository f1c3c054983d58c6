"""The DestinationRules that define a route's subsets, listed per namespace and cached briefly.

Why: a VirtualService route to a subset no DestinationRule defines answers 503 in Istio, so
the actuator refuses to read or write weights for subsets it cannot find there. Rules are
looked up by ``spec.host`` (canonical form), not by name, first in the VirtualService's
namespace, then in the host's own; each namespace's list is trusted for ``cache_s`` seconds,
and writers on several threads that find it expired together wait for one list instead of
each sending their own.

Listing goes through the owner (the actuator): the same client, timeouts, fail-fast call
wrapper and counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from controller.adapters.istio.routes import GROUP, VERSION, canonical_host, route_label
from controller.adapters.kube.client import ApiOwner
from meshcore import PermanentError, RouteRef

__all__ = ["DestinationRules"]


_ByHost = dict[str, list[dict[str, Any]]]
"""A namespace's DestinationRules by canonical ``spec.host``."""


class DestinationRules:
    """DestinationRule lookups for one actuator (thread-safe).

    cache_s: how long a namespace's list is trusted (s, 0 = list every time); cluster_domain:
    DNS suffix of short host names.
    """

    def __init__(self, owner: ApiOwner, *, cache_s: float, cluster_domain: str) -> None:
        self._owner = owner
        self.cache_s = cache_s
        self.cluster_domain = cluster_domain
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, _ByHost]] = {}
        self._refresh_locks: dict[str, threading.Lock] = {}

    def check_subsets(
        self, route: RouteRef, subsets: Sequence[str], *, fresh: bool = False
    ) -> None:
        """Every subset of the route must be defined by a DestinationRule of its host.

        fresh: list again even when the cached list is recent. Raises `PermanentError` when
        no rule exists for the host, the rules define no subsets, or some subset is missing.
        """
        want = canonical_host(route.host, route.namespace, cluster_domain=self.cluster_domain)
        namespaces = [route.namespace]
        host_ns = want.split(".")[1] if want.endswith(f".svc.{self.cluster_domain}") else None
        if host_ns and host_ns != route.namespace:
            namespaces.append(host_ns)
        for namespace in namespaces:
            rules = self.by_host(namespace, fresh=fresh).get(want, [])
            if rules:
                break
        else:
            raise PermanentError(
                f"no DestinationRule for host {want} in namespace(s) {namespaces}: the subsets "
                f"{list(subsets)} of VirtualService {route.namespace}/{route.virtual_service} "
                "are undefined"
            )
        names = [f"{namespace}/{r.get('metadata', {}).get('name')}" for r in rules]
        defined = {
            s.get("name")
            for r in rules
            for s in (r.get("spec") or {}).get("subsets") or []
            if isinstance(s, dict)
        }
        if not defined:
            raise PermanentError(
                f"DestinationRule {', '.join(names)} for host {want} defines no subsets; "
                f"{route_label(route)} of VirtualService {route.namespace}/"
                f"{route.virtual_service} needs {list(subsets)}"
            )
        missing = [s for s in subsets if s not in defined]
        if missing:
            raise PermanentError(
                f"subsets {missing} of VirtualService {route.namespace}/{route.virtual_service} "
                f"are not defined by DestinationRule {', '.join(names)} "
                f"(it defines {sorted(str(d) for d in defined)})"
            )

    def by_host(self, namespace: str, *, fresh: bool) -> _ByHost:
        """The namespace's DestinationRules by canonical ``spec.host`` (listed, or cached).

        One list at a time per namespace: writers on several threads that find the cache
        expired together wait for one list instead of each sending their own.
        """
        asked = time.monotonic()
        with self._lock:
            cached = self._cache.get(namespace)
            refresh = self._refresh_locks.setdefault(namespace, threading.Lock())
        if cached is not None and not fresh and asked - cached[0] < self.cache_s:
            return cached[1]
        with refresh:
            with self._lock:
                cached = self._cache.get(namespace)
            if cached is not None and (
                cached[0] >= asked  # listed since we asked
                or (not fresh and time.monotonic() - cached[0] < self.cache_s)
            ):
                return cached[1]
            return self._list(namespace)

    def _list(self, namespace: str) -> _ByHost:
        owner = self._owner
        now = time.monotonic()
        listed = owner.call(
            "list",
            f"destinationrules.{GROUP} in namespace {namespace}",
            lambda: owner.custom_objects.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "destinationrules", _request_timeout=owner.timeouts
            ),
        )
        owner.count("dr_lists")
        by_host: _ByHost = {}
        for item in listed.get("items") or []:
            if isinstance(item, dict):
                host = str((item.get("spec") or {}).get("host", ""))
                key = canonical_host(host, namespace, cluster_domain=self.cluster_domain)
                by_host.setdefault(key, []).append(item)
        with self._lock:
            self._cache[namespace] = (now, by_host)
        return by_host

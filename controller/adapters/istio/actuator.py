"""The live `Actuator`: reads and writes the weights of one http route of an Istio VirtualService.

Why this module: it is the I/O around the pure route logic of `routes` (see there why a JSON
Patch guarded by ``test`` ops, and why reading is strict). `current` reads the object (from
the `watch_cache` when it is on and in sync, else a GET), locates the managed route and
checks its subsets against the `destination_rules`; `apply` patches only the weights (and once
the managed-routes annotation), re-reading and recomputing the patch when a concurrent write
made it fail, up to ``max_conflict_retries`` times.

Errors: a missing VirtualService, route, host, DestinationRule or subset, RBAC denials (401/403)
and requests the API server rejects as invalid are `PermanentError`; 5xx, 429, timeouts,
refused connections and conflicts that persist after ``max_conflict_retries`` re-reads are
`TemporaryError`. Both are raised ``from`` the kubernetes/urllib3 error. After a call could not
reach the API server, every call fails at once for ``fail_fast_s`` (`VirtualServiceActuator.call`),
so a tick over many routes waits for one timeout, not one per route.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.adapters.istio.destination_rules import DestinationRules
from controller.adapters.istio.routes import (
    GROUP,
    VERSION,
    LocatedRoute,
    check_subsets_match,
    confirm_written,
    locate_route,
    reweight_patch,
    route_label,
    strict_weights,
)
from controller.adapters.istio.watch_cache import VirtualServiceCache
from controller.adapters.kube.client import (
    brief_error,
    error_status,
    kube_api_client,
    status_message,
    translate_api_error,
)
from meshcore import ConfigError, RouteRef, TemporaryError, Weights

__all__ = ["JSON_PATCH", "VirtualServiceActuator"]

_log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"

_T = TypeVar("_T")


class _Conflict(Exception):
    """The object moved between our read and our patch (409, or a failed ``test`` op: 422)."""


def _has_causes(exc: ApiException) -> bool:
    """Whether a 422 names invalid fields (a real validation error, not a failed ``test``)."""
    status = error_status(exc)
    return bool(status and (status.get("details") or {}).get("causes"))


def _vs_resource(route: RouteRef) -> str:
    return f"virtualservices.{GROUP} {route.namespace}/{route.virtual_service}"


class VirtualServiceActuator:
    """Reads/writes the weights of `RouteRef` routes in Istio VirtualServices (see module doc).

    api_client: a `kubernetes.client.ApiClient` (default: one built from `kubeconfig` and its
    `context`, None: the file's current one, or from in-cluster credentials when `kubeconfig`
    is None too); dry_run: ``True`` or ``"All"`` sends every
    patch with server-side dry run (validated and answered, never persisted); field_manager: the
    manager name recorded in ``managedFields``; max_conflict_retries: re-reads after a conflict
    before giving up with `TemporaryError`; annotate: add `routes.MANAGED_ANNOTATION` (once per
    route); timeout_s: per-request timeout (s); conflict_backoff_s: the random pause before a
    retry grows by this much per attempt (s); dr_cache_s: how long a namespace's
    DestinationRules are trusted (s, 0 = read every time); reuse_read_s: `apply` patches from
    the object read (or written) less than this ago instead of reading again (s, 0 = always
    read; a stale copy just fails the ``resourceVersion`` test and is re-read); fail_fast_s:
    after the API server could not be reached, calls fail at once with `TemporaryError` for
    this long (s, 0 = always try; keep it below the tick); cluster_domain: DNS suffix of short
    host names; watch_cache: keep each namespace's VirtualServices in memory through list +
    watch and read from there (see `watch_cache`; False: a GET per read); watch_timeout_s:
    how long one watch request lasts before it is renewed (s, randomized up to +50 %);
    max_connections: connection pool size of the client built here (parallel writers plus one
    per watched namespace; an `api_client` passed in keeps its own pool).

    Thread-safe: `current` and `apply` may run from several threads at once (for different
    routes; writes to one object are serialized by the API server's resourceVersion checks).

    Counters (thread-safe, monotonic): `writes` successful patches, `conflicts` re-reads after a
    conflict (per route: `conflicts_for`), `reads` GETs of VirtualServices, `lists` LISTs and
    `watch_events` watch events of the cache, `dr_lists` LISTs of DestinationRules.
    """

    def __init__(
        self,
        *,
        api_client: Any | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        dry_run: bool | Literal["All"] | None = False,
        field_manager: str = "meshpilot",
        max_conflict_retries: int = 5,
        annotate: bool = True,
        timeout_s: float = 5.0,
        conflict_backoff_s: float = 0.02,
        dr_cache_s: float = 10.0,
        reuse_read_s: float = 1.0,
        fail_fast_s: float = 2.0,
        cluster_domain: str = "cluster.local",
        watch_cache: bool = False,
        watch_timeout_s: float = 300.0,
        max_connections: int = 16,
    ) -> None:
        if dry_run not in (True, False, None, "All"):
            raise ConfigError(f"dry_run must be a bool or 'All', got {dry_run!r}")
        if not (isinstance(max_conflict_retries, int) and max_conflict_retries >= 0):
            raise ConfigError(f"max_conflict_retries must be >= 0, got {max_conflict_retries!r}")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0 s, got {timeout_s!r}")
        if min(conflict_backoff_s, dr_cache_s, reuse_read_s, fail_fast_s) < 0:
            raise ConfigError(
                "conflict_backoff_s, dr_cache_s, reuse_read_s and fail_fast_s must be >= 0 s"
            )
        if not watch_timeout_s >= 1:
            raise ConfigError(f"watch_timeout_s must be >= 1 s, got {watch_timeout_s!r}")
        self._owns_client = api_client is None
        self.api_client = (
            api_client
            if api_client is not None
            else kube_api_client(kubeconfig, context=context, max_connections=max_connections)
        )
        self.custom_objects: Any = client.CustomObjectsApi(self.api_client)
        self.dry_run: str | None = "All" if dry_run in (True, "All") else None
        self.field_manager = field_manager
        self.max_conflict_retries = max_conflict_retries
        self.annotate = annotate
        self.timeout_s = float(timeout_s)
        self.timeouts = (min(self.timeout_s, 3.0), self.timeout_s)  # (connect, read) s
        self.conflict_backoff_s = float(conflict_backoff_s)
        self.dr_cache_s = float(dr_cache_s)
        self.reuse_read_s = float(reuse_read_s)
        self.fail_fast_s = float(fail_fast_s)
        self.cluster_domain = cluster_domain
        self._down_until = -math.inf
        self._down_exc: BaseException | None = None
        self._lock = threading.Lock()
        self._destination_rules = DestinationRules(
            self, cache_s=self.dr_cache_s, cluster_domain=cluster_domain
        )
        self._last_read: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.watch_cache = bool(watch_cache)
        self.watch_timeout_s = float(watch_timeout_s)
        self._caches: dict[str, VirtualServiceCache] = {}
        self._closed = False
        self._route_conflicts: dict[str, int] = {}
        self.writes = 0
        self.conflicts = 0
        self.reads = 0
        self.lists = 0
        self.watch_events = 0
        self.dr_lists = 0

    def close(self) -> None:
        """Stop the watches; release the connection pool (only when this actuator built the
        client). Idempotent."""
        with self._lock:
            self._closed = True
            caches, self._caches = list(self._caches.values()), {}
        for cache in caches:
            cache.stop()
        if self._owns_client:
            self.api_client.close()

    def conflicts_for(self, route: RouteRef) -> int:
        """Conflicts `apply` met (and retried) on this route so far."""
        with self._lock:
            return self._route_conflicts.get(route.key, 0)

    def cache_synced(self, namespace: str, timeout_s: float = 0.0) -> bool:
        """Whether the watch cache of `namespace` is in sync (waiting up to `timeout_s`);
        starts the cache when it is enabled and not started yet. False without a cache."""
        cache = self._cache(namespace)
        return cache is not None and cache.synced.wait(timeout_s)

    # -- the Actuator port ------------------------------------------------------------------

    def current(self, route: RouteRef) -> Weights:
        """The route's weights per subset, in route order (validated against the DR).

        From the watch cache when it is on and in sync, else from a GET.
        """
        loc = self._locate(route, self._read(route))
        weights = strict_weights(route, loc)
        self._destination_rules.check_subsets(route, loc.subsets)
        return weights

    def discover(self, route: RouteRef) -> tuple[str, ...]:
        """The route's subsets in route order, checked against a fresh DestinationRule read."""
        loc = self._locate(route, self._get(route))
        self._destination_rules.check_subsets(route, loc.subsets, fresh=True)
        return loc.subsets

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        """Write `weights` to the route's destinations; return the weights now configured.

        Only the weights (and once the managed-routes annotation) change. A concurrent write
        makes the patch fail; it is recomputed from a fresh read up to `max_conflict_retries`
        times, then `TemporaryError`. Nothing is sent when the weights are already in force.
        """
        if not isinstance(weights, Weights):
            raise TypeError(
                f"apply needs a Weights (0..100, summing to 100), got {type(weights).__name__}"
            )
        weights = Weights(weights.subsets, weights.values_tuple)  # re-validate, always
        obj = self._recent(route)
        fresh = obj is None
        loc = self._locate(route, obj if obj is not None else self._get(route))
        check_subsets_match(route, loc, weights)
        # Every re-read must list exactly these subsets again, so one DestinationRule check
        # covers all attempts and keeps the read-to-patch window of a retry short.
        self._destination_rules.check_subsets(route, loc.subsets)
        conflicts = 0
        while True:
            ops = reweight_patch(route, loc, weights, annotate=self.annotate)
            if ops is None and fresh:
                return Weights(loc.subsets, tuple(weights[s] for s in loc.subsets))
            if ops is None:  # a reused read says "in force": make sure before saying so
                loc, fresh = self._reread(route, weights), True
                continue
            try:
                out = self._patch(route, ops)
            except _Conflict as exc:
                conflicts += 1
                if conflicts > self.max_conflict_retries:
                    raise TemporaryError(
                        f"VirtualService {route.namespace}/{route.virtual_service} kept changing "
                        f"under meshpilot: {conflicts} patches of {route_label(route)} "
                        "conflicted; will retry next tick"
                    ) from exc
                self._count_conflict(route)
                _log.debug("%s: conflict %d, re-reading", route.key, conflicts)
                time.sleep(random.uniform(0.0, self.conflict_backoff_s * conflicts))
                loc, fresh = self._reread(route, weights), True
                continue
            self.count("writes")
            self._remember(route, None if self.dry_run else out)  # a dry run changed nothing
            return confirm_written(route, out, weights, cluster_domain=self.cluster_domain)

    def _reread(self, route: RouteRef, weights: Weights) -> LocatedRoute:
        loc = self._locate(route, self._get(route))
        check_subsets_match(route, loc, weights)
        return loc

    # -- reading ----------------------------------------------------------------------------

    def _locate(self, route: RouteRef, obj: Mapping[str, Any]) -> LocatedRoute:
        return locate_route(route, obj, cluster_domain=self.cluster_domain)

    def _cache(self, namespace: str) -> VirtualServiceCache | None:
        """The namespace's watch cache (started, and its first list awaited up to `timeout_s`,
        on first use), or None when caching is off or the actuator is closed."""
        if not self.watch_cache:
            return None
        with self._lock:
            cache = self._caches.get(namespace)
            created = cache is None and not self._closed
            if created:
                cache = VirtualServiceCache(self, namespace, watch_timeout_s=self.watch_timeout_s)
                self._caches[namespace] = cache
        if created and cache is not None:
            cache.start()
            cache.synced.wait(self.timeout_s)
        return cache

    def _cached(self, route: RouteRef) -> dict[str, Any] | None:
        cache = self._cache(route.namespace)
        return None if cache is None else cache.get(route.virtual_service)

    def _read(self, route: RouteRef) -> dict[str, Any]:
        """The VirtualService from the cache when it is there, else from a GET."""
        obj = self._cached(route)
        return obj if obj is not None else self._get(route)

    def _recent(self, route: RouteRef) -> dict[str, Any] | None:
        """The object from the watch cache, or as read less than `reuse_read_s` ago (by
        `current`, typically), or None.

        Safe to patch from: if it is stale, the ``resourceVersion`` test fails and `apply`
        re-reads, exactly as after a concurrent write.
        """
        cached = self._cached(route)
        if cached is not None:
            return cached
        with self._lock:
            hit = self._last_read.get((route.namespace, route.virtual_service))
        if hit is None or time.monotonic() - hit[0] > self.reuse_read_s:
            return None
        return hit[1]

    def _get(self, route: RouteRef) -> dict[str, Any]:
        self.count("reads")
        obj: dict[str, Any] = self.call(
            "get",
            _vs_resource(route),
            lambda: self.custom_objects.get_namespaced_custom_object(
                GROUP,
                VERSION,
                route.namespace,
                "virtualservices",
                route.virtual_service,
                _request_timeout=self.timeouts,
            ),
            not_found=f"VirtualService {route.namespace}/{route.virtual_service} not found",
        )
        self._remember(route, obj)
        return obj

    def _remember(self, route: RouteRef, obj: dict[str, Any] | None) -> None:
        """Keep `obj` as the latest known state of the route's VirtualService (None: forget)."""
        if obj is not None and self.watch_cache:
            with self._lock:
                cache = self._caches.get(route.namespace)
            if cache is not None:
                cache.put(obj)
        if self.reuse_read_s <= 0:
            return
        key = (route.namespace, route.virtual_service)
        with self._lock:
            if obj is None:
                self._last_read.pop(key, None)
            else:
                self._last_read[key] = (time.monotonic(), obj)

    # -- writing ----------------------------------------------------------------------------

    def _patch(self, route: RouteRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        resource = _vs_resource(route)

        def send() -> Any:
            kwargs: dict[str, Any] = {"field_manager": self.field_manager}
            if self.dry_run:
                kwargs["dry_run"] = self.dry_run
            return self.custom_objects.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                route.namespace,
                "virtualservices",
                route.virtual_service,
                ops,
                _content_type=JSON_PATCH,
                _request_timeout=self.timeouts,
                **kwargs,
            )

        out: dict[str, Any] = self.call(
            "patch",
            resource,
            send,
            not_found=f"VirtualService {route.namespace}/{route.virtual_service} not found",
            conflicts=True,
        )
        return out

    # -- plumbing ---------------------------------------------------------------------------

    def count(self, counter: str) -> None:
        """Add one to the counter attribute `counter` (thread-safe; also for the caches and
        DestinationRule lookups of this actuator)."""
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    def _count_conflict(self, route: RouteRef) -> None:
        with self._lock:
            self.conflicts += 1
            self._route_conflicts[route.key] = self._route_conflicts.get(route.key, 0) + 1

    def call(
        self,
        verb: str,
        resource: str,
        fn: Callable[[], _T],
        *,
        not_found: str | None = None,
        conflicts: bool = False,
    ) -> _T:
        """fn() with errors translated; fails fast while the API server is unreachable.

        After a connection-level failure (refused, timed out, TLS) every call raises
        `TemporaryError` at once for `fail_fast_s`: a tick over many routes then waits for one
        timeout, not one per route. conflicts: 409 and 422-without-causes raise `_Conflict`.
        Every request of this actuator, its watch caches and its DestinationRule lookups goes
        through here (the long-running watch streams excepted).
        """
        with self._lock:
            down_until, down_exc = self._down_until, self._down_exc
        remaining = down_until - time.monotonic()
        if remaining > 0:
            why = brief_error(down_exc or Exception())
            raise TemporaryError(
                f"{verb} {resource}: API server unreachable ({why}); "
                f"not tried again for {remaining:.1f} s"
            ) from down_exc
        try:
            out = fn()
        except ApiException as exc:
            self._reachable(exc if not exc.status else None)
            if conflicts and (exc.status == 409 or (exc.status == 422 and not _has_causes(exc))):
                raise _Conflict(status_message(exc)) from exc
            raise translate_api_error(exc, verb, resource, not_found=not_found) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            self._reachable(exc)
            raise translate_api_error(exc, verb, resource) from exc
        self._reachable(None)
        return out

    def _reachable(self, failure: BaseException | None) -> None:
        """Record whether the last call reached the API server (`failure` None: it did).

        A failure also drops the watch caches out of sync: what they hold may be arbitrarily
        old by now, so reads go to the API server (and fail fast) until a new list succeeds.
        """
        with self._lock:
            if failure is None:
                self._down_until, self._down_exc = -math.inf, None
                return
            self._down_until = time.monotonic() + self.fail_fast_s
            self._down_exc = failure
            caches = list(self._caches.values())
        for cache in caches:
            cache.invalidate()

"""The live `Actuator`: reads and writes the weights of one http route of an Istio VirtualService.

Why it is shaped like this: a VirtualService is shared. Operators edit retries and matches,
CD tools add routes, other controllers annotate it — often within seconds of each other. Flagger
and Argo Rollouts GET and PUT the whole object, so whatever another writer changed in between is
lost. meshpilot sends a JSON Patch instead that

* starts with ``test`` ops on ``/metadata/resourceVersion`` and on the host and subset of every
  destination it reweights (and the route's name), so the patch applies only to the exact object
  it was computed from — otherwise the API server answers 422 (or 409) and we re-read and retry;
* then ``replace``/``add`` ops on ``/spec/http/<i>/route/<j>/weight`` only, plus once per route
  the ``meshpilot.io/managed-routes`` annotation that tells humans who moves these weights.

Nothing else is ever sent, so matches, retries, mirrors, other routes and other writers'
fields stay exactly as they are. The weights written always come from a `Weights` (each
0..100, summing to 100: the CRD itself accepts 160 and -60).

Reading (`current`) is strict: a managed route whose weights someone else set to a sum other
than 100 (or to values outside 0..100) raises `PermanentError` naming the weights — meshpilot
will not silently renormalize or overwrite a human's intent; the loop marks the route failed and
re-checks it later. Writing (`apply`) only needs the route's structure to be sound, so an
operator can repair such a route by pinning weights through meshpilot.

Subsets come from the route itself and must be defined by a DestinationRule for the same host
(looked up by ``spec.host``, not by name, in the VirtualService's namespace, then the host's;
cached ``dr_cache_s``): a route to an undefined subset answers 503 in Istio.

With ``watch_cache=True`` the VirtualServices of each namespace are listed once and then kept
current by a background ``watch`` (resumed from the last resourceVersion, re-listed after 410
Gone, a watch error, or any call that could not reach the API server), so `current` answers
from memory instead of one GET per route per tick. The cache never weakens a write: the
``resourceVersion`` test op still fails on a stale copy, and `apply` re-reads (GET) and retries
exactly as after a concurrent write. While the cache is not in sync (first list pending, API
server unreachable, list/watch denied by RBAC) every read falls back to a GET.

Errors: a missing VirtualService, route, host, DestinationRule or subset, RBAC denials (401/403)
and requests the API server rejects as invalid are `PermanentError`; 5xx, 429, timeouts,
refused connections and conflicts that persist after ``max_conflict_retries`` re-reads are
`TemporaryError`. Both are raised ``from`` the kubernetes/urllib3 error.

With `leader.py`, this is the only module that imports ``kubernetes``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from controller.adapters.promql import destination_service
from meshcore import (
    WEIGHT_TOTAL,
    ConfigError,
    PermanentError,
    RouteRef,
    TemporaryError,
    Weights,
)

__all__ = [
    "GROUP",
    "JSON_PATCH",
    "MANAGED_ANNOTATION",
    "VERSION",
    "VirtualServiceActuator",
    "canonical_host",
    "json_pointer",
    "kube_api_client",
    "translate_api_error",
]

_log = logging.getLogger(__name__)

GROUP = "networking.istio.io"
VERSION = "v1"
JSON_PATCH = "application/json-patch+json"
MANAGED_ANNOTATION = "meshpilot.io/managed-routes"
"""Annotation listing the http routes (name, or index when unnamed) whose weights meshpilot
manages, comma-separated; added once per route, never removed by meshpilot."""

_T = TypeVar("_T")


# -- shared with controller.leader ----------------------------------------------------------


def kube_api_client(
    kubeconfig: str | None = None, *, context: str | None = None, max_connections: int = 16
) -> Any:
    """A `kubernetes.client.ApiClient` from a kubeconfig file, or in-cluster credentials.

    Refused connections are retried twice at once, reads never: urllib3's default (3 retries of
    any error) would turn one request timeout into four against a hung API server.
    max_connections: size of the connection pool, at least the number of threads that call
    the API server at once (parallel writers plus one per watch); beyond it urllib3 opens and
    throws away extra connections. Raises `ConfigError` when neither works (no file, no
    service-account token).
    """
    if max_connections < 1:
        raise ConfigError(f"max_connections must be >= 1, got {max_connections!r}")
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (ConfigException, OSError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
        raise ConfigError(f"cannot load Kubernetes credentials from {where}: {err}") from err
    configuration.retries = urllib3.Retry(total=2, connect=2, read=0, redirect=0, status=0)
    configuration.connection_pool_maxsize = max_connections
    return client.ApiClient(configuration)


def _status(err: ApiException) -> dict[str, Any] | None:
    """The `Status` object of an error body, or None when the body is not one."""
    body = err.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str) or not body:
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return None
    return status if isinstance(status, dict) and status.get("kind") == "Status" else None


def _status_message(err: ApiException) -> str:
    """The API server's own message from an error body (a `Status`), else the body or reason."""
    status = _status(err)
    if status is not None and status.get("message"):
        return str(status["message"])
    body = err.body.decode(errors="replace") if isinstance(err.body, bytes) else err.body
    if isinstance(body, str) and body.strip():
        return " ".join(body.split())[:300]
    return str(err.reason or "no message")


def _brief(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def translate_api_error(
    exc: BaseException, verb: str, resource: str, *, not_found: str | None = None
) -> PermanentError | TemporaryError:
    """meshpilot's error for a failed Kubernetes call (the caller raises it ``from exc``).

    verb/resource: what was attempted, e.g. ``patch``, ``virtualservices.networking.istio.io
    ns/name``; not_found: the message for a 404 (default: ``<resource> not found``).
    """
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = _status_message(exc)
        if status in (401, 403):
            return PermanentError(f"RBAC denied: {verb} {resource} ({status}: {message})")
        if status == 404:
            body = _status(exc)
            if body is None or body.get("reason") != "NotFound":  # no such API at all
                return PermanentError(
                    f"{verb} {resource}: the API server does not serve this resource "
                    f"({message}); is its CRD installed?"
                )
            return PermanentError(not_found or f"{resource} not found")
        if status == 0 or status == 429 or status >= 500:
            return TemporaryError(f"{verb} {resource}: API server answered {status}: {message}")
        return PermanentError(f"{verb} {resource} rejected ({status}): {message}")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return TemporaryError(f"{verb} {resource}: cannot reach the API server: {_brief(exc)}")
    return TemporaryError(f"{verb} {resource}: unexpected {_brief(exc)}")


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
class _Destination:
    index: int  # position j in http[i].route
    host: str  # as written in the object
    subset: str
    weight: int | None  # None when the field is absent


@dataclass(frozen=True)
class _Located:
    """The managed route as found in one version of the VirtualService."""

    resource_version: str
    http_index: int
    http_name: str | None
    destinations: tuple[_Destination, ...]
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


class _Conflict(Exception):
    """The object moved between our read and our patch (409, or a failed ``test`` op: 422)."""


def _route_label(route: RouteRef) -> str:
    if isinstance(route.route, str):
        return f"http route {route.route!r}"
    return f"http route #{route.route}"


def _resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _newer(a: str, b: str) -> bool:
    """Whether resourceVersion `a` is known to be later than `b`.

    resourceVersions are opaque to clients, but every API server backed by etcd issues them as
    increasing integers; when either is not one, nothing is known (False).
    """
    try:
        return int(a) > int(b)
    except ValueError:
        return False


class _Gone(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class _VirtualServiceCache:
    """The VirtualServices of one namespace, listed once and kept current by a watch.

    A daemon thread lists the namespace, then watches from the list's resourceVersion and
    applies each ADDED/MODIFIED/DELETED event to the store. When the server ends a watch (its
    timeout) the next one resumes from the last resourceVersion seen; after 410 Gone, any
    other watch or list error, or `invalidate`, the namespace is listed again (errors back
    off up to 30 s). `synced` is set only while the store holds a successful list plus the
    events since; readers fall back to a GET otherwise. Objects in the store are never
    mutated (readers share them).
    """

    def __init__(
        self, owner: VirtualServiceActuator, namespace: str, *, watch_timeout_s: float
    ) -> None:
        self._owner = owner
        self.namespace = namespace
        self._watch_timeout_s = watch_timeout_s
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, Any]] = {}
        self._resource_version = ""
        self._stale = True  # list (again) before trusting the store
        self._watch: Any = None
        self._stopping = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"meshpilot-vs-watch-{namespace}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self.invalidate()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def get(self, name: str) -> dict[str, Any] | None:
        """The cached object, or None when not in sync or not (yet) known."""
        with self._lock:
            return self._objects.get(name) if self.synced.is_set() else None

    def put(self, obj: Mapping[str, Any]) -> None:
        """Keep a later version read or written by the actuator (known objects only: an
        object the watch has not listed, or has seen deleted, is left to the watch)."""
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        with self._lock:
            held = self._objects.get(name) if isinstance(name, str) else None
            if held is not None and _newer(_resource_version(obj), _resource_version(held)):
                self._objects[str(name)] = dict(obj)

    def invalidate(self) -> None:
        """Stop trusting the store and list again (the API server could not be reached)."""
        with self._lock:
            self._stale = True
            self.synced.clear()
            current = self._watch
        if current is not None:
            current.stop()  # shuts the socket down: a blocked read returns at once

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        failures = gone = 0
        while not self._stopping.is_set():
            try:
                self._list()
                failures = 0
                while not self._stopping.is_set() and not self._stale:
                    self._watch_once()
                    gone = 0
            except _Gone:
                gone += 1
                if gone > 3:  # a fresh list's resourceVersion expiring again: do not spin
                    self._stopping.wait(min(5.0, 0.1 * gone))
                _log.debug(
                    "watch of virtualservices in %s expired (410); listing again", self.namespace
                )
            except Exception as exc:
                with self._lock:
                    self._stale = True
                    self.synced.clear()
                if self._stopping.is_set():
                    break
                failures += 1
                delay = min(30.0, 0.1 * 2 ** min(failures, 9)) * random.uniform(0.5, 1.0)
                log = _log.warning if failures == 1 else _log.debug
                log(
                    "VirtualService cache of namespace %s not in sync (%s); reads use GET, "
                    "listing again in %.1f s",
                    self.namespace,
                    _brief(exc),
                    delay,
                )
                self._stopping.wait(delay)

    def _list(self) -> None:
        owner = self._owner
        with self._lock:
            self._stale = False
        listed = owner._call(
            "list",
            f"virtualservices.{GROUP} in namespace {self.namespace}",
            lambda: owner._api.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "virtualservices", _request_timeout=owner._timeouts
            ),
        )
        owner._count("lists")
        items = {
            str(i["metadata"]["name"]): i
            for i in listed.get("items") or []
            if isinstance(i, dict) and (i.get("metadata") or {}).get("name")
        }
        with self._lock:
            if self._stale:  # invalidated while listing: list again
                return
            self._objects = items
            self._resource_version = _resource_version(listed)
            self.synced.set()

    def _watch_once(self) -> None:
        owner = self._owner
        stream = watch.Watch()
        with self._lock:
            if self._stale:
                return
            self._watch = stream
            since = self._resource_version
        timeout = max(1, round(self._watch_timeout_s * random.uniform(1.0, 1.5)))
        try:
            for event in stream.stream(
                owner._api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                "virtualservices",
                resource_version=since or None,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(owner._timeouts[0], timeout + 30),
            ):
                if self._stale or self._stopping.is_set():
                    return
                self._apply(event)
        except ApiException as exc:
            if self._stale or self._stopping.is_set():
                return
            if exc.status == 410:
                raise _Gone(str(exc)) from exc
            raise
        except Exception:
            if self._stale or self._stopping.is_set():
                return  # the socket was shut down on purpose
            raise
        finally:
            with self._lock:
                self._watch = None

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("raw_object")
        if not isinstance(obj, dict):
            return
        meta = obj.get("metadata") or {}
        version = _resource_version(obj)
        name = meta.get("name")
        self._owner._count("watch_events")
        with self._lock:
            if version:
                self._resource_version = version
            if kind not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(name, str):
                return  # BOOKMARK: only the resourceVersion moves
            held = self._objects.get(name)
            if held is not None and _newer(_resource_version(held), version):
                return  # the actuator already keeps a later version (its own write)
            if kind == "DELETED":
                self._objects.pop(name, None)
            else:
                self._objects[name] = obj


class VirtualServiceActuator:
    """Reads/writes the weights of `RouteRef` routes in Istio VirtualServices (see module doc).

    api_client: a `kubernetes.client.ApiClient` (default: one built from `kubeconfig`, or from
    in-cluster credentials when that is None too); dry_run: ``True`` or ``"All"`` sends every
    patch with server-side dry run (validated and answered, never persisted); field_manager: the
    manager name recorded in ``managedFields``; max_conflict_retries: re-reads after a conflict
    before giving up with `TemporaryError`; annotate: add `MANAGED_ANNOTATION` (once per
    route); timeout_s: per-request timeout (s); conflict_backoff_s: the random pause before a
    retry grows by this much per attempt (s); dr_cache_s: how long a namespace's
    DestinationRules are trusted (s, 0 = read every time); reuse_read_s: `apply` patches from
    the object read (or written) less than this ago instead of reading again (s, 0 = always
    read; a stale copy just fails the ``resourceVersion`` test and is re-read); fail_fast_s:
    after the API server could not be reached, calls fail at once with `TemporaryError` for
    this long (s, 0 = always try; keep it below the tick); cluster_domain: DNS suffix of short
    host names; watch_cache: keep each namespace's VirtualServices in memory through list +
    watch and read from there (see the module doc; False: a GET per read); watch_timeout_s:
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
            else kube_api_client(kubeconfig, max_connections=max_connections)
        )
        self._api: Any = client.CustomObjectsApi(self.api_client)
        self.dry_run: str | None = "All" if dry_run in (True, "All") else None
        self.field_manager = field_manager
        self.max_conflict_retries = max_conflict_retries
        self.annotate = annotate
        self.timeout_s = float(timeout_s)
        self._timeouts = (min(self.timeout_s, 3.0), self.timeout_s)  # (connect, read) s
        self.conflict_backoff_s = float(conflict_backoff_s)
        self.dr_cache_s = float(dr_cache_s)
        self.reuse_read_s = float(reuse_read_s)
        self.fail_fast_s = float(fail_fast_s)
        self.cluster_domain = cluster_domain
        self._down_until = -math.inf
        self._down_exc: BaseException | None = None
        self._lock = threading.Lock()
        self._dr_cache: dict[str, tuple[float, dict[str, list[dict[str, Any]]]]] = {}
        self._dr_locks: dict[str, threading.Lock] = {}
        self._last_read: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
        self.watch_cache = bool(watch_cache)
        self.watch_timeout_s = float(watch_timeout_s)
        self._caches: dict[str, _VirtualServiceCache] = {}
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
        weights = self._strict_weights(route, loc)
        self._check_destination_rule(route, loc.subsets)
        return weights

    def discover(self, route: RouteRef) -> tuple[str, ...]:
        """The route's subsets in route order, checked against a fresh DestinationRule read."""
        loc = self._locate(route, self._get(route))
        self._check_destination_rule(route, loc.subsets, fresh=True)
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
        self._check_subsets(route, loc, weights)
        # Every re-read must list exactly these subsets again, so one DestinationRule check
        # covers all attempts and keeps the read-to-patch window of a retry short.
        self._check_destination_rule(route, loc.subsets)
        conflicts = 0
        while True:
            ops = self._patch_ops(route, loc, weights)
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
                        f"under meshpilot: {conflicts} patches of {_route_label(route)} "
                        "conflicted; will retry next tick"
                    ) from exc
                self._count_conflict(route)
                _log.debug("%s: conflict %d, re-reading", route.key, conflicts)
                time.sleep(random.uniform(0.0, self.conflict_backoff_s * conflicts))
                loc, fresh = self._reread(route, weights), True
                continue
            self._count("writes")
            self._remember(route, None if self.dry_run else out)  # a dry run changed nothing
            return self._read_back(route, out, weights)

    def _reread(self, route: RouteRef, weights: Weights) -> _Located:
        loc = self._locate(route, self._get(route))
        self._check_subsets(route, loc, weights)
        return loc

    # -- reading ----------------------------------------------------------------------------

    def _vs_resource(self, route: RouteRef) -> str:
        return f"virtualservices.{GROUP} {route.namespace}/{route.virtual_service}"

    def _cache(self, namespace: str) -> _VirtualServiceCache | None:
        """The namespace's watch cache (started, and its first list awaited up to `timeout_s`,
        on first use), or None when caching is off or the actuator is closed."""
        if not self.watch_cache:
            return None
        with self._lock:
            cache = self._caches.get(namespace)
            created = cache is None and not self._closed
            if created:
                cache = _VirtualServiceCache(self, namespace, watch_timeout_s=self.watch_timeout_s)
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
        self._count("reads")
        obj: dict[str, Any] = self._call(
            "get",
            self._vs_resource(route),
            lambda: self._api.get_namespaced_custom_object(
                GROUP,
                VERSION,
                route.namespace,
                "virtualservices",
                route.virtual_service,
                _request_timeout=self._timeouts,
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

    def _locate(self, route: RouteRef, obj: Mapping[str, Any]) -> _Located:
        """Find the managed http route and its destinations for `route.host` in `obj`."""
        where = f"VirtualService {route.namespace}/{route.virtual_service}"
        meta = obj.get("metadata") or {}
        http = (obj.get("spec") or {}).get("http") or []
        if not isinstance(http, list) or not http:
            raise PermanentError(f"{where} has no http routes")
        if isinstance(route.route, int):
            if not 0 <= route.route < len(http):
                raise PermanentError(
                    f"{where} has no http route #{route.route} (it has {len(http)})"
                )
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
        label = f"{where}, {_route_label(route)}"
        dests = entry.get("route") or []
        if not dests:
            raise PermanentError(f"{label} has no destinations (a redirect or direct response?)")
        want = canonical_host(route.host, route.namespace, cluster_domain=self.cluster_domain)
        mine: list[_Destination] = []
        others: list[str] = []
        for j, d in enumerate(dests):
            dest = (d or {}).get("destination") or {}
            host = str(dest.get("host", ""))
            weight = d.get("weight")
            if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)):
                raise PermanentError(
                    f"{label}: destination #{j} has a non-integer weight {weight!r}"
                )
            if canonical_host(host, route.namespace, cluster_domain=self.cluster_domain) != want:
                if weight:  # traffic to another host: our subsets cannot own all 100 points
                    others.append(f"{host} ({weight})")
                continue
            subset = dest.get("subset")
            if not isinstance(subset, str) or not subset:
                raise PermanentError(
                    f"{label}: the destination #{j} to {host} has no subset; meshpilot weights "
                    "subsets defined by a DestinationRule"
                )
            mine.append(_Destination(j, host, subset, weight))
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
        return _Located(
            resource_version=str(meta.get("resourceVersion", "")),
            http_index=index,
            http_name=entry.get("name"),
            destinations=tuple(mine),
            annotations=dict(annotations) if isinstance(annotations, dict) else None,
            implied_weight=WEIGHT_TOTAL if len(dests) == 1 else 0,
        )

    def _strict_weights(self, route: RouteRef, loc: _Located) -> Weights:
        raw = loc.raw_weights()
        try:
            return Weights(tuple(raw), tuple(raw.values()))
        except ValueError as err:
            raise PermanentError(
                f"VirtualService {route.namespace}/{route.virtual_service}, "
                f"{_route_label(route)} has weights {raw} set outside meshpilot that are not a "
                f"valid split ({err}); meshpilot will not manage it until its weights are "
                "0..100 and sum to 100 (fix the VirtualService or pin weights)"
            ) from err

    def _check_subsets(self, route: RouteRef, loc: _Located, weights: Weights) -> None:
        if set(weights.subsets) != set(loc.subsets):
            raise PermanentError(
                f"VirtualService {route.namespace}/{route.virtual_service}, "
                f"{_route_label(route)} has subsets {list(loc.subsets)} but the weights name "
                f"{list(weights.subsets)}; meshpilot never adds or removes destinations"
            )

    # -- DestinationRules ------------------------------------------------------------------

    def _destination_rules(self, namespace: str, *, fresh: bool) -> dict[str, list[dict[str, Any]]]:
        """The namespace's DestinationRules by canonical ``spec.host`` (listed, or cached).

        One list at a time per namespace: writers on several threads that find the cache
        expired together wait for one list instead of each sending their own.
        """
        asked = time.monotonic()
        with self._lock:
            cached = self._dr_cache.get(namespace)
            refresh = self._dr_locks.setdefault(namespace, threading.Lock())
        if cached is not None and not fresh and asked - cached[0] < self.dr_cache_s:
            return cached[1]
        with refresh:
            with self._lock:
                cached = self._dr_cache.get(namespace)
            if cached is not None and (
                cached[0] >= asked  # listed since we asked
                or (not fresh and time.monotonic() - cached[0] < self.dr_cache_s)
            ):
                return cached[1]
            return self._list_destination_rules(namespace)

    def _list_destination_rules(self, namespace: str) -> dict[str, list[dict[str, Any]]]:
        now = time.monotonic()
        listed = self._call(
            "list",
            f"destinationrules.{GROUP} in namespace {namespace}",
            lambda: self._api.list_namespaced_custom_object(
                GROUP, VERSION, namespace, "destinationrules", _request_timeout=self._timeouts
            ),
        )
        self._count("dr_lists")
        by_host: dict[str, list[dict[str, Any]]] = {}
        for item in listed.get("items") or []:
            if isinstance(item, dict):
                host = str((item.get("spec") or {}).get("host", ""))
                key = canonical_host(host, namespace, cluster_domain=self.cluster_domain)
                by_host.setdefault(key, []).append(item)
        with self._lock:
            self._dr_cache[namespace] = (now, by_host)
        return by_host

    def _check_destination_rule(
        self, route: RouteRef, subsets: Sequence[str], *, fresh: bool = False
    ) -> None:
        """Every subset of the route must be defined by a DestinationRule of its host."""
        want = canonical_host(route.host, route.namespace, cluster_domain=self.cluster_domain)
        namespaces = [route.namespace]
        host_ns = want.split(".")[1] if want.endswith(f".svc.{self.cluster_domain}") else None
        if host_ns and host_ns != route.namespace:
            namespaces.append(host_ns)
        for namespace in namespaces:
            rules = self._destination_rules(namespace, fresh=fresh).get(want, [])
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
                f"{_route_label(route)} of VirtualService {route.namespace}/"
                f"{route.virtual_service} needs {list(subsets)}"
            )
        missing = [s for s in subsets if s not in defined]
        if missing:
            raise PermanentError(
                f"subsets {missing} of VirtualService {route.namespace}/{route.virtual_service} "
                f"are not defined by DestinationRule {', '.join(names)} "
                f"(it defines {sorted(str(d) for d in defined)})"
            )

    # -- writing ----------------------------------------------------------------------------

    def _patch_ops(
        self, route: RouteRef, loc: _Located, weights: Weights
    ) -> list[dict[str, Any]] | None:
        """The JSON Patch for `weights`, or None when nothing would change."""
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
                {
                    "op": "test",
                    "path": json_pointer(*base, "destination", "subset"),
                    "value": d.subset,
                }
            )
            if d.weight != weights[d.subset]:
                changes.append(
                    {
                        "op": "add" if d.weight is None else "replace",
                        "path": json_pointer(*base, "weight"),
                        "value": weights[d.subset],
                    }
                )
        changes.extend(self._annotation_ops(route, loc))
        return ops + changes if changes else None

    def _annotation_ops(self, route: RouteRef, loc: _Located) -> list[dict[str, Any]]:
        if not self.annotate:
            return []
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

    def _patch(self, route: RouteRef, ops: list[dict[str, Any]]) -> dict[str, Any]:
        resource = self._vs_resource(route)

        def send() -> Any:
            kwargs: dict[str, Any] = {"field_manager": self.field_manager}
            if self.dry_run:
                kwargs["dry_run"] = self.dry_run
            return self._api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                route.namespace,
                "virtualservices",
                route.virtual_service,
                ops,
                _content_type=JSON_PATCH,
                _request_timeout=self._timeouts,
                **kwargs,
            )

        out: dict[str, Any] = self._call(
            "patch",
            resource,
            send,
            not_found=f"VirtualService {route.namespace}/{route.virtual_service} not found",
            conflicts=True,
        )
        return out

    def _read_back(self, route: RouteRef, obj: Mapping[str, Any], wanted: Weights) -> Weights:
        raw = self._locate(route, obj).raw_weights()
        if raw != wanted.as_dict():
            raise TemporaryError(
                f"VirtualService {route.namespace}/{route.virtual_service}: wrote "
                f"{wanted.as_dict()} but the API server answered {raw}"
            )
        return Weights(tuple(raw), tuple(raw.values()))

    # -- plumbing ---------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _count_conflict(self, route: RouteRef) -> None:
        with self._lock:
            self.conflicts += 1
            self._route_conflicts[route.key] = self._route_conflicts.get(route.key, 0) + 1

    def _call(
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
        """
        with self._lock:
            down_until, down_exc = self._down_until, self._down_exc
        remaining = down_until - time.monotonic()
        if remaining > 0:
            raise TemporaryError(
                f"{verb} {resource}: API server unreachable ({_brief(down_exc or Exception())}); "
                f"not tried again for {remaining:.1f} s"
            ) from down_exc
        try:
            out = fn()
        except ApiException as exc:
            self._reachable(exc if not exc.status else None)
            if conflicts and (exc.status == 409 or (exc.status == 422 and not _has_causes(exc))):
                raise _Conflict(_status_message(exc)) from exc
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


def _has_causes(exc: ApiException) -> bool:
    """Whether a 422 names invalid fields (a real validation error, not a failed ``test``)."""
    status = _status(exc)
    return bool(status and (status.get("details") or {}).get("causes"))

"""The ManagedRoutes (``managedroutes.meshpilot.io/v1alpha1``) of one namespace, in memory.

Why: the loop asks every tick which routes to manage and with which controls; a GET per tick
would miss nothing but costs a request each time, so a daemon thread lists the namespace and
then watches it (resumed from the last resourceVersion, listed again after 410 Gone or any
error, backing off up to 30 s). Until the first list succeeds, and after an error until the
next one does, `snapshot` answers None and the loop keeps what it manages. Status goes
through the status subresource as a merge patch; an API control of a route goes into its
``spec.controls`` as a merge patch (`write_controls`; the Role grants ``patch`` on
``managedroutes`` for that, after the API checked that the caller may patch it too); Events are
core/v1 Events about the ManagedRoute (``create events``).
"""

from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from controller.adapters.kube.client import brief_error, kube_api_client, translate_api_error
from controller.managed import ManagedRoute, SpecControls, SpecPin
from meshcore import RouteRef, TemporaryError, Weights

__all__ = ["GROUP", "PLURAL", "VERSION", "ManagedRouteWatch", "parse_managed_route"]

GROUP, VERSION, PLURAL = "meshpilot.io", "v1alpha1", "managedroutes"

_log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
"""Patches here are JSON merge patches (the client's default for a dict is a JSON patch)."""

MAX_EVENTS_REMEMBERED = 1024
"""Events this replica remembers for aggregation (the oldest forgotten first): enough for every
route's few distinct events, bounded however many routes come and go."""


def _controls(raw: Any) -> SpecControls:
    raw = raw if isinstance(raw, dict) else {}
    pin = raw.get("pin")
    spec_pin = None
    if isinstance(pin, dict):
        weights = pin.get("weights") or {}
        try:
            expires = datetime.fromisoformat(str(pin.get("expiresAt")).replace("Z", "+00:00"))
        except ValueError as err:
            raise ValueError(f"spec.controls.pin.expiresAt: {err}") from err
        if expires.tzinfo is None:
            raise ValueError("spec.controls.pin.expiresAt needs a time zone")
        spec_pin = SpecPin(
            Weights.from_dict({str(k): int(v) for k, v in weights.items()}),
            expires.timestamp(),
            str(pin.get("reason") or ""),
            str(pin.get("by") or ""),
        )
    return SpecControls(bool(raw.get("paused")), bool(raw.get("shadow")), spec_pin)


GUARD_FIELDS = {
    "maxStep": "max_step",
    "minChange": "min_change",
    "floors": "floors",
    "holdS": "hold_s",
    "staleAfterS": "stale_after_s",
}
"""``spec.guard`` keys and the `GuardConfig` fields they set for the route."""


def _guard(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("spec.guard must be an object")
    unknown = sorted(set(raw) - set(GUARD_FIELDS))
    if unknown:
        raise ValueError(f"spec.guard: unknown keys {unknown}; known: {', '.join(GUARD_FIELDS)}")
    out = {GUARD_FIELDS[k]: v for k, v in raw.items()}
    if "floors" in out:
        floors = out["floors"]
        if not isinstance(floors, dict):
            raise ValueError("spec.guard.floors must map subsets to points")
        out["floors"] = {str(k): v for k, v in floors.items()}
    return out


def parse_managed_route(obj: Mapping[str, Any]) -> ManagedRoute:
    """A ManagedRoute object as the loop needs it; an invalid spec gives ``route=None``."""
    meta = obj.get("metadata") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    generation = int(meta.get("generation") or 0)
    spec = obj.get("spec") or {}
    try:
        vs = spec.get("virtualService")
        if not isinstance(vs, str) or not vs:
            raise ValueError("spec.virtualService is required")
        route = spec.get("route", 0)
        if isinstance(route, str) and route.isdigit():
            route = int(route)
        if isinstance(route, bool) or not isinstance(route, int | str) or route == "":
            raise ValueError(f"spec.route must be a route name or index, got {route!r}")
        if isinstance(route, int) and route < 0:
            raise ValueError(f"spec.route index must be >= 0, got {route}")
        host = str(spec.get("host") or f"{vs}.{namespace}.svc.cluster.local")
        ref = RouteRef(namespace, vs, route, host)
        controls = _controls(spec.get("controls"))
        guard = _guard(spec.get("guard"))
        policy = spec.get("policy")
        if policy is not None and not isinstance(policy, str):
            raise ValueError("spec.policy must be a policy name")
    except (ValueError, TypeError) as err:
        return ManagedRoute(name, generation, None, error=str(err), uid=str(meta.get("uid") or ""))
    uid = str(meta.get("uid") or "")
    return ManagedRoute(
        name, generation, ref, controls, uid=uid, guard=guard, policy=policy or None
    )


class ManagedRouteWatch:
    """The ManagedRoutes of `namespace`, listed once and kept current by a watch (a thread).

    kubeconfig/context: credentials as `kube_api_client` (default in-cluster); api_client: one
    to use instead; watch_timeout_s: how long one watch request lasts before it is resumed.
    """

    def __init__(
        self,
        namespace: str,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        api_client: Any = None,
        watch_timeout_s: float = 60.0,
        timeouts: tuple[float, float] = (3.0, 5.0),
    ) -> None:
        self.namespace = namespace
        api = api_client if api_client is not None else kube_api_client(kubeconfig, context=context)
        self._api: Any = client.CustomObjectsApi(api)
        self._core: Any = client.CoreV1Api(api)
        self._watch_timeout_s, self._timeouts = watch_timeout_s, timeouts
        self._lock = threading.Lock()
        self._events: OrderedDict[tuple[str, str, bool, str, str], tuple[str, int]] = OrderedDict()
        self._objects: dict[str, dict[str, Any]] = {}
        self._resource_version = ""
        self._stream: Any = None
        self._stopping = threading.Event()
        self.synced = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"meshpilot-mr-watch-{namespace}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.stop()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def snapshot(self) -> Sequence[ManagedRoute] | None:
        with self._lock:
            if not self.synced.is_set():
                return None
            objects = sorted(self._objects.values(), key=lambda o: o["metadata"]["name"])
        return [parse_managed_route(o) for o in objects]

    def write_status(self, name: str, status: Mapping[str, Any]) -> bool:
        what = f"{PLURAL}.{GROUP}/status {self.namespace}/{name}"
        try:
            self._api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                {"status": dict(status)},
                _request_timeout=self._timeouts,
            )
        except Exception as exc:  # the next tick tries again
            _log.warning("%s", translate_api_error(exc, "patch", what))
            return False
        return True

    def write_controls(self, name: str, controls: Mapping[str, Any]) -> int:
        what = f"{PLURAL}.{GROUP} {self.namespace}/{name}"
        try:
            patched = self._api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                {"spec": {"controls": dict(controls)}},
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeouts,
            )
        except Exception as exc:
            err = translate_api_error(exc, "patch", what)
            # Nothing changed either way; the API answers 503 and the operator can retry.
            raise TemporaryError(f"the control was not kept: {err}") from exc
        return int((patched.get("metadata") or {}).get("generation") or 0)

    def emit_event(self, item: ManagedRoute, warning: bool, reason: str, message: str) -> None:
        """An Event about `item`; the same one again (same resource, type, reason and
        message, as ``kubectl describe`` groups them) bumps ``count`` and ``lastTimestamp`` of
        the Event this replica created, as Kubernetes' own recorder does, instead of adding
        one Event per repetition (a route holding tick after tick, the same write again)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = message[:1000]
        key = (item.name, item.uid, warning, reason, message)
        seen = self._events.get(key)
        if seen is not None and self._bump(*seen, now):
            self._events[key] = (seen[0], seen[1] + 1)
            self._events.move_to_end(key)
            return
        event = {
            "metadata": {"generateName": f"{item.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ManagedRoute",
                "name": item.name,
                "namespace": self.namespace,
                "uid": item.uid,
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message,
            "source": {"component": "meshpilot"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            created = self._core.create_namespaced_event(
                self.namespace, event, _request_timeout=self._timeouts
            )
        except Exception as exc:  # an Event is a courtesy: never worth failing a tick
            _log.warning("%s", translate_api_error(exc, "create", f"events {self.namespace}"))
            return
        self._events[key] = (str(created.metadata.name), 1)
        while len(self._events) > MAX_EVENTS_REMEMBERED:
            self._events.popitem(last=False)

    def _bump(self, name: str, count: int, now: str) -> bool:
        """Count one more occurrence on Event `name`; False when it is gone (Events expire,
        an hour by default) or the patch failed, and a new one should be created."""
        patch = {"count": count + 1, "lastTimestamp": now}
        try:
            self._core.patch_namespaced_event(
                name,
                self.namespace,
                patch,
                _content_type=MERGE_PATCH,
                _request_timeout=self._timeouts,
            )
        except Exception as exc:
            if not (isinstance(exc, ApiException) and exc.status == 404):
                _log.warning("%s", translate_api_error(exc, "patch", f"events {name}"))
            return False
        return True

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._list()
                failures = 0
                while not self._stopping.is_set():
                    self._watch_once()
            except Exception as exc:
                self.synced.clear()
                if self._stopping.is_set():
                    break
                gone = isinstance(exc, ApiException) and exc.status == 410
                failures = 0 if gone else failures + 1
                delay = min(30.0, 0.1 * 2 ** min(failures, 9)) * random.uniform(0.5, 1.0)
                if not gone:
                    _log.warning(
                        "ManagedRoutes of %s not in sync (%s); listing again in %.1f s",
                        self.namespace,
                        brief_error(exc),
                        delay,
                    )
                self._stopping.wait(delay if not gone else 0.0)

    def _list(self) -> None:
        listed = self._api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _request_timeout=self._timeouts
        )
        items = {
            str(i["metadata"]["name"]): i
            for i in listed.get("items") or []
            if isinstance(i, dict) and (i.get("metadata") or {}).get("name")
        }
        with self._lock:
            self._objects = items
            self._resource_version = str((listed.get("metadata") or {}).get("resourceVersion"))
            self.synced.set()

    def _watch_once(self) -> None:
        stream = watch.Watch()
        with self._lock:
            self._stream = stream
        timeout = max(1, round(self._watch_timeout_s))
        try:
            for event in stream.stream(
                self._api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                resource_version=self._resource_version or None,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(self._timeouts[0], timeout + 30),
            ):
                if self._stopping.is_set():
                    return
                self._apply(event)
        finally:
            with self._lock:
                self._stream = None

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("raw_object")
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            raise ApiException(status=code or 500, reason=str(obj))
        if not isinstance(obj, dict):
            return
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        with self._lock:
            if meta.get("resourceVersion"):
                self._resource_version = str(meta["resourceVersion"])
            if kind not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(name, str):
                return
            if kind == "DELETED":
                self._objects.pop(name, None)
            else:
                self._objects[name] = obj

"""The VirtualServices of one namespace, kept in memory by list + watch for the actuator.

Why: without it `VirtualServiceActuator.current` costs one GET per route per tick. With
``watch_cache=True`` the VirtualServices of each namespace are listed once and then kept
current by a background ``watch`` (resumed from the last resourceVersion, re-listed after 410
Gone, a watch error, or any call that could not reach the API server), so reads answer from
memory. The cache never weakens a write: the ``resourceVersion`` test op still fails on a stale
copy, and `apply` re-reads (GET) and retries exactly as after a concurrent write. While the
cache is not in sync (first list pending, API server unreachable, list/watch denied by RBAC)
every read falls back to a GET.

The cache talks to the API server through its owner (the actuator): the same client, timeouts,
fail-fast call wrapper and counters.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping
from typing import Any

from kubernetes import watch
from kubernetes.client.rest import ApiException

from controller.adapters.istio.routes import GROUP, VERSION
from controller.adapters.kube.client import ApiOwner, brief_error

__all__ = ["VirtualServiceCache", "WatchExpired"]

_log = logging.getLogger(__name__)


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


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class VirtualServiceCache:
    """The VirtualServices of one namespace, listed once and kept current by a watch.

    A daemon thread lists the namespace, then watches from the list's resourceVersion and
    applies each ADDED/MODIFIED/DELETED event to the store. When the server ends a watch (its
    timeout) the next one resumes from the last resourceVersion seen; after 410 Gone, any
    other watch or list error, or `invalidate`, the namespace is listed again (errors back
    off up to 30 s). `synced` is set only while the store holds a successful list plus the
    events since; readers fall back to a GET otherwise. Objects in the store are never
    mutated (readers share them).
    """

    def __init__(self, owner: ApiOwner, namespace: str, *, watch_timeout_s: float) -> None:
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
            except WatchExpired:
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
                    brief_error(exc),
                    delay,
                )
                self._stopping.wait(delay)

    def _list(self) -> None:
        owner = self._owner
        with self._lock:
            self._stale = False
        listed = owner.call(
            "list",
            f"virtualservices.{GROUP} in namespace {self.namespace}",
            lambda: owner.custom_objects.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, "virtualservices", _request_timeout=owner.timeouts
            ),
        )
        owner.count("lists")
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
                owner.custom_objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                self.namespace,
                "virtualservices",
                resource_version=since or None,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout,
                _request_timeout=(owner.timeouts[0], timeout + 30),
            ):
                if self._stale or self._stopping.is_set():
                    return
                self._apply(event)
        except ApiException as exc:
            if self._stale or self._stopping.is_set():
                return
            if exc.status == 410:
                raise WatchExpired(str(exc)) from exc
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
        self._owner.count("watch_events")
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

"""Who called a control, and the port that says whether they may.

Why a module of its own, free of web and Kubernetes imports: the API checks callers, the
Kubernetes adapter answers for a cluster and the audit log records who acted; all three meet
on `Caller` and `Authenticator` here, so none of them imports another.

Two authenticators exist: one shared bearer token (`controller.api.auth.StaticTokenAuth`,
``api.auth: token``, the caller recorded as ``token``) and Kubernetes
(`controller.adapters.kube.access.KubernetesAccess`, ``api.auth: kubernetes``): a TokenReview
says who the bearer is, a SubjectAccessReview whether they may `CONTROL_VERB` the
`CONTROL_RESOURCE` of `CONTROL_GROUP` in the route's namespace — the permission ``kubectl
patch managedroute`` needs, so one RBAC model governs both (manifests/base/operator-rbac.yaml).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = [
    "CONTROL_GROUP",
    "CONTROL_RESOURCE",
    "CONTROL_VERB",
    "STATIC_CALLER",
    "Authenticator",
    "Caller",
    "TtlCache",
]

CONTROL_GROUP = "meshpilot.io"
CONTROL_RESOURCE = "managedroutes"
CONTROL_VERB = "patch"
"""An API control is allowed when the caller may ``patch`` ``managedroutes.meshpilot.io`` in
the route's namespace (any name: the API's routes are named by their VirtualService)."""

STATIC_CALLER = "token"
"""The caller recorded for the shared static token: it says which secret, not which person."""


@dataclass(frozen=True)
class Caller:
    """Who sent a control: `name` is what the audit log records (``token``, or a Kubernetes
    username such as ``system:serviceaccount:ns:alice``); groups, uid and extra are what a
    SubjectAccessReview needs to judge the same user the TokenReview saw."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class Authenticator(Protocol):
    """Checks the bearer of a control. Both calls may block on the network (run them off the
    event loop) and raise `meshcore.TemporaryError` when they cannot tell (the API answers 503:
    a control is refused, never let through, when the check itself fails)."""

    mode: str
    """``token`` or ``kubernetes`` (for logs and the docs)."""

    def authenticate(self, token: str) -> Caller | None:
        """The caller the bearer token belongs to, or None when it is not valid (401)."""
        ...

    def authorize(self, caller: Caller, namespace: str) -> str | None:
        """None when `caller` may control routes in `namespace`; else why not (403)."""
        ...


_V = TypeVar("_V")


class TtlCache(Generic[_V]):
    """A small thread-safe map whose entries live `ttl_s` seconds (s, monotonic clock).

    Review answers are cached so a burst of controls costs one TokenReview and one
    SubjectAccessReview, while a revoked binding takes effect within `ttl_s`. At most
    `max_entries` are kept (the oldest are dropped first), so a flood of distinct bad tokens
    cannot grow memory.
    """

    def __init__(
        self,
        ttl_s: float,
        *,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s >= 0:
            raise ValueError(f"ttl_s must be >= 0 s, got {ttl_s!r}")
        self.ttl_s = float(ttl_s)
        self.max_entries = max(1, max_entries)
        self._clock = clock
        self._entries: dict[object, tuple[float, _V]] = {}
        self._lock = threading.Lock()

    def get(self, key: object) -> tuple[bool, _V | None]:
        """(found, value): found is False when the key is absent or expired."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return False, None
            if hit[0] <= self._clock():
                del self._entries[key]
                return False, None
            return True, hit[1]

    def put(self, key: object, value: _V) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (self._clock() + self.ttl_s, value)

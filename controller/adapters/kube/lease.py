"""Leader election over a ``coordination.k8s.io/v1`` Lease: with several replicas, one writes.

Why: two controllers writing the same VirtualService would fight (each undoing the other's
steps) and the audit log could no longer say who moved traffic. Replicas therefore share one
Lease; only its holder writes, the others observe and record as followers.

How (the client-go algorithm, without client-go):

* Every change of the Lease is a PUT carrying the ``resourceVersion`` that was read, so when
  two replicas race for it exactly one PUT succeeds and the other gets 409.
* The holder renews every ``renew_every_s``. A follower takes over only when the Lease has
  *expired twice over*: its ``renewTime + leaseDurationSeconds`` is past on the follower's clock,
  **and** the follower has seen the same record unchanged for ``leaseDurationSeconds`` on its
  own monotonic clock. The second rule makes takeover safe against clock skew between nodes
  and against wall-clock steps.
* The holder counts as leader only until ``renew_deadline_s`` (default 2/3 of the lease) after
  the start of its last successful renewal. A leader cut off from the API server therefore stops
  writing *before* anyone else may take over: ``is_leader()`` turns false on its own, without
  any request succeeding or failing.
* `release()` (on graceful shutdown) first stops leading, then empties the holder so a
  follower takes over at its next poll instead of waiting for expiry.

Every error (RBAC, timeouts, a dead API server) means "not leader (anymore, once the deadline
passes)" and is logged once per distinct message; nothing here raises into the caller's loop.
Leases need ``get``, ``create`` and ``update`` (see ``manifests/base/role.yaml``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.rest import ApiException

from controller.adapters.kube.client import kube_api_client, translate_api_error
from meshcore import ConfigError, MeshpilotError

__all__ = ["LeaseElector"]

_log = logging.getLogger(__name__)

_Record = tuple[Any, ...]
"""(holderIdentity, acquireTime, renewTime, leaseDurationSeconds, leaseTransitions)."""


def _micro_time(t: float) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC) for Unix time `t` (s)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: Any) -> float | None:
    """Unix time (s) of a MicroTime/Time string; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _body(response: Any) -> dict[str, Any]:
    data = getattr(response, "data", None)
    if data is None:
        data = response.read()
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


class LeaseElector:
    """Acquires and renews one Lease; `is_leader()` is what `ControlLoop` asks every tick.

    api_client: a `kubernetes.client.ApiClient` (default: built from `kubeconfig` and its
    `context`, else in-cluster credentials); namespace/name: the Lease; identity: this
    replica (the Pod name), unique among replicas; lease_duration_s: validity of a Lease
    without renewal (s, whole seconds, default 15): a crashed leader is replaced after about
    this long;
    renew_every_s: the leader's renewal period (s, default a fifth of the lease, so a leader
    gets three tries before its deadline);
    renew_deadline_s: how long after its last successful renewal the leader keeps writing (s,
    default two thirds of the lease; must lie between ``renew_every_s`` and the lease);
    retry_every_s: a follower's polling period (s, default ``renew_every_s``); timeout_s:
    per-request timeout (s, default ``renew_every_s``, at most 5); clock: Unix time (s), written
    to the Lease; the leader's own deadline is also kept on the monotonic clock, so a wall-clock
    step back cannot extend its leadership.

    Thread-safe: the background thread (`start`) renews while the loop reads `is_leader`.
    """

    def __init__(
        self,
        *,
        api_client: Any | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str,
        name: str,
        identity: str,
        lease_duration_s: float = 15.0,
        renew_every_s: float | None = None,
        renew_deadline_s: float | None = None,
        retry_every_s: float | None = None,
        timeout_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not identity:
            raise ConfigError("LeaseElector: identity must not be empty")
        if not (math.isfinite(lease_duration_s) and lease_duration_s > 0):
            raise ConfigError(f"LeaseElector: lease_duration_s must be > 0, got {lease_duration_s}")
        duration = max(1, math.ceil(lease_duration_s))  # the Lease stores whole seconds
        renew = duration / 5 if renew_every_s is None else float(renew_every_s)
        deadline = duration * 2 / 3 if renew_deadline_s is None else float(renew_deadline_s)
        if not 0 < renew < deadline < duration:
            raise ConfigError(
                "LeaseElector: need 0 < renew_every_s < renew_deadline_s < lease_duration_s, "
                f"got {renew} < {deadline} < {duration}"
            )
        self._owns_client = api_client is None
        self.api_client = (
            api_client if api_client is not None else kube_api_client(kubeconfig, context=context)
        )
        self._api: Any = client.CoordinationV1Api(self.api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = duration
        self.renew_every_s = renew
        self.renew_deadline_s = deadline
        self.retry_every_s = renew if retry_every_s is None else float(retry_every_s)
        self.timeout_s = min(renew, 5.0) if timeout_s is None else float(timeout_s)
        self.clock = clock
        self._round_lock = threading.Lock()  # one round (or release) at a time
        self._state_lock = threading.Lock()  # held briefly: is_leader never waits on I/O
        self._held_rv: str | None = None  # resourceVersion of our last successful write
        self._leader_until = -math.inf  # clock time at which we must stop writing
        self._leader_until_mono = -math.inf  # the same deadline on time.monotonic()
        self._round_mono = 0.0  # time.monotonic() at the start of the current round
        self._round_explicit = False  # the round was given `now` (tests): wall time only
        self._observed: _Record | None = None
        self._observed_at = -math.inf
        self._observed_mono = -math.inf
        self._stopping = False
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.holder: str | None = None
        """Holder seen in the last read (None when free or unknown)."""
        self.acquisitions = 0
        """How many times this elector became leader."""
        self.last_error: str | None = None
        """The last failure, None after a successful round."""

    @property
    def resource(self) -> str:
        return f"leases.coordination.k8s.io {self.namespace}/{self.name}"

    # -- what the loop asks -----------------------------------------------------------------

    def is_leader(self, now: float | None = None) -> bool:
        """True while this replica holds the Lease and renewed it within ``renew_deadline_s``."""
        with self._state_lock:
            held, until, until_mono = self._held_rv, self._leader_until, self._leader_until_mono
        if self._stopping or held is None:
            return False
        if now is not None:
            return now < until
        return self.clock() < until and time.monotonic() < until_mono

    # -- one round --------------------------------------------------------------------------

    def try_acquire_or_renew(self, now: float | None = None) -> bool:
        """Read the Lease, then renew it (holder), take it (free or expired) or wait.

        `now` is the Unix time (s) the round starts at (default: the clock); returns whether
        this replica leads afterwards. Never raises for API or network errors.
        """
        explicit, now = now is not None, self.clock() if now is None else now
        with self._round_lock:
            self._round_mono, self._round_explicit = time.monotonic(), explicit
            try:
                return self._round(now)
            except MeshpilotError as err:
                self._failed(str(err))
            except Exception as err:  # never crash the caller: not leader past the deadline
                _log.exception("lease %s: unexpected error", self.resource)
                self._failed(f"unexpected {type(err).__name__}: {err}")
            return self.is_leader(now)

    def _round(self, now: float) -> bool:
        lease = self._read()
        if lease is None:
            return self._create(now)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        record: _Record = (
            holder,
            spec.get("acquireTime"),
            spec.get("renewTime"),
            spec.get("leaseDurationSeconds"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed:
            self._observed, self._observed_at, self._observed_mono = record, now, self._round_mono
        self.holder = holder
        mine = holder == self.identity and self._held_rv is not None
        if holder is not None and not mine and not self._expired(spec, now):
            if self._held_rv is not None:
                _log.warning("lease %s: now held by %s; following", self.resource, holder)
                self._drop()
            self._ok()
            return False
        transitions = spec.get("leaseTransitions") or 0
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration_s,
            "acquireTime": spec.get("acquireTime") if mine else _micro_time(now),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions if mine else transitions + 1,
        }
        try:
            out = _body(
                self._api.replace_namespaced_lease(
                    self.name,
                    self.namespace,
                    lease,
                    _preload_content=False,
                    _request_timeout=self.timeout_s,
                )
            )
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first: they won this round
                if self._held_rv is not None:
                    _log.warning("lease %s: lost a renewal race; following", self.resource)
                    self._drop()
                self._ok()
                return False
            raise translate_api_error(exc, "update", self.resource) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise translate_api_error(exc, "update", self.resource) from exc
        self._won(out, now, renewed=mine)
        return self.is_leader(now)

    def _expired(self, spec: dict[str, Any], now: float) -> bool:
        """Unchanged for a lease duration since we first saw it (on the monotonic clock too,
        unless the round was given `now`), and past the holder's renewTime + duration."""
        duration = spec.get("leaseDurationSeconds") or self.lease_duration_s
        renewed = _parse_time(spec.get("renewTime")) or _parse_time(spec.get("acquireTime"))
        seen_long_enough = now >= self._observed_at + duration
        if not self._round_explicit:  # a wall-clock jump forward must not expire it early
            seen_long_enough &= self._round_mono >= self._observed_mono + duration
        return seen_long_enough and (renewed is None or now >= renewed + duration)

    def _read(self) -> dict[str, Any] | None:
        try:
            return _body(
                self._api.read_namespaced_lease(
                    self.name,
                    self.namespace,
                    _preload_content=False,
                    _request_timeout=self.timeout_s,
                )
            )
        except ApiException as exc:
            if exc.status == 404 and '"NotFound"' in str(exc.body or ""):
                return None
            raise translate_api_error(exc, "get", self.resource) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise translate_api_error(exc, "get", self.resource) from exc

    def _create(self, now: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.lease_duration_s,
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            out = _body(
                self._api.create_namespaced_lease(
                    self.namespace, body, _preload_content=False, _request_timeout=self.timeout_s
                )
            )
        except ApiException as exc:
            if exc.status == 409:  # created by another replica in the meantime
                self._ok()
                return False
            raise translate_api_error(exc, "create", self.resource) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise translate_api_error(exc, "create", self.resource) from exc
        self._won(out, now, renewed=False)
        return self.is_leader(now)

    def _won(self, lease: dict[str, Any], now: float, *, renewed: bool) -> None:
        spec = lease.get("spec") or {}
        with self._state_lock:
            self._held_rv = str((lease.get("metadata") or {}).get("resourceVersion", ""))
            self._leader_until = now + self.renew_deadline_s
            self._leader_until_mono = self._round_mono + self.renew_deadline_s
        self._observed = (
            spec.get("holderIdentity"),
            spec.get("acquireTime"),
            spec.get("renewTime"),
            spec.get("leaseDurationSeconds"),
            spec.get("leaseTransitions"),
        )
        self._observed_at, self._observed_mono = now, self._round_mono
        self.holder = self.identity
        if not renewed:
            self.acquisitions += 1
            _log.info("lease %s: %s became leader", self.resource, self.identity)
        self._ok()

    def _drop(self) -> None:
        with self._state_lock:
            self._held_rv = None
            self._leader_until = self._leader_until_mono = -math.inf

    def _ok(self) -> None:
        if self.last_error is not None:
            _log.info("lease %s: API reachable again", self.resource)
        self.last_error = None

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            _log.error(
                "lease %s: %s; %s",
                self.resource,
                message,
                "still leader until the renew deadline" if self.is_leader() else "not leader",
            )
        self.last_error = message

    # -- giving up the lease ----------------------------------------------------------------

    def release(self) -> None:
        """Stop leading now, then free the Lease so a follower need not wait for expiry."""
        with self._round_lock:
            was_leader = self.is_leader()
            held_rv = self._held_rv
            self._drop()
            if held_rv is None:
                return
            now = self.clock()
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": self.name,
                    "namespace": self.namespace,
                    "resourceVersion": held_rv,
                },
                "spec": {
                    "leaseDurationSeconds": 1,
                    "acquireTime": _micro_time(now),
                    "renewTime": _micro_time(now),
                    "leaseTransitions": (self._observed or (None,) * 5)[4] or 0,
                },
            }
            try:
                self._api.replace_namespaced_lease(
                    self.name,
                    self.namespace,
                    body,
                    _preload_content=False,
                    _request_timeout=self.timeout_s,
                )
                self.holder = None
                _log.info("lease %s: released by %s", self.resource, self.identity)
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                level = logging.INFO if not was_leader else logging.WARNING
                _log.log(level, "lease %s: not released (%s); it will expire", self.resource, exc)

    # -- background renewal ----------------------------------------------------------------

    def start(self) -> None:
        """Run rounds on a daemon thread: every ``renew_every_s`` as leader, else
        ``retry_every_s`` (with up to 20 % jitter)."""
        if self._thread is not None:
            return
        self._stopping = False
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{self.name}-{self.identity}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop_event.is_set():
            leader = self.try_acquire_or_renew()
            pause = self.renew_every_s if leader else self.retry_every_s * random.uniform(1, 1.2)
            self._stop_event.wait(pause)

    def stop(self, *, release: bool = True, timeout_s: float = 10.0) -> None:
        """Stop leading at once, end the thread, then (by default) `release` the Lease.

        ``release=False`` leaves the Lease to expire, as a crash would.
        """
        self._stopping = True
        self._stop_event.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)
        if release:
            self.release()
        else:
            self._drop()

    def close(self) -> None:
        """Release the connection pool (only when this elector built the client)."""
        if self._owns_client:
            self.api_client.close()

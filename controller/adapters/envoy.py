"""The lab's `Actuator`: weights in Envoy's filesystem-RDS route file, confirmed by Envoy itself.

Why this shape: in the lab there is no API server between meshpilot and the data plane; Envoy
watches a route file (`meshcore.envoy_format`) and reloads it when a new one is moved over it.
So a write is read-modify-replace of that file under an exclusive lock (``fcntl.flock`` on a
sibling ``.lock`` file, so two writer processes cannot interleave and lose each other's
change), with ``version_info`` one higher, and then — unlike Flagger and Argo Rollouts, which
never check — the actuator asks Envoy's admin port which version it runs and returns only
once Envoy runs it (or a newer one).

Errors mirror the VirtualService actuator's: a missing or malformed route file, a route or host
it does not hold, or weights naming other subsets are `PermanentError` (a malformed file is a
`ConfigError`, a split someone broke an `InvalidWeightsError` of that route alone, which a
write repairs as a pin repairs a VirtualService); an unreachable admin port, or an
Envoy that has not loaded the new file within ``confirm_timeout_s``, is `TemporaryError` — the
file stays written, and the next tick's `apply` confirms again.

Only the standard library talks to the admin port (``urllib``).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.adapters.istio.routes import canonical_host, route_label
from meshcore import ConfigError, PermanentError, RouteRef, TemporaryError, Weights
from meshcore.envoy_format import (
    ROUTE_NAME,
    RouteEntry,
    applied_route_version,
    read_route_entries,
    route_document,
)

__all__ = ["EnvoyRouteActuator"]

_CONFIG_DUMP = "/config_dump?resource=dynamic_route_configs"


class EnvoyRouteActuator:
    """Reads and writes route weights in an Envoy route file and confirms Envoy applied them.

    routes_file: the ``routes.json`` Envoy's listener watches (its directory must be writable:
    the new file is written next to it and moved over it); admin_url: Envoy's admin base URL
    (``http://127.0.0.1:PORT``); confirm_timeout_s: how long `apply` waits for Envoy to run
    the written version (s); poll_s: pause between two admin polls (s); request_timeout_s:
    timeout of one admin request (s); cluster_domain: DNS suffix of short host names.

    Thread-safe; several processes may write the same file (the flock serializes them).
    Counters: `writes` files written, `confirms` writes Envoy confirmed.
    """

    def __init__(
        self,
        routes_file: Path,
        admin_url: str,
        *,
        confirm_timeout_s: float = 2.0,
        poll_s: float = 0.01,
        request_timeout_s: float = 1.0,
        cluster_domain: str = "cluster.local",
    ) -> None:
        if not admin_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"Envoy admin url must start with http:// or https://, got {admin_url!r}"
            )
        for name, value in (
            ("confirm_timeout_s", confirm_timeout_s),
            ("poll_s", poll_s),
            ("request_timeout_s", request_timeout_s),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        self.routes_file = Path(routes_file)
        self.admin_url = admin_url.rstrip("/")
        self.confirm_timeout_s = float(confirm_timeout_s)
        self.poll_s = float(poll_s)
        self.request_timeout_s = float(request_timeout_s)
        self.cluster_domain = cluster_domain
        self._lock_path = self.routes_file.with_name(self.routes_file.name + ".lock")
        self._thread_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.writes = 0
        self.confirms = 0

    def close(self) -> None:
        """Nothing to release (no connection is kept); here for the serve wiring."""

    # -- the Actuator port ------------------------------------------------------------------

    def current(self, route: RouteRef) -> Weights:
        """The route's weights per subset, in route order, as the route file holds them
        (`InvalidWeightsError` when someone broke this route's split)."""
        _, entries = self._read()
        return entries[self._locate(route, entries)].spec().weights

    def discover(self, route: RouteRef) -> tuple[str, ...]:
        """The route's subsets in route order."""
        _, entries = self._read()
        return entries[self._locate(route, entries)].subsets

    def apply(self, route: RouteRef, weights: Weights) -> Weights:
        """Write `weights` for the route, wait until Envoy runs them; return the weights now
        configured (in route order).

        The file is rewritten (version + 1) only when the weights differ, and only this
        route's weights change (a split someone broke is repaired, as a pin repairs a
        VirtualService); either way Envoy must confirm it runs the file's version within
        `confirm_timeout_s`.
        """
        if not isinstance(weights, Weights):
            raise TypeError(
                f"apply needs a Weights (0..100, summing to 100), got {type(weights).__name__}"
            )
        weights = Weights(weights.subsets, weights.values_tuple)  # re-validate, always
        with self._exclusive():
            version, entries = self._read()
            index = self._locate(route, entries)
            entry = entries[index]
            if set(weights.subsets) != set(entry.subsets):
                raise PermanentError(
                    f"{self._where(route)} has subsets {list(entry.subsets)} but the weights "
                    f"name {list(weights.subsets)}; meshpilot never adds or removes destinations"
                )
            wanted = entry.with_weights(weights)
            if wanted != entry:
                version += 1
                entries[index] = wanted
                self._write(route_document(version, entries))
                with self._thread_lock:
                    self.writes += 1
        self._confirm(route, version)
        with self._thread_lock:
            self.confirms += 1
        return Weights(entry.subsets, tuple(weights[s] for s in entry.subsets))

    # -- reading ----------------------------------------------------------------------------

    def _read(self) -> tuple[int, list[RouteEntry]]:
        try:
            text = self.routes_file.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise PermanentError(f"Envoy route file {self.routes_file} not found") from exc
        except OSError as exc:
            raise TemporaryError(
                f"cannot read Envoy route file {self.routes_file}: {exc.strerror or exc}"
            ) from exc
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"Envoy route file {self.routes_file} is not JSON: {exc}") from exc
        return read_route_entries(doc)

    def _locate(self, route: RouteRef, entries: list[RouteEntry]) -> int:
        """Index of the route's service in `entries`; `PermanentError` as for a missing
        VirtualService, http route or destination host."""
        found = [i for i, e in enumerate(entries) if e.service == route.virtual_service]
        if not found:
            known = [e.service for e in entries]
            raise PermanentError(
                f"Envoy route file {self.routes_file} has no virtual host "
                f"{route.virtual_service!r} (it has {known})"
            )
        entry = entries[found[0]]
        if route.route != ROUTE_NAME:
            raise PermanentError(
                f"{self._where(route)}: no http route named {route.route!r} "
                f"(named routes: [{ROUTE_NAME!r}])"
            )
        want = canonical_host(route.host, route.namespace, cluster_domain=self.cluster_domain)
        have = canonical_host(entry.host, route.namespace, cluster_domain=self.cluster_domain)
        if want != have:
            raise PermanentError(
                f"{self._where(route)} has no destination for host {route.host} ([{entry.host}])"
            )
        return found[0]

    def _where(self, route: RouteRef) -> str:
        return f"Envoy virtual host {route.virtual_service!r}, {route_label(route)}"

    # -- writing ----------------------------------------------------------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread alone, and this process alone among the file's writers."""
        with self._write_lock:  # threads of this process; the flock covers other processes
            try:
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise TemporaryError(
                    f"cannot open the lock file {self._lock_path}: {exc.strerror or exc}"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _write(self, doc: dict[str, Any]) -> None:
        """Temp file in the same directory, then ``os.replace`` (Envoy ignores in-place
        writes and would never see a half-written file this way)."""
        directory = self.routes_file.parent
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".routes-", suffix=".tmp")
        except OSError as exc:
            raise TemporaryError(f"cannot write in {directory}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(doc, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.routes_file)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise TemporaryError(
                f"cannot replace Envoy route file {self.routes_file}: {exc.strerror or exc}"
            ) from exc

    # -- confirming -------------------------------------------------------------------------

    def applied_version(self) -> int | None:
        """The route-file version Envoy runs (None before its first load); `TemporaryError`
        when the admin port cannot be reached or answers garbage."""
        url = self.admin_url + _CONFIG_DUMP
        try:
            with urllib.request.urlopen(url, timeout=self.request_timeout_s) as resp:
                body = resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise TemporaryError(f"Envoy admin {self.admin_url} unreachable: {exc}") from exc
        try:
            return applied_route_version(json.loads(body))
        except ValueError as exc:
            raise TemporaryError(f"Envoy admin {self.admin_url} sent no JSON: {exc}") from exc

    def _confirm(self, route: RouteRef, version: int) -> None:
        """Return once Envoy runs `version` or newer; `TemporaryError` at once when the admin
        port cannot be reached (a tick over many routes must not wait for each), or when Envoy
        still runs an older version after `confirm_timeout_s`."""
        deadline = time.monotonic() + self.confirm_timeout_s
        while True:
            try:
                seen = self.applied_version()
            except TemporaryError as exc:
                raise TemporaryError(
                    f"{self._where(route)}: route file version {version} written, not confirmed: "
                    f"{exc}"
                ) from exc.__cause__
            if seen is not None and seen >= version:
                return
            if time.monotonic() >= deadline:
                raise TemporaryError(
                    f"{self._where(route)}: route file version {version} written but Envoy "
                    f"still runs version {seen} after {self.confirm_timeout_s} s "
                    "(did it reject the file? see its log)"
                )
            time.sleep(self.poll_s)

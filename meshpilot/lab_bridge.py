"""Copy VirtualService weights onto the lab's Envoy routes: the lab's stand-in for istiod.

Why this exists: in a cluster, meshpilot writes weights into a VirtualService on the
kube-apiserver and istiod pushes the change to the sidecars; nothing of meshpilot's talks to
Envoy. The lab has Envoy but no istiod. To run the production write path there (serve with
``mesh: k8s``, `VirtualServiceActuator` patching a real API server), something must carry the
weights from the VirtualService to Envoy's route file. `VirtualServiceBridge` does that, for
weights only: every ``interval_s`` it reads each route from the source actuator (the
VirtualService) and, when the sink's weights (the lab's `EnvoyRouteActuator`) differ, writes
them there. The loop then closes through Envoy and Prometheus exactly as in a cluster, with the
bridge's interval standing in for istiod's push delay.

It lives in the composition layer because it joins two adapters that must not know each
other. Errors never stop it: a failed read or write is logged (once per new message, per
route), counted in `errors`, and tried again at the next interval.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

from meshcore import Actuator, ConfigError, RouteRef, Weights

__all__ = ["VirtualServiceBridge"]

_log = logging.getLogger(__name__)


class VirtualServiceBridge:
    """Keeps the sink's weights equal to the source's, route by route (see module doc).

    source: where the weights are decided (the `VirtualServiceActuator` on the API server);
    sink: where traffic is routed (the lab's `EnvoyRouteActuator`); routes: the routes to
    copy, named the same in both; interval_s: pause between two passes (s, default 0.5).

    Counters (read them any time): `passes` passes over all routes, `copies` routes written
    to the sink, `errors` failed route copies; `last_error` the latest error text.
    """

    def __init__(
        self,
        source: Actuator,
        sink: Actuator,
        routes: Sequence[RouteRef],
        *,
        interval_s: float = 0.5,
    ) -> None:
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigError(
                f"interval_s must be a positive number of seconds, got {interval_s!r}"
            )
        self.source = source
        self.sink = sink
        self.routes = tuple(routes)
        self.interval_s = float(interval_s)
        self.passes = 0
        self.copies = 0
        self.errors = 0
        self.last_error = ""
        self._failing: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass -----------------------------------------------------------------------------

    def sync_once(self) -> int:
        """Copy every route whose weights differ from the source's to the sink; returns how
        many were copied. Never raises for a route's failure (it is logged and counted)."""
        copied = 0
        for route in self.routes:
            try:
                changed = self._sync(route)
            except Exception as exc:  # any adapter failure: report it, retry next pass
                self._failed(route, exc)
                continue
            self._recovered(route)
            copied += changed
        self.passes += 1
        self.copies += copied
        return copied

    def _sync(self, route: RouteRef) -> bool:
        wanted = self.source.current(route)
        try:
            have: Weights | None = self.sink.current(route)
        except Exception as exc:  # a broken sink split is repaired by the write below
            _log.debug("%s: sink unreadable (%s); writing it", route.key, exc)
            have = None
        unconfirmed = route.key in self._failing  # e.g. written while Envoy was down
        if have is not None and have.as_dict() == wanted.as_dict() and not unconfirmed:
            return False
        self.sink.apply(route, wanted)
        _log.info("%s: copied %s to the data plane", route.key, wanted.as_dict())
        return True

    def _failed(self, route: RouteRef, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.errors += 1
        self.last_error = f"{route.key}: {text}"
        if self._failing.get(route.key) != text:
            _log.warning(
                "%s: not copied, retrying every %.1f s: %s", route.key, self.interval_s, text
            )
        self._failing[route.key] = text

    def _recovered(self, route: RouteRef) -> None:
        if self._failing.pop(route.key, None) is not None:
            _log.info("%s: copying again", route.key)

    # -- the thread ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Run `sync_once` every `interval_s` on a daemon thread until `stop`."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meshpilot-lab-bridge", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to end after its current pass and wait up to `timeout_s` (s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sync_once()
            self._stop.wait(self.interval_s)

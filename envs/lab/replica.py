"""One lab replica: a real HTTP/1.1 server that serves like one of the simulator's.

As `envs.simulator.kernel`: FCFS over `concurrency` servers, service times drawn from the
version's distribution (mean ``service_ms / capacity_factor``), an error (503) decided with
probability `error_rate` and sent when the service ends, and an immediate 503 for a request
that finds `queue_limit` requests outstanding on its replica (Envoy's default circuit breaker).

Service runs on a virtual clock: a request's start is ``max(now, free_at)`` and its reply is
scheduled at ``start + service`` with `loop.call_at`; sleeping each service time would lose the
event loop's timer rounding on every request (~4 % of capacity at 20 ms), while the virtual
clock keeps the capacity exact whatever the scheduling jitter. (A reply still leaves up to
~1 ms after its virtual time, since epoll waits in whole milliseconds: that adds ~0.5 ms of
latency on average, never lost capacity.)
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.lab.backend_config import SubsetConfig
from envs.lab.http_head import (
    BAD_REQUEST,
    TOO_LARGE,
    RequestError,
    parse_request_head,
    response,
)

SETTABLE = {
    "error_rate": (0.0, 1.0, True),
    "service_ms": (0.0, 600_000.0, False),
    "cv": (0.0, 20.0, False),
    "capacity_factor": (0.0, 100.0, False),
}
"""Fields `POST /set` may change: (low, high, low bound inclusive); high is always inclusive."""

MAX_HEAD = 16 * 1024
"""Largest request head (request line + headers, bytes) on any port; larger is 431."""
_DRAW_BATCH = 1024


@dataclass
class Ramp:
    """A parameter moving linearly from `base` to `target` over [t0_s, t0_s + ramp_s]."""

    base: float
    target: float
    t0_s: float = 0.0
    ramp_s: float = 0.0

    def at(self, now_s: float) -> float:
        if self.ramp_s <= 0.0 or now_s >= self.t0_s + self.ramp_s:
            return self.target
        if now_s <= self.t0_s:
            return self.base
        return self.base + (self.target - self.base) * (now_s - self.t0_s) / self.ramp_s

    def move(self, target: float, now_s: float, ramp_s: float) -> None:
        self.base = self.at(now_s)
        self.target = target
        self.t0_s = now_s
        self.ramp_s = ramp_s


class SubsetState:
    """Run-time state of one version: parameters (with ramps) and counters over its replicas."""

    def __init__(self, service: str, cfg: SubsetConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.params = {f: Ramp(float(getattr(cfg, f)), float(getattr(cfg, f))) for f in SETTABLE}
        self.replicas: list[Replica] = []

    def value(self, field: str, now_s: float) -> float:
        return self.params[field].at(now_s)

    def state(self, now_s: float) -> dict[str, Any]:
        outstanding = [r.outstanding for r in self.replicas]
        in_service = sum(min(o, self.cfg.concurrency) for o in outstanding)
        params = {f: p.at(now_s) for f, p in self.params.items()}
        return {
            **params,
            "service_dist": self.cfg.service_dist,
            "targets": {f: p.target for f, p in self.params.items()},
            "ramping": any(p.at(now_s) != p.target for p in self.params.values()),
            "replicas": len(self.replicas),
            "concurrency": self.cfg.concurrency,
            "queue_limit": self.cfg.queue_limit,
            "ports": list(self.cfg.ports),
            "requests": sum(r.requests for r in self.replicas),
            "served": sum(r.served for r in self.replicas),
            "errors": sum(r.errors for r in self.replicas),
            "rejected": sum(r.rejected for r in self.replicas),
            "in_flight": in_service,
            "queued": sum(outstanding) - in_service,
            "per_replica": [
                {"port": r.port, "requests": r.requests, "outstanding": r.outstanding}
                for r in self.replicas
            ],
        }


class Replica:
    """One FCFS replica on the virtual clock: `concurrency` servers' next-free times."""

    def __init__(
        self,
        subset: SubsetState,
        port: int,
        rng: np.random.Generator,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.subset = subset
        self.port = port
        self.loop = loop
        self.queue_limit = subset.cfg.queue_limit
        self._rng = rng
        self._free_at = [0.0] * subset.cfg.concurrency
        self._draws = np.empty(0)
        self._uniform = np.empty(0)
        self._k = 0
        self.requests = 0
        self.served = 0
        self.errors = 0
        self.rejected = 0
        self.outstanding = 0
        headers = (
            f"x-meshpilot-service: {subset.service}\r\nx-meshpilot-subset: {subset.cfg.name}\r\n"
        )
        self.ok = response(200, "OK", headers, b"ok\n")
        self.failed = response(503, "Service Unavailable", headers, b"error\n", "error")
        self.overloaded = response(503, "Service Unavailable", headers, b"overload\n", "overload")

    def reseed(self, rng: np.random.Generator) -> None:
        """Draw from `rng` from the next request on (batches drawn earlier are dropped)."""
        self._rng = rng
        self._draws = np.empty(0)
        self._uniform = np.empty(0)
        self._k = 0

    def _next_draws(self) -> tuple[float, float]:
        """(standard draw for the service time, U(0,1) for the error), refilled in batches."""
        if self._k >= self._draws.shape[0]:
            if self.subset.cfg.service_dist == "lognormal":
                self._draws = self._rng.standard_normal(_DRAW_BATCH)
            else:
                self._draws = self._rng.standard_exponential(_DRAW_BATCH)
            self._uniform = self._rng.random(_DRAW_BATCH)
            self._k = 0
        k = self._k
        self._k += 1
        return float(self._draws[k]), float(self._uniform[k])

    def service_s(self, draw: float, now_s: float) -> float:
        sub = self.subset
        mean_s = sub.value("service_ms", now_s) / 1000.0 / sub.value("capacity_factor", now_s)
        if sub.cfg.service_dist == "lognormal":
            sigma2 = math.log1p(sub.value("cv", now_s) ** 2)
            return math.exp(math.log(mean_s) - sigma2 / 2.0 + math.sqrt(sigma2) * draw)
        return mean_s * draw

    def accept(self, reply: Callable[[bytes], None]) -> None:
        """Take one request: reject it at once when the replica is full, else schedule its
        reply at the end of its service on the virtual clock."""
        self.requests += 1
        if self.outstanding >= self.queue_limit:
            self.rejected += 1
            reply(self.overloaded)
            return
        now = self.loop.time()
        draw, u_error = self._next_draws()
        free_at = self._free_at
        i = 0 if len(free_at) == 1 else free_at.index(min(free_at))
        start = max(now, free_at[i])
        done = start + self.service_s(draw, now)
        free_at[i] = done
        self.outstanding += 1
        self.loop.call_at(done, self._finish, reply, u_error)

    def _finish(self, reply: Callable[[bytes], None], u_error: float) -> None:
        self.outstanding -= 1
        self.served += 1
        if u_error < self.subset.value("error_rate", self.loop.time()):
            self.errors += 1
            reply(self.failed)
        else:
            reply(self.ok)


class ReplicaProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive for one connection to a replica; replies leave in request order
    (a pipelining client may see a later request finish first on a multi-server replica)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.skip = 0
        self.pending: deque[list[bytes | None]] = deque()
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.close_after:
            return
        buf = self.buf + data
        while buf:
            if self.skip:
                n = min(self.skip, len(buf))
                self.skip -= n
                buf = buf[n:]
                continue
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._fail(TOO_LARGE)
                    return
                break
            head, buf = buf[:end], buf[end + 4 :]
            try:
                request = parse_request_head(head)
            except RequestError:
                self._fail(BAD_REQUEST)
                return
            self.skip, close = request.length, request.close
            slot: list[bytes | None] = [None]
            self.pending.append(slot)
            if close:
                self.close_after = True
            self.replica.accept(functools.partial(self._ready, slot))
            if close:
                buf = b""
                break
        self.buf = buf

    def _fail(self, payload: bytes) -> None:
        self.close_after = True
        self.buf = b""
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        self._ready(slot, payload)

    def _ready(self, slot: list[bytes | None], payload: bytes) -> None:
        slot[0] = payload
        transport = self.transport
        while self.pending and self.pending[0][0] is not None:
            out = self.pending.popleft()[0]
            if transport is not None and not transport.is_closing():
                transport.write(out)  # type: ignore[arg-type]
        if self.close_after and not self.pending and transport is not None:
            transport.close()

    def eof_received(self) -> bool:
        """A half-closed client still gets the replies it is owed, then the connection ends."""
        self.close_after = True
        if not self.pending and self.transport is not None:
            self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

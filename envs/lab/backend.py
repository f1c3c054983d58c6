"""The lab's backends: every replica of every service version as a real HTTP/1.1 server.

One asyncio process hosts them all, each replica on its own 127.0.0.1 port, so Envoy balances
over real endpoints. A replica serves like one of the simulator's (`envs.simulator.kernel`):
FCFS over `concurrency` servers, service times drawn from the version's distribution (mean
``service_ms / capacity_factor``), an error (503) decided with probability `error_rate` and sent
when the service ends, and an immediate 503 for a request that finds `queue_limit` requests
outstanding on its replica (Envoy's default circuit breaker).

Service runs on a virtual clock: a request's start is ``max(now, free_at)`` and its reply is
scheduled at ``start + service`` with `loop.call_at`; sleeping each service time would lose the
event loop's timer rounding on every request (~4 % of capacity at 20 ms), while the virtual
clock keeps the capacity exact whatever the scheduling jitter. (A reply still leaves up to
~1 ms after its virtual time, since epoll waits in whole milliseconds: that adds ~0.5 ms of
latency on average, never lost capacity.)

A control endpoint changes a version's parameters at run time (optionally as a linear ramp),
which is how the lab injects the scenario events a controller must react to::

    GET  /healthz   -> {"ok": true}
    GET  /state     -> parameters and counters of every service/subset
    POST /set       {"service": S, "subset": V, "set": {"error_rate": 0.2}, "ramp_s": 10}
    POST /reseed    {"seed": 7}   (every replica's generator, as if started with that seed)

    python -m envs.lab.backend --config backend.json

A POST wants ``Content-Type: application/json`` (415 otherwise) and any request with an
``Origin`` header is refused (403): a browser can then neither send a "simple" cross-site POST
that injects faults nor read the state of a lab from a web page (DNS rebinding included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import signal
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from envs.lab.backend_config import BackendConfig, SubsetConfig
from envs.lab.limits import raise_nofile_limit

SETTABLE = {
    "error_rate": (0.0, 1.0, True),
    "service_ms": (0.0, 600_000.0, False),
    "cv": (0.0, 20.0, False),
    "capacity_factor": (0.0, 100.0, False),
}
"""Fields `POST /set` may change: (low, high, low bound inclusive); high is always inclusive."""

MAX_RAMP_S = 86_400.0
MAX_CONTROL_BODY = 16 * 1024
"""Largest control request body (bytes); a larger one is answered 413 unread."""
MAX_HEAD = 16 * 1024
"""Largest request head (request line + headers, bytes) on any port; larger is 431."""
MAX_CONTROL_CONNECTIONS = 32
"""Control connections open at once; a new one beyond this is closed unanswered, so a client
that opens and abandons connections cannot starve the backend of file descriptors."""
CONTROL_IDLE_S = 5.0
"""Seconds a control connection may wait for its next request head or for a body before it is
closed (our own clients send a whole request at once and close after the answer)."""
_DRAW_BATCH = 1024


# ---- run-time parameters -------------------------------------------------------------------


@dataclass
class _Ramp:
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


class _Subset:
    """Run-time state of one version: parameters (with ramps) and counters over its replicas."""

    def __init__(self, service: str, cfg: SubsetConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.params = {f: _Ramp(float(getattr(cfg, f)), float(getattr(cfg, f))) for f in SETTABLE}
        self.replicas: list[_Replica] = []

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


class _Replica:
    """One FCFS replica on the virtual clock: `concurrency` servers' next-free times."""

    def __init__(
        self,
        subset: _Subset,
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
        self.ok = _response(200, "OK", headers, b"ok\n")
        self.failed = _response(503, "Service Unavailable", headers, b"error\n", "error")
        self.overloaded = _response(503, "Service Unavailable", headers, b"overload\n", "overload")

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


def _response(code: int, reason: str, headers: str, body: bytes, why: str = "") -> bytes:
    extra = f"x-meshpilot-reason: {why}\r\n" if why else ""
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n{headers}{extra}\r\n"
    )
    return head.encode("latin-1") + body


# ---- request heads (replicas and control endpoint) ----------------------------------------


class _RequestError(Exception):
    """A request answered with `status` and `message` (a replica answers any of them 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Head(NamedTuple):
    """What the servers need of a request head. length: body bytes (Content-Length, 0 when
    absent); close: close after the reply; content_type: the media type, lower-cased, without
    parameters (b"" when absent); origin: whether an ``Origin`` header was sent."""

    method: bytes
    target: bytes
    length: int
    close: bool
    content_type: bytes
    origin: bool


def _parse_head(head: bytes) -> _Head:
    """Parse a request head (without its final blank line); `_RequestError` (400) when it is
    malformed, has a bad or conflicting Content-Length, or a Transfer-Encoding (bodies only
    come with a Content-Length here, which also rules out request smuggling).

    Connection is a token list: ``close`` wins, then ``keep-alive``; without either HTTP/1.1
    stays open and HTTP/1.0 closes.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[2].startswith(b"HTTP/1."):
        raise _RequestError(400, "malformed request line")
    method, target, version = parts
    length: int | None = None
    tokens: set[bytes] = set()
    content_type = b""
    origin = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise _RequestError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        if key == b"content-length":
            if not value.isdigit() or len(value) > 18 or length not in (None, int(value)):
                raise _RequestError(400, "bad Content-Length")
            length = int(value)
        elif key == b"transfer-encoding":
            raise _RequestError(400, "chunked bodies are not accepted; send Content-Length")
        elif key == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif key == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif key == b"origin":
            origin = True
    if b"close" in tokens:
        close = True
    elif b"keep-alive" in tokens:
        close = False
    else:
        close = version == b"HTTP/1.0"
    return _Head(method, target, length or 0, close, content_type, origin)


_EMPTY_CLOSE = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n" + _EMPTY_CLOSE
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + _EMPTY_CLOSE


class _ReplicaProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive for one connection to a replica; replies leave in request order
    (a pipelining client may see a later request finish first on a multi-server replica)."""

    def __init__(self, replica: _Replica) -> None:
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
                    self._fail(_TOO_LARGE)
                    return
                break
            head, buf = buf[:end], buf[end + 4 :]
            try:
                request = _parse_head(head)
            except _RequestError:
                self._fail(_BAD_REQUEST)
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


# ---- control endpoint ----------------------------------------------------------------------


class Backend:
    """Every replica server of a `BackendConfig` plus its control endpoint, on one loop."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.subsets: dict[tuple[str, str], _Subset] = {}
        self._servers: list[asyncio.Server] = []
        self._t0 = 0.0
        self._control_open = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        n = sum(len(sub.ports) for svc in self.config.services for sub in svc.subsets)
        rngs = iter(_generators(self.config.seed, n))
        for svc in self.config.services:
            for cfg in svc.subsets:
                sub = _Subset(svc.service, cfg)
                self.subsets[(svc.service, cfg.name)] = sub
                for port in cfg.ports:
                    replica = _Replica(sub, port, next(rngs), loop)
                    sub.replicas.append(replica)
                    server = await loop.create_server(
                        functools.partial(_ReplicaProtocol, replica),
                        "127.0.0.1",
                        port,
                        backlog=1024,
                    )
                    self._servers.append(server)
        control = await asyncio.start_server(
            self._control, "127.0.0.1", self.config.control_port, limit=MAX_HEAD
        )
        self._servers.append(control)

    def close(self) -> None:
        for server in self._servers:
            server.close()

    # ---- control handlers
    def state(self) -> dict[str, Any]:
        now = asyncio.get_running_loop().time()
        services: dict[str, dict[str, Any]] = {}
        for (service, name), sub in self.subsets.items():
            services.setdefault(service, {})[name] = sub.state(now)
        return {"uptime_s": now - self._t0, "services": services}

    def reseed(self, body: Any) -> dict[str, Any]:
        """A `/reseed` body: every replica draws from ``seed`` as if the backend had started
        with it (one `SeedSequence` child per replica, in file order), so a run that reseeds
        first draws the same service times and errors, request by request, on any lab."""
        if not isinstance(body, dict) or set(body) != {"seed"}:
            raise _RequestError(400, 'the body must be {"seed": <integer >= 0>}')
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise _RequestError(400, f"'seed' must be an integer within 0..2**63-1, got {seed!r}")
        replicas = [r for sub in self.subsets.values() for r in sub.replicas]
        for replica, rng in zip(replicas, _generators(seed, len(replicas)), strict=True):
            replica.reseed(rng)
        return {"seed": seed, "replicas": len(replicas)}

    def apply(self, body: Any) -> dict[str, Any]:
        """Validate a `/set` body and apply it; `_RequestError` (400) says what is wrong."""
        if not isinstance(body, dict):
            raise _RequestError(400, "the body must be a JSON object")
        unknown = sorted(set(body) - {"service", "subset", "set", "ramp_s"})
        if unknown:
            raise _RequestError(400, f"unknown keys {unknown}; expected service, subset, set")
        service, subset, changes = body.get("service"), body.get("subset"), body.get("set")
        if not isinstance(service, str) or not isinstance(subset, str):
            raise _RequestError(400, "'service' and 'subset' must be strings")
        sub = self.subsets.get((service, subset))
        if sub is None:
            known = sorted(f"{a}/{b}" for a, b in self.subsets)
            raise _RequestError(400, f"no subset {service}/{subset} (known: {', '.join(known)})")
        ramp_s = _number(body.get("ramp_s", 0.0), "ramp_s")
        if not 0.0 <= ramp_s <= MAX_RAMP_S:
            raise _RequestError(400, f"'ramp_s' must be within 0..{MAX_RAMP_S:g}, got {ramp_s}")
        if not isinstance(changes, dict) or not changes:
            raise _RequestError(400, "'set' must be a non-empty object of field: number")
        checked: dict[str, float] = {}
        for field, raw in changes.items():
            if field == "replicas":
                raise _RequestError(
                    400,
                    "'replicas' cannot change at run time: Envoy's endpoints are fixed when the "
                    "lab starts (change the lab file and restart the lab)",
                )
            if field not in SETTABLE:
                raise _RequestError(
                    400, f"'set' field {field!r} is not settable; use one of {', '.join(SETTABLE)}"
                )
            value = _number(raw, f"set.{field}")
            low, high, low_ok = SETTABLE[field]
            if not ((value >= low if low_ok else value > low) and value <= high):
                side = "[" if low_ok else "("
                raise _RequestError(
                    400, f"'set.{field}' must be within {side}{low:g}, {high:g}], got {value}"
                )
            checked[field] = value
        now = asyncio.get_running_loop().time()
        for field, value in checked.items():
            sub.params[field].move(value, now, ramp_s)
        return {"service": service, "subset": subset, "state": sub.state(now)}

    def route(self, request: _Head, body: bytes) -> tuple[int, Any]:
        if request.origin:
            raise _RequestError(403, "requests from web pages (with an Origin header) are refused")
        method = request.method.decode("latin-1")
        path = request.target.decode("latin-1").split("?", 1)[0]
        if path == "/healthz":
            if method != "GET":
                raise _RequestError(405, "use GET /healthz")
            return 200, {"ok": True}
        if path == "/state":
            if method != "GET":
                raise _RequestError(405, "use GET /state")
            return 200, self.state()
        if path in ("/set", "/reseed"):
            if method != "POST":
                raise _RequestError(405, f"use POST {path} with a JSON body")
            if request.content_type != b"application/json":
                raise _RequestError(415, f"POST {path} wants Content-Type: application/json")
            try:
                data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as err:
                raise _RequestError(400, f"the body is not valid JSON: {err}") from None
            return 200, self.apply(data) if path == "/set" else self.reseed(data)
        raise _RequestError(404, f"no such path {path!r}; try /healthz, /state, /set, /reseed")

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._control_open >= MAX_CONTROL_CONNECTIONS:
            writer.transport.abort()
            return
        self._control_open += 1
        try:
            await self._serve_control(reader, writer)
        finally:
            self._control_open -= 1
            writer.close()

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer one control connection's requests in turn until it closes, errs or idles."""
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CONTROL_IDLE_S)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            except asyncio.LimitOverrunError:
                await _send_json(writer, 431, {"error": "request head too large"}, True)
                return
            try:
                request = _parse_head(head[:-4])
            except _RequestError as err:
                await _send_json(writer, err.status, {"error": str(err)}, True)
                return
            if request.length > MAX_CONTROL_BODY:
                msg = f"body larger than {MAX_CONTROL_BODY} bytes"
                await _send_json(writer, 413, {"error": msg}, True)
                return
            try:
                body = await asyncio.wait_for(reader.readexactly(request.length), CONTROL_IDLE_S)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                return
            try:
                status, payload = self.route(request, body)
            except _RequestError as err:
                status, payload = err.status, {"error": str(err)}
            except Exception as err:  # a bug must cost one request, not the lab
                status, payload = 500, {"error": f"{type(err).__name__}: {err}"}
            await _send_json(writer, status, payload, request.close)
            if request.close:
                return


def _generators(seed: int, n: int) -> list[np.random.Generator]:
    """One independent generator per replica, in file order, all from `seed`."""
    return [np.random.Generator(np.random.PCG64(c)) for c in np.random.SeedSequence(seed).spawn(n)]


def _number(raw: Any, name: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise _RequestError(400, f"'{name}' must be a number, got {type(raw).__name__}")
    try:
        value = float(raw)
    except OverflowError:  # an integer of hundreds of digits
        raise _RequestError(400, f"'{name}' must be finite, got a huge integer") from None
    if not math.isfinite(value):
        raise _RequestError(400, f"'{name}' must be finite")
    return value


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any, close: bool) -> None:
    reasons = {
        200: "OK",
        400: "Bad Request",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        413: "Payload Too Large",
        415: "Unsupported Media Type",
        431: "Request Header Fields Too Large",
        500: "Internal Server Error",
    }
    body = json.dumps(payload).encode()
    head = (
        f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n"
    )
    with contextlib.suppress(ConnectionError):
        writer.write(head.encode("latin-1") + body)
        await writer.drain()


# ---- process -------------------------------------------------------------------------------


async def serve(config: BackendConfig, *, ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close every listener."""
    backend = Backend(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await backend.start()
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m envs.lab.backend",
        description="Serve every replica of a lab's services on 127.0.0.1 (see module doc).",
    )
    parser.add_argument("--config", required=True, type=Path, help="backend config JSON file")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    try:
        config = BackendConfig.from_json(args.config.read_bytes())
    except (OSError, ValueError) as err:
        print(f"backend: {err}", file=sys.stderr)
        return 2
    n = sum(len(sub.ports) for svc in config.services for sub in svc.subsets)

    def ready() -> None:
        print(f"backend: {n} replicas up, control on {config.control_url}", flush=True)

    try:
        asyncio.run(serve(config, ready=ready))
    except OSError as err:
        print(f"backend: cannot listen: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

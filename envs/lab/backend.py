"""The lab's backends: every replica of every service version as a real HTTP/1.1 server.

One asyncio process hosts them all, each replica on its own 127.0.0.1 port, so Envoy balances
over real endpoints; how a replica serves is `envs.lab.replica`.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from envs.lab.backend_config import BackendConfig
from envs.lab.http_head import (
    RequestError,
    RequestHead,
    parse_request_head,
)
from envs.lab.limits import raise_nofile_limit
from envs.lab.replica import MAX_HEAD, SETTABLE, Replica, ReplicaProtocol, SubsetState

MAX_RAMP_S = 86_400.0
MAX_CONTROL_BODY = 16 * 1024
"""Largest control request body (bytes); a larger one is answered 413 unread."""
MAX_CONTROL_CONNECTIONS = 32
"""Control connections open at once; a new one beyond this is closed unanswered, so a client
that opens and abandons connections cannot starve the backend of file descriptors."""
CONTROL_IDLE_S = 5.0
"""Seconds a control connection may wait for its next request head or for a body before it is
closed (our own clients send a whole request at once and close after the answer)."""


# ---- control endpoint ----------------------------------------------------------------------


class Backend:
    """Every replica server of a `BackendConfig` plus its control endpoint, on one loop."""

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.subsets: dict[tuple[str, str], SubsetState] = {}
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
                sub = SubsetState(svc.service, cfg)
                self.subsets[(svc.service, cfg.name)] = sub
                for port in cfg.ports:
                    replica = Replica(sub, port, next(rngs), loop)
                    sub.replicas.append(replica)
                    server = await loop.create_server(
                        functools.partial(ReplicaProtocol, replica),
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
            raise RequestError(400, 'the body must be {"seed": <integer >= 0>}')
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise RequestError(400, f"'seed' must be an integer within 0..2**63-1, got {seed!r}")
        replicas = [r for sub in self.subsets.values() for r in sub.replicas]
        for replica, rng in zip(replicas, _generators(seed, len(replicas)), strict=True):
            replica.reseed(rng)
        return {"seed": seed, "replicas": len(replicas)}

    def apply(self, body: Any) -> dict[str, Any]:
        """Validate a `/set` body and apply it; `RequestError` (400) says what is wrong."""
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        unknown = sorted(set(body) - {"service", "subset", "set", "ramp_s"})
        if unknown:
            raise RequestError(400, f"unknown keys {unknown}; expected service, subset, set")
        service, subset, changes = body.get("service"), body.get("subset"), body.get("set")
        if not isinstance(service, str) or not isinstance(subset, str):
            raise RequestError(400, "'service' and 'subset' must be strings")
        sub = self.subsets.get((service, subset))
        if sub is None:
            known = sorted(f"{a}/{b}" for a, b in self.subsets)
            raise RequestError(400, f"no subset {service}/{subset} (known: {', '.join(known)})")
        ramp_s = _number(body.get("ramp_s", 0.0), "ramp_s")
        if not 0.0 <= ramp_s <= MAX_RAMP_S:
            raise RequestError(400, f"'ramp_s' must be within 0..{MAX_RAMP_S:g}, got {ramp_s}")
        if not isinstance(changes, dict) or not changes:
            raise RequestError(400, "'set' must be a non-empty object of field: number")
        checked: dict[str, float] = {}
        for field, raw in changes.items():
            if field == "replicas":
                raise RequestError(
                    400,
                    "'replicas' cannot change at run time: Envoy's endpoints are fixed when the "
                    "lab starts (change the lab file and restart the lab)",
                )
            if field not in SETTABLE:
                raise RequestError(
                    400, f"'set' field {field!r} is not settable; use one of {', '.join(SETTABLE)}"
                )
            value = _number(raw, f"set.{field}")
            low, high, low_ok = SETTABLE[field]
            if not ((value >= low if low_ok else value > low) and value <= high):
                side = "[" if low_ok else "("
                raise RequestError(
                    400, f"'set.{field}' must be within {side}{low:g}, {high:g}], got {value}"
                )
            checked[field] = value
        now = asyncio.get_running_loop().time()
        for field, value in checked.items():
            sub.params[field].move(value, now, ramp_s)
        return {"service": service, "subset": subset, "state": sub.state(now)}

    def route(self, request: RequestHead, body: bytes) -> tuple[int, Any]:
        if request.origin:
            raise RequestError(403, "requests from web pages (with an Origin header) are refused")
        method = request.method.decode("latin-1")
        path = request.target.decode("latin-1").split("?", 1)[0]
        if path == "/healthz":
            if method != "GET":
                raise RequestError(405, "use GET /healthz")
            return 200, {"ok": True}
        if path == "/state":
            if method != "GET":
                raise RequestError(405, "use GET /state")
            return 200, self.state()
        if path in ("/set", "/reseed"):
            if method != "POST":
                raise RequestError(405, f"use POST {path} with a JSON body")
            if request.content_type != b"application/json":
                raise RequestError(415, f"POST {path} wants Content-Type: application/json")
            try:
                data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as err:
                raise RequestError(400, f"the body is not valid JSON: {err}") from None
            return 200, self.apply(data) if path == "/set" else self.reseed(data)
        raise RequestError(404, f"no such path {path!r}; try /healthz, /state, /set, /reseed")

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
                request = parse_request_head(head[:-4])
            except RequestError as err:
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
            except RequestError as err:
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
        raise RequestError(400, f"'{name}' must be a number, got {type(raw).__name__}")
    try:
        value = float(raw)
    except OverflowError:  # an integer of hundreds of digits
        raise RequestError(400, f"'{name}' must be finite, got a huge integer") from None
    if not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be finite")
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

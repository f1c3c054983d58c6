"""Open-loop Poisson traffic for the lab, from raw asyncio sockets.

Open loop means arrivals never wait for responses: a request is sent at its scheduled time on
an idle keep-alive connection, or on a new one when all are busy, so a slow mesh builds queues
as a real one would instead of slowing the client down. The arrival times are drawn up front
(non-homogeneous Poisson by thinning, seeded) from a scenario `Load` — the same mean rate,
diurnal sine and bursts as the simulator's — one stream per (Host header, Load) pair of a plan.

HTTP is spoken directly on `asyncio.Protocol` transports: an httpx client ran out of CPU at
~140 rps on these machines, while this reaches several hundred rps on one core
(``bench/lab_loadgen.py`` measures it).

Traffic goes to loopback only (``127.0.0.1``, ``localhost`` or ``::1``): the generator can
open thousands of connections a second, which is a test of the lab, and a flood for anything
else.

Each request records its send time (s from the start), client-side latency (ms), status (0 for
a connection error or a timeout) and the ``x-meshpilot-subset`` header of its response::

    result = run_load("127.0.0.1:15001", [("product-service", Load(rps=200))], 30.0, seed=1)
    result.summary(slo_ms=250)

    python -m envs.lab.loadgen --target 127.0.0.1:15001 --host product-service --rps 200 \\
        --duration 30 [--burst 10:5:3] [--out result.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from envs.lab.arrivals import Plan, mean_rps, schedule
from envs.lab.limits import raise_nofile_limit
from envs.lab.load_result import NO_SUBSET, LoadResult
from envs.simulator.scenario import Burst, Diurnal, Load

SEND_GRACE_S = 0.25
"""Arrivals the generator could not send within this many seconds after the end of the run
(a CPU-starved client) are dropped, so `achieved_rps` shows the shortfall."""

MAX_HEAD = 64 * 1024

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""The only hosts a target may name."""


def parse_target(target: str) -> tuple[str, int]:
    """(host, port) of a ``HOST:PORT`` target (``[::1]:PORT`` for IPv6); `ValueError` unless
    the host is one of `LOOPBACK_HOSTS` and the port is within 1..65535."""
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"target must be HOST:PORT, got {target!r}")
    if host.lower() not in LOOPBACK_HOSTS:
        raise ValueError(
            f"target host must be loopback ({', '.join(LOOPBACK_HOSTS)}), got {host!r}"
        )
    return host, int(port)


# ---- the client ----------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, run: LoadRun) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.req = -1
        self.payload = b""
        self.timer: asyncio.TimerHandle | None = None
        self._reset_response()

    def _reset_response(self) -> None:
        self.status = -1
        self.subset = b""
        self.length = -1
        self.chunked = False
        self.close_after = False

    def start(self, req: int, payload: bytes) -> None:
        self.req = req
        self.payload = payload
        self._reset_response()
        if self.transport is not None:
            self.transport.write(payload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.req >= 0:
            transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.req < 0:
            self.buf.clear()
            return
        if self.status < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.fail()
                return
            if not self._parse_head(bytes(self.buf[:end])):
                self.fail()
                return
            del self.buf[: end + 4]
        if self.chunked:
            if self._chunked_done():
                self._complete()
        elif self.length >= 0 and len(self.buf) >= self.length:
            del self.buf[: self.length]
            self._complete()

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            return False
        try:
            self.status = int(parts[1])
        except ValueError:
            return False
        self.close_after = parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                try:
                    self.length = int(value.strip())
                except ValueError:
                    return False
            elif key == b"x-meshpilot-subset":
                self.subset = value.strip()
            elif key == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif key == b"connection":
                self.close_after = value.strip().lower() == b"close"
        if self.status in (204, 304) or 100 <= self.status < 200:
            self.length = 0
        elif self.length < 0 and not self.chunked:
            self.close_after = True  # body runs until the server closes
        return True

    def _chunked_done(self) -> bool:
        pos = 0
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return False
            try:
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
            except ValueError:
                self.fail()
                return False
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0 and buf[eol : eol + 4] != b"\r\n\r\n":
                    return False
                del buf[:]
                return True
            pos = eol + 2 + size + 2
            if pos > len(buf):
                return False

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _complete(self) -> None:
        self._stop_timer()
        req = self.req
        self.req = -1
        self.run.finish(req, self.status, self.subset)
        if self.close_after or self.transport is None or self.transport.is_closing():
            self.close()
        else:
            self.run.idle.append(self)

    def fail(self) -> None:
        """End the current request with status 0 and drop the connection."""
        self._stop_timer()
        req = self.req
        self.req = -1
        if req >= 0:
            self.run.finish(req, 0, b"")
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self.run.forget(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.req >= 0:
            if self.status > 0 and self.length < 0 and not self.chunked:
                self._complete()
            else:
                self.fail()
        self.run.forget(self)


class LoadRun:
    """State of one run on its event loop: the schedule, the pool and the records."""

    def __init__(
        self,
        target: str,
        plan: Plan,
        duration_s: float,
        seed: int,
        timeout_s: float,
        max_connections: int,
    ) -> None:
        addr = parse_target(target)
        if duration_s <= 0 or timeout_s <= 0:
            raise ValueError("duration_s and timeout_s must be positive")
        if not plan:
            raise ValueError("the plan needs at least one (host, load) entry")
        self.target = target
        self.addr = addr
        self.plan = list(plan)
        self.duration_s = duration_s
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.times, self.which = schedule(self.plan, duration_s, seed)
        n = self.times.shape[0]
        self.send_s = np.full(n, math.nan)
        self.latency_ms = np.full(n, math.nan)
        self.status = np.full(n, -1, dtype=np.int32)
        self.subset_idx = np.full(n, -1, dtype=np.int32)
        self.subset_names: dict[bytes, int] = {}
        self.payloads = [
            f"GET / HTTP/1.1\r\nHost: {h}\r\nUser-Agent: meshpilot-loadgen\r\n\r\n".encode()
            for h, _ in self.plan
        ]
        self.idle: list[_Conn] = []
        self.conns: set[_Conn] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.next = 0
        self.outstanding = 0
        self.t0 = 0.0
        self.window_s = duration_s
        self.sending = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.drained = asyncio.Event()
        self.stop_requested = False

    # ---- sending
    async def run(
        self, warm_connections: int, on_sending: Callable[[], None] | None = None
    ) -> None:
        """Warm the pool, then send until the schedule ends or `request_stop`; `on_sending` is
        called once, when the first request may leave (the run's time zero)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.drained = asyncio.Event()
        await self._warm(warm_connections)
        self.t0 = loop.time()
        self.sending = True
        if on_sending is not None:
            on_sending()
        if self.stop_requested:
            self.end_sending()
        else:
            self._tick()
        await self.drained.wait()
        for conn in list(self.conns):
            conn.close()

    async def _warm(self, n: int) -> None:
        async def one() -> None:
            conn = _Conn(self)
            self.conns.add(conn)
            try:
                await asyncio.get_running_loop().create_connection(lambda: conn, *self.addr)
            except OSError:
                self.conns.discard(conn)
                return
            self.idle.append(conn)

        await asyncio.gather(*(one() for _ in range(n)))

    def _tick(self) -> None:
        if not self.sending:
            return
        assert self.loop is not None
        loop = self.loop
        deadline = self.duration_s + SEND_GRACE_S
        rel = loop.time() - self.t0
        times = self.times
        n = times.shape[0]
        i = self.next
        while i < n and times[i] <= rel < deadline:
            self._fire(i)
            i += 1
            if (i & 63) == 0:
                rel = loop.time() - self.t0
        self.next = i
        if i >= n:
            loop.call_at(self.t0 + self.duration_s, self.end_sending)
        elif rel >= deadline:
            self.end_sending()
        else:
            loop.call_at(self.t0 + times[i], self._tick)

    def end_sending(self) -> None:
        """Stop sending (at the end of the run or on `stop`); the run ends once drained."""
        if not self.sending:
            return
        assert self.loop is not None
        self.sending = False
        self.window_s = min(self.duration_s, self.loop.time() - self.t0)
        if self.outstanding == 0:
            self.drained.set()

    def request_stop(self) -> None:
        self.stop_requested = True
        if self.sending:
            self.end_sending()

    def _fire(self, i: int) -> None:
        assert self.loop is not None
        now = self.loop.time()
        self.send_s[i] = now - self.t0
        self.outstanding += 1
        if self.idle:
            conn = self.idle.pop()
        elif len(self.conns) >= self.max_connections:
            self.finish(i, 0, b"")
            return
        else:
            conn = _Conn(self)
            self.conns.add(conn)
            task = self.loop.create_task(self._connect(conn))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        conn.timer = self.loop.call_at(now + self.timeout_s, conn.fail)
        conn.start(i, self.payloads[self.which[i]])

    async def _connect(self, conn: _Conn) -> None:
        assert self.loop is not None
        try:
            await self.loop.create_connection(lambda: conn, *self.addr)
        except OSError:
            conn.fail()

    def finish(self, req: int, status: int, subset: bytes) -> None:
        """Record request `req`'s outcome."""
        assert self.loop is not None
        self.latency_ms[req] = (self.loop.time() - self.t0 - self.send_s[req]) * 1000.0
        self.status[req] = status
        idx = self.subset_names.get(subset)
        if idx is None:
            idx = self.subset_names[subset] = len(self.subset_names)
        self.subset_idx[req] = idx
        self.outstanding -= 1
        if not self.sending and self.outstanding == 0:
            self.drained.set()

    def forget(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def result(self) -> LoadResult:
        sent = self.status >= 0
        names = [NO_SUBSET] * len(self.subset_names)
        for raw, idx in self.subset_names.items():
            names[idx] = raw.decode("latin-1") or NO_SUBSET
        lookup = np.array([*names, NO_SUBSET])
        window = self.window_s if self.window_s > 0 else self.duration_s
        asked = sum(mean_rps(load, window) for _, load in self.plan)
        return LoadResult(
            target=self.target,
            hosts=tuple(h for h, _ in self.plan),
            duration_s=window,
            asked_rps=asked,
            scheduled=int(np.count_nonzero(self.times < window)),
            send_s=self.send_s[sent],
            latency_ms=self.latency_ms[sent],
            status=self.status[sent],
            subset=lookup[self.subset_idx[sent]],
            host=self.which[sent],
            lag_ms=(self.send_s[sent] - self.times[sent]) * 1000.0,
        )


def run_load(
    target: str,
    plan: Plan,
    duration_s: float,
    *,
    seed: int = 0,
    timeout_s: float = 10.0,
    max_connections: int = 4096,
    warm_connections: int = 8,
) -> LoadResult:
    """Send `plan`'s Poisson traffic to `target` (``HOST:PORT``) for `duration_s` seconds,
    wait for the answers (at most `timeout_s` each) and return what happened. Blocking: runs
    its own event loop. A request that would need more than `max_connections` open
    connections fails at once with status 0. `ValueError` for a target that is not loopback
    (see `parse_target`). Raises the soft open-files limit first (`raise_nofile_limit`)."""
    run = LoadRun(target, plan, duration_s, seed, timeout_s, max_connections)
    raise_nofile_limit()
    asyncio.run(run.run(warm_connections))
    return run.result()


# ---- command line --------------------------------------------------------------------------


def _burst(text: str) -> Burst:
    try:
        at_s, duration_s, factor = (float(x) for x in text.split(":"))
        return Burst(at_s=at_s, duration_s=duration_s, factor=factor)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--burst wants AT:DURATION:FACTOR, got {text!r}") from err


def _target(text: str) -> str:
    try:
        parse_target(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m envs.lab.loadgen",
        description="Open-loop Poisson GET / traffic to a lab listener; prints a JSON summary.",
    )
    parser.add_argument(
        "--target",
        required=True,
        type=_target,
        help="HOST:PORT of Envoy's listener; HOST must be 127.0.0.1, localhost or ::1",
    )
    parser.add_argument("--host", required=True, help="Host header: the service to call")
    parser.add_argument("--rps", type=float, required=True, help="mean arrival rate (req/s)")
    parser.add_argument("--duration", type=float, required=True, help="run length (s)")
    parser.add_argument("--diurnal-amplitude", type=float, default=None, help="0 <= A < 1")
    parser.add_argument("--diurnal-period", type=float, default=60.0, help="sine period (s)")
    parser.add_argument(
        "--burst", type=_burst, action="append", default=[], help="AT:DURATION:FACTOR (s, s, x)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the arrival times (same seed, same schedule)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="per request (s)")
    parser.add_argument("--slo-ms", type=float, default=250.0, help="latency SLO for bad_fraction")
    parser.add_argument("--out", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    try:
        diurnal = None
        if args.diurnal_amplitude is not None:
            diurnal = Diurnal(amplitude=args.diurnal_amplitude, period_s=args.diurnal_period)
        load = Load(rps=args.rps, diurnal=diurnal, bursts=tuple(args.burst))
    except ValueError as err:
        parser.error(str(err))
    raise_nofile_limit()
    try:
        result = run_load(
            args.target, [(args.host, load)], args.duration, seed=args.seed, timeout_s=args.timeout
        )
    except ValueError as err:
        parser.error(str(err))
    text = json.dumps(result.summary(args.slo_ms), indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

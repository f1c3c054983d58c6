"""`run_load` in a process of its own, for runs where something else acts meanwhile.

The client measures latency from its send to the last byte, so its event loop must answer at
once: a busy thread in the same interpreter holds the GIL and is measured as mesh latency.
Two spinning threads beside an in-process generator turned a clean 400 rps run (bad fraction
0.0, p99 67 ms) into 0.99 bad with a p99 of 21 s; three spinning *processes* changed nothing
(p99 70 ms). A controller under test, an evaluation loop or a test runner with a leftover
thread is such a neighbour, so the generator runs in a fresh interpreter (``spawn``) and hands
its `LoadResult` back through a pipe.

The child stops when told, when its schedule ends, or when its parent goes away (the pipe
closes), so a killed caller never leaves traffic running.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

from envs.lab.arrivals import Plan
from envs.lab.limits import raise_nofile_limit
from envs.lab.load_result import LoadResult
from envs.lab.loadgen import LoadRun

START_TIMEOUT_S = 60.0
"""How long `LoadGenerator.start` waits for the child to send its first request (s): an
interpreter start and numpy's import, several seconds on a loaded machine."""
RESULT_MARGIN_S = 60.0
"""How long `stop` waits beyond the per-request timeout for the child's result (s)."""


class LoadGenerator:
    """Open-loop traffic in a child process: `start()` returns once the first request may
    leave (time zero of the run), `stop()` ends the run early (or waits for its natural end)
    and returns the `LoadResult` of what was sent. `ValueError` at construction for a target
    that is not loopback or a bad duration; an error inside the child is raised by `stop()`."""

    def __init__(
        self,
        target: str,
        plan: Plan,
        duration_s: float = 3600.0,
        *,
        seed: int = 0,
        timeout_s: float = 10.0,
        max_connections: int = 4096,
        warm_connections: int = 8,
    ) -> None:
        # The child's checks, here, so a bad argument fails before a process starts.
        LoadRun(target, plan, min(duration_s, 1.0), seed, timeout_s, max_connections)
        self._args = (target, list(plan), duration_s, seed, timeout_s, max_connections)
        self._warm = warm_connections
        self._timeout_s = timeout_s
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._result: LoadResult | None = None

    def start(self) -> LoadGenerator:
        if self._process is not None:
            raise RuntimeError("a LoadGenerator runs once")
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=_child, args=(theirs, self._args, self._warm), name="meshpilot-loadgen"
        )
        self._process.daemon = True
        self._process.start()
        theirs.close()
        self._conn = ours
        if not ours.poll(START_TIMEOUT_S):
            self._kill()
            raise RuntimeError(f"the load generator did not start within {START_TIMEOUT_S:g} s")
        kind, payload = _receive(ours)
        if kind != "sending":
            self._kill()
            raise _as_error(payload)
        return self

    @property
    def running(self) -> bool:
        """True while the child sends or drains (its result not yet handed back)."""
        if self._process is None or self._conn is None or self._result is not None:
            return False
        if self._conn.closed:  # it failed and was stopped
            return False
        return self._process.is_alive() and not self._conn.poll()

    def stop(self) -> LoadResult:
        """Stop sending now, wait for outstanding answers (at most the per-request timeout),
        return what was sent. Idempotent after the first call."""
        if self._result is not None:
            return self._result
        if self._process is None or self._conn is None:
            raise RuntimeError("stop() before start()")
        if self._conn.closed:
            raise RuntimeError("the load generator failed earlier and has no result")
        with contextlib.suppress(OSError):  # the child may have finished and closed its end
            self._conn.send("stop")
        if not self._conn.poll(self._timeout_s + RESULT_MARGIN_S):
            self._kill()
            raise RuntimeError("the load generator did not hand back its result")
        kind, payload = _receive(self._conn)
        self._process.join(timeout=10.0)
        self._kill()
        if kind != "result" or not isinstance(payload, LoadResult):
            raise _as_error(payload)
        self._result = payload
        return payload

    def _kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.running:
            self.stop()
        else:
            self._kill()


def _receive(conn: Connection) -> tuple[str, Any]:
    try:
        kind, payload = conn.recv()
    except (EOFError, OSError) as err:
        return "error", RuntimeError(f"the load generator exited without an answer ({err!r})")
    return str(kind), payload


def _as_error(payload: Any) -> BaseException:
    if isinstance(payload, BaseException):
        return payload
    return RuntimeError(f"the load generator failed: {payload}")


def _child(conn: Connection, args: tuple[Any, ...], warm: int) -> None:
    """The child's whole life: run, then send ("result", LoadResult) or ("error", exception)."""
    try:
        run = LoadRun(*args)
        raise_nofile_limit()
        asyncio.run(_run_until_told(run, conn, warm))
        conn.send(("result", run.result()))
    except BaseException as err:  # the parent raises it from stop()
        with contextlib.suppress(Exception):
            try:
                conn.send(("error", err))
            except Exception:  # an exception that does not pickle
                conn.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        conn.close()


async def _run_until_told(run: LoadRun, conn: Connection, warm: int) -> None:
    loop = asyncio.get_running_loop()

    def told() -> None:
        # "stop", or EOF because the parent is gone: either way the run ends.
        loop.remove_reader(conn.fileno())
        with contextlib.suppress(EOFError, OSError):
            conn.recv()
        run.request_stop()

    loop.add_reader(conn.fileno(), told)
    await run.run(warm, on_sending=lambda: conn.send(("sending", None)))
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(conn.fileno())

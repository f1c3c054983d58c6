"""Scheduling: when the loop's work runs and on which threads — never what it does.

Why a module of its own: the tick must run every interval without ever overlapping itself,
catch up sanely after a stall, stop cleanly on SIGTERM, and stay quiet in the logs when
nothing happens; a tick's writes must run side by side on a bounded, reused set of threads.
None of that is control logic, so `controller.loop` only hands its tick and its writes to the
helpers here:

* `TickScheduler` — the apscheduler wiring: one interval job per loop (`JOB_ID`), started at
  once, never overlapped, coalesced and skipped rather than run stale;
* `WritePool` — the threads a tick's writes run on (inline when there is one writer);
* `recheck_due` — whether a failed route is re-checked this tick.

apscheduler logs two INFO lines per run of a job ("Running job ..." and "... executed
successfully"), i.e. two lines every tick forever; `TickScheduler` raises its loggers to
WARNING, so only missed or skipped runs and errors show, like the loop's own warnings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler

__all__ = [
    "APSCHEDULER_LOGGERS",
    "JOB_ID",
    "TickScheduler",
    "WritePool",
    "quiet_apscheduler",
    "recheck_due",
]

JOB_ID = "meshpilot-tick"
"""Id of the one apscheduler job that runs `ControlLoop.tick`."""

APSCHEDULER_LOGGERS = ("apscheduler", "apscheduler.scheduler", "apscheduler.executors.default")
"""The loggers `quiet_apscheduler` raises to WARNING (the last two log every run at INFO)."""

T = TypeVar("T")


def quiet_apscheduler() -> None:
    """Raise apscheduler's loggers to WARNING (a higher level already set is kept): missed
    and skipped runs and job errors still show, the two INFO lines per run do not."""
    for name in APSCHEDULER_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class TickScheduler:
    """Runs `tick` now and then every `interval_s` seconds on a background thread.

    One interval job with ``max_instances=1`` (a slow tick is never overlapped by the next),
    ``coalesce=True`` (ticks missed while one ran collapse into one) and a misfire grace of one
    interval (a tick more than that late is skipped, not run stale). Start once; `stop` is
    final.
    """

    def __init__(
        self,
        tick: Callable[[], object],
        *,
        interval_s: float,
    ) -> None:
        quiet_apscheduler()
        self._tick = tick
        self._interval_s = interval_s
        self._scheduler = BackgroundScheduler(timezone=UTC)

    def start(self) -> None:
        """Schedule the job (first run now) and start the scheduler's thread."""
        self._scheduler.add_job(
            self._tick,
            trigger="interval",
            seconds=self._interval_s,
            id=JOB_ID,
            name="meshpilot control tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, math.ceil(self._interval_s)),
            next_run_time=datetime.now(UTC),
        )
        self._scheduler.start()

    @property
    def job(self) -> Job | None:
        """The scheduled tick job (None before `start` and after `stop`)."""
        return self._scheduler.get_job(JOB_ID) if self._scheduler.running else None

    def stop(self, *, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let a running tick finish first (idempotent)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=wait)


class WritePool:
    """The threads a tick's writes run on: up to `size` at once, kept across ticks (starting
    threads costs ms per tick); with `size` 1 each write runs right away on the caller's
    thread. Thread-safe for one submitter (the tick)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn` on the pool (started on first use), or here when `size` is 1."""
        if self.size == 1:
            done: Future[T] = Future()
            done.set_result(fn())
            return done
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.size, thread_name_prefix="meshpilot-write"
            )
        return self._pool.submit(fn)

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the threads (idempotent); a later `submit` starts new ones."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)


def recheck_due(tick_no: int, failed_tick: int, every: int) -> bool:
    """Whether a route that failed at tick `failed_tick` is re-checked at tick `tick_no`."""
    return tick_no - failed_tick >= every

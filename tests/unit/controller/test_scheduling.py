"""Scheduling: the tick job, its logs, the write threads and the re-check of failed routes.

Cases: scheduled ticks run every interval and log nothing below WARNING from apscheduler, even
when the application logs at INFO, while the tick's own warnings still show; a higher level an
operator set on apscheduler is kept; the job is never overlapped, coalesced, skipped when a
misfire is older than one interval, and gone after `stop` (idempotent); the write pool runs
inline with one writer and on its named threads with more, and starts new threads after a
shutdown; a failed route is re-checked every `every` ticks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from controller.scheduling import (
    APSCHEDULER_LOGGERS,
    JOB_ID,
    TickScheduler,
    WritePool,
    quiet_apscheduler,
    recheck_due,
)


@pytest.fixture
def info_everywhere(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture at INFO, with apscheduler's loggers at INFO too (restored afterwards)."""
    caplog.set_level(logging.INFO)
    for name in APSCHEDULER_LOGGERS:
        caplog.set_level(logging.INFO, logger=name)
    yield caplog


def run_ticks(scheduler: TickScheduler, ran: threading.Semaphore, n: int) -> None:
    scheduler.start()
    try:
        for _ in range(n):
            assert ran.acquire(timeout=10), "the scheduled tick did not run"
    finally:
        scheduler.stop()


def test_scheduled_ticks_leave_no_apscheduler_record_below_warning(
    info_everywhere: pytest.LogCaptureFixture,
) -> None:
    ran = threading.Semaphore(0)
    run_ticks(TickScheduler(ran.release, interval_s=0.05), ran, 3)
    chatty = [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in info_everywhere.records
        if r.name.startswith("apscheduler") and r.levelno < logging.WARNING
    ]
    assert chatty == []


def test_our_own_warnings_still_show_from_a_scheduled_tick(
    info_everywhere: pytest.LogCaptureFixture,
) -> None:
    ran = threading.Semaphore(0)

    def tick() -> None:
        logging.getLogger("controller.loop").warning("observe failed, holding every route")
        ran.release()

    run_ticks(TickScheduler(tick, interval_s=0.05), ran, 2)
    ours = [r for r in info_everywhere.records if r.name == "controller.loop"]
    assert len(ours) >= 2 and all(r.levelno == logging.WARNING for r in ours)
    assert logging.getLogger("apscheduler.scheduler").isEnabledFor(logging.WARNING)
    assert logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.ERROR)


def test_a_higher_apscheduler_level_set_by_the_operator_is_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="apscheduler.scheduler")
    caplog.set_level(logging.DEBUG, logger="apscheduler.executors.default")
    quiet_apscheduler()
    assert logging.getLogger("apscheduler.scheduler").level == logging.ERROR
    assert logging.getLogger("apscheduler.executors.default").level == logging.WARNING


def test_the_job_never_overlaps_coalesces_and_is_gone_after_stop() -> None:
    scheduler = TickScheduler(lambda: None, interval_s=7.5)
    assert scheduler.job is None
    scheduler.start()
    try:
        job = scheduler.job
        assert job is not None and job.id == JOB_ID
        assert job.max_instances == 1
        assert job.coalesce is True
        assert job.misfire_grace_time == 8  # one interval, rounded up to whole seconds
        assert job.trigger.interval.total_seconds() == 7.5
    finally:
        scheduler.stop()
    assert scheduler.job is None
    scheduler.stop()  # idempotent


def test_a_sub_second_interval_still_has_a_one_second_misfire_grace() -> None:
    scheduler = TickScheduler(lambda: None, interval_s=0.2)
    scheduler.start()
    try:
        job = scheduler.job
        assert job is not None and job.misfire_grace_time == 1
    finally:
        scheduler.stop()


def test_one_writer_runs_each_write_on_the_callers_thread() -> None:
    pool = WritePool(1)
    future = pool.submit(lambda: threading.current_thread().name)
    assert future.done() and future.result() == threading.current_thread().name


def test_several_writers_run_on_named_threads_and_restart_after_shutdown() -> None:
    pool = WritePool(3)
    try:
        name = pool.submit(lambda: threading.current_thread().name).result(timeout=5)
        assert name.startswith("meshpilot-write")
        pool.shutdown()
        pool.shutdown()  # idempotent
        again = pool.submit(lambda: threading.current_thread().name).result(timeout=5)
        assert again.startswith("meshpilot-write")
    finally:
        pool.shutdown()


def test_several_writers_run_at_the_same_time() -> None:
    pool = WritePool(3)
    barrier = threading.Barrier(3, timeout=5)
    try:
        futures = [pool.submit(barrier.wait) for _ in range(3)]
        assert sorted(f.result(timeout=5) for f in futures) == [0, 1, 2]
    finally:
        pool.shutdown()


@pytest.mark.parametrize(
    ("tick_no", "failed_tick", "every", "due"),
    [(5, 5, 12, False), (16, 5, 12, False), (17, 5, 12, True), (30, 5, 12, True), (6, 5, 1, True)],
)
def test_a_failed_route_is_rechecked_every_n_ticks(
    tick_no: int, failed_tick: int, every: int, due: bool
) -> None:
    assert recheck_due(tick_no, failed_tick, every) is due

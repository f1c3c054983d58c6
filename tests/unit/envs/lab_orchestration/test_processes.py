"""Lab processes are found by PID *and* start time, stopped as a group, never confused with a
process that reuses a PID."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from envs.lab.processes import (
    ProcessRecord,
    free_ports,
    is_alive,
    log_tail,
    start_process,
    stop_process,
)


def test_a_started_process_is_alive_until_stopped_with_its_children(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('child', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    record = start_process("sleeper", [sys.executable, "-c", code], tmp_path / "s.log")
    try:
        assert is_alive(record)
        for _ in range(100):
            if "child" in log_tail(record):
                break
            time.sleep(0.05)
        child_pid = int(log_tail(record).split()[-1])
        assert stop_process(record, timeout_s=2.0) is True
        assert not is_alive(record)
        assert (
            not Path(f"/proc/{child_pid}").exists()
            or "Z" in Path(f"/proc/{child_pid}/stat").read_text().split(")")[-1].split()[0]
        )
        assert stop_process(record) is False
    finally:
        stop_process(record, timeout_s=1.0)


def test_a_record_with_another_start_time_is_not_this_process(tmp_path: Path) -> None:
    record = start_process(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log"
    )
    try:
        impostor = dataclasses.replace(record, start_ticks=record.start_ticks + 1)
        assert not is_alive(impostor)
        assert stop_process(impostor) is False
        assert is_alive(record), "a stale record must never stop a process it did not start"
    finally:
        stop_process(record, timeout_s=1.0)


def test_a_process_that_exits_is_not_alive_and_its_log_is_kept(tmp_path: Path) -> None:
    record = start_process(
        "talker", [sys.executable, "-c", "print('hello from the lab')"], tmp_path / "t.log"
    )
    deadline = time.monotonic() + 10
    while is_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_alive(record)
    assert "hello from the lab" in log_tail(record)


def test_a_record_without_a_real_pid_never_reaps_another_child(tmp_path: Path) -> None:
    """``waitpid(-1)`` would collect any child of ours: a bogus record must not call it."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").exists() and time.monotonic() < deadline:
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.02)
    bogus = ProcessRecord("gone", pid=-1, start_ticks=-1, argv=(), log_path="")
    assert not is_alive(bogus)
    assert child.wait(timeout=5) == 0, "the child's exit status must still be ours to collect"


def test_a_state_file_naming_pid_1_or_less_is_refused() -> None:
    import pytest

    for pid in (-1, 0, 1):
        with pytest.raises(ValueError, match="not a process this lab started"):
            ProcessRecord.from_json(
                {"name": "x", "pid": pid, "start_ticks": 1, "argv": [], "log_path": ""}
            )


def test_ports_handed_out_together_are_distinct_and_free() -> None:
    import socket

    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports[:8]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", port))

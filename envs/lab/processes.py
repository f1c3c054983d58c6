"""The lab's child processes: started in their own session, recorded, found again, stopped.

Why a module of its own: `meshpilot lab up` returns while Envoy, Prometheus and the backends
keep running, and `lab down` (another process, maybe after a crash of the first) must stop
exactly those and nothing else. A PID alone is not enough for that — PIDs are reused — so each
record also keeps the process's start time from ``/proc/PID/stat`` (clock ticks since boot),
and a record only matches a live process whose start time is the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ProcessRecord",
    "free_ports",
    "is_alive",
    "log_tail",
    "start_process",
    "stop_process",
]


@dataclass(frozen=True)
class ProcessRecord:
    """One started process: its name in the lab, PID (also its process group, as it leads its
    own session), ``/proc`` start time (clock ticks since boot), command line and log file."""

    name: str
    pid: int
    start_ticks: int
    argv: tuple[str, ...]
    log_path: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["argv"] = list(self.argv)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        if int(data["pid"]) <= 1:
            raise ValueError(f"not a process this lab started: pid {data['pid']}")
        return cls(
            name=str(data["name"]),
            pid=int(data["pid"]),
            start_ticks=int(data["start_ticks"]),
            argv=tuple(str(a) for a in data["argv"]),
            log_path=str(data["log_path"]),
        )


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago: every socket is
    held until all are bound, so the kernel never hands out one port twice."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rfind(")") + 2 :].split()
    return fields[0], int(fields[19])


def _reap(pid: int) -> None:
    """Collect the exit status of our own child so it does not linger as a zombie (never for
    pid <= 0: ``waitpid(-1)`` would collect *any* child, stealing another's exit status)."""
    if pid <= 0:
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(record: ProcessRecord) -> bool:
    """True when the recorded process still runs (same PID *and* same start time, not a
    zombie)."""
    if record.pid <= 1:
        return False
    _reap(record.pid)
    stat = _stat(record.pid)
    return stat is not None and stat[1] == record.start_ticks and stat[0] not in ("Z", "X")


def start_process(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> ProcessRecord:
    """Start `argv` in a new session (its own process group, so it survives our exit and can
    be stopped as a group), stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=dict(env) if env is not None else None,
        )
    stat = _stat(proc.pid)
    start_ticks = stat[1] if stat is not None else -1
    return ProcessRecord(name, proc.pid, start_ticks, tuple(argv), str(log_path))


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stop_process(record: ProcessRecord, *, timeout_s: float = 5.0) -> bool:
    """Stop the recorded process group: SIGTERM, then SIGKILL after `timeout_s`, until the
    leader and every other member of its group are gone.

    Returns True when it was running and is stopped now; False when it was not running (or,
    rarely, survived SIGKILL: check `is_alive`). A record whose PID now belongs to another
    process (a different start time) is left alone.
    """
    if not is_alive(record):
        return False
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not is_alive(record) and _group_gone(record.pid):
                return True
            time.sleep(0.05)
    return not is_alive(record)


def log_tail(record: ProcessRecord, lines: int = 20) -> str:
    """The last `lines` lines of the process's log (for error messages)."""
    try:
        text = Path(record.log_path).read_text(errors="replace")
    except OSError:
        return "<no log>"
    return "\n".join(text.splitlines()[-lines:])

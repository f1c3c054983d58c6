"""Helpers shared by the test modules and the integration labs (`tests/integration/*_lab.py`).

Standard library only at import time (pytest is imported by the helpers that need it), so the
labs that use these also run outside pytest (``bench/tick_latency.py``).

What is installed by ``make test`` (``.ci/system-deps.sh``: prometheus, promtool, kubectl,
kube-apiserver + etcd) is required, never skipped: `require_binary` fails the test with the fix.
Only what ``make test`` cannot install goes through `unavailable`, which skips on a developer's
machine and fails under ``CI=true`` (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import NoReturn

SYSTEM_DEPS_FIX = "run make system-deps (.ci/system-deps.sh)"


def in_ci() -> bool:
    """True when the environment variable ``CI`` is ``true`` (``.ci/run`` sets it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed
    out before.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is
    closed, so a config that asks for several ports (a backend's control port and its replicas)
    could get one port twice; remembering what was handed out rules that out within a run.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def tail(path: Path, n: int = 40) -> str:
    """The last `n` lines of a log file, or ``<no log>``."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def require_binary(name: str, env_var: str | None = None) -> str:
    """Path of `name` (from `env_var` when set, else PATH); fail the calling test if absent.

    For binaries ``make test`` installs: their absence is an install bug, never a skip.
    """
    explicit = os.environ.get(env_var) if env_var else None
    if explicit:
        if os.access(explicit, os.X_OK):
            return explicit
        fail(f"{env_var}={explicit} is not an executable file")
    found = shutil.which(name)
    if found is None:
        fail(f"{name} not on PATH: {SYSTEM_DEPS_FIX}")
    return found


def fail(reason: str) -> NoReturn:
    """Fail the calling test with `reason` and no traceback."""
    import pytest

    pytest.fail(reason, pytrace=False)


def unavailable(reason: str) -> NoReturn:
    """For what ``make test`` cannot install: skip with `reason`, or fail under ``CI=true``."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI=true: not skipped)", pytrace=False)
    pytest.skip(reason)

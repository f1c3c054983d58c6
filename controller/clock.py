"""Time sources for the control loop: the real one and a fake one for tests.

The loop, the guard (hold, decay, pin TTLs) and the verifier measure every duration on one
`Clock` (``meshcore.Clock``), so a test can drive minutes of control in microseconds and
`meshpilot serve --mesh sim` can run the whole controller on simulated time.
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ["FakeClock", "WallClock"]


class WallClock:
    """Unix time in seconds (``time.time``): what timestamps in the audit log mean in production."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(seconds, 0.0))


class FakeClock:
    """A clock that only moves when told to (s); `sleep` advances it instead of blocking.

    start_s: the initial reading (s, default 0). Thread-safe, because the API thread reads the
    clock (override TTLs) while a test thread advances it.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        if not math.isfinite(start_s):
            raise ValueError(f"FakeClock start_s must be finite, got {start_s}")
        self._now_s = float(start_s)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now_s

    def sleep(self, seconds: float) -> None:
        self.advance(max(seconds, 0.0))

    def advance(self, seconds: float) -> float:
        """Move time forward by `seconds` (s, >= 0) and return the new reading."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"FakeClock can only advance by a finite, non-negative s: {seconds}")
        with self._lock:
            self._now_s += seconds
            return self._now_s

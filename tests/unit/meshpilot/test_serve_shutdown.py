"""`meshpilot serve`'s shutdown steps: a slow step is named in a warning, a quick one is
silent. The whole shutdown on SIGTERM runs in tests/unit/controller/api/test_hostile.py,
tests/integration/test_packaging.py and the lab's kube path."""

from __future__ import annotations

import logging
import time

import pytest

from meshpilot.commands import serve


def test_a_slow_shutdown_step_is_named_and_a_quick_one_is_silent(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []
    with caplog.at_level(logging.WARNING, logger="meshpilot.serve"):
        serve._timed("closing the decision store", calls.append, 1.0)
        assert calls == [1.0] and caplog.text == ""
        monkeypatch.setattr(serve, "SLOW_STEP_S", 0.01)
        serve._timed("stopping the leader election", time.sleep, 0.05)
    assert "shutdown: stopping the leader election took 0.1 s" in caplog.text

"""Shared fixtures, and the rule that under ``CI=true`` no test may skip.

In CI (``.ci/run`` exports ``CI=true``) everything the suite needs is installed by
``make test``, so a skip can only mean a broken install: every skipped test (and every module
skipped at collection) is reported as a failure carrying the skip's reason, and the summary
lists them. ``xfail`` is not a skip and is left alone.

Plain helpers (free ports, log tails, `require_binary`) are in ``tests/helpers.py``, which the
integration labs import too.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.helpers import in_ci, require_binary

# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Debian's ``prometheus`` ($MESHPILOT_PROMETHEUS or PATH); fails the test if missing."""
    return require_binary("prometheus", "MESHPILOT_PROMETHEUS")


@pytest.fixture(scope="session")
def promtool_bin() -> str:
    """``promtool`` (same Debian package as prometheus); fails the test if missing."""
    return require_binary("promtool")


@pytest.fixture(scope="session")
def kubectl_bin() -> str:
    """``kubectl`` (Debian's kubernetes-client); fails the test if missing."""
    return require_binary("kubectl")


# -- CI: a skip is a failure ---------------------------------------------------------------------

_SKIPS_FAILED: list[tuple[str, str]] = []
_CI_PREFIX = "skipped under CI=true (in CI a missing install is a bug, not a reason to skip)"


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, lineno, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _fail_the_skip(report: Any) -> None:
    reason = _skip_reason(report)
    _SKIPS_FAILED.append((report.nodeid, reason))
    report.outcome = "failed"
    report.longrepr = f"{_CI_PREFIX}: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_the_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if in_ci() and report.skipped:  # e.g. a module-level pytest.importorskip
        _fail_the_skip(report)
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SKIPS_FAILED:
        return
    terminalreporter.section("CI=true: skips counted as failures", sep="=", red=True)
    for nodeid, reason in _SKIPS_FAILED:
        terminalreporter.line(f"{nodeid}: {reason}")

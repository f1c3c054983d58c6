"""The `ctl` fixture of the API tests (`support.controller`, fresh per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.controller.api.support import Controller, controller


@pytest.fixture
def ctl() -> Iterator[Controller]:
    with controller() as c:
        yield c

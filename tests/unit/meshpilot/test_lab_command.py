"""`meshpilot lab`: options out of range are one clear line and exit 2, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpilot.cli import main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["lab", "up", "--seed", "-1"], "--seed"),
        (["lab", "load", "--diurnal", "1.5", "60"], "amplitude must be below 1"),
        (["lab", "load", "--diurnal", "0.5", "-60"], "--diurnal"),
    ],
)
def test_lab_options_out_of_range_are_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:
        code = main([*argv, "--state-dir", str(tmp_path)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
